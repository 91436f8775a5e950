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


def _finished_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **index: object) -> Path:
    """An experiment the local runner finished, with every stage stubbed (tests/pipeline/fakestages.py)."""
    from layer1_patches.synth import write_cohort
    from layer3_inference.pipeline import chain

    from .fakestages import FakeStages

    slides = tmp_path / "slides"
    if not slides.is_dir():
        write_cohort(slides, 2, 512, seed=7, tumour_fraction=0.3)
    cfg = write_experiment(tmp_path / "exp.yaml", name="st", slides=[str(slides)], annotations=str(slides),
                           out=str(tmp_path / "out"), index={"fractions": {"train": 0.5, "val": 0.5}, **index},
                           layer2={"config": "configs/layer2/mobilenetv2_cpu.yaml", "overrides": ["epochs=1"]})
    monkeypatch.setattr(chain, "_run_module", FakeStages())
    return cfg


def test_status_names_why_a_stage_is_stale_and_the_stages_below_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from layer3_inference.pipeline import chain

    cfg = _finished_experiment(tmp_path, monkeypatch)
    chain.run_local(load_experiment(cfg), echo=lambda _: None)
    assert {r.label for r in stage_status(load_experiment(cfg))} == {"finished"}
    cfg = _finished_experiment(tmp_path, monkeypatch, seed=3)
    rows = {r.stage: r for r in stage_status(load_experiment(cfg))}
    assert rows["layer1"].label == "finished" and rows["index"].label == "stale (index.seed changed)"
    assert {rows[s].label for s in stages.STAGES[2:]} == {"stale (upstream index changed)"}
    line = next(x for x in format_status(list(rows.values())).splitlines() if x.startswith("index "))
    assert line.split()[1:] == ["-", "stale", "(index.seed", "changed)"]


def test_status_of_stages_finished_without_stamp_and_of_a_completed_slurm_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from layer3_inference.pipeline import chain, stamps, status

    cfg = _finished_experiment(tmp_path, monkeypatch)
    chain.run_local(load_experiment(cfg), echo=lambda _: None)
    state = Layout(tmp_path / "out").state
    index = stamps.read_stamp(state, "index")
    assert index is not None
    for stage in stages.STAGES:
        stamps.remove_stamp(state, stage)
    rows = {r.stage: r for r in stage_status(load_experiment(cfg))}
    assert {r.label for r in rows.values()} == {"finished (no stamp)"}  # an older CamNet's: current, resumable
    # SLURM: the submission's pending stamp becomes the stage's stamp when status sees its very job completed
    write_json_atomic(Layout(tmp_path / "out").jobs, {"mode": "slurm", "jobs": {"index": "42", "layer2": "43"}})
    stamps.write_pending(state, index, "42")
    stamps.write_pending(state, index, "41")  # an earlier submission's: replaced, never stamps the outputs
    stamps.write_pending(state, index, "42")
    done = [{"JobId": "42", "JobState": "COMPLETED"}]
    monkeypatch.setattr(status, "scontrol_records", lambda job: (done if job == "42" else [], ""))
    rows = {r.stage: r for r in stage_status(load_experiment(cfg))}
    assert rows["index"].label == "finished" and rows["layer2"].label == "finished (no stamp)"
    recorded = stamps.read_stamp(state, "index")
    assert recorded is not None and recorded.hash == index.hash and stamps.read_pending(state, "index") is None
    stamps.remove_stamp(state, "index")
    stamps.write_pending(state, index, "41")  # the job of another submission: not this stage's outputs
    assert {r.stage: r for r in stage_status(load_experiment(cfg))}["index"].label == "finished (no stamp)"


def test_a_running_local_stage_was_shown_as_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 16): `pipeline status` during a local run showed the running stage as `not run`."""
    import socket
    import time

    from layer3_inference.pipeline import chain, status

    from .fakestages import FakeStages

    seen: list[StageStatus] = []
    cfg = _finished_experiment(tmp_path, monkeypatch)

    def look_while_running(argv: list[str], log: Path) -> None:
        if argv[:2] == ["layer2_training", "train"]:  # status asked from another shell while Layer 2 runs
            seen.extend(r for r in stage_status(load_experiment(cfg)) if r.stage == "layer2")
        FakeStages.__call__(fake, argv, log)

    fake = FakeStages()
    monkeypatch.setattr(chain, "_run_module", look_while_running)
    chain.run_local(load_experiment(cfg), echo=lambda _: None)
    assert [r.state for r in seen] == ["running"]
    assert seen[0].detail.startswith("for 0.") and f"log {tmp_path / 'out' / 'pipeline' / 'logs'}" in seen[0].detail
    # a runner that died (its pid gone on this host) left the stage interrupted, not running
    timing = {"status": "running", "start": time.time() - 200, "host": socket.gethostname(), "pid": 2**22 + 7,
              "logs": "x.log"}
    row = status.local_running("layer2", timing, "", time.time())
    assert row.state == "not run" and row.detail.startswith("interrupted after 3 min 20 s")
    alive = status.local_running("layer2", {**timing, "pid": os.getpid()}, "", time.time())
    assert alive.state == "running" and alive.detail == "for 3 min 20 s; log x.log"


def test_status_showed_a_finished_slurm_stage_as_unstamped_when_its_job_was_not_the_last_one_listed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # review of issue 16: only a pending stamp of the very job in jobs.json was promoted; outputs completed after
    # their submission (jobs.json since rewritten, or SLURM's record gone) stayed "no stamp", hence never stale
    import time

    from layer3_inference.pipeline import chain, stamps

    cfg = _finished_experiment(tmp_path, monkeypatch)
    chain.run_local(load_experiment(cfg), echo=lambda _: None)
    state = Layout(tmp_path / "out").state
    submitted = time.time() - 100
    for stage in stages.STAGES:
        stamp = stamps.read_stamp(state, stage)
        assert stamp is not None
        stamps.remove_stamp(state, stage)
        os.utime(stamps.write_pending(state, stamp, "7"), (submitted, submitted))
    rows = {r.stage: r for r in stage_status(load_experiment(_finished_experiment(tmp_path, monkeypatch, seed=3)))}
    assert rows["layer1"].label == "finished" and rows["index"].label == "stale (index.seed changed)"
