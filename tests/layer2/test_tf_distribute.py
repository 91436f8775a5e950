"""The tf_distribute engine (MultiWorkerMirroredStrategy) with two CPU workers found through TF_CONFIG: the
guarantees the Horovod engine gives (tests/layer2/test_horovod.py), checked the same way."""

from __future__ import annotations

import json
import signal
import socket
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
    make_cohort,
    read_history,
    submit_train_sbatch,
    write_config,
)

pytestmark = pytest.mark.tf_distribute


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start_workers(cfg: Path, n: int = 2, **env: str) -> list[subprocess.Popen[str]]:
    """`n` workers of one TF_CONFIG cluster on free local ports; their TMPDIR (where ranks other than 0 save) is
    `<config folder>/tmp`."""
    tmp = cfg.parent / "tmp"
    tmp.mkdir(exist_ok=True)
    workers = [f"localhost:{port}" for port in free_ports(n)]
    procs = []
    for rank in range(n):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}})
        procs.append(subprocess.Popen([sys.executable, "-m", "layer2_training", "train", "--config", str(cfg)],
                                      cwd=REPO, env=cli_env(TF_CONFIG=tf_config, TMPDIR=str(tmp), **env), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


def finish(procs: list[subprocess.Popen[str]], timeout: float = 400) -> list[str]:
    outs = []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    failed = [rank for rank, proc in enumerate(procs) if proc.returncode != 0]
    assert not failed, "\n".join(f"--- rank {r}:\n{out[-3000:]}" for r, out in enumerate(outs))

    return outs


def distributed_config(tmp_path: Path, index: Path, name: str, epochs: int = 2, **extra: object) -> tuple[Path, Path]:
    run = tmp_path / name / "run"
    (tmp_path / name).mkdir()
    cfg = base_config(index, run, epochs=epochs, batch_size=4, **{"data.record_sample_ids": True,
                                                                  "schedule.warmup_epochs": 1.0,
                                                                  "distributed.engine": "tf_distribute", **extra})
    return write_config(tmp_path / name / "c.yaml", cfg), run


def test_two_workers_train_disjoint_shards_to_identical_weights(tmp_path: Path, tiny_index: Path) -> None:
    # TensorBoard as by default: its callback runs on rank 0 only, which must not leave the others waiting
    cfg, run = distributed_config(tmp_path, tiny_index, "two", **{"phases.head_epochs": 1, "output.tensorboard": True})
    finish(start_workers(cfg))
    check_two_rank_run(run, tiny_index, "tf_distribute")
    # one history row per epoch, validated each time; the optimiser carried over the head -> fine-tune phase change
    steps = json.loads((run / "environment.json").read_text())["steps_per_epoch"]
    history = read_history(run)
    assert [int(r["iterations"]) for r in history] == [steps, 2 * steps]
    assert all(r["val_loss"] and r["val_auc"] for r in history), history  # validated after every epoch
    sidecar = json.loads((run / "model.json").read_text())
    assert sidecar["framework"]["keras"].split()[0] in ("keras", "tf_keras"), sidecar
    assert (run / "export" / "model.keras").is_file() and list((run / "tensorboard").rglob("events.out.*"))
    assert not list((cfg.parent / "tmp").iterdir()), "rank 1's scratch folder was left behind"


def test_a_preempted_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    index = make_cohort(tmp_path / "cohort", per_class=24)
    epochs = 3
    ref_cfg, ref_run = distributed_config(tmp_path, index, "ref", epochs)
    pre_cfg, pre_run = distributed_config(tmp_path, index, "pre", epochs)
    ref = start_workers(ref_cfg)
    pre = start_workers(pre_cfg)
    deadline = time.monotonic() + 300
    while not (pre_run / "history.csv").exists() and time.monotonic() < deadline:  # the first epoch is done
        time.sleep(0.2)
    time.sleep(0.5)  # into the second epoch: mid-epoch, where the ranks' BatchNorm statistics differ
    for proc in pre:
        proc.send_signal(signal.SIGUSR1)
    outs = finish(pre)
    assert any("preempted at epoch" in out for out in outs), outs[0][-3000:]
    marker = json.loads((pre_run / "preempted.json").read_text())
    assert marker["step"] > 0, marker  # a mid-epoch stop, which exercises the per-rank statistics
    finish(start_workers(pre_cfg))  # the same command resumes
    finish(ref)
    assert json.loads((pre_run / "environment.json").read_text())["resumed_at"] != [0, 0]
    digests = {(run / "sample_ids" / f"weights_rank{r}.txt").read_text() for run in (ref_run, pre_run) for r in (0, 1)}
    assert len(digests) == 1, "the preempted run, or one rank, ended with different weights"
    assert not (pre_run / "preempted.json").exists()


@pytest.mark.slurm
def test_srun_two_workers_through_the_sbatch_script(tmp_path: Path, tiny_index: Path, slurm_cluster) -> None:
    """The real slurm/layer2_train.sbatch: the ranks find each other through SlurmClusterResolver, which builds no
    cluster on CPU-only nodes unless given GPU counts (gpus_per_node=0 crashed it)."""
    cfg, run = distributed_config(tmp_path, tiny_index, "srun")
    log = tmp_path / "job.out"
    env = (f"ALL,CAMNET_ROOT={REPO},PYTHONPATH={REPO},CAMNET_PYTHON={sys.executable},TF_CPP_MIN_LOG_LEVEL=2,"
           "TF_CONFIG=")  # TF_CONFIG empty: under srun, SLURM says where the workers are
    text = finished_log(slurm_cluster, submit_train_sbatch(slurm_cluster, cfg, log, "camnet-l2-tfd", env), log,
                        timeout=400)
    assert "training step exited with status 0" in text, text[-3000:]
    check_two_rank_run(run, tiny_index, "tf_distribute")
    placement = json.loads((run / "environment.json").read_text())["placement"]
    assert [(p["rank"], p["local_rank"]) for p in placement] == [(0, 0), (1, 1)], placement
