"""`layer3_inference/pipeline/status.py` on hand-written `scontrol show job -o` output (Slurm 22.05 layout).

No SLURM is needed: the parsing and the state/time rules are pure functions of the text, and `stage_status`
runs against stand-in `scontrol` and `squeue` executables first on PATH.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest

from layer1_patches.shared.atomic import write_json_atomic
from layer1_patches.shared.slurm import record_submission
from layer3_inference.pipeline import stages
from layer3_inference.pipeline.config import load_experiment
from layer3_inference.pipeline.layout import Layout
from layer3_inference.pipeline.status import (
    StageStatus,
    format_status,
    job_summary,
    job_times,
    parse_scontrol,
    stage_status,
)

from .conftest import write_experiment

USER = "UserId=camnet(1000) GroupId=camnet(1000) MCS_label=N/A Priority=4294901757 Nice=0 Account=(null) QOS=(null)"
TAIL = ("Partition=debug AllocNode:Sid=head:4242 ReqNodeList=(null) ExcNodeList=(null) NumNodes=1 NumCPUs=1 "
        "NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=1G,node=1,billing=1 Socks/Node=* "
        "NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=1G MinTmpDiskNode=0 Features=(null) "
        "OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/work/out/pipeline/layer1.sbatch "
        "WorkDir=/work StdErr=/work/out/logs/layer1-%A_%a.err StdIn=/dev/null StdOut=/work/out/logs/layer1-%A_%a.out "
        "Power=")


def _task(job: int, array: int, task: str, state: str, reason: str, start: str, end: str, name: str = "layer1",
          dependency: str = "(null)") -> str:
    return (f"JobId={job} ArrayJobId={array} ArrayTaskId={task} JobName=camnet-{name} {USER} JobState={state} "
            f"Reason={reason} Dependency={dependency} Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 "
            f"RunTime=00:00:05 TimeLimit=01:00:00 TimeMin=N/A SubmitTime=2024-05-01T10:00:00 "
            f"EligibleTime=2024-05-01T10:00:00 AccrueTime=Unknown StartTime={start} EndTime={end} Deadline=N/A "
            f"SuspendTime=None SecsPreSuspend=0 LastSchedEval=2024-05-01T10:00:00 Scheduler=Main {TAIL}")


ARRAY = "\n".join([
    _task(11, 10, "1", "COMPLETED", "None", "2024-05-01T10:00:03", "2024-05-01T10:00:10"),
    _task(10, 10, "0", "COMPLETED", "None", "2024-05-01T10:00:01", "2024-05-01T10:00:06"),
    _task(12, 10, "2", "FAILED", "NonZeroExitCode", "2024-05-01T10:00:02", "2024-05-01T10:00:04"),
    "",
])
PENDING = (f"JobId=20 JobName=camnet-train {USER} JobState=PENDING Reason=Dependency "
           f"Dependency=afterok:10_*(unfulfilled) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 "
           f"RunTime=00:00:00 TimeLimit=01:00:00 TimeMin=N/A SubmitTime=2024-05-01T10:00:00 "
           f"EligibleTime=Unknown AccrueTime=Unknown StartTime=Unknown EndTime=Unknown Deadline=N/A "
           f"SuspendTime=None SecsPreSuspend=0 LastSchedEval=2024-05-01T10:00:00 Scheduler=Main {TAIL}\n")


def _rec(state: str, reason: str = "None", start: str = "Unknown", end: str = "Unknown") -> dict[str, str]:
    return {"JobId": "1", "JobState": state, "Reason": reason, "StartTime": start, "EndTime": end}


# --- parse_scontrol ---------------------------------------------------------------------------------------


def test_parse_array_tasks_one_record_each() -> None:
    records = parse_scontrol(ARRAY)
    assert [(r["JobId"], r["ArrayJobId"], r["ArrayTaskId"], r["JobState"]) for r in records] == [
        ("11", "10", "1", "COMPLETED"), ("10", "10", "0", "COMPLETED"), ("12", "10", "2", "FAILED")]
    first = records[0]
    assert first["Reason"] == "None"
    assert first["StartTime"] == "2024-05-01T10:00:03" and first["EndTime"] == "2024-05-01T10:00:10"
    assert first["TRES"] == "cpu=1,mem=1G,node=1,billing=1"  # split at the first '=' only
    assert first["UserId"] == "camnet(1000)"
    assert first["StdErr"] == "/work/out/logs/layer1-%A_%a.err"
    assert first["Power"] == ""


def test_parse_pending_job_waiting_for_a_dependency() -> None:
    (record,) = parse_scontrol(PENDING)
    assert record["JobId"] == "20"
    assert record["JobState"] == "PENDING" and record["Reason"] == "Dependency"
    assert record["Dependency"] == "afterok:10_*(unfulfilled)"
    assert record["StartTime"] == "Unknown" and record["EndTime"] == "Unknown"


def test_parse_ignores_blank_lines_and_lines_without_a_job_id() -> None:
    text = "\n\nslurm_load_jobs error: Invalid job id specified\nNo=JobId here\n" + PENDING + "\n"
    assert [r["JobId"] for r in parse_scontrol(text)] == ["20"]
    assert parse_scontrol("") == []


# --- job_summary ------------------------------------------------------------------------------------------


def test_summary_running_wins_over_failures_and_completions() -> None:
    records = [_rec("COMPLETED"), _rec("FAILED", "NonZeroExitCode"), _rec("RUNNING"), _rec("PENDING", "Priority")]
    assert job_summary(records) == ("RUNNING", "")


def test_summary_pending_reports_its_reason() -> None:
    assert job_summary(parse_scontrol(PENDING)) == ("PENDING", "Dependency")
    assert job_summary([_rec("COMPLETED"), _rec("PENDING", "DependencyNeverSatisfied")]) == (
        "PENDING", "DependencyNeverSatisfied")


def test_summary_failure_counts_every_state() -> None:
    assert job_summary(parse_scontrol(ARRAY)) == ("FAILED", "2 COMPLETED, 1 FAILED")
    state, detail = job_summary([_rec("TIMEOUT"), _rec("COMPLETED"), _rec("COMPLETED")])
    assert (state, detail) == ("TIMEOUT", "2 COMPLETED, 1 TIMEOUT")


def test_summary_all_completed() -> None:
    assert job_summary([_rec("COMPLETED")] * 3) == ("COMPLETED", "")


def test_summary_of_no_records_is_empty() -> None:
    assert job_summary([]) == ("", "")


def test_summary_unfinished_unlisted_state_is_not_reported_completed() -> None:
    state, _ = job_summary([_rec("COMPLETED"), _rec("STOPPED")])
    assert state != "COMPLETED"


# --- job_times --------------------------------------------------------------------------------------------


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_times_first_start_to_last_end_over_the_array() -> None:
    span = job_times(parse_scontrol(ARRAY))
    assert span == (_ts("2024-05-01T10:00:01"), _ts("2024-05-01T10:00:10"))
    assert span is not None and span[1] - span[0] == pytest.approx(9.0)


def test_times_none_while_any_task_is_unfinished() -> None:
    done = _rec("COMPLETED", start="2024-05-01T10:00:01", end="2024-05-01T10:00:06")
    assert job_times([done, _rec("RUNNING", start="2024-05-01T10:00:02")]) is None
    assert job_times(parse_scontrol(PENDING)) is None
    assert job_times([]) is None


def test_times_skip_unknown_times() -> None:
    cancelled_before_start = _rec("CANCELLED", start="Unknown", end="2024-05-01T10:00:20")
    done = _rec("COMPLETED", start="2024-05-01T10:00:05", end="2024-05-01T10:00:15")
    assert job_times([cancelled_before_start, done]) == (_ts("2024-05-01T10:00:05"), _ts("2024-05-01T10:00:20"))
    assert job_times([_rec("CANCELLED", start="Unknown", end="None")]) is None


# --- format_status ----------------------------------------------------------------------------------------


def test_format_status_table() -> None:
    rows = [StageStatus("layer1", "10", "finished", "3 finished"),
            StageStatus("index", "11", "finished"),
            StageStatus("train", "20", "pending", "Dependency"),
            StageStatus("heatmap", "", "not submitted")]
    assert format_status(rows) == "\n".join([
        "stage          job  state         detail",
        "layer1          10  finished      3 finished",
        "index           11  finished",
        "train           20  pending       Dependency",
        "heatmap          -  not submitted",
        "summary: 2 finished, 1 pending, 1 not submitted",
    ])


# --- stage_status when SLURM does not answer ---------------------------------------------------------------


def test_unreachable_slurm_makes_unfinished_stages_unknown_not_failed(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 13, item 4): a failing scontrol/squeue read as "SLURM no longer knows the job" reported
    a queued chain as failed (and `pipeline demo` gave up on it). A job slurmctld has purged still is judged by
    its outputs alone."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("a.svs", "b.svs"):
        (slides / name).write_bytes(b"not opened by status")
    exp = load_experiment(write_experiment(tmp_path / "exp.yaml", name="st", slides=[str(slides)],
                                           out=str(tmp_path / "out")))
    stages.write_manifests(exp)
    layout = Layout(exp.out)
    write_json_atomic(layout.jobs, {"mode": "slurm", "jobs": {"layer1": "500", "index": "501"}})
    record_submission(layout.patches, "500", [0, 1])
    tools = tmp_path / "bin"
    tools.mkdir()
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")

    def answer(line: str) -> None:
        for name in ("scontrol", "squeue"):
            (tools / name).write_text(f"#!/bin/bash\necho '{line}' >&2\nexit 1\n")
            (tools / name).chmod(0o755)

    answer("slurm_load_jobs error: Unable to contact slurm controller (connect failure)")
    rows = {r.stage: r for r in stage_status(exp)}
    cause = "scontrol failed: slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
    assert (rows["layer1"].state, rows["layer1"].detail) == ("unknown", f"2 unknown; {cause}")
    assert (rows["index"].state, rows["index"].detail) == ("unknown", cause)
    assert rows["layer2"].state == "not submitted"

    answer("slurm_load_jobs error: Invalid job id specified")
    rows = {r.stage: r for r in stage_status(exp)}
    assert (rows["layer1"].state, rows["index"].state) == ("failed", "failed")
    assert rows["layer1"].detail == "no outputs and SLURM no longer knows the job"
