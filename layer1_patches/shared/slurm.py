"""Thin edge to SLURM: client commands (sbatch, squeue), array arguments, and the per-task state files.

Each array task records its state in `OUT/.camnet/tasks/<index>.json`; `status` combines those
with the outputs and squeue, so it works without SLURM accounting (sacct) being configured.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from layer1_patches.shared.atomic import write_json_atomic
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "slurm"
LAYER1_SCRIPT = SLURM_DIR / "layer1_extract.sbatch"  # one array task per manifest entry


def state_dir(out: Path) -> Path:
    return Path(out) / ".camnet"


@dataclass(frozen=True)
class TaskState:
    index: int
    slide: str
    state: str  # running, done, failed
    job: str = ""  # SLURM array job id, "" when run by hand
    error: str = ""
    time: float = 0.0


def write_task_state(out: Path, task: TaskState) -> None:
    folder = state_dir(out) / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"{task.index}.json", asdict(task))


def read_task_state(out: Path, index: int) -> TaskState | None:
    path = state_dir(out) / "tasks" / f"{index}.json"
    try:
        return TaskState(**json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError):
        return None


def array_task_index(given: int | None) -> int:
    """The manifest entry an array task runs: `--index` when given, else `$SLURM_ARRAY_TASK_ID`."""
    if given is not None:
        return given
    raw = os.environ.get("SLURM_ARRAY_TASK_ID", "")
    if not raw.isdigit():
        raise CamnetError("--index not given and SLURM_ARRAY_TASK_ID is not set (submit with --array)")
    return int(raw)


def job_id() -> str:
    return os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", ""))


@contextmanager
def recorded_task(out: Path, index: int, slide: str, final: bool = True) -> Iterator[None]:
    """Record an array task's state around its work: `running`, then `done`, or `failed` with the error line.

    Only SLURM rank 0 records `running`/`done` (ranks that split one slide share its state file); any rank
    records `failed`. `final=False` leaves `done` to a later step (a dense shard before its merge).
    """
    lead = os.environ.get("SLURM_PROCID", "0") == "0"
    job = job_id()

    def record(state: str, error: str = "") -> None:
        if lead or state == "failed":
            write_task_state(out, TaskState(index, slide, state, job, error, time.time()))

    record("running")
    try:
        yield
    except CamnetError as err:
        record("failed", str(err))
        raise
    except KeyboardInterrupt as err:  # scancel, a time limit (SIGTERM) or Ctrl-C: the outputs were cleaned up
        record("failed", f"interrupted by {err or 'SIGINT'}; see its log")
        raise
    except BaseException as err:  # a bug, Ctrl-C or SystemExit still marks the task failed: `status` must not wait
        record("failed", f"{type(err).__name__}: {err}")
        raise
    if final:
        record("done")


def array_spec(indices: list[int], throttle: int | None) -> str:
    """`0-9%2` style: ranges where contiguous, so a long resubmission stays a short argument."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    spec = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return f"{spec}%{throttle}" if throttle else spec


