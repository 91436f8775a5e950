"""What is averaged over ranks at epoch end, and the single-process fallbacks of the Horovod helpers."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from layer2_training.config import HeadConfig, ModelConfig
from layer2_training.distributed import (
    Dist,
    any_rank,
    average_variables,
    broadcast_variables,
    updated_state,
    wrap_optimizer,
)
from layer2_training.model import BACKBONE_NAME, build_model, set_phase

FINE_TUNE_FROM = "block_16_expand"


@pytest.fixture(scope="module")
def model() -> tf.keras.Model:
    # fast-moving statistics, so one step visibly changes every moving mean and variance it touches
    cfg = ModelConfig(backbone="mobilenetv2", head=HeadConfig(dense_units=[8]), batchnorm_momentum=0.5)
    return build_model(cfg, 32, 32, None, None)


def names(variables: list) -> set[str]:
    return {v.name for v in variables}


def changed_by_one_step(model: tf.keras.Model) -> set[str]:
    """Names of the non-trainable variables one training step changes."""
    before = {v.name: v.numpy().copy() for v in model.non_trainable_variables}
    model.compile(optimizer=tf.keras.optimizers.legacy.SGD(0.01), loss="binary_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    model.fit(x, np.array([[1.0], [0.0], [1.0], [0.0]]), epochs=1, batch_size=4, verbose=0)
    return {v.name for v in model.non_trainable_variables if not np.array_equal(v.numpy(), before[v.name])}


def test_head_phase_averages_nothing(model: tf.keras.Model) -> None:
    set_phase(model, True, None)
    assert len(model.non_trainable_variables) > 200  # the whole frozen backbone, which was allreduced before
    assert updated_state(model) == []
    assert changed_by_one_step(model) == set()


def test_fine_tune_averages_the_moving_statistics_of_the_trained_blocks(model: tf.keras.Model) -> None:
    set_phase(model, False, FINE_TUNE_FROM)
    layers = model.get_layer(BACKBONE_NAME).layers
    start = [layer.name for layer in layers].index(FINE_TUNE_FROM)
    trained_bn = [layer for layer in layers[start:] if isinstance(layer, tf.keras.layers.BatchNormalization)]
    assert [layer.name for layer in trained_bn] == ["block_16_expand_BN", "block_16_depthwise_BN",
                                                    "block_16_project_BN", "Conv_1_bn"]
    expected = {v.name for layer in trained_bn for v in (layer.moving_mean, layer.moving_variance)}
    assert names(updated_state(model)) == expected
    assert changed_by_one_step(model) == expected


def test_full_fine_tune_averages_every_moving_statistic(model: tf.keras.Model) -> None:
    set_phase(model, False, None)
    state = updated_state(model)
    assert len(state) == len(model.non_trainable_variables) == 2 * 52  # MobileNetV2 has 52 BatchNorm layers
    assert all(v.name.endswith(("moving_mean:0", "moving_variance:0")) for v in state)
    assert changed_by_one_step(model) == names(state)
    # the order is the model's, so every rank allreduces the same variable under the same name
    assert [v.name for v in state] == [v.name for v in model.non_trainable_variables]


def test_single_process_helpers_leave_everything_as_it_is() -> None:
    dist = Dist()
    assert dist.is_chief and dist.size == 1
    assert any_rank(dist, True) is True and any_rank(dist, False) is False
    optimizer = tf.keras.optimizers.legacy.SGD(0.1)
    assert wrap_optimizer(dist, optimizer) is optimizer
    var = tf.Variable([1.0, 2.0])
    broadcast_variables(dist, [var])
    average_variables(dist, [var])
    np.testing.assert_array_equal(var.numpy(), [1.0, 2.0])


class LockstepEngine:
    """Two ranks as two threads, whose collectives must come in the same order and kind on both (as TF's collective
    ops pair up by order): a mismatch or a rank that never arrives fails the test instead of hanging it."""

    name = "lockstep"
    saves_on_every_rank = True

    def __init__(self, rank: int, shared: dict) -> None:
        self.rank, self.shared = rank, shared

    def _call(self, kind: str, value: object) -> list[object]:
        slots, barrier = self.shared["slots"], self.shared["barrier"]
        slots[self.rank] = (kind, value)
        barrier.wait()
        seen = list(slots)
        barrier.wait()
        if len({k for k, _ in seen}) > 1:
            raise AssertionError(f"mismatched collectives: {seen}")
        return [v for _, v in seen]

    def any_rank(self, flag: bool) -> bool:
        return any(self._call("any", flag))

    def chief_flag(self, flag: bool) -> bool:
        return bool(self._call("chief", flag)[0])

    def collective_save(self) -> None:  # a checkpoint save's read of the BatchNorm statistics
        self._call("save", None)


def test_a_save_failing_on_one_rank_before_the_collective_part_stops_every_rank_without_a_hang() -> None:
    """Regression: under tf.distribute a rank whose history write failed (full disk) went straight to its failure
    vote while the others were in the checkpoint save's collective read: the collectives paired up wrongly."""
    import threading

    from layer2_training.distributed import ChiefFailed, in_step, on_writers

    shared = {"slots": [None, None], "barrier": threading.Barrier(2, timeout=10)}
    outcome: dict[int, BaseException | None] = {}

    def rank(r: int) -> None:
        engine = LockstepEngine(r, shared)
        dist = Dist(rank=r, size=2, engine=engine)

        def stage() -> None:
            if r == 1:
                raise OSError(28, "No space left on device")

        def save_epoch() -> None:  # as CheckpointCallback._save_epoch: stage the history row, then save
            in_step(dist, stage)
            in_step(dist, engine.collective_save)

        try:
            on_writers(dist, save_epoch)
            outcome[r] = None
        except BaseException as err:  # noqa: BLE001 - the outcome is what the test checks
            outcome[r] = err

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert isinstance(outcome[1], OSError), outcome  # its own error (the CLI's one error line)
    assert isinstance(outcome[0], ChiefFailed), outcome  # stops too, told why
