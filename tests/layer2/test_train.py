"""End to end: learning on a Layer 1 cohort, the run directory, kill-and-resume, preemption."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.layer2.conftest import REPO, base_config, cli_env, read_history, run_cli, write_config


def start_cli(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "layer2_training", *args], cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(cond, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early:\n{proc.stdout.read() if proc.stdout else ''}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_learns_tumour_vs_normal_on_layer1_cohort(tmp_path: Path, synth_index: Path) -> None:
    run = tmp_path / "run"
    cfg = base_config(synth_index, run, epochs=5, batch_size=16, **{
        "model.batchnorm_momentum": 0.9, "data.read_block": 8, "data.shuffle_window": 4,
        "output.tensorboard": True})
    proc = run_cli(["train", "--config", str(write_config(tmp_path / "c.yaml", cfg))], timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((run / "metrics.json").read_text())
    assert results["val"]["auc"] >= 0.9, results
    assert set(results["test"]) >= {"auc", "accuracy", "sensitivity", "specificity", "confusion"}
    sidecar = json.loads((run / "model.json").read_text())
    assert sidecar["patch_size"] == 64 and sidecar["preprocessing"] == "tf" and sidecar["working_mpp"] == 0.5
    env = json.loads((run / "environment.json").read_text())
    assert env["horovod_size"] == 1 and env["seed"] == 1 and "tensorflow" in env["versions"]
    for name in ("config.yaml", "roc.png", "export/model.keras", "checkpoints/best/checkpoint",
                 "checkpoints/last/checkpoint"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(read_history(run)) == 5

    # the exported model takes raw RGB patches: Layer 3's path
    from layer1_patches.index import DatasetIndex
    from layer1_patches.store import PatchStore
    from layer2_training.model import load_inference_model

    index = DatasetIndex.load(synth_index)
    entry = index.split("val")[0]
    with PatchStore(index.resolve(entry)) as store:
        x, y = store.read(np.arange(len(store))), store.labels
    prob = load_inference_model(run / "export" / "model.keras").predict(x, verbose=0).ravel()
    assert ((prob >= 0.5) == (y == 1)).mean() > 0.8


def test_sigkill_mid_epoch_then_rerun_resumes_with_optimizer_state(tmp_path: Path, tiny_index: Path) -> None:
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", base_config(tiny_index, run, epochs=4, batch_size=4))
    proc = start_cli(["train", "--config", str(cfg)])
    try:
        wait_for(lambda: len(read_history(run)) >= 1, proc)
        time.sleep(0.4)  # into the next epoch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = len(read_history(run))
    assert 1 <= done < 4
    second = run_cli(["train", "--config", str(cfg)])
    assert second.returncode == 0, second.stdout + second.stderr
    env = json.loads((run / "environment.json").read_text())
    assert env["resumed_at"] == [done, 0]
    rows = read_history(run)
    steps = env["steps_per_epoch"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    # optimiser iterations continue from the checkpoint instead of restarting at 0
    assert [int(r["iterations"]) for r in rows] == [steps, 2 * steps, 3 * steps, 4 * steps]


def test_sigterm_saves_mid_epoch_and_rerun_continues_exactly(tmp_path: Path, tiny_index: Path) -> None:
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", base_config(tiny_index, run, epochs=3, batch_size=4))
    proc = start_cli(["train", "--config", str(cfg)])
    wait_for(lambda: len(read_history(run)) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "preempted" in out
    marker = json.loads((run / "preempted.json").read_text())
    second = run_cli(["train", "--config", str(cfg)])
    assert second.returncode == 0, second.stdout + second.stderr
    env = json.loads((run / "environment.json").read_text())
    assert env["resumed_at"] == [marker["epoch"], marker["step"]]
    rows = read_history(run)
    assert int(rows[-1]["epoch"]) == 3 and int(rows[-1]["iterations"]) == 3 * env["steps_per_epoch"]
    assert not (run / "preempted.json").exists(), "the finished rerun leaves no preemption marker"
