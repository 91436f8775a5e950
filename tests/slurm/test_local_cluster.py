"""The local one-node cluster of slurm/local/start.sh runs what the pipeline's sbatch scripts need."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster

pytestmark = pytest.mark.slurm


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\nset -euo pipefail\n" + body)
    return path


def test_batch_job_writes_file_and_completes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = write_script(tmp_path / "job.sh", 'echo "hello from $SLURM_JOB_ID" > result.txt\n')
    job = slurm_cluster.submit(["-J", "camnet-test-write", "-o", "job.out", str(script)], cwd=tmp_path)

    assert slurm_cluster.wait(job, timeout=45) == "COMPLETED"
    assert (tmp_path / "result.txt").read_text() == f"hello from {job}\n"


def test_array_job_with_throttle_runs_every_task_one_at_a_time(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    body = 'start=$(date +%s.%N); sleep 1; echo "$start $(date +%s.%N)" > "task-$SLURM_ARRAY_TASK_ID.txt"\n'
    script = write_script(tmp_path / "array.sh", body)
    args = ["-J", "camnet-test-array", "--array=0-1%1", "-o", "array-%a.out", str(script)]
    job = slurm_cluster.submit(args, cwd=tmp_path)

    assert slurm_cluster.wait(job, timeout=45) == "COMPLETED"
    spans = [tuple(map(float, (tmp_path / f"task-{i}.txt").read_text().split())) for i in (0, 1)]
    (start0, end0), (start1, end1) = spans
    assert end0 <= start1 or end1 <= start0, f"tasks overlapped despite %1: {spans}"


def test_srun_pmix_starts_two_ranks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    body = 'srun --mpi=pmix -n 2 bash -c \'echo "rank=$SLURM_PROCID pmix=${PMIX_RANK:-unset}"\'\n'
    script = write_script(tmp_path / "pmix.sh", body)
    args = ["-J", "camnet-test-pmix", "-n", "2", "-o", "pmix.out", str(script)]
    job = slurm_cluster.submit(args, cwd=tmp_path)

    state = slurm_cluster.wait(job, timeout=45)
    out = (tmp_path / "pmix.out").read_text()
    assert state == "COMPLETED", out
    lines = sorted(line for line in out.splitlines() if line.startswith("rank="))
    assert lines == ["rank=0 pmix=0", "rank=1 pmix=1"], out


def test_failing_job_reports_failed(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = write_script(tmp_path / "fail.sh", "exit 3\n")
    job = slurm_cluster.submit(["-J", "camnet-test-fail", "-o", "fail.out", str(script)], cwd=tmp_path)

    assert slurm_cluster.wait(job, timeout=45) == "FAILED"
    assert "ExitCode=3:0" in slurm_cluster.show_job(job)


def test_jobs_are_bound_to_their_cpus(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # Regression: with task/none a 1-CPU task used both cores when it ran alone, so `%1` timed a different
    # machine than `%2` and the array bench understated the throttle's speed-up. Production clusters bind.
    body = 'grep Cpus_allowed_list /proc/self/status | cut -f2 > "cpus-$SLURM_ARRAY_TASK_ID.txt"; sleep 3\n'
    script = write_script(tmp_path / "bind.sh", body)
    args = ["-J", "camnet-test-bind", "--array=0-1%2", "--cpus-per-task=1", "-o", "bind-%a.out", str(script)]
    job = slurm_cluster.submit(args, cwd=tmp_path)

    assert slurm_cluster.wait(job, timeout=45) == "COMPLETED"
    cpus = [(tmp_path / f"cpus-{i}.txt").read_text().strip() for i in (0, 1)]
    assert all(c.isdigit() for c in cpus), f"a 1-CPU task may run on more than one CPU: {cpus}"
    assert cpus[0] != cpus[1], f"two concurrent 1-CPU tasks share a CPU: {cpus}"
