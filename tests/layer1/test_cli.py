"""The command line as users meet it: exit codes, one error line naming the culprit, no false outputs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from layer1_patches.store import PatchStore
from tests.helpers import assert_one_error

from .conftest import CMU, DATA, REPO, run_cli

RANDOM = str(REPO / "configs" / "layer1" / "random.yaml")


def assert_no_output(out: Path) -> None:
    assert not list(out.glob("*.h5")) if out.exists() else True


def _blank_slide(path: Path, resolution: bool = True) -> Path:
    kwargs = {"resolution": (20000, 20000), "resolutionunit": "CENTIMETER"} if resolution else {}
    tifffile.imwrite(path, np.full((512, 512, 3), 243, np.uint8), tile=(256, 256), photometric="rgb", **kwargs)
    return path


def test_extract_one_slide(tmp_path: Path, cmu_xml: Path) -> None:
    proc = run_cli("extract", "--config", RANDOM, "--slide", str(CMU), "--annotation", str(cmu_xml),
                   "--out", str(tmp_path), "--set", "sampling.random.per_class=10", "--set", "patch_size=64")
    assert proc.returncode == 0, proc.stderr
    assert "CMU-1-Small-Region" in proc.stdout and "1/1 slides ok" in proc.stdout
    with PatchStore(tmp_path / "CMU-1-Small-Region.h5") as store:
        assert len(store) == 20


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda d: d / "missing.svs", ["missing.svs", "no such file"]),
        (lambda _d: DATA / "unopenable.tiff", ["unopenable.tiff", "cannot open"]),
        (lambda _d: DATA / "unreadable.svs", ["unreadable.svs", "cannot read region"]),
        (lambda d: _blank_slide(d / "nompp.tif", resolution=False), ["nompp.tif", "no mpp", "assume_mpp"]),
        (lambda d: _blank_slide(d / "blank.tif"), ["blank.tif", "no tissue found"]),
    ],
    ids=["missing", "unopenable", "unreadable", "no-mpp", "no-tissue"],
)
def test_bad_slides(tmp_path: Path, make, needles: list[str]) -> None:  # type: ignore[no-untyped-def]
    slide = make(tmp_path)
    out = tmp_path / "out"
    proc = run_cli("extract", "--config", RANDOM, "--slide", str(slide), "--out", str(out))
    assert_one_error(proc, *needles)
    assert_no_output(out)
    assert not list(out.glob(".*.partial")) if out.exists() else True


BOMB = ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]><ASAP_Annotations>&c;</ASAP_Annotations>')
OUTSIDE = ('<ASAP_Annotations><Annotations><Annotation Name="far" PartOfGroup="Tumor"><Coordinates>'
           '<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="90000" Y="0"/>'
           '<Coordinate Order="2" X="90000" Y="10"/></Coordinates></Annotation></Annotations></ASAP_Annotations>')


@pytest.mark.parametrize(
    ("text", "needles"),
    [("<ASAP_Annotations><Annot", ["malformed XML"]), (BOMB, ["refused unsafe XML"]),
     (OUTSIDE, ["'far' has coordinate (90000, 0) outside the slide"])],
    ids=["malformed", "entity-bomb", "outside"],
)
def test_bad_annotations(tmp_path: Path, text: str, needles: list[str]) -> None:
    xml = tmp_path / "ann.xml"
    xml.write_text(text)
    out = tmp_path / "out"
    proc = run_cli("extract", "--config", RANDOM, "--slide", str(CMU), "--annotation", str(xml), "--out", str(out))
    assert_one_error(proc, str(xml), *needles)
    assert_no_output(out)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--set", "sampling.mode=grid"], ["sampling.mode", "'grid'"]),
        (["--set", "reader.backend=tifffile"], ["reader.backend", "'tifffile'"]),
        (["--set", "patch_size=-3"], ["patch_size", "below the minimum"]),
        (["--set", "sampling.randm.per_class=3"], ["sampling.randm", "unknown key"]),
        (["--shard", "5/2"], ["--shard '5/2'"]),
        (["--workers", "0", "--slides", str(CMU)], ["--workers 0"]),
    ],
)
def test_bad_config_and_arguments(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    where = [] if "--slides" in args else ["--slide", str(CMU)]
    proc = run_cli("extract", "--config", RANDOM, *where, "--out", str(tmp_path / "out"), *args)
    assert_one_error(proc, *needles)
    assert_no_output(tmp_path / "out")


def test_old_reader_batch_key_is_an_unknown_key(tmp_path: Path) -> None:
    # renamed to reader.batch_size, as in Layer 3; a config written before the rename must not pass silently
    old = tmp_path / "old.yaml"
    old.write_text("patch_size: 64\nreader:\n  threads: 1\n  batch: 8\n")
    proc = run_cli("extract", "--config", str(old), "--slide", str(CMU), "--out", str(tmp_path / "out"))
    assert_one_error(proc, "old.yaml", "config key 'reader.batch': unknown key", "known: backend, batch_size, threads")
    assert_no_output(tmp_path / "out")


def test_missing_config_file(tmp_path: Path) -> None:
    proc = run_cli("extract", "--config", str(tmp_path / "none.yaml"), "--slide", str(CMU), "--out", str(tmp_path))
    assert_one_error(proc, "none.yaml", "cannot read")


def test_unwritable_output_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_cli("extract", "--config", RANDOM, "--slide", str(CMU), "--out", str(blocker / "out"),
                   "--set", "patch_size=64", "--set", "sampling.random.per_class=2")
    assert_one_error(proc, str(blocker / "out"), "cannot create")


def test_many_slides_one_bad_does_not_stop_the_others(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "a.svs").symlink_to(CMU)
    (slides / "b.tiff").symlink_to(DATA / "unopenable.tiff")
    (slides / "c.svs").symlink_to(CMU)
    out = tmp_path / "out"
    proc = run_cli("extract", "--config", RANDOM, "--slides", str(slides), "--out", str(out), "--workers", "2",
                   "--set", "patch_size=64", "--set", "sampling.random.per_class=4")
    assert proc.returncode == 1
    assert "2/3 slides ok" in proc.stdout
    failed = [line for line in proc.stdout.splitlines() if " failed " in line]
    assert len(failed) == 1 and failed[0].startswith("b ") and "cannot open" in failed[0]
    assert sorted(p.name for p in out.glob("*.h5")) == ["a.h5", "c.h5"]


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    args = ["extract", "--config", str(REPO / "configs" / "layer1" / "dense.yaml"), "--slide", str(CMU),
            "--set", "patch_size=16", "--set", "reader.threads=1", "--set", "reader.batch_size=8",
            "--set", "output.codec=gzip", "--set", "output.gzip_level=9"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "layer1_patches", *args, "--out", str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = killed / f".CMU-1-Small-Region.h5.{socket.gethostname().split('.')[0]}-{proc.pid}.partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size > 200_000):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial.exists(), "extraction finished before it could be killed; make it slower"
    assert not (killed / "CMU-1-Small-Region.h5").exists()
    assert (killed / ".CMU-1-Small-Region.h5.lock").exists()  # the killed writer's lock: dead, so taken over
    assert run_cli(*args, "--out", str(killed)).returncode == 0
    # the partial and the lock are gone; the takeover's guard file stays (it holds nothing)
    assert sorted(p.name for p in killed.iterdir()) == [".camnet-lock-guard", "CMU-1-Small-Region.h5"]
    clean = tmp_path / "clean"
    assert run_cli(*args, "--out", str(clean)).returncode == 0
    with PatchStore(killed / "CMU-1-Small-Region.h5") as a, PatchStore(clean / "CMU-1-Small-Region.h5") as b:
        assert len(a) == len(b) > 1000
        assert np.array_equal(a.coords, b.coords) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.read(np.arange(len(a))), b.read(np.arange(len(b))))


def test_layer1_does_not_import_tensorflow() -> None:
    code = ("import sys, layer1_patches.cli, layer1_patches.extract, layer1_patches.index, layer1_patches.runner;"
            "import layer1_patches.cli.synth; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("argv", "wanted"), [
    (["task", "--manifest", "m.json"], ("task",)),
    (["-v", "extract", "--help"], ("extract",)),
    (["--help"], None),
    (["-h", "extract"], None),  # top-level help must list every command
    (["bogus"], None),
    ([], None),
])
def test_only_the_named_command_is_imported(argv: list[str], wanted: tuple[str, ...] | None) -> None:
    from layer1_patches.cli import COMMANDS
    from layer1_patches.shared.cli import _needed

    assert _needed(COMMANDS, argv) == (wanted or COMMANDS)


def test_an_array_task_does_not_import_the_other_commands() -> None:
    """Regression: every task paid for importing all commands (synthetic slides, scikit-image drawing, ...)."""
    code = ("import sys; from layer1_patches.cli import COMMANDS; from layer1_patches.shared.cli import build_parser;"
            "build_parser('layer1_patches', '', COMMANDS, ['status', '--help']);"
            "print(sorted(m for m in sys.modules if m.startswith('layer1_patches.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "['layer1_patches.cli.status']"


def test_hyphenated_command_imports_only_its_module() -> None:
    """Layer 2's `fetch-weights` lives in module `fetch_weights`; it must not import every command (TensorFlow)."""
    from layer1_patches.shared.cli import _needed
    from layer2_training.cli import COMMANDS

    assert _needed(COMMANDS, ["fetch-weights", "--backbone", "resnet50"]) == ("fetch_weights",)