def sbatch(args: list[str], cwd: Path) -> str:
    """Submit; the job id. Arguments go to sbatch as a list: nothing is parsed by a shell."""
    if shutil.which("sbatch") is None:
        raise CamnetError("sbatch not found: run on a SLURM login node (or start slurm/local/start.sh)")
    # the jobs' Python is the submitter's (sbatch exports the environment): slurm/common.sh would otherwise take the
    # checkout's .venv, so a pipeline submitted from .venv-modern (TF 2.21) would train and infer in TF 2.15
    env = {**os.environ, "CAMNET_PYTHON": os.environ.get("CAMNET_PYTHON") or sys.executable}
    proc = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise CamnetError(f"sbatch failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def array_sbatch_args(script: Path, manifest_path: Path, manifest: Manifest, indices: list[int],
                      throttle: int | None, extra: list[str]) -> list[str]:
    """sbatch arguments of an array over `indices` of a manifest: logs under OUT/logs, and `--manifest PATH` as
    the script's own arguments (the task's command line, like every pipeline stage's)."""
    logs = Path(manifest.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if "," in str(REPO):  # sbatch --export splits its value on commas
        raise CamnetError(f"{REPO}: a path with a comma cannot be passed to sbatch --export; rename it")
    args = [f"--array={array_spec(indices, throttle)}", f"--output={logs}/%x_%A_%a.out",
            f"--export=ALL,CAMNET_ROOT={REPO}"]
    if manifest.shards > 1:
        args.append(f"--ntasks={manifest.shards}")
    return [*args, *extra, str(script), "--manifest", str(manifest_path)]


SQUEUE_TIMEOUT = 60.0  # seconds; a slurmctld this slow is treated as unreachable
PURGED = "Invalid job id specified"  # squeue -j of one job slurmctld no longer holds (finished, MinJobAge passed)


class QueueUnknown(Exception):
    """squeue could not say which tasks are queued; the message, for the user, says why."""


class _Purged(Exception):
    """squeue refused a job id slurmctld has forgotten: that job has nothing queued."""


def _squeue(job_ids: list[str]) -> str:
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T %r"],
                              capture_output=True, text=True, timeout=SQUEUE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise QueueUnknown(f"squeue timed out after {SQUEUE_TIMEOUT:g} s") from None
    except OSError as err:
        raise QueueUnknown(f"squeue could not run: {err}") from None
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[0]
        if PURGED in said:
            raise _Purged(said)
        raise QueueUnknown(f"squeue failed: {said}")
    return proc.stdout


def queued_tasks(job_ids: list[str]) -> dict[int, str]:
    """Array index -> "STATE REASON" for tasks of these jobs still pending or running.

    The reason matters to users: a task asking for more CPUs than any node has stays PENDING
    (PartitionConfig) forever. A queue squeue cannot read raises `QueueUnknown`: read as empty, it made
    `status --resubmit` submit a second task for a slide still pending.
    """
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return {}  # nothing was submitted: nothing can be queued
    if shutil.which("squeue") is None:
        raise QueueUnknown(f"squeue not found, but jobs {', '.join(ids)} were submitted for this output")
    try:
        text = _squeue(ids)
    except _Purged:
        if len(ids) == 1:
            return {}
        # SLURM 22.05 filters a list itself (purged ids are just absent) and fails only for a single id; a
        # version that refused the whole list for one purged id must not hide the others' queued tasks
        return {i: s for job in ids for i, s in queued_tasks([job]).items()}
    found: dict[int, str] = {}
    for line in text.splitlines():
        ident, _, state = line.partition(" ")
        _, sep, index = ident.partition("_")
        if sep and index.isdigit():
            found[int(index)] = state.strip()
    return found


def record_submission(out: Path, job: str, indices: list[int]) -> None:
    folder = state_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "submissions.jsonl", "a") as f:
        f.write(json.dumps({"job": job, "indices": indices, "time": time.time()}) + "\n")


def submitted_jobs(out: Path) -> list[str]:
    path = state_dir(out) / "submissions.jsonl"
    if not path.is_file():
        return []
    jobs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                jobs.append(str(json.loads(line)["job"]))
            except (ValueError, KeyError, TypeError):
                raise CamnetError(f"{path}: malformed line {n}; cannot tell which jobs were submitted") from None
    return jobs


@dataclass(frozen=True)
class SlideStatus:
    index: int
    slide: str
    status: str  # finished, running, pending, failed, missing, unknown (squeue did not answer)
    detail: str = ""


def cohort_status(out: Path, slides: list[str], finished: list[bool]) -> list[SlideStatus]:
    """Per manifest index: the output decides `finished`; otherwise task state files and squeue.

    When squeue cannot be read, an unfinished slide is `unknown`: a `failed` state file may be that of an
    earlier run whose resubmission is pending, and a `missing` slide may be queued.
    """
    queued: dict[int, str] = {}
    unknown = ""
    if not all(finished):  # a finished cohort needs no squeue
        try:
            queued = queued_tasks(submitted_jobs(out))
        except QueueUnknown as err:
            unknown = str(err)
    result = []
    for index, (slide, done) in enumerate(zip(slides, finished, strict=True)):
        task = read_task_state(out, index)
        if task is not None and task.slide != slide:
            task = None  # written for another slide: the manifest was rewritten (new slides, changed sizes)
        if done:
            result.append(SlideStatus(index, slide, "finished"))
        elif unknown:
            result.append(SlideStatus(index, slide, "unknown", unknown))
        elif index in queued:
            state = queued[index]
            running = state.startswith("RUNNING")
            result.append(SlideStatus(index, slide, "running" if running else "pending", state))
        elif task is not None and task.state == "failed":
            result.append(SlideStatus(index, slide, "failed", task.error))
        elif task is not None and task.state == "running":
            # Started but neither finished nor queued: cancelled, timed out, preempted or the node died.
            result.append(SlideStatus(index, slide, "failed", f"interrupted (job {task.job}); see its log"))
        else:
            result.append(SlideStatus(index, slide, "missing"))
    return result
