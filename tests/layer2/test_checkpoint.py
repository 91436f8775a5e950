"""TrainState (last/best checkpoints, resume position), the per-epoch callback and preemption, on a tiny model."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from layer1_patches.shared.errors import CamnetError
from layer2_training import checkpoint
from layer2_training.checkpoint import PREEMPTED, CheckpointCallback, Preempted, SignalFlag, TrainState
from layer2_training.distributed import Dist


def tiny_model(seed: int) -> tf.keras.Model:
    # seeded initialisers rather than the global seed, which would leak into later tests
    init, layers = tf.keras.initializers.GlorotUniform, tf.keras.layers
    return tf.keras.Sequential([tf.keras.Input((4,)), layers.Dense(3, kernel_initializer=init(seed), name="dense"),
                                layers.BatchNormalization(name="bn"),
                                layers.Dense(1, "sigmoid", kernel_initializer=init(seed + 1), name="out")])


def state_for(run: Path, model: tf.keras.Model, monitor: str = "val_auc") -> TrainState:
    optimizer = tf.keras.optimizers.legacy.SGD(0.1)
    _ = optimizer.iterations
    return TrainState(run, model, optimizer, monitor)


def assert_same_weights(a: tf.keras.Model, b: tf.keras.Model) -> None:
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_last_checkpoint_round_trip_restores_weights_and_position(tmp_path: Path) -> None:
    saved = tiny_model(1)
    state = state_for(tmp_path, saved)
    assert state.restore() == (0, 0)  # a fresh run dir
    state.save_last(2, 5)
    other = tiny_model(2)
    assert not np.array_equal(other.get_weights()[0], saved.get_weights()[0])
    assert state_for(tmp_path, other).restore() == (2, 5)
    assert_same_weights(other, saved)


@pytest.mark.parametrize(("monitor", "best", "better", "worse"), [("val_auc", 0.5, 0.6, 0.4),
                                                                   ("val_loss", 1.0, 0.9, 1.1)])
def test_improved_follows_the_monitor_direction(tmp_path: Path, monitor: str, best: float, better: float,
                                                worse: float) -> None:
    state = state_for(tmp_path, tiny_model(1), monitor)
    assert state.improved(worse) and state.improved(best)  # anything beats the initial -inf / +inf
    state.mark_best(best, float("nan"), 1, "monitor")
    assert state.improved(better) == "monitor"
    assert state.improved(best) is None  # a tie without a better second metric is no improvement
    assert state.improved(worse) is None


def test_restore_best_prefers_best_and_falls_back_to_last(tmp_path: Path) -> None:
    model = tiny_model(1)
    state = state_for(tmp_path / "a", model)
    assert state.restore_best() is False  # nothing saved yet
    state.mark_best(0.9, 0.2, 1, "monitor")
    state.save_best()
    best = model.get_weights()
    model.set_weights([w + 1.0 for w in best])
    state.save_last(1, 0)
    assert state.restore_best() is True
    for x, y in zip(model.get_weights(), best, strict=True):
        np.testing.assert_array_equal(x, y)
    only_last = state_for(tmp_path / "b", model)
    model.set_weights([w + 2.0 for w in best])
    only_last.save_last(1, 0)
    model.set_weights(best)
    assert only_last.restore_best() is True
    np.testing.assert_array_equal(model.get_weights()[0], best[0] + 2.0)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(("monitor", "new", "best", "why"), [
    ("val_auc", (0.9, 0.5), (0.8, 0.1), "monitor"),  # a better AUC wins whatever the loss
    ("val_auc", (0.8, 0.2), (0.8, 0.3), "val_loss"),  # same AUC, lower loss
    ("val_auc", (0.8, 0.3), (0.8, 0.3), None),  # a tie in both keeps the earlier epoch
    ("val_auc", (0.8, 0.4), (0.8, 0.3), None),  # same AUC, higher loss
    ("val_auc", (0.7, 0.01), (0.8, 0.3), None),  # a worse AUC loses whatever the loss
    ("val_auc", (0.8, 0.3), (0.8, INF), "val_loss"),  # an old checkpoint's missing loss is the worst
    ("val_auc", (0.8, NAN), (0.8, INF), None),  # an epoch without a val loss never wins a tie
    ("val_auc", (NAN, 0.1), (0.8, 0.3), None),
    ("val_loss", (0.3, 0.9), (0.3, 0.8), "val_auc"),  # monitoring the loss: the AUC (higher) breaks ties
    ("val_loss", (0.3, 0.7), (0.3, 0.8), None),
    ("val_loss", (0.2, 0.1), (0.3, 0.9), "monitor"),
])
def test_monitor_breaks_exact_ties_by_the_second_metric(monitor: str, new: tuple[float, float],
                                                        best: tuple[float, float], why: str | None) -> None:
    assert checkpoint.Monitor(monitor).replaces(new, best) == why


def epoch_callback(run: Path, model: tf.keras.Model, start: tuple[int, int]) -> CheckpointCallback:
    state = state_for(run, model)
    if start != (0, 0):
        assert state.restore() == start
    model.compile(optimizer=state.ckpt.optimizer, loss="binary_crossentropy")
    callback = CheckpointCallback(Dist(), state, SignalFlag(), "val_auc", start, lambda _s: 0.1)
    callback.set_model(model)
    return callback


def end_epoch(callback: CheckpointCallback, epoch: int, logs: dict[str, float], weights: list[np.ndarray]) -> None:
    callback.model.set_weights(weights)
    callback.on_epoch_begin(epoch)
    callback.on_epoch_end(epoch, logs)


def test_a_val_auc_tie_kept_the_first_epoch_whatever_its_loss(tmp_path: Path) -> None:
    """Issue 14: val AUC 1.0 at both epochs, epoch 1 (accuracy 0.50, loss 1.57) was kept over epoch 2 (0.85,
    0.31). The lower val loss breaks the exact tie: epoch 2 is exported, and metrics say why."""
    model = tiny_model(1)
    first = model.get_weights()
    second = [w + 1.0 for w in first]
    callback = epoch_callback(tmp_path, model, (0, 0))
    end_epoch(callback, 0, {"val_auc": 1.0, "val_loss": 1.57, "val_accuracy": 0.5}, first)
    end_epoch(callback, 1, {"val_auc": 1.0, "val_loss": 0.31, "val_accuracy": 0.85}, second)
    end_epoch(callback, 2, {"val_auc": 1.0, "val_loss": 0.9, "val_accuracy": 0.7}, [w + 2.0 for w in first])
    assert callback.state.selected() == {"epoch": 2, "monitor": "val_auc", "value": 1.0, "tie_break": "val_loss"}
    restored = tiny_model(5)
    assert state_for(tmp_path, restored).restore_best() is True
    assert_same_weights(restored, _with(second))  # epoch 2's weights, not epoch 3's (the last) or epoch 1's
    rows = list(csv.DictReader((tmp_path / "history.csv").read_text().splitlines()))
    assert [r["best_epoch"] for r in rows] == ["1", "2", "2"]


def _with(weights: list[np.ndarray]) -> tf.keras.Model:
    model = tiny_model(1)
    model.set_weights(weights)
    return model


def test_a_better_monitor_value_is_selected_without_a_tie_break(tmp_path: Path) -> None:
    callback = epoch_callback(tmp_path, tiny_model(1), (0, 0))
    weights = callback.model.get_weights()
    end_epoch(callback, 0, {"val_auc": 0.8, "val_loss": 0.2}, weights)
    end_epoch(callback, 1, {"val_auc": 0.9, "val_loss": 0.5}, weights)
    assert callback.state.selected() == {"epoch": 2, "monitor": "val_auc", "value": 0.9, "tie_break": None}


def test_a_best_epoch_with_a_nan_val_loss_could_never_lose_a_tie(tmp_path: Path) -> None:
    callback = epoch_callback(tmp_path, tiny_model(1), (0, 0))
    weights = callback.model.get_weights()
    end_epoch(callback, 0, {"val_auc": 1.0, "val_loss": float("nan")}, weights)
    end_epoch(callback, 1, {"val_auc": 1.0, "val_loss": 0.3}, weights)
    assert callback.state.selected() == {"epoch": 2, "monitor": "val_auc", "value": 1.0, "tie_break": "val_loss"}


def test_a_resumed_run_forgot_the_tie_break_value(tmp_path: Path) -> None:
    """The second metric's best value is saved with the checkpoint: after a resume, a tie with a worse loss does
    not replace the best epoch, and a tie with a better one does."""
    model = tiny_model(1)
    weights = model.get_weights()
    callback = epoch_callback(tmp_path, model, (0, 0))
    end_epoch(callback, 0, {"val_auc": 1.0, "val_loss": 0.31}, weights)
    resumed = epoch_callback(tmp_path, tiny_model(2), (1, 0))
    end_epoch(resumed, 1, {"val_auc": 1.0, "val_loss": 1.57}, weights)
    assert resumed.state.selected() == {"epoch": 1, "monitor": "val_auc", "value": 1.0, "tie_break": None}
    again = epoch_callback(tmp_path, tiny_model(3), (2, 0))
    end_epoch(again, 2, {"val_auc": 1.0, "val_loss": 0.2}, weights)
    assert again.state.selected() == {"epoch": 3, "monitor": "val_auc", "value": 1.0, "tie_break": "val_loss"}


def test_a_checkpoint_from_before_the_tie_break_still_restores(tmp_path: Path) -> None:
    # written as the previous version did: no second value, best epoch or tie flag
    model = tiny_model(1)
    optimizer = tf.keras.optimizers.legacy.SGD(0.1)
    _ = optimizer.iterations
    variables = {name: tf.Variable(value, dtype=dtype, trainable=False, name=name)
                 for name, value, dtype in [("epoch", 2, tf.int64), ("step", 0, tf.int64), ("best", 0.9, tf.float64)]}
    old = tf.train.Checkpoint(model=model, optimizer=optimizer, **variables)
    tf.train.CheckpointManager(old, str(tmp_path / "checkpoints" / "last"), max_to_keep=2).save()
    state = state_for(tmp_path, tiny_model(2))
    assert state.restore() == (2, 0)
    assert state.selected() == {"epoch": None, "monitor": "val_auc", "value": 0.9, "tie_break": None}
    # the missing val loss counts as the worst: any epoch tying the AUC with a val loss replaces it
    assert state.improved(0.9, 5.0) == "val_loss" and state.improved(0.8, 0.01) is None


def test_preemption_saves_the_exact_position_and_stops(tmp_path: Path) -> None:
    model = tiny_model(1)
    state, flag = state_for(tmp_path, model), SignalFlag()
    callback = CheckpointCallback(Dist(), state, flag, "val_auc", start=(2, 3), lr_of_step=lambda _s: 0.1)
    callback.on_epoch_begin(2)
    callback.on_train_batch_end(4)  # no signal: nothing happens
    assert not (tmp_path / PREEMPTED).exists()
    flag.signum = signal.SIGUSR1
    flag.event.set()
    # a run resumed at step 3 of epoch 2: its batch 4 is step 3 + 4 + 1 = 8 of the epoch plan
    with pytest.raises(Preempted, match="epoch 2 step 8"):
        callback.on_train_batch_end(4)
    marker = json.loads((tmp_path / PREEMPTED).read_text())
    assert (marker["epoch"], marker["step"], marker["signal"]) == (2, 8, signal.SIGUSR1)
    assert state_for(tmp_path, tiny_model(2)).restore() == (2, 8)
    callback.on_epoch_begin(3)  # later epochs start at step 0
    with pytest.raises(Preempted, match="epoch 3 step 5"):
        callback.on_train_batch_end(4)


def test_epoch_end_keeps_history_best_and_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    averaged: list[list[str]] = []
    monkeypatch.setattr(checkpoint, "average_variables", lambda _dist, vs: averaged.append([v.name for v in vs]))
    model = tiny_model(1)
    state = state_for(tmp_path, model)
    model.compile(optimizer=state.ckpt.optimizer, loss="binary_crossentropy")
    callback = CheckpointCallback(Dist(), state, SignalFlag(), "val_auc", (0, 0), lambda s: 0.5 + s)
    callback.set_model(model)
    for epoch, auc in enumerate([0.7, 0.6]):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {"val_auc": auc, "loss": 0.3})
    with (tmp_path / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["val_auc"], r["lr"], r["iterations"]) for r in rows] == [("1", "0.7", "0.5", "0"),
                                                                                   ("2", "0.6", "0.5", "0")]
    assert float(state.best.numpy()) == pytest.approx(0.7)  # the second epoch was worse
    assert state_for(tmp_path, tiny_model(2)).restore() == (2, 0)
    # only what training changes is averaged over ranks: the moving statistics of the trainable BatchNorm
    assert averaged == [["bn/moving_mean:0", "bn/moving_variance:0"]] * 2
    model.get_layer("bn").trainable = False
    callback.on_epoch_end(2, {"val_auc": 0.5})
    assert averaged[-1] == []


def test_signal_flag_is_set_by_sigusr1() -> None:
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    flag = SignalFlag()
    try:
        flag.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.event.wait(10) and flag.signum == signal.SIGUSR1
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def history_callback(run: Path, start: tuple[int, int]) -> tuple[CheckpointCallback, tf.keras.Model]:
    model = tiny_model(1)
    state = state_for(run, model)
    model.compile(optimizer=state.ckpt.optimizer, loss="binary_crossentropy")
    callback = CheckpointCallback(Dist(), state, SignalFlag(), "val_auc", start, lambda _s: 0.1)
    callback.set_model(model)
    return callback, model


def test_history_did_not_say_an_epoch_was_resumed_mid_way(tmp_path: Path) -> None:
    # resumed at step 3 of epoch 2 (0-based): that epoch's metrics cover steps 3.. only, and the row says so
    callback, _ = history_callback(tmp_path, (2, 3))
    for epoch in (2, 3):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {"val_auc": 0.5, "loss": 0.3})
    with (tmp_path / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["resumed_at_step"]) for r in rows] == [("3", "3"), ("4", "")]


def test_history_of_an_older_run_gains_the_resumed_column_and_a_redone_epoch_replaces_its_row(
        tmp_path: Path) -> None:
    # written before the column existed, by a run whose epoch 2 is repeated (resumed from epoch 1's checkpoint)
    (tmp_path / "history.csv").write_text("epoch,lr,loss\n1,0.1,0.9\n2,0.1,0.8\n")
    callback, _ = history_callback(tmp_path, (1, 0))
    callback.on_epoch_begin(1)
    callback.on_epoch_end(1, {"val_auc": 0.5, "loss": 0.7})
    with (tmp_path / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["loss"], r["resumed_at_step"]) for r in rows] == [("1", "0.9", ""), ("2", "0.7", "")]


def test_preemption_at_the_last_batch_left_an_epoch_of_zero_steps_to_resume(tmp_path: Path) -> None:
    """Stopping after an epoch's last batch saved (epoch, steps): the rerun's `fit(steps_per_epoch=0)` raised.
    The epoch is finished first (validation, checkpoint at the next epoch's start, history), then the run stops."""
    callback, _ = history_callback(tmp_path, (0, 0))
    callback.set_params({"steps": 5, "epochs": 3})
    callback.flag.signum = signal.SIGTERM
    callback.flag.event.set()
    callback.on_epoch_begin(1)
    callback.on_train_batch_end(4)  # the last batch: no stop yet
    assert not (tmp_path / PREEMPTED).exists()
    with pytest.raises(Preempted, match="epoch 2 step 0"):
        callback.on_epoch_end(1, {"val_auc": 0.5, "loss": 0.3})
    marker = json.loads((tmp_path / PREEMPTED).read_text())
    assert (marker["epoch"], marker["step"]) == (2, 0)
    assert state_for(tmp_path, tiny_model(2)).restore() == (2, 0)
    assert [r["epoch"] for r in csv.DictReader((tmp_path / "history.csv").read_text().splitlines())] == ["2"]


@pytest.mark.parametrize(("failure", "reason"), [("full", "No space left on device"),
                                                  ("read-only", "Read-only file system")])
def test_checkpoint_save_on_a_full_or_read_only_disk_was_a_traceback_and_left_a_half_checkpoint(
        tmp_path: Path, mount_tmpfs, failure: str, reason: str) -> None:
    disk = mount_tmpfs(tmp_path / "disk", "512k")
    model = tiny_model(1)
    state = state_for(disk.path, model)
    state.save_last(1, 0)
    first = model.get_weights()
    folder = disk.path / "checkpoints" / "last"
    before = sorted(p.name for p in folder.iterdir())
    model.set_weights([w + 1.0 for w in first])
    if failure == "full":
        disk.fill()
    else:
        disk.remount("ro")
    with pytest.raises(CamnetError, match=rf"^output {folder}: cannot write checkpoint \({reason}\)$"):
        state.save_last(2, 0)
    assert sorted(p.name for p in folder.iterdir()) == before, "no half checkpoint, no temporary files"
    # after freeing space the previous checkpoint is the one a resume continues from
    if failure == "full":
        disk.free()
    else:
        disk.remount("rw")
    other = tiny_model(3)
    assert state_for(disk.path, other).restore() == (1, 0)
    for x, y in zip(other.get_weights(), first, strict=True):
        np.testing.assert_array_equal(x, y)


def bn_model() -> tf.keras.Model:
    inputs = tf.keras.Input((4,))
    return tf.keras.Model(inputs, tf.keras.layers.Dense(1)(tf.keras.layers.BatchNormalization()(inputs)))


def test_each_rank_takes_back_its_own_batchnorm_statistics_saved_mid_epoch(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Mid-epoch the ranks' moving statistics differ; a resume that gave every rank rank 0's ended with other
    weights than an uninterrupted run (tests/slurm/test_multinode.py)."""
    model = bn_model()
    stats = checkpoint.statistics(model)
    assert [v.name.split("/")[-1] for v in stats] == ["moving_mean:0", "moving_variance:0"]
    per_rank = [[np.full(4, r + 1.0, np.float32), np.full(4, r + 10.0, np.float32)] for r in range(3)]
    ckpt = str(tmp_path / "ckpt-7")
    (tmp_path / "ckpt-6.ranks.npz").write_bytes(b"older")
    checkpoint.save_rank_state(ckpt, per_rank)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-7.ranks.npz"]  # the older checkpoint's file went

    assert checkpoint.restore_rank_state(ckpt, Dist(rank=1, size=3), model)
    assert [v.numpy().tolist() for v in stats] == [[2.0] * 4, [11.0] * 4]
    assert not checkpoint.restore_rank_state(ckpt, Dist(), model)  # one process: nothing to take back
    assert not checkpoint.restore_rank_state(str(tmp_path / "ckpt-8"), Dist(rank=0, size=3), model)  # no file
    with caplog.at_level("WARNING"):
        assert not checkpoint.restore_rank_state(ckpt, Dist(rank=0, size=2), model)
    assert "saved by 3 ranks, resumed on 2" in caplog.text
    assert [v.numpy().tolist() for v in stats] == [[2.0] * 4, [11.0] * 4]  # untouched
    other = tf.keras.Model(model.input, tf.keras.layers.BatchNormalization()(model.layers[-1].output))
    with pytest.raises(CamnetError, match=r"ckpt-7.ranks.npz: 6 arrays for 3 ranks of a model with 4 statistics"):
        checkpoint.restore_rank_state(ckpt, Dist(rank=0, size=3), other)