def test_directory_given_as_a_slide_says_it_is_a_directory(tmp_path: Path) -> None:
    # Regression (issue 13): `extract --slide DIR` said "no such file" about a folder that exists.
    (tmp_path / "x.svs").mkdir()
    proc = run_cli("extract", "--config", str(REPO / "configs" / "layer1" / "dense.yaml"), "--slide",
                   str(tmp_path / "x.svs"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: slide {tmp_path / 'x.svs'}: is a directory, not a slide "
                                                "file (a folder of slides goes to --slides)"]


def test_extract_of_two_slides_with_one_stem_fails_naming_both(tmp_path: Path) -> None:
    # Regression (issue 13): a/slide1 and b/slide1 wrote one slide1.h5, the other reported `skipped`, exit 0.
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "slide1.svs").write_bytes(CMU.read_bytes())
    proc = run_cli("extract", "--config", str(REPO / "configs" / "layer1" / "dense.yaml"), "--slides",
                   str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: slides {tmp_path / 'a' / 'slide1.svs'} and {tmp_path / 'b' / 'slide1.svs'} have the same name "
        "'slide1', so they would write one output; rename one or process them into separate output folders")


def test_finished_store_of_another_slide_with_the_same_name_is_an_error_not_a_skip(tmp_path: Path) -> None:
    # Regression (issue 13): the second of two same-named slides, run separately, was `skipped` as finished.
    config = str(REPO / "configs" / "layer1" / "dense.yaml")
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / CMU.name
    twin.write_bytes(CMU.read_bytes())
    assert run_cli("extract", "--config", config, "--slide", str(CMU), "--out", str(tmp_path / "out")).returncode == 0
    proc = run_cli("extract", "--config", config, "--slide", str(twin), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'out' / 'CMU-1-Small-Region.h5'}: finished from slide {CMU.resolve()}, not {twin} (two "
        "slides of one name, or a moved cohort); pass --overwrite to redo it from this slide"]
