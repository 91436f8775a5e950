"""The sbatch scripts across nodes, on the multi-node test cluster of `slurm/local/start.sh --nodes N` (issue 19):
what differs between hosts (rank placement, local_rank, rendezvous, hostnames, per-node spool and TmpFS, rank 0
writing alone) checked against one host's results."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from layer1_patches.store import PatchStore
from tests.conftest import MULTINODE_NODES, REPO, SlurmCluster, node_names, subprocess_env
from tests.layer2.conftest import base_config, check_two_rank_run, make_cohort, write_config

pytestmark = pytest.mark.multinode
CMU = REPO / "tests" / "data" / "CMU-1-Small-Region.svs"
ENV = f"ALL,CAMNET_ROOT={REPO},PYTHONPATH={REPO},TF_CPP_MIN_LOG_LEVEL=2"
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").is_file() else sys.executable


def batch_hosts(cluster: SlurmCluster, job: str) -> list[str]:
    """The node each job (or array task) ran its batch script on, in task order."""
    return re.findall(r"\bBatchHost=(\S+)", cluster.show_job(job))


def log_of(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def test_the_nodes_are_separate_hosts_that_mpi_and_horovod_span(multinode_cluster: SlurmCluster,
                                                                 slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    assert node_names(multinode_cluster) == [f"n{k}" for k in range(1, MULTINODE_NODES + 1)]
    assert node_names(slurm_cluster) == ["localhost"]  # the one-node cluster runs beside it
    probe = ("import socket; from mpi4py import MPI; import horovod.tensorflow as hvd, tensorflow as tf;"
             "c = MPI.COMM_WORLD;"
             "total = c.allreduce(c.Get_rank() + 1); hvd.init();"
             "s = float(hvd.allreduce(tf.constant(float(hvd.rank() + 1)), op=hvd.Sum));"
             "print('rank', c.Get_rank(), c.Get_size(), socket.gethostname(), total, hvd.rank(), hvd.size(),"
             "hvd.local_rank(), hvd.cross_rank(), s, flush=True)")
    script = tmp_path / "probe.sh"
    script.write_text("#!/bin/bash\nset -euo pipefail\nexport OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_pml=ob1 "
                      f"OMPI_MCA_btl=self,vader,tcp\nsrun --mpi=pmix {PY} -c \"{probe}\"\n")
    n = MULTINODE_NODES
    log = tmp_path / "probe.out"
    job = multinode_cluster.submit([f"--nodes={n}", f"--ntasks={n}", "--cpus-per-task=1", f"--output={log}",
                                    f"--export={ENV}", str(script)], cwd=tmp_path)
    assert multinode_cluster.wait(job, timeout=120) == "COMPLETED", log_of(log)
    rows = sorted(line.split()[1:] for line in log_of(log).splitlines() if line.startswith("rank "))
    total, hvd_sum = str(n * (n + 1) // 2), f"{float(n * (n + 1) // 2)}"
    # one rank per host, each its host's local rank 0, MPI and Horovod (over MPI) agreeing on the world
    assert rows == [[str(r), str(n), f"n{r + 1}", total, str(r), str(n), "0", str(r), hvd_sum] for r in range(n)], \
        log_of(log)


def test_start_refuses_a_second_cluster_shape_in_the_same_state_dir(multinode_cluster: SlurmCluster) -> None:
    state = multinode_cluster.conf.parent
    proc = subprocess.run(["bash", str(REPO / "slurm" / "local" / "start.sh"), "--nodes", "2", str(state)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith(f"start.sh: error: {state} runs a cluster of nodes"), \
        proc.stderr
    bad = subprocess.run(["bash", str(REPO / "slurm" / "local" / "start.sh"), "--nodes", "x"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "--nodes: expected a number of nodes from 1 to 99, got 'x'" in bad.stderr


def test_layer1_array_tasks_on_different_nodes_equal_a_local_run(multinode_cluster: SlurmCluster,
                                                                 tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("a.svs", "b.svs"):
        shutil.copy(CMU, slides / name)
    out, settings = tmp_path / "out", ["--set", "patch_size=64"]
    submit = subprocess.run([sys.executable, "-m", "layer1_patches", "submit", "--config", "configs/layer1/dense.yaml",
                             "--slides", str(slides), "--out", str(out), "--sbatch-arg=--exclusive", *settings],
                            cwd=REPO, env=multinode_cluster.env(), capture_output=True, text=True, timeout=120)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().splitlines()[-1]
    assert multinode_cluster.wait(job, timeout=240) == "COMPLETED", [log_of(p) for p in (out / "logs").glob("*")]
    hosts = batch_hosts(multinode_cluster, job)
    assert len(hosts) == 2 and len(set(hosts)) == 2, hosts  # --exclusive: one task per node
    local = subprocess.run([sys.executable, "-m", "layer1_patches", "extract", "--config", "configs/layer1/dense.yaml",
                            "--slide", str(slides / "a.svs"), "--out", str(tmp_path / "local"), *settings],
                           cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr
    for name in ("a.h5", "b.h5"):
        with PatchStore(out / name) as a, PatchStore(tmp_path / "local" / "a.h5") as b:
            assert len(a) == len(b) > 100
            for field in ("coords", "labels", "tumour_fraction", "tissue_fraction"):
                assert np.array_equal(getattr(a, field), getattr(b, field)), (name, field)
            assert np.array_equal(a.read(np.arange(len(a))), b.read(np.arange(len(b)))), name
            assert a.attrs["counts"] == b.attrs["counts"] and a.attrs["reader"] == b.attrs["reader"]


def layer2_config(tmp_path: Path, name: str, index: Path, epochs: int) -> tuple[Path, Path]:
    run = tmp_path / name / "run"
    cfg = base_config(index, run, epochs=epochs, batch_size=4, **{"data.record_sample_ids": True,
                                                                  "schedule.warmup_epochs": 1.0})
    (tmp_path / name).mkdir()
    return write_config(tmp_path / name / "c.yaml", cfg), run


def submit_training(cluster: SlurmCluster, cfg: Path, log: Path, *extra: str) -> str:
    # CPU-only, one rank on each of two nodes; --time keeps the script's own USR1 (300 s before it) out of the test
    return cluster.submit(["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gres=none", "--time=30",
                           f"--output={log}", *extra, str(REPO / "slurm" / "layer2_train.sbatch"), str(cfg)],
                          cwd=log.parent)


def test_layer2_on_two_nodes_over_mpi_and_a_preempted_run_resumes_to_the_same_weights(
        multinode_cluster: SlurmCluster, tmp_path: Path) -> None:
    index = make_cohort(tmp_path / "cohort", per_class=24)
    epochs = 4
    ref_cfg, ref_run = layer2_config(tmp_path, "ref", index, epochs)
    pre_cfg, pre_run = layer2_config(tmp_path, "pre", index, epochs)
    ref_log, pre_log = tmp_path / "ref" / "job.out", tmp_path / "pre" / "job.out"
    ref = submit_training(multinode_cluster, ref_cfg, ref_log, f"--export={ENV}")
    pre = submit_training(multinode_cluster, pre_cfg, pre_log, f"--export={ENV}")
    deadline = time.monotonic() + 300
    while not (pre_run / "history.csv").exists() and time.monotonic() < deadline:  # the first epoch is done
        time.sleep(0.5)
    multinode_cluster.run(["scancel", "--batch", "--signal=USR1", pre])
    assert multinode_cluster.wait(ref, timeout=400) == "COMPLETED", log_of(ref_log)[-3000:]
    # the requeued job runs the same command, which resumes from the saved position and finishes; SLURM holds a
    # requeued job back for about two minutes (its BeginTime), which the test does not wait for
    deadline = time.monotonic() + 400
    while "restart 1:" not in log_of(pre_log) and time.monotonic() < deadline:
        if "BeginTime" in multinode_cluster.show_job(pre):
            multinode_cluster.run(["scontrol", "update", f"JobId={pre}", "StartTime=now"])
        time.sleep(1)
    assert multinode_cluster.wait(pre, timeout=400) == "COMPLETED", log_of(pre_log)[-3000:]
    text = log_of(pre_log)
    assert "checkpoint saved; requeueing job" in text and "restart 1: 2 ranks on 2 nodes" in text, text[-3000:]
    # mid-epoch, where the ranks' BatchNorm statistics differ (at an epoch's end they are averaged anyway)
    assert re.search(r"preempted at epoch \d+ step [1-9]", text), text[-3000:]

    env = json.loads((ref_run / "environment.json").read_text())
    assert env["ranks"] == 2
    hosts = [p["host"] for p in env["placement"]]
    assert len(set(hosts)) == 2 and set(hosts) <= {f"n{k}" for k in range(1, MULTINODE_NODES + 1)}, env
    assert [p["local_rank"] for p in env["placement"]] == [0, 0] and [p["rank"] for p in env["placement"]] == [0, 1]
    assert json.loads((pre_run / "environment.json").read_text())["resumed_at"] != [0, 0]
    digests = {(run / "sample_ids" / f"weights_rank{r}.txt").read_text() for run in (ref_run, pre_run) for r in (0, 1)}
    assert len(digests) == 1, "the preempted run, or one rank, ended with different weights"
    assert not (pre_run / "preempted.json").exists()


@pytest.mark.tf_distribute
def test_layer2_tf_distribute_on_two_nodes(multinode_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The tf_distribute engine's workers on two hosts: SlurmClusterResolver's node names are the hosts the gRPC
    servers listen on; the same guarantees as Horovod's (tests/layer2/conftest.py: check_two_rank_run)."""
    index = make_cohort(tmp_path / "cohort")
    run = tmp_path / "tfd" / "run"
    (tmp_path / "tfd").mkdir()
    cfg = write_config(tmp_path / "tfd" / "c.yaml", base_config(index, run, epochs=2, batch_size=4, **{
        "data.record_sample_ids": True, "distributed.engine": "tf_distribute"}))
    log = tmp_path / "tfd" / "job.out"
    # this test's Python (the suite may run in .venv-modern); TF_CONFIG empty: SLURM says where the workers are
    job = submit_training(multinode_cluster, cfg, log, f"--export={ENV},CAMNET_PYTHON={sys.executable},TF_CONFIG=")
    assert multinode_cluster.wait(job, timeout=400) == "COMPLETED", log_of(log)[-3000:]
    check_two_rank_run(run, index, "tf_distribute")
    hosts = [p["host"] for p in json.loads((run / "environment.json").read_text())["placement"]]
    assert len(set(hosts)) == 2 and set(hosts) <= {f"n{k}" for k in range(1, MULTINODE_NODES + 1)}, hosts


