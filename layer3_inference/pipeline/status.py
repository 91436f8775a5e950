"""Each stage's state: outputs first (they are the truth), then the per-task state files, squeue and scontrol.

Works without SLURM accounting (sacct): a job SLURM has forgotten is judged by its outputs alone. Stage times
seen in scontrol are kept in OUT/pipeline/timings.json, so the report still has them after SLURM forgets.
When scontrol or squeue cannot be asked (slurmctld down, a timeout), an unfinished stage is `unknown`, not
`failed`: its job may still be queued.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from layer1_patches.shared.atomic import read_json_object, write_json_atomic
from layer1_patches.shared.manifest import Manifest
from layer1_patches.shared.slurm import PURGED, cohort_status
from layer1_patches.shared.units import duration
from layer3_inference.pipeline import stages, stamps
from layer3_inference.pipeline.config import Experiment
from layer3_inference.pipeline.layout import Layout
from layer3_inference.pipeline.stages import STAGES

FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE"})
SCONTROL_TIMEOUT = 30.0  # seconds; past this, the job's state is unknown
ARRAY_STATES = ("finished", "running", "pending", "failed", "missing", "unknown")  # of `cohort_status` rows


@dataclass(frozen=True)
class StageStatus:
    stage: str
    job: str
    state: str  # finished, stale, running, pending, failed, unknown, not submitted, not run, disabled
    detail: str = ""
    why: str = ""  # of a finished stage: why it is stale, or "no stamp" (finished by an older CamNet)

    @property
    def label(self) -> str:
        return f"{self.state} ({self.why})" if self.why else self.state


def read_jobs(layout: Layout) -> dict[str, Any]:
    return read_json_object(layout.jobs)


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """`scontrol show job -o` lines -> one key/value mapping per job or array task."""
    records = []
    for line in text.splitlines():
        fields: dict[str, str] = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep and key not in fields:
                fields[key] = value
        if "JobId" in fields:
            records.append(fields)
    return records


def scontrol_records(job: str) -> tuple[list[dict[str, str]], str]:
    """(the job's records, "") or ([], why scontrol could not say). A job slurmctld has forgotten ("Invalid job
    id specified") has no records and no problem: its outputs decide."""
    if not job:
        return [], ""
    if shutil.which("scontrol") is None:
        return [], f"scontrol not found, but job {job} was submitted"
    try:
        proc = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                              timeout=SCONTROL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return [], f"scontrol timed out after {SCONTROL_TIMEOUT:g} s"
    except OSError as err:
        return [], f"scontrol could not run: {err}"
    if proc.returncode == 0:
        return parse_scontrol(proc.stdout), ""
    said = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[0]
    return [], "" if PURGED in said else f"scontrol failed: {said}"


def scontrol(job: str) -> list[dict[str, str]]:
    return scontrol_records(job)[0]


def _time(value: str | None) -> float | None:
    try:
        return datetime.fromisoformat(value).timestamp() if value else None
    except ValueError:  # "Unknown", "None"
        return None


def job_summary(records: list[dict[str, str]]) -> tuple[str, str]:
    """(state, detail) of a job or array from its records: unfinished first, then failures, else COMPLETED."""
    if not records:
        return "", ""
    states = Counter(r.get("JobState", "?") for r in records)
    for wanted in ("RUNNING", "PENDING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED"):
        if states[wanted]:
            reason = next((r.get("Reason", "") for r in records if r.get("JobState") == wanted), "")
            return wanted, "" if reason in ("None", "") else reason
    bad = [s for s in states if s in FINAL and s != "COMPLETED"]
    if bad:
        return bad[0], ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    # a state SLURM has beyond those above (STOPPED, RESIZING, SIGNALING, ...) is not finished: report it
    return ("COMPLETED", "") if set(states) <= FINAL else (next(s for s in states if s not in FINAL), "")


def job_times(records: list[dict[str, str]]) -> tuple[float, float] | None:
    """(first start, last end) over finished tasks; None while any task is unfinished."""
    if not records or any(r.get("JobState") not in FINAL for r in records):
        return None
    starts = [t for r in records if (t := _time(r.get("StartTime"))) is not None]
    ends = [t for r in records if (t := _time(r.get("EndTime"))) is not None]
    return (min(starts), max(ends)) if starts and ends else None


def _array_detail(exp: Experiment, stage: str, manifest: Manifest | None) -> tuple[bool, str, str]:
    """(every entry finished, per-state counts, the first failed slide's error) of an array stage."""
    if manifest is None:
        return False, "", ""
    done = stages.entries_done(stage, exp, manifest)
    rows = cohort_status(stages.array_output(stage, exp), [e.slide for e in manifest.entries], done)
    counts = Counter(r.status for r in rows)
    text = ", ".join(f"{counts[k]} {k}" for k in ARRAY_STATES if counts[k])
    first_error = next((f"{Path(r.slide).name}: {r.detail}" for r in rows if r.status == "failed"), "")
    return all(done), text, first_error


def stage_status(exp: Experiment) -> list[StageStatus]:
    layout = Layout(exp.out)
    jobs_file = read_jobs(layout)
    jobs: dict[str, str] = jobs_file.get("jobs", {})
    local = jobs_file.get("mode") == "local"
    timings = _read_timings(layout)
    manifest = stages.load_manifest(exp)
    result = []
    for stage in STAGES:
        job = jobs.get(stage, "")
        if not stages.enabled(stage, exp):
            result.append(StageStatus(stage, job, "disabled"))
            continue
        if stage in stages.ARRAY_STAGES:
            done, detail, error = _array_detail(exp, stage, manifest)
        else:
            done, detail, error = stages.finished(stage, exp, manifest), "", ""
        records, unknown = scontrol_records(job) if job and not local else ([], "")
        state, reason = job_summary(records)
        # a queued or running job is about to rewrite its outputs: those of an earlier run are not "finished"
        if state not in ("RUNNING", "PENDING", "CONFIGURING", "COMPLETING") and done:
            if state == "COMPLETED" or (not records and not unknown):  # this job (or an earlier one) made them
                promote_pending(layout.state, stage, job)
            result.append(StageStatus(stage, job, "finished", detail))
            continue
        if local and timings.get(stage, {}).get("status") == "running":
            result.append(local_running(stage, timings[stage], detail, time.time()))
        elif local or not job:
            failed = timings.get(stage, {}).get("status") == "failed"
            label = "failed" if failed else ("not run" if local else "not submitted")
            result.append(StageStatus(stage, job, label, detail))
        elif state in ("RUNNING", "CONFIGURING", "COMPLETING"):
            result.append(StageStatus(stage, job, "running", detail))
        elif state:
            waits = "waiting for a failed stage" if reason == "DependencyNeverSatisfied" else reason
            if state == "PENDING":
                result.append(StageStatus(stage, job, "pending", "; ".join(filter(None, [detail, waits]))))
            else:
                extra = "; ".join(filter(None, [detail, error or reason, f"logs in {layout.logs}"]))
                result.append(StageStatus(stage, job, "failed", f"{state}: {extra}"))
        elif unknown:  # the job may still be queued: "failed" would invite submitting the chain again
            result.append(StageStatus(stage, job, "unknown", "; ".join(filter(None, [detail, unknown]))))
        else:
            result.append(StageStatus(stage, job, "failed", "no outputs and SLURM no longer knows the job"))
    notes = _stamp_notes(exp, manifest)  # after the loop: it may have promoted pending stamps
    return [_noted(r, notes.get(r.stage, "")) if r.state == "finished" else r for r in result]


def local_running(stage: str, timing: dict[str, Any], detail: str, now: float) -> StageStatus:
    """A stage the local runner marked running: running while the runner's process lives, else interrupted."""
    elapsed = duration(now - float(timing.get("start", now)))
    logs = f"log {timing['logs']}" if timing.get("logs") else ""
    if _alive(str(timing.get("host", "")), timing.get("pid")):
        return StageStatus(stage, "", "running", "; ".join(filter(None, [f"for {elapsed}", detail, logs])))
    return StageStatus(stage, "", "not run", "; ".join(filter(None, [
        f"interrupted after {elapsed} (the runner, pid {timing.get('pid')}, is gone): rerun `pipeline run`",
        detail, logs])))


def _alive(host: str, pid: object) -> bool:
    """Is the runner's process alive? Only answerable on its own host: elsewhere (a shared file system) assume so."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(str(pid)), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _stamp_notes(exp: Experiment, manifest: Manifest | None) -> dict[str, str]:
    """Stage -> why its outputs are stale ("" when current, "no stamp" when an older CamNet made them)."""
    if manifest is None:
        return {}
    current = stages.current_stamps(exp, manifest, stages.commands(exp, manifest))
    # as the runners judge it: a pending stamp of outputs completed since it was written is theirs
    recorded = {s: stages.recorded_stamp(s, exp, manifest, stages.finished(s, exp, manifest)) for s in current}
    stale = stamps.stale_reasons(recorded, current)
    return {s: "no stamp" if recorded[s] is None else stale.get(s, "") for s in current}


def _noted(row: StageStatus, why: str) -> StageStatus:
    return replace(row, state="finished" if why in ("", "no stamp") else "stale", why=why)


def promote_pending(state_dir: Path, stage: str, job: str) -> None:
    """A SLURM stage seen finished gets the stamp its submission recorded (see chain.submit). Only the pending
    stamp of this very job: an older submission's never stamps the outputs of a newer one."""
    pending = stamps.read_pending(state_dir, stage)
    if pending is not None and pending[1] == job:
        stamps.write_stamp(state_dir, pending[0])
        stamps.remove_pending(state_dir, stage)


def _read_timings(layout: Layout) -> dict[str, dict[str, Any]]:
    return read_json_object(layout.timings)


def stage_timings(exp: Experiment) -> dict[str, dict[str, Any]]:
    """Stage -> {seconds, start, end, status}: measured locally, or from scontrol (then kept on disk)."""
    layout = Layout(exp.out)
    timings = _read_timings(layout)
    jobs: dict[str, str] = read_jobs(layout).get("jobs", {})
    changed = False
    for stage, job in jobs.items():
        records = scontrol(job)
        span = job_times(records)
        if span is None:
            continue
        state, _ = job_summary(records)
        timings[stage] = {"status": "done" if state == "COMPLETED" else state.lower(),
                          "seconds": round(span[1] - span[0], 1), "start": span[0], "end": span[1], "job": job}
        changed = True
    if changed and layout.state.is_dir():
        write_json_atomic(layout.timings, timings)
    return timings


def format_status(rows: list[StageStatus]) -> str:
    lines = [f"{'stage':9s} {'job':>8s}  {'state':13s} detail"]
    for r in rows:
        lines.append(f"{r.stage:9s} {r.job or '-':>8s}  {r.label:13s} {r.detail}".rstrip())
    counts = Counter(r.state for r in rows)
    lines.append("summary: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
