"""Two Horovod ranks on CPU: identical final weights, disjoint epoch shares that cover the split."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.layer2.conftest import (
    REPO,
    base_config,
    check_two_rank_run,
    cli_env,
    finished_log,
    read_history,
    submit_train_sbatch,
    write_config,
)

pytestmark = pytest.mark.horovod
SBATCH_ENV = f"ALL,CAMNET_ROOT={REPO},PYTHONPATH={REPO},TF_CPP_MIN_LOG_LEVEL=2"


def horovodrun() -> str:
    path = Path(sys.executable).parent / "horovodrun"
    found = str(path) if path.exists() else shutil.which("horovodrun")
    if found is None:
        pytest.skip("horovodrun not installed")
    return found


def tiny_distributed_config(tmp_path: Path, index: Path, run: Path) -> Path:
    cfg = base_config(index, run, epochs=2, batch_size=4, **{"data.record_sample_ids": True,
                                                             "schedule.warmup_epochs": 1.0})
    return write_config(tmp_path / "c.yaml", cfg)


def test_horovodrun_two_ranks(tmp_path: Path, tiny_index: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_distributed_config(tmp_path, tiny_index, run)
    command = [horovodrun(), "-np", "2", "--gloo", sys.executable, "-m", "layer2_training", "train",
               "--config", str(cfg)]
    # as slurm/layer2_train.sbatch on CPU: Horovod's default 1 ms negotiation cycle starves 2 ranks on 2 cores
    proc = subprocess.run(command, cwd=REPO, env=cli_env(HOROVOD_CYCLE_TIME="5"), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_two_rank_run(run, tiny_index, "horovod")


def test_the_optimiser_state_carries_over_a_phase_change_on_two_ranks(tmp_path: Path, tiny_index: Path) -> None:
    """Regression: Horovod's DistributedOptimizer is a new optimiser (iterations 0, no Adam moments); wrapped at
    every `compile`, the head -> fine-tune phase change (and a resumed partial epoch) restarted the learning-rate
    schedule on several ranks, never on one."""
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", base_config(tiny_index, run, epochs=2, batch_size=4,
                                                        **{"phases.head_epochs": 1}))
    command = [horovodrun(), "-np", "2", "--gloo", sys.executable, "-m", "layer2_training", "train",
               "--config", str(cfg)]
    proc = subprocess.run(command, cwd=REPO, env=cli_env(HOROVOD_CYCLE_TIME="5"), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = json.loads((run / "environment.json").read_text())["steps_per_epoch"]
    assert [int(r["iterations"]) for r in read_history(run)] == [steps, 2 * steps]


@pytest.mark.slurm
def test_srun_two_ranks(tmp_path: Path, tiny_index: Path, slurm_cluster) -> None:
    """The real slurm/layer2_train.sbatch, shrunk to 2 CPU ranks by command-line options."""
    run = tmp_path / "run"
    cfg = tiny_distributed_config(tmp_path, tiny_index, run)
    log = tmp_path / "job.out"
    job = submit_train_sbatch(slurm_cluster, cfg, log, "camnet-l2-test", SBATCH_ENV)
    text = finished_log(slurm_cluster, job, log, timeout=300)
    assert "CPU-only allocation" in text and "training step exited with status 0" in text, text[-3000:]
    check_two_rank_run(run, tiny_index, "horovod")


@pytest.mark.slurm
def test_sbatch_usr1_reaches_the_ranks_which_save_before_the_requeue(tmp_path: Path, tiny_index: Path,
                                                                     slurm_cluster) -> None:
    """Regression: the script signalled a background subshell, not srun, so USR1 never reached training."""
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", base_config(tiny_index, run, epochs=200, batch_size=4))
    log = tmp_path / "job.out"
    job = submit_train_sbatch(slurm_cluster, cfg, log, "camnet-l2-usr1", SBATCH_ENV)
    try:
        deadline = time.monotonic() + 240
        while not (run / "history.csv").exists() and time.monotonic() < deadline:  # an epoch has finished
            time.sleep(1)
        slurm_cluster.run(["scancel", "--batch", "--signal=USR1", job])
        while "requeueing job" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        slurm_cluster.run(["scancel", job])  # the requeued run itself is the resume tests' business
    text = log.read_text()
    assert "USR1: asking the ranks to checkpoint and stop" in text, text[-3000:]
    assert "training step exited with status 0" in text and "checkpoint saved; requeueing job" in text, text[-3000:]
    assert (run / "preempted.json").is_file()