def test_gloo_under_srun_is_refused_by_the_script_and_by_the_ranks(multinode_cluster: SlurmCluster,
                                                                  tmp_path: Path) -> None:
    """Regression: with HOROVOD_CONTROLLER=gloo and no rendezvous, srun's ranks each came up as a world of one and
    trained alone on all the data."""
    index = make_cohort(tmp_path / "cohort")
    cfg, run = layer2_config(tmp_path, "script", index, 1)
    log = tmp_path / "script" / "job.out"
    job = submit_training(multinode_cluster, cfg, log, f"--export={ENV},HOROVOD_CONTROLLER=gloo")
    assert multinode_cluster.wait(job, timeout=120) == "FAILED"
    errors = [line for line in log_of(log).splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: HOROVOD_CONTROLLER=gloo with SLURM_NTASKS=2:"), \
        log_of(log)
    assert not run.exists()

    # A script that does not check (the user's own): each rank stops before writing anything.
    cfg, run = layer2_config(tmp_path, "own", index, 1)
    script = tmp_path / "own" / "own.sh"
    script.write_text(f"#!/bin/bash\nsrun --mpi=pmix {PY} -m layer2_training train --config {cfg}\n")
    log = tmp_path / "own" / "job.out"
    job = multinode_cluster.submit(["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", f"--output={log}",
                                    f"--export={ENV},HOROVOD_CONTROLLER=gloo,HOROVOD_CPU_OPERATIONS=gloo",
                                    str(script)], cwd=tmp_path)
    assert multinode_cluster.wait(job, timeout=180) == "FAILED"
    errors = [line for line in log_of(log).splitlines() if line.startswith("error:")]
    assert len(errors) == 2, log_of(log)[-3000:]  # one line per rank
    assert all(e.startswith("error: the launcher started 2 ranks (SLURM_STEP_NUM_TASKS=2 HOROVOD_CONTROLLER=gloo")
               and "but Horovod reports a world of size 1" in e for e in errors), errors
    assert not run.exists()


def test_layer3_heatmap_with_ranks_on_two_nodes_equals_one_rank(multinode_cluster: SlurmCluster,
                                                               tmp_path: Path) -> None:
    from layer1_patches.synth import write_cohort
    from tests.layer3.conftest import write_run_dir

    slide = write_cohort(tmp_path / "slides", 1, 1536, seed=7, tumour_fraction=0.3)[0]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"{slide}\n")
    run = write_run_dir(tmp_path / "run")
    out, log = tmp_path / "two", tmp_path / "hm.out"
    job = multinode_cluster.submit(["--array=0", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                                    f"--output={log}", f"--export={ENV},CAMNET_MANIFEST={manifest},CAMNET_MODEL={run},"
                                    f"CAMNET_OUT={out},CAMNET_HEATMAP_ARGS=--set reader.batch_size=8",
                                    str(REPO / "slurm" / "layer3_heatmap.sbatch")], cwd=REPO)
    one = subprocess.run([sys.executable, "-m", "layer3_inference", "heatmap", "--config",
                          str(REPO / "configs" / "layer3" / "heatmap.yaml"), "--model", str(run), "--slide", str(slide),
                          "--out", str(tmp_path / "one"), "--set", "reader.threads=1", "--set", "reader.batch_size=8"],
                         cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-2000:]
    assert multinode_cluster.wait(job, timeout=300) == "COMPLETED", log_of(log)[-3000:]
    with h5py.File(tmp_path / "one" / slide.stem / "probabilities.h5") as a, \
            h5py.File(out / slide.stem / "probabilities.h5") as b:
        assert len(a["prob"]) > 100
        assert np.array_equal(a["coords"][()], b["coords"][()])
        assert np.array_equal(a["prob"][()], b["prob"][()])  # bit for bit
        assert np.array_equal(a["map"][()], b["map"][()], equal_nan=True)
    assert json.loads((out / slide.stem / "summary.json").read_text())["ranks"] == 2
