"""Thin edge to SLURM's client commands (sbatch, squeue) and to the per-task state files.

Each array task records its state in `OUT/.camnet/tasks/<index>.json`; `status` combines those
with the outputs and squeue, so it works without SLURM accounting (sacct) being configured.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from layer1_patches.atomic import write_json_atomic
from layer1_patches.errors import CamnetError

REPO = Path(__file__).resolve().parents[1]
SBATCH_SCRIPT = REPO / "slurm" / "layer1_extract.sbatch"


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
    proc = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise CamnetError(f"sbatch failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def queued_tasks(job_ids: list[str]) -> dict[int, str]:
    """Array index -> "STATE REASON" for tasks of these jobs still pending or running.

    The reason matters to users: a task asking for more CPUs than any node has stays PENDING
    (PartitionConfig) forever.
    """
    if not job_ids or shutil.which("squeue") is None:
        return {}
    proc = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T %r"],
                          capture_output=True, text=True, timeout=60)
    found: dict[int, str] = {}
    for line in proc.stdout.splitlines():
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
    return [json.loads(line)["job"] for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class SlideStatus:
    index: int
    slide: str
    status: str  # finished, running, pending, failed, missing
    detail: str = ""


def cohort_status(out: Path, slides: list[str], finished: list[bool]) -> list[SlideStatus]:
    """Per manifest index: the output decides `finished`; otherwise task state files and squeue."""
    queued = queued_tasks(submitted_jobs(out))
    result = []
    for index, (slide, done) in enumerate(zip(slides, finished, strict=True)):
        task = read_task_state(out, index)
        if task is not None and task.slide != slide:
            task = None  # written for another slide: the manifest was rewritten (new slides, changed sizes)
        if done:
            result.append(SlideStatus(index, slide, "finished"))
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
