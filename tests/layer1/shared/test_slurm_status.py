"""`status` and `status --resubmit` against stand-in `squeue` and `sbatch` executables first on PATH.

The stand-ins answer as SLURM 22.05's clients do; no cluster is needed. The command runs in this process
(`layer1_patches.cli.main`) so that `SQUEUE_TIMEOUT` can be shortened.

The cohort: job 500 ran slides 0-2; slide 1 failed and was resubmitted as job 501, whose task is still pending;
slide 2 is still running in job 500; slide 0 failed and was never resubmitted.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from layer1_patches.cli import main
from layer1_patches.shared import slurm
from layer1_patches.shared.manifest import Manifest, ManifestEntry
from layer1_patches.shared.slurm import TaskState, record_submission, write_task_state
from tests.helpers import assert_one_error

SLIDES = ("/data/s0.svs", "/data/s1.svs", "/data/s2.svs")
QUEUE = {"500": ["500_2 RUNNING None"], "501": ["501_1 PENDING Priority"]}  # what slurmctld still holds
UNREACHABLE = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"


@dataclass(frozen=True)
class Cohort:
    manifest: Path
    out: Path
    bin: Path
    sbatch_calls: Path  # written by the stand-in sbatch: its arguments, one per line


def _tool(folder: Path, name: str, body: str) -> None:
    (folder / name).write_text("#!/bin/bash\n" + body)
    (folder / name).chmod(0o755)


def _squeue(queue: dict[str, list[str]], strict: bool = False) -> str:
    """A stand-in squeue holding `queue`'s jobs. Like 22.05 (src/squeue/opts.c, squeue.c), a single -j id is
    loaded alone and fails once slurmctld has purged it, while a list is filtered (purged ids are just absent);
    `strict` refuses a list naming any purged id, as a version that validated every id would."""
    known = "|".join(queue) or "none"
    tasks = "".join(f"    {job}) printf '%s\\n' {' '.join(repr(t) for t in lines)} ;;\n"
                    for job, lines in queue.items())
    return f"""while [ $# -gt 0 ]; do [ "$1" = -j ] && ids=$2; shift; done
IFS=, read -ra list <<< "$ids"
for id in "${{list[@]}}"; do
  case "$id" in
    {known}) ;;
    *) if [ ${{#list[@]}} -eq 1 ] || [ {int(strict)} = 1 ]; then
         echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1
       fi ;;
  esac
done
for id in "${{list[@]}}"; do
  case "$id" in
{tasks}  esac
done
"""


@pytest.fixture
def cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cohort:
    out = tmp_path / "out"
    out.mkdir()
    manifest = Manifest("c.yaml", str(out), tuple(ManifestEntry(s) for s in SLIDES)).save(out / "manifest.json")
    write_task_state(out, TaskState(0, SLIDES[0], "failed", "500", "slide /data/s0.svs: cannot open", 1.0))
    write_task_state(out, TaskState(1, SLIDES[1], "failed", "500", "slide /data/s1.svs: cannot open", 1.0))
    write_task_state(out, TaskState(2, SLIDES[2], "running", "500", "", 1.0))
    folder = tmp_path / "bin"
    folder.mkdir()
    calls = tmp_path / "sbatch-calls"
    _tool(folder, "sbatch", f"printf '%s\\n' \"$@\" > '{calls}'\necho 502\n")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return Cohort(manifest, out, folder, calls)


def submit_both(c: Cohort) -> None:
    record_submission(c.out, "500", [0, 1, 2])
    record_submission(c.out, "501", [1])


def status(capsys: pytest.CaptureFixture[str], c: Cohort, *extra: str) -> subprocess.CompletedProcess[str]:
    code = main(["status", "--manifest", str(c.manifest), *extra])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["status", *extra], code, captured.out, captured.err)


def rows(proc: subprocess.CompletedProcess[str]) -> dict[int, str]:
    split = [line.split() for line in proc.stdout.splitlines()]
    return {int(words[0]): words[1] for words in split if words and words[0].isdigit()}


def submissions(c: Cohort) -> list[str]:
    return [json.loads(line)["job"] for line in (c.out / ".camnet" / "submissions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("problem", ["exits-1", "times-out", "absent"])
def test_failing_squeue_is_unknown_not_empty_and_resubmit_refuses(cohort: Cohort, problem: str,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 13, item 4): a failing squeue read as "nothing queued" made `status --resubmit` submit
    slide 1 again while its resubmission (job 501) was still pending: two tasks on one slide."""
    if problem == "exits-1":
        _tool(cohort.bin, "squeue", f"echo '{UNREACHABLE}' >&2\nexit 1\n")
        cause = f"squeue failed: {UNREACHABLE}"
    elif problem == "times-out":
        _tool(cohort.bin, "squeue", "exec sleep 30\n")
        monkeypatch.setattr(slurm, "SQUEUE_TIMEOUT", 0.3)
        cause = "squeue timed out after 0.3 s"
    else:
        monkeypatch.setenv("PATH", str(cohort.bin))  # no squeue anywhere (the real one lives in /usr/bin)
        cause = "squeue not found, but jobs 500, 501 were submitted for this output"
    # nothing submitted yet: no question for squeue, so nothing is unknown
    assert rows(status(capsys, cohort)) == {0: "failed", 1: "failed", 2: "failed"}

    submit_both(cohort)
    proc = status(capsys, cohort)
    assert rows(proc) == {0: "unknown", 1: "unknown", 2: "unknown"}, proc.stdout
    assert f"unknown   s1.svs  {cause}" in proc.stdout
    assert "summary: 0 finished, 0 running, 0 pending, 0 failed, 0 missing, 3 unknown" in proc.stdout
    assert proc.returncode == 1  # nothing is known to have failed, but nothing is known to be fine either

    proc = status(capsys, cohort, "--resubmit")
    assert_one_error(proc, str(cohort.manifest), cause, "nothing was resubmitted")
    assert not cohort.sbatch_calls.exists()
    assert submissions(cohort) == ["500", "501"]


@pytest.mark.parametrize("strict", [False, True], ids=["slurm-22.05", "strict-squeue"])
def test_pending_resubmission_is_not_resubmitted_again_when_a_job_was_purged(cohort: Cohort, strict: bool,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: slide 1's task in job 501 is pending while job 500 has been purged from slurmctld. Only
    slide 0 is resubmitted, and a successful resubmission exits 0 (it exited 1 while failed slides existed).
    With a squeue refusing the whole list for the purged id, each job is asked alone."""
    _tool(cohort.bin, "squeue", _squeue({"501": QUEUE["501"]}, strict=strict))
    submit_both(cohort)
    proc = status(capsys, cohort, "--resubmit")
    assert rows(proc) == {0: "failed", 1: "pending", 2: "failed"}, proc.stdout
    assert "pending   s1.svs  PENDING Priority" in proc.stdout and "interrupted (job 500)" in proc.stdout
    assert "resubmitted 2 slides as job 502: indices [0, 2]" in proc.stdout
    assert "--array=0,2" in cohort.sbatch_calls.read_text().splitlines()
    assert submissions(cohort) == ["500", "501", "502"]
    assert proc.returncode == 0, proc.stderr


def test_resubmit_exits_0_when_the_resubmission_succeeded(cohort: Cohort,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: `status --resubmit` exited 1 after resubmitting the failed slides; plain `status` still
    exits 1 while slides have failed. Every job known, none purged: the running and pending tasks stay."""
    _tool(cohort.bin, "squeue", _squeue(QUEUE))
    submit_both(cohort)
    plain = status(capsys, cohort)
    assert rows(plain) == {0: "failed", 1: "pending", 2: "running"} and plain.returncode == 1
    proc = status(capsys, cohort, "--resubmit")
    assert "resubmitted 1 slides as job 502: indices [0]" in proc.stdout
    assert proc.returncode == 0, proc.stderr


def test_jobs_aged_out_of_squeue_are_not_queued_forever_unknown(cohort: Cohort,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Regression guard for the fix: once slurmctld purges a finished job, squeue -j exits 1 with "Invalid job
    id specified". That is "not queued", or status would stay unknown (and --resubmit refused) for good."""
    _tool(cohort.bin, "squeue", _squeue({}))
    record_submission(cohort.out, "500", [0, 1, 2])
    proc = status(capsys, cohort, "--resubmit")
    assert rows(proc) == {0: "failed", 1: "failed", 2: "failed"}, proc.stdout
    assert "resubmitted 3 slides as job 502: indices [0, 1, 2]" in proc.stdout
    assert proc.returncode == 0, proc.stderr
