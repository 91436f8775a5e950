"""Faults under the real commands (issue 13): `python -m layer1_patches extract` and `python -m layer3_inference
heatmap` run as subprocesses with two writers of one output, a full disk (a small tmpfs), a read-only output
folder, SIGTERM and SIGKILL mid-run, and slides named `..tif` / `...tif`.

Every case checks how the command ends: its exit status, exactly one `error: ...` line on stderr when it fails
(none when it exits 0 or 1: a multi-slide run reports its slides in the summary table), never a Python traceback;
that nothing outside OUT was touched (a canary in OUT's parent and one inside OUT keep their content); and that
nothing left passes for finished: no `.partial` file or folder after an error, a `<stem>.h5` opens as a
`PatchStore`, an `OUT/<stem>/` folder holds `summary.json` and every file its `files` key lists.

Cost: one 3072-px synthetic slide and one tiny Keras model for the whole module; the mid-run faults wait for
the writer's partial output (or lock) to appear instead of sleeping, and a second writer is started while the
first is held with SIGSTOP, so no case depends on how fast this machine is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from layer1_patches.shared.locks import GUARD, _host
from layer1_patches.store import PatchStore
from tests.helpers import REPO, cli_env

STEM = "patient_000_node_0"  # the synthetic slide's name; every "normal" slide below is a copy of it
SLIDE_SIZE = 3072  # px: ~4000 dense 32-px patches, a store of ~13 MB, a heatmap folder of ~1.5 MB
CONFIGS = REPO / "configs"
TRACEBACK = "Traceback (most recent call last)"
HIDDEN_NAMES = ["..tif", "...tif"]  # stems '.' (OUT itself) and '..' (OUT's parent)
BESIDE, BESIDE_TEXT = "canary-beside-out.txt", "a file in OUT's parent: not the command's\n"
INSIDE, INSIDE_TEXT = "canary-inside-out.txt", "a file inside OUT: not the command's\n"
PARTIAL = re.compile(r"\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.partial")
WAIT = 180.0  # seconds: a guard against a hung command, never an assertion on speed

# Layer 1: dense 32-px patches read by one thread, 8 at a time: a second or two of writing the partial store.
L1_DENSE = ["--config", str(CONFIGS / "layer1" / "dense.yaml"), "--set", "patch_size=32",
            "--set", "reader.threads=1", "--set", "reader.batch_size=8"]
L1_QUICK = ["--config", str(CONFIGS / "layer1" / "random.yaml"), "--set", "patch_size=32",
            "--set", "sampling.random.per_class=20"]


# --- running the commands ---


def layer1(*args: str) -> list[str]:
    return [sys.executable, "-m", "layer1_patches", *args]


def layer3(*args: str) -> list[str]:
    return [sys.executable, "-m", "layer3_inference", *args]


class Command:
    """A command started in the background; stdout and stderr go to files (no pipe to fill up)."""

    def __init__(self, cmd: list[str], logs: Path) -> None:
        self.cmd = cmd
        logs.mkdir(parents=True, exist_ok=True)
        n = len(list(logs.glob("*.out")))
        self.stdout_path, self.stderr_path = logs / f"{n}.out", logs / f"{n}.err"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=out, stderr=err)
        self.pid = self.proc.pid

    def finish(self, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{' '.join(self.cmd)} still running after {timeout:.0f} s:\n{self.stderr_path.read_text()}")
        return subprocess.CompletedProcess(self.cmd, self.proc.returncode, self.stdout_path.read_text(),
                                           self.stderr_path.read_text())

    def stop(self) -> None:
        """Kill it if it still runs (a failed test must not leave it behind)."""
        if self.proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                os.kill(self.pid, sig)
            self.proc.wait(timeout=60)


@pytest.fixture
def commands(tmp_path: Path) -> Iterator[Callable[[list[str]], Command]]:
    """Starts commands; whatever still runs at the end of the test is killed."""
    started: list[Command] = []

    def start(cmd: list[str]) -> Command:
        started.append(Command(cmd, tmp_path / "logs"))
        return started[-1]

    yield start
    for command in started:
        command.stop()


def run(cmd: list[str], timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def wait_until(ready: Callable[[], bool], command: Command, what: str) -> None:
    """Poll (every few ms) until `ready()`; fails when the command ends first or after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not ready():
        if command.proc.poll() is not None:
            pytest.fail(f"{what} never appeared: the command ended first (exit {command.proc.returncode}), "
                        f"so it could not be caught mid-run:\n{command.stderr_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not appear within {WAIT:.0f} s")
        time.sleep(0.005)


