"""End to end: learning on a Layer 1 cohort, the run directory, kill-and-resume, preemption."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from layer1_patches.shared.locks import lock_path, output_lock
from layer1_patches.store import PatchStore
from layer2_training import data, train
from tests.helpers import assert_one_error
from tests.layer2.conftest import (
    REPO,
    base_config,
    cli_env,
    leftovers,
    make_cohort,
    read_history,
    run_cli,
    write_config,
)


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
    assert env["ranks"] == 1 and env["seed"] == 1 and "tensorflow" in env["versions"]
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
    # one writer per run dir: the lock is held for the whole training, by this process
    assert json.loads(lock_path(run).read_text())["pid"] == proc.pid
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "preempted" in out
    assert not lock_path(run).exists(), "a preempted run releases its lock"
    assert leftovers(tmp_path) == []
    marker = json.loads((run / "preempted.json").read_text())
    second = run_cli(["train", "--config", str(cfg)])
    assert second.returncode == 0, second.stdout + second.stderr
    env = json.loads((run / "environment.json").read_text())
    assert env["resumed_at"] == [marker["epoch"], marker["step"]]
    rows = read_history(run)
    assert int(rows[-1]["epoch"]) == 3 and int(rows[-1]["iterations"]) == 3 * env["steps_per_epoch"]
    assert not (run / "preempted.json").exists(), "the finished rerun leaves no preemption marker"
    # the interrupted epoch's metrics cover the resumed steps only, and its row says from which step
    assert 0 < marker["step"] < env["steps_per_epoch"]
    assert [r["resumed_at_step"] for r in rows] == [str(marker["step"]) if int(r["epoch"]) == marker["epoch"] + 1
                                                    else "" for r in rows]
    assert not lock_path(run).exists() and leftovers(tmp_path) == []


def test_two_trainings_into_one_run_dir_ran_at_once(tmp_path: Path, tiny_index: Path) -> None:
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", base_config(tiny_index, run, epochs=50, batch_size=4))
    first = start_cli(["train", "--config", str(cfg)])
    try:
        wait_for(lambda: len(read_history(run)) >= 1, first)
        second = run_cli(["train", "--config", str(cfg)])
        assert_one_error(second, f"{run}: being written by ", f"/pid {first.pid}", str(lock_path(run)))
        assert first.poll() is None, "the first training goes on"
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 0 and "preempted" in out, out
    assert not lock_path(run).exists() and leftovers(tmp_path) == []


def test_disk_full_at_the_first_checkpoint_was_a_traceback_and_left_a_half_checkpoint(
        tmp_path: Path, tiny_index: Path, mount_tmpfs) -> None:
    run = tmp_path / "run"
    mount_tmpfs(run, "256k")  # the run dir's small files fit, a checkpoint of MobileNetV2 (MBs) does not
    cfg = write_config(tmp_path / "c.yaml", base_config(tiny_index, run))
    proc = run_cli(["train", "--config", str(cfg)])
    assert_one_error(proc, f"output {run / 'checkpoints'}/", "(No space left on device)")
    assert not [p for p in run.rglob("*") if p.name.startswith("ckpt")], "no half checkpoint"
    assert leftovers(tmp_path) == [] and not lock_path(run).exists()


def test_full_disk_at_export_and_a_read_only_run_dir_were_tracebacks(tmp_path: Path, tiny_index: Path,
                                                                     mount_tmpfs) -> None:
    run = tmp_path / "run"
    disk = mount_tmpfs(run, "256m")
    cfg = write_config(tmp_path / "c.yaml", base_config(tiny_index, run))
    assert run_cli(["train", "--config", str(cfg)]).returncode == 0
    export = run / "export" / "model.keras"
    export.unlink()
    disk.fill(leave=64 << 10)  # the run dir's small files fit, the exported model (MBs) does not
    proc = run_cli(["train", "--config", str(cfg)])  # all epochs done: the rerun only exports and evaluates
    assert_one_error(proc, f"output {export}: cannot write (No space left on device)")
    assert leftovers(tmp_path) == [] and not export.exists() and not lock_path(run).exists()
    disk.free()
    again = run_cli(["train", "--config", str(cfg)])
    assert again.returncode == 0, again.stderr
    assert export.is_file() and json.loads((run / "environment.json").read_text())["resumed_at"] == [1, 0]

    disk.remount("ro")
    proc = run_cli(["train", "--config", str(cfg)])
    assert_one_error(proc, f"output {run / 'config.yaml'}: cannot write (Read-only file system)")
    assert leftovers(tmp_path) == [] and not lock_path(run).exists()


@pytest.mark.horovod
def test_ranks_waited_forever_when_rank_0_could_not_take_the_run_dir(tmp_path: Path, tiny_index: Path) -> None:
    """Only rank 0 takes the run dir's lock; it tells the other ranks, which stop too, instead of waiting for it
    in the first collective."""
    from tests.layer2.test_horovod import horovodrun

    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", base_config(tiny_index, run))
    command = [horovodrun(), "-np", "2", "--gloo", sys.executable, "-m", "layer2_training", "train",
               "--config", str(cfg)]
    run.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(run):  # this live process is writing the run dir
        proc = subprocess.run(command, cwd=REPO, env=cli_env(HOROVOD_CYCLE_TIME="5"), capture_output=True,
                              text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    errors = [line for line in out.splitlines() if "error: " in line]
    assert len(errors) == 1 and "being written by" in errors[0], out[-3000:]
    assert "rank 1: stopped because rank 0 failed" in out, out[-3000:]
    # horovodrun itself ends with a traceback of its own when a rank exits non-zero; the ranks print none
    assert not [line for line in out.splitlines() if line.startswith(("[0]", "[1]")) and "Traceback" in line]
    assert not (run / "config.yaml").exists()
    # the lock released, the same ranks train: rank 0's writes at every epoch's end are agreed on without a hang
    proc = subprocess.run(command, cwd=REPO, env=cli_env(HOROVOD_CYCLE_TIME="5"), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(read_history(run)) == 1 and (run / "export" / "model.keras").is_file()
    assert not lock_path(run).exists() and leftovers(tmp_path) == []


def test_damaged_patch_store_read_during_training_was_a_tensorflow_traceback(tmp_path: Path) -> None:
    # The reader thread's CamnetError came back through tf.data as an UnknownError traceback; now it is the one
    # error line naming the store.
    import h5py

    from layer1_patches.index import DatasetIndex

    index = make_cohort(tmp_path / "cohort")
    store = DatasetIndex.load(index).resolve(DatasetIndex.load(index).split("train")[0])
    with h5py.File(store, "r") as f:
        info = f["patches"].id.get_chunk_info(3)
    with open(store, "r+b") as f:
        f.seek(info.byte_offset + info.size // 2)
        f.write(b"\xff" * 64)
    cfg = write_config(tmp_path / "c.yaml", base_config(index, tmp_path / "run"))
    proc = run_cli(["train", "--config", str(cfg)])
    assert_one_error(proc, f"patch store {store}: damaged data in 'patches'")


def split_of(sample_ids: list[int]) -> data.SplitData:
    n = len(sample_ids)
    ids = np.array(sample_ids, dtype=np.int64)
    return data.SplitData("train", (Path("s.h5"),), np.zeros(n, np.int32), ids, np.zeros(n, np.uint8), ids, 32)


def test_colour_sample_counts_each_patch_once_and_is_seeded() -> None:
    # 10 distinct patches, patch 3 repeated by oversampling (positions 3, 4 and 5 hold it)
    split = split_of([0, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9])
    everything = train.colour_positions(split, 2000, seed=1)
    assert everything.tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 10, 11]  # all 10, patch 3 once (its first position)
    some = train.colour_positions(split, 4, seed=1)
    assert len(some) == 4 and len(set(split.sample_id[some])) == 4 and list(some) == sorted(some)
    assert np.array_equal(some, train.colour_positions(split, 4, seed=1))  # a pure function of (split, k, seed)
    assert any(not np.array_equal(some, train.colour_positions(split, 4, seed=s)) for s in range(2, 6))
    assert len(train.colour_positions(split, 0, seed=1)) == 0


def test_metrics_json_carries_the_selection_and_every_splits_warnings() -> None:
    # val: the model (20 per class, AUC 1.0, nothing reaches 0.5); test: 60 per class, tumour 0.7-0.95
    # above normal 0.5-0.6 (AUC 1.0, believable from 60), but every patch at or above 0.5 (specificity 0)
    val = (np.array([1] * 20 + [0] * 20), np.concatenate([np.linspace(0.111, 0.13, 20), np.linspace(0.01, 0.1, 20)]))
    test = (np.array([1] * 60 + [0] * 60), np.concatenate([np.linspace(0.7, 0.95, 60), np.linspace(0.5, 0.6, 60)]))
    selected = {"epoch": 2, "monitor": "val_auc", "value": 1.0, "tie_break": "val_loss"}
    results = train.evaluation({"val": val, "test": test}, selected, 0.5)
    assert results["best_val_auc"] == 1.0 and results["selected"] == selected
    # accuracy 20/40: the normal half right, the tumour half missed
    assert (results["val"]["auc"], results["val"]["accuracy"], results["val"]["sensitivity"]) == (1.0, 0.5, 0.0)
    assert (results["test"]["sensitivity"], results["test"]["specificity"]) == (1.0, 0.0)
    assert [(w["code"], w["split"]) for w in results["warnings"]] == [
        ("never_crosses_threshold", "val"), ("threshold_miscalibrated", "val"), ("auc_small_sample", "val"),
        ("never_crosses_threshold", "test"), ("threshold_miscalibrated", "test")]
    assert all(set(w) == {"code", "message", "split"} for w in results["warnings"])
    lines = train.summary_lines(results)
    assert lines[0] == "val AUC 1.0000"
    assert lines[1] == ("warning: val: no patch reaches the threshold 0.5 (highest probability 0.130); the model "
                        "calls nothing tumour [never_crosses_threshold]")
    assert len(lines) == 6


def test_a_one_class_validation_split_was_refused_and_ties_kept_the_first_epoch(tmp_path: Path) -> None:
    """A normal-only val split trains (it used to stop before training) and ends in a one_class warning. Its val
    AUC is 0.0 in Keras at every epoch, so every epoch ties and val loss decides: the exported epoch is the one
    with the lowest val loss (the first of equal ones). The sidecar holds the training patches' colour
    statistics: those of all 8 patches of patient 000 (fewer than output.colour_patches)."""
    from layer1_patches.colour import ColourAccumulator
    from layer1_patches.index import DatasetIndex
    from tests.layer2.test_data import one_class_val_index

    index = one_class_val_index(tmp_path / "cohort")
    run = tmp_path / "run"
    cfg = base_config(index, run, epochs=2, batch_size=4, **{"data.splits": {"test": None}})
    proc = run_cli(["train", "--config", str(write_config(tmp_path / "c.yaml", cfg))])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((run / "metrics.json").read_text())
    assert results["val"]["auc"] is None and results["val"]["n_tumour"] == 0
    assert [w["code"] for w in results["warnings"] if w["split"] == "val"][0] == "one_class"
    assert "warning: val: all 6 patches are normal; AUC and sensitivity cannot be measured [one_class]" in (
        proc.stderr.splitlines())
    assert "val AUC undefined (see the warnings)" in proc.stdout
    rows = read_history(run)
    assert [float(r["val_auc"]) for r in rows] == [0.0, 0.0]
    losses = [float(r["val_loss"]) for r in rows]
    best = losses.index(min(losses)) + 1
    assert results["selected"] == {"epoch": best, "monitor": "val_auc", "value": 0.0,
                                   "tie_break": "val_loss" if best == 2 else None}
    assert [r["best_epoch"] for r in rows] == ["1", str(best)]

    colour = json.loads((run / "model.json").read_text())["colour"]
    acc = ColourAccumulator()
    ds = DatasetIndex.load(index)
    for entry in ds.split("train"):
        with PatchStore(ds.resolve(entry)) as store:
            acc.add(store.read(np.arange(len(store))))
    expected = acc.stats()
    assert expected is not None and expected.patches == 8
    assert colour == {"od_mean": expected.od_mean, "od_std": expected.od_std, "pixels": expected.pixels,
                      "patches": 8}
