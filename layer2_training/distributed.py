"""Horovod when launched under horovodrun/mpirun/srun, a plain single process otherwise."""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from layer1_patches.shared.launch import check_world_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    hvd: Any = None  # horovod.tensorflow.keras when size > 1
    # every rank's host and local rank, in rank order (environment.json records where the ranks ran)
    placement: tuple[tuple[str, int], ...] = ()

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def pin_gpu(local_rank: int) -> None:
    """One GPU per local rank, growing memory as needed (several ranks may share a node)."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[local_rank % len(gpus)], "GPU")


def init() -> Dist:
    """Horovod's world, or one process; an error when the launcher started several ranks and Horovod sees
    another number (gloo under srun without a rendezvous: every rank alone, each training on all the data)."""
    try:
        import horovod.tensorflow.keras as hvd
    except ImportError:
        check_world_size("this process (Horovod is not importable)", 1)
        log.info("horovod not importable: single process")
        hvd = None
    else:
        hvd.init()
        check_world_size("Horovod", hvd.size())
    local_rank = hvd.local_rank() if hvd is not None else 0
    pin_gpu(local_rank)
    if hvd is None or hvd.size() == 1:
        return Dist(placement=((socket.gethostname(), local_rank),))
    dist = Dist(hvd.rank(), hvd.size(), local_rank, hvd)
    placement = tuple(tuple(p) for p in gather_arrays(dist, [socket.gethostname(), local_rank], "camnet_placement"))
    return dataclasses.replace(dist, placement=placement)


def wrap_optimizer(dist: Dist, optimizer: Any) -> Any:
    if dist.hvd is None:
        return optimizer
    return dist.hvd.DistributedOptimizer(optimizer)


def any_rank(dist: Dist, flag: bool) -> bool:
    """True on every rank when any rank saw `flag`: all ranks must stop at the same step."""
    if dist.hvd is None:
        return flag
    import horovod.tensorflow as hvd_tf

    total = hvd_tf.allreduce(tf.constant(1.0 if flag else 0.0), op=hvd_tf.Sum, name="camnet_stop")
    return bool(float(total) > 0)


def broadcast_variables(dist: Dist, variables: list[Any]) -> None:
    """Rank 0's initial (or restored) state everywhere, before the first step."""
    if dist.hvd is not None:
        import horovod.tensorflow as hvd_tf

        hvd_tf.broadcast_variables(variables, root_rank=0)


def updated_state(model: tf.keras.Model) -> list[Any]:
    """The model's non-trainable variables that training changes: those of trainable layers (BatchNorm
    moving statistics), in `model.non_trainable_variables` order, the same on every rank.

    Variables of frozen layers (the whole backbone in the head phase, the blocks before `fine_tune_from`
    afterwards) are left out: frozen layers get no gradients and run BatchNorm in inference mode, so those
    variables keep the values broadcast at the start, identical on every rank, and averaging them would
    allreduce the frozen weights (MobileNetV2: 2.3M values; ResNet50: 23.6M) every epoch for nothing.
    """
    frozen: set[Any] = set()

    def walk(layer: Any) -> None:
        if not layer.trainable:
            frozen.update(v.ref() for v in layer.weights)  # a frozen layer's weights include its sublayers'
            return
        for sub in getattr(layer, "layers", []):  # nested models (the backbone) may be partly frozen
            walk(sub)

    walk(model)
    return [v for v in model.non_trainable_variables if v.ref() not in frozen]


def average_variables(dist: Dist, variables: list[Any]) -> None:
    """Average non-trained state (BatchNorm moving statistics) over ranks.

    Each rank updates moving statistics from its own shard; averaging them once per epoch keeps the ranks
    identical and makes rank 0's checkpoint reflect all the data.
    """
    if dist.hvd is None or not variables:
        return
    import horovod.tensorflow as hvd_tf

    for i, var in enumerate(variables):
        var.assign(hvd_tf.allreduce(var, op=hvd_tf.Average, name=f"camnet_avg_{i}"))


def statistics(model: tf.keras.Model) -> list[Any]:
    """The variables no optimiser trains (BatchNorm moving statistics), by how they were created: unlike
    `model.non_trainable_variables` the list does not change with the phase's frozen layers."""
    return [v for v in model.weights if not v.trainable]


def gather_arrays(dist: Dist, arrays: list[Any], name: str = "camnet_rank_state") -> list[list[Any]]:
    """Every rank's `arrays` (numpy arrays or plain values), in rank order, on every rank."""
    if dist.hvd is None:
        return [arrays]
    import horovod.tensorflow as hvd_tf

    return list(hvd_tf.allgather_object(arrays, name=name))


class ChiefFailed(Exception):
    """Raised on the other ranks when rank 0 failed (its error line says why), so that every rank stops."""


def chief_ok(dist: Dist, ok: bool) -> bool:
    """Rank 0's `ok` on every rank; the other ranks' values are ignored."""
    if dist.hvd is None:
        return ok
    import horovod.tensorflow as hvd_tf

    value = hvd_tf.broadcast(tf.constant(1 if ok else 0, dtype=tf.int32), root_rank=0, name="camnet_chief_ok")
    return bool(int(value))


def on_chief(dist: Dist, action: Callable[[], object]) -> None:
    """Run `action` (a write to the run dir, taking its lock) on rank 0 only; if it fails, every rank stops.

    Rank 0 re-raises its exception (one error line), the others raise `ChiefFailed`. Without this the other
    ranks would wait for rank 0 in their next collective until the launcher noticed it had exited.
    """
    try:
        if dist.is_chief:
            action()
    except BaseException:
        chief_ok(dist, False)
        raise
    if not chief_ok(dist, True):
        raise ChiefFailed(f"rank {dist.rank}: stopped because rank 0 failed (its error line says why)")