def partials(folder: Path, name: str) -> list[Path]:
    """The partial outputs of `folder/name` that exist (`.<name>.<host>-<pid>.partial`)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [folder / n for n in names if (m := PARTIAL.fullmatch(n)) and m.group("name") == name]


def writer_pid(partial: Path) -> int:
    """The PID in a partial output's name."""
    match = PARTIAL.fullmatch(partial.name)
    assert match, partial
    return int(match.group("pid"))


def partial_bytes(folder: Path, name: str) -> int:
    """The size of the largest partial output of `folder/name`; -1 when there is none."""
    sizes = [-1]
    for path in partials(folder, name):
        try:
            sizes.append(path.stat().st_size)
        except OSError:  # renamed or removed since it was listed
            continue
    return max(sizes)


def lock_owner(lock: Path) -> int | None:
    """The PID in a lock file once its record is complete, else None."""
    try:
        return int(json.loads(lock.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- how a command ended ---


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def assert_ends(proc: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    """Exit `status`, no traceback, and exactly one `error:` line holding every needle (none for status 0 or 1,
    where the summary table reports the slides); returns the error line ("" for none)."""
    assert proc.returncode == status, f"exit {proc.returncode}, expected {status}:\n{proc.stdout}\n{proc.stderr}"
    assert TRACEBACK not in proc.stderr, proc.stderr
    errors = error_lines(proc)
    if status in (0, 1):
        assert errors == [], proc.stderr
        return ""
    assert len(errors) == 1, f"expected exactly one error line:\n{proc.stderr}"
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def table_row(proc: subprocess.CompletedProcess[str], slide: str) -> list[str]:
    """The words of the slide's row in a multi-slide run's summary table."""
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] == [slide]]
    assert len(rows) == 1, f"no single row for {slide}:\n{proc.stdout}"
    return rows[0]


# --- where the outputs go: OUT with a canary beside and one inside ---


@dataclass(frozen=True)
class Site:
    """OUT = `root/out`; `root` is OUT's parent. Both hold a canary file no command may touch."""

    root: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def canaries(self) -> dict[Path, str]:
        return {self.root / BESIDE: BESIDE_TEXT, self.out / INSIDE: INSIDE_TEXT}

    def assert_untouched(self) -> None:
        """Both canaries keep their content, and OUT's parent holds nothing new."""
        for path, text in self.canaries.items():
            assert path.is_file(), f"canary {path} was deleted"
            assert path.read_text() == text, f"canary {path} was changed"
        assert sorted(os.listdir(self.root)) == sorted([BESIDE, "out"]), f"{self.root} changed"

    def assert_no_partials(self) -> None:
        left = [p for d in (self.root, self.out) if d.is_dir() for p in os.listdir(d) if ".partial" in p]
        assert left == [], f"partial outputs left: {left}"

    def locks(self) -> list[str]:
        return sorted(n for n in os.listdir(self.out) if n.endswith(".lock")) if self.out.is_dir() else []

    def outputs(self) -> list[str]:
        """OUT's entries other than the canary, hidden ones (partials, locks) included; not the empty guard file a
        lock takeover leaves (layer1_patches.shared.locks.GUARD)."""
        return sorted(n for n in os.listdir(self.out) if n not in (INSIDE, GUARD)) if self.out.is_dir() else []


def make_site(root: Path) -> Site:
    site = Site(root)
    site.out.mkdir(parents=True)
    for path, text in site.canaries.items():
        path.write_text(text)
    return site


def assert_stores_finished(site: Site) -> None:
    """Every `<stem>.h5` in OUT is a finished store."""
    for name in os.listdir(site.out):
        if name.endswith(".h5") and not name.startswith("."):
            with PatchStore(site.out / name) as store:
                assert len(store) > 0


def assert_heatmaps_finished(site: Site) -> None:
    """Every `OUT/<stem>/` folder holds summary.json and every file it lists."""
    for name in os.listdir(site.out):
        folder = site.out / name
        if folder.is_dir() and not name.startswith("."):
            summary = json.loads((folder / "summary.json").read_text())
            missing = [f for f in summary["files"] if not (folder / f).is_file()]
            assert summary["files"] and not missing, f"{folder}: listed but missing: {missing}"


def assert_after_error(site: Site, finished: Callable[[Site], None]) -> None:
    site.assert_untouched()
    site.assert_no_partials()
    finished(site)


def assert_same_store(a: Path, b: Path) -> None:
    with PatchStore(a) as x, PatchStore(b) as y:
        assert len(x) == len(y) > 0
        assert np.array_equal(x.coords, y.coords) and np.array_equal(x.labels, y.labels)
        assert np.array_equal(x.read(np.arange(len(x))), y.read(np.arange(len(y))))


def assert_same_probabilities(a: Path, b: Path) -> None:
    with h5py.File(a / "probabilities.h5", "r") as x, h5py.File(b / "probabilities.h5", "r") as y:
        names = sorted(n for n in x if isinstance(x[n], h5py.Dataset))
        assert names and names == sorted(n for n in y if isinstance(y[n], h5py.Dataset))
        for name in names:
            u, v = x[name][()], y[name][()]
            nan = np.issubdtype(u.dtype, np.floating)
            assert u.shape == v.shape and np.array_equal(u, v, equal_nan=nan), name


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = set(), [pid]
    while todo:
        kids = [p for p, ppid in parents.items() if ppid == todo[-1]]
        todo.pop()
        found.update(kids)
        todo += kids
    return found


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def dead_pid() -> int:
    """The PID of a process of ours that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_stale_lock(lock: Path) -> None:
    lock.write_text(json.dumps({"host": _host(), "pid": dead_pid(), "job": "", "time": 0}))


# --- fixtures: one slide, one model, one clean run per layer, small file systems ---


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic slide (0.5 um/px, tissue with tumour), alone in its folder."""
    from layer1_patches.synth import SynthSpec, write_synthetic_slide

    path = tmp_path_factory.mktemp("fault_slide") / f"{STEM}.tif"
    write_synthetic_slide(path, None, SynthSpec(size=SLIDE_SIZE, seed=5, tumour_fraction=0.3))
    return path


@pytest.fixture(scope="module")
def l1_reference(slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store of an undisturbed dense extraction (L1_DENSE)."""
    out = tmp_path_factory.mktemp("l1_reference")
    proc = run(layer1("extract", *L1_DENSE, "--slide", str(slide), "--out", str(out)))
    assert_ends(proc, 0)
    return out / f"{STEM}.h5"


@pytest.fixture(scope="module")
def model_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished Layer 2 run dir with a tiny 32-px model (tests/layer3/conftest.py), written by a subprocess so
    that this process does not load TensorFlow."""
    run_dir = tmp_path_factory.mktemp("fault_model") / "run"
    code = ("from pathlib import Path; from tests.layer3.conftest import write_run_dir; "
            f"write_run_dir(Path({str(run_dir)!r}))")
    proc = run([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr
    return run_dir


@pytest.fixture(scope="module")
def heatmap_args(model_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`--config` (small thumbnails) and `--model`: the slide takes a few seconds once TensorFlow has loaded."""
    import yaml

    config = tmp_path_factory.mktemp("fault_heatmap") / "heatmap.yaml"
    config.write_text(yaml.safe_dump({"reader": {"threads": 2, "batch_size": 64, "prefetch": 2},
                                      "output": {"thumbnail_size": 256, "map_downsample": 16}}))
    return ["--config", str(config), "--model", str(model_run)]


@pytest.fixture(scope="module")
def l3_reference(slide: Path, heatmap_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of an undisturbed heatmap run."""
    out = tmp_path_factory.mktemp("l3_reference")
    proc = run(layer3("heatmap", *heatmap_args, "--slide", str(slide), "--out", str(out)))
    assert_ends(proc, 0)
    return out / STEM


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`mount(size)`: a fresh tmpfs of that size (`5m`, `400k`); unmounted after the test, whatever happens."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def remount_read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True, capture_output=True)


def copy_as(slide: Path, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(slide, folder / name))


# ============================== Layer 1: extract ==============================


@pytest.mark.parametrize("name", HIDDEN_NAMES)
def test_extract_refuses_a_slide_whose_stem_cannot_name_an_output(tmp_path: Path, slide: Path, name: str) -> None:
    hidden = copy_as(slide, tmp_path / "slides", name)
    site = make_site(tmp_path / "site")
    proc = run(layer1("extract", *L1_QUICK, "--slide", str(hidden), "--out", str(site.out)))
    assert_ends(proc, 2, f"slide {hidden}: the name {Path(name).stem!r} cannot name an output")
    assert_after_error(site, assert_stores_finished)
    assert site.outputs() == []
    assert sorted(os.listdir(hidden.parent)) == [name]


@pytest.mark.parametrize("name", HIDDEN_NAMES)
def test_extract_slides_folder_leaves_out_hidden_slides(tmp_path: Path, slide: Path, name: str) -> None:
    folder = tmp_path / "slides"
    copy_as(slide, folder, name)
    copy_as(slide, folder, slide.name)
    site = make_site(tmp_path / "site")
    proc = run(layer1("extract", *L1_QUICK, "--slides", str(folder), "--out", str(site.out)))
    assert_ends(proc, 0)
    assert any("WARNING" in line and name in line for line in proc.stderr.splitlines()), proc.stderr
    assert table_row(proc, STEM)[1] == "done" and "1/1 slides ok" in proc.stdout
    site.assert_untouched()
    site.assert_no_partials()
    assert site.outputs() == [f"{STEM}.h5"]
    assert_stores_finished(site)
    assert sorted(os.listdir(folder)) == sorted([name, slide.name])


def test_extract_second_writer_of_a_store_is_busy(tmp_path: Path, slide: Path, l1_reference: Path,
                                                  commands: Callable[[list[str]], Command]) -> None:
    site = make_site(tmp_path / "site")
    final, lock = site.out / f"{STEM}.h5", site.out / f".{STEM}.h5.lock"
    first = commands(layer1("extract", *L1_DENSE, "--slide", str(slide), "--out", str(site.out)))
    wait_until(lambda: bool(partials(site.out, final.name)), first, "the first writer's partial store")
    os.kill(first.pid, signal.SIGSTOP)  # holds its lock, mid-run, while the second writers try
    one = commands(layer1("extract", *L1_DENSE, "--slide", str(slide), "--out", str(site.out)))
    many = commands(layer1("extract", *L1_DENSE, "--slides", str(slide.parent), "--out", str(site.out)))
    one_done, many_done = one.finish(), many.finish()
    assert_ends(one_done, 2, f"{final}: being written by {_host()}/pid {first.pid}", f"(lock {lock})",
                "if that process is gone, delete the lock file and rerun")
    assert_ends(many_done, 1)
    assert table_row(many_done, STEM)[1] == "busy"
    assert lock_owner(lock) == first.pid  # the second writers left the first one's lock alone
    os.kill(first.pid, signal.SIGCONT)
    assert_ends(first.finish(), 0)
    site.assert_untouched()
    site.assert_no_partials()
    assert site.outputs() == [final.name]
    assert_same_store(final, l1_reference)


def test_extract_takes_over_a_stale_lock(tmp_path: Path, slide: Path) -> None:
    site = make_site(tmp_path / "site")
    write_stale_lock(site.out / f".{STEM}.h5.lock")
    proc = run(layer1("extract", *L1_QUICK, "--slide", str(slide), "--out", str(site.out)))
    assert_ends(proc, 0)
    site.assert_untouched()
    site.assert_no_partials()
    assert site.outputs() == [f"{STEM}.h5"]  # the stale lock is gone with the run's own
    assert_stores_finished(site)


def test_extract_sigkill_then_rerun_equals_a_clean_run(tmp_path: Path, slide: Path, l1_reference: Path,
                                                      commands: Callable[[list[str]], Command]) -> None:
    site = make_site(tmp_path / "site")
    final = site.out / f"{STEM}.h5"
    args = layer1("extract", *L1_DENSE, "--slide", str(slide), "--out", str(site.out))
    killed = commands(args)
    wait_until(lambda: partial_bytes(site.out, final.name) >= 1_000_000, killed, "a partial store of 1 MB")
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.finish().returncode == -signal.SIGKILL
    assert partials(site.out, final.name) and site.locks() == [f".{final.name}.lock"]  # what a kill leaves
    assert not final.exists()
    assert_ends(run(args), 0)
    site.assert_untouched()
    site.assert_no_partials()
    assert site.outputs() == [final.name]  # the dead writer's lock and partial are gone
    assert_same_store(final, l1_reference)


@pytest.mark.parametrize("which", ["--slide", "--slides"])
def test_extract_on_a_full_disk(slide: Path, tmpfs: Callable[[str], Path], which: str) -> None:
    site = make_site(tmpfs("5m"))  # the store is ~13 MB
    final = site.out / f"{STEM}.h5"
    source = slide if which == "--slide" else slide.parent
    proc = run(layer1("extract", *L1_DENSE, which, str(source), "--out", str(site.out)))
    reason = f"output {final}: cannot write (No space left on device)"
    if which == "--slide":
        assert_ends(proc, 2, reason)
    else:  # a multi-slide run reports the slide as failed, with the reason, and goes on
        assert_ends(proc, 1)
        row = table_row(proc, STEM)
        assert row[1] == "failed" and reason in " ".join(row), proc.stdout
    assert_after_error(site, assert_stores_finished)
    assert site.outputs() == []  # no store, no partial, no lock


def test_extract_into_a_read_only_folder(slide: Path, tmpfs: Callable[[str], Path]) -> None:
    point = tmpfs("5m")
    site = make_site(point)
    remount_read_only(point)
    final, lock = site.out / f"{STEM}.h5", site.out / f".{STEM}.h5.lock"
    proc = run(layer1("extract", *L1_QUICK, "--slide", str(slide), "--out", str(site.out)))
    line = assert_ends(proc, 2, "Read-only file system")
    assert str(final) in line or str(lock) in line, line  # names the output or its lock
    assert_after_error(site, assert_stores_finished)
    assert site.outputs() == []


@pytest.mark.parametrize("size", [0, 1_000_000], ids=["as-the-partial-appears", "partial-of-1MB"])
def test_extract_sigterm_mid_run_cleans_up_and_a_rerun_succeeds(
        tmp_path: Path, slide: Path, l1_reference: Path, commands: Callable[[list[str]], Command], size: int) -> None:
    site = make_site(tmp_path / "site")
    final = site.out / f"{STEM}.h5"
    args = layer1("extract", *L1_DENSE, "--slide", str(slide), "--out", str(site.out))
    stopped = commands(args)
    wait_until(lambda: partial_bytes(site.out, final.name) >= size, stopped, f"a partial store of {size} bytes")
    os.kill(stopped.pid, signal.SIGTERM)
    line = assert_ends(stopped.finish(), 128 + signal.SIGTERM)
    assert line.startswith("error: interrupted by SIGTERM;"), line
    assert_after_error(site, assert_stores_finished)
    assert site.outputs() == []  # no store, no partial, no lock
    assert_ends(run(args), 0)
    site.assert_untouched()
    assert site.outputs() == [final.name]
    assert_same_store(final, l1_reference)


def test_extract_sigterm_stops_the_workers_of_a_parallel_run(
        tmp_path: Path, slide: Path, l1_reference: Path, commands: Callable[[list[str]], Command]) -> None:
    folder = tmp_path / "slides"
    names = ["a", "b"]
    for name in names:
        copy_as(slide, folder, f"{name}.tif")
    site = make_site(tmp_path / "site")
    args = layer1("extract", *L1_DENSE, "--slides", str(folder), "--out", str(site.out), "--workers", "2")
    parent = commands(args)
    wait_until(lambda: all(partials(site.out, f"{n}.h5") for n in names), parent, "both workers' partial stores")
    writers = {writer_pid(p) for n in names for p in partials(site.out, f"{n}.h5")}
    below = descendants(parent.pid)
    assert writers <= below, "the partial stores should be written by the parent's workers"
    try:
        os.kill(parent.pid, signal.SIGTERM)
        line = assert_ends(parent.finish(), 128 + signal.SIGTERM)
        assert line.startswith("error: interrupted by SIGTERM;"), line
        assert not [p for p in writers if running(p)], "a worker still runs after its parent ended"
        deadline = time.monotonic() + 30  # helpers (multiprocessing's resource tracker) end once the parent has
        while [p for p in below if running(p)] and time.monotonic() < deadline:
            time.sleep(0.05)
        left = {p: command_line(p) for p in below if running(p)}
        assert not left, f"processes of the stopped run still running: {left}"
    finally:  # a failed run must not leave its workers writing
        for pid in below:
            if running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert_after_error(site, assert_stores_finished)
    assert site.outputs() == []  # no store, no partial, no lock
    rerun = run(args)
    assert_ends(rerun, 0)
    assert "2/2 slides ok" in rerun.stdout
    site.assert_untouched()
    site.assert_no_partials()
    assert site.outputs() == ["a.h5", "b.h5"]
    assert_same_store(site.out / "a.h5", l1_reference)


# ============================== Layer 3: heatmap ==============================


@pytest.mark.parametrize("name", HIDDEN_NAMES)
def test_heatmap_refuses_a_slide_whose_stem_cannot_name_an_output(tmp_path: Path, slide: Path, name: str,
                                                                   heatmap_args: list[str]) -> None:
    # Before the fix, `..tif` replaced OUT itself (deleting the canary inside) and `...tif` OUT's parent.
    hidden = copy_as(slide, tmp_path / "slides", name)
    site = make_site(tmp_path / "site")
    proc = run(layer3("heatmap", *heatmap_args, "--slide", str(hidden), "--out", str(site.out)))
    assert_ends(proc, 2, f"slide {hidden}: the name {Path(name).stem!r} cannot name an output")
    assert_after_error(site, assert_heatmaps_finished)
    assert site.outputs() == []
    assert sorted(os.listdir(hidden.parent)) == [name]


def test_heatmap_slides_folder_leaves_out_hidden_slides(tmp_path: Path, slide: Path,
                                                         heatmap_args: list[str]) -> None:
    # Both hidden names in one folder: a heatmap run costs seconds of TensorFlow start-up.
    folder = tmp_path / "slides"
    for name in [*HIDDEN_NAMES, slide.name]:
        copy_as(slide, folder, name)
    site = make_site(tmp_path / "site")
    proc = run(layer3("heatmap", *heatmap_args, "--slides", str(folder), "--out", str(site.out)))
    assert_ends(proc, 0)
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    for name in HIDDEN_NAMES:
        assert any(re.search(rf"(^|[\s,:]){re.escape(name)}($|[\s,])", line) for line in warnings), proc.stderr
    assert table_row(proc, STEM)[1] == "done" and "1/1 slides ok" in proc.stdout
    site.assert_untouched()
    site.assert_no_partials()
    assert site.outputs() == [STEM]
    assert_heatmaps_finished(site)
    assert sorted(os.listdir(folder)) == sorted([*HIDDEN_NAMES, slide.name])


def test_heatmap_second_writer_of_a_slide_is_busy(tmp_path: Path, slide: Path, heatmap_args: list[str],
                                                  l3_reference: Path,
                                                  commands: Callable[[list[str]], Command]) -> None:
    site = make_site(tmp_path / "site")
    final, lock = site.out / STEM, site.out / f".{STEM}.lock"
    first = commands(layer3("heatmap", *heatmap_args, "--slide", str(slide), "--out", str(site.out)))
    wait_until(lambda: lock_owner(lock) == first.pid, first, "the first writer's lock")
    os.kill(first.pid, signal.SIGSTOP)  # holds its lock, mid-run, while the second writers try
    one = commands(layer3("heatmap", *heatmap_args, "--slide", str(slide), "--out", str(site.out)))
    many = commands(layer3("heatmap", *heatmap_args, "--slides", str(slide.parent), "--out", str(site.out)))
    one_done, many_done = one.finish(), many.finish()
    assert_ends(one_done, 2, f"{final}: being written by {_host()}/pid {first.pid}", f"(lock {lock})",
                "if that process is gone, delete the lock file and rerun")
    assert_ends(many_done, 1)
    assert table_row(many_done, STEM)[1] == "busy"
    assert lock_owner(lock) == first.pid  # the second writers left the first one's lock alone
    os.kill(first.pid, signal.SIGCONT)
    assert_ends(first.finish(), 0)
    site.assert_untouched()
    site.assert_no_partials()
    assert site.outputs() == [STEM]
    assert_heatmaps_finished(site)
    assert_same_probabilities(final, l3_reference)


def test_heatmap_sigkill_then_rerun_equals_a_clean_run(tmp_path: Path, slide: Path, heatmap_args: list[str],
                                                      l3_reference: Path,
                                                      commands: Callable[[list[str]], Command]) -> None:
    site = make_site(tmp_path / "site")
    final = site.out / STEM
    args = layer3("heatmap", *heatmap_args, "--slide", str(slide), "--out", str(site.out))
    killed = commands(args)
    wait_until(lambda: bool(partials(site.out, STEM)), killed, "the partial output folder")
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.finish().returncode == -signal.SIGKILL
    assert partials(site.out, STEM) and site.locks() == [f".{STEM}.lock"]  # what a kill leaves
    assert not final.exists()
    assert_ends(run(args), 0)
    site.assert_untouched()
    site.assert_no_partials()
    assert site.outputs() == [STEM]  # the dead writer's lock and partial are gone
    assert_heatmaps_finished(site)
    assert_same_probabilities(final, l3_reference)


@pytest.mark.parametrize("room", ["half-of-probabilities.h5", "a-quarter-of-the-output"])
def test_heatmap_on_a_full_disk(slide: Path, heatmap_args: list[str], l3_reference: Path,
                                tmpfs: Callable[[str], Path], room: str) -> None:
    # Sized from a finished output: the disk fills up in HDF5 (probabilities.h5, written first) or in the images.
    if room == "half-of-probabilities.h5":
        size = (l3_reference / "probabilities.h5").stat().st_size // 2 + 8192  # + a page each: lock, canary
    else:
        size = sum(p.stat().st_size for p in l3_reference.iterdir()) // 4
    site = make_site(tmpfs(f"{size // 1024}k"))
    final = site.out / STEM
    proc = run(layer3("heatmap", *heatmap_args, "--slide", str(slide), "--out", str(site.out)))
    assert_ends(proc, 2, f"output {final}: cannot write (No space left on device)")
    assert_after_error(site, assert_heatmaps_finished)
    assert site.outputs() == []  # no folder, no partial, no lock


def test_heatmap_into_a_read_only_folder(slide: Path, heatmap_args: list[str],
                                         tmpfs: Callable[[str], Path]) -> None:
    point = tmpfs("5m")
    site = make_site(point)
    remount_read_only(point)
    final, lock = site.out / STEM, site.out / f".{STEM}.lock"
    proc = run(layer3("heatmap", *heatmap_args, "--slide", str(slide), "--out", str(site.out)))
    line = assert_ends(proc, 2, "Read-only file system")
    assert str(final) in line or str(lock) in line, line  # names the output or its lock
    assert_after_error(site, assert_heatmaps_finished)
    assert site.outputs() == []


def test_heatmap_sigterm_mid_run_cleans_up_and_a_rerun_takes_over_a_stale_lock(
        tmp_path: Path, slide: Path, heatmap_args: list[str], l3_reference: Path,
        commands: Callable[[list[str]], Command]) -> None:
    site = make_site(tmp_path / "site")
    final = site.out / STEM
    args = layer3("heatmap", *heatmap_args, "--slide", str(slide), "--out", str(site.out))
    stopped = commands(args)
    wait_until(lambda: bool(partials(site.out, STEM)), stopped, "the partial output folder")
    os.kill(stopped.pid, signal.SIGTERM)
    line = assert_ends(stopped.finish(), 128 + signal.SIGTERM)
    assert line.startswith("error: interrupted by SIGTERM;"), line
    assert_after_error(site, assert_heatmaps_finished)
    assert site.outputs() == []  # no folder, no partial, no lock
    # The rerun also meets a stale lock written by hand (a dead PID on this host), which it takes over silently:
    # one more heatmap run only for that would cost seconds of TensorFlow start-up.
    write_stale_lock(site.out / f".{STEM}.lock")
    assert_ends(run(args), 0)
    site.assert_untouched()
    site.assert_no_partials()
    assert site.outputs() == [STEM]  # the stale lock is gone with the run's own
    assert_heatmaps_finished(site)
    assert_same_probabilities(final, l3_reference)
