"""Ranks that train together through an engine (Horovod or tf.distribute), or one plain process.

The training loop sees one interface, `Dist`, whatever the engine: which rank this is, the collectives it needs
outside Keras' own steps (stop together, rank 0's answer, averages, gathers, broadcasts), where the model and
optimiser are built (`scope`), how a rank's dataset is handed to `fit` (`distribute`), and who writes
checkpoints. The engines (`horovod_engine`, `tf_distribute_engine`) give the same guarantees, tested on both:
disjoint shards that cover the split, identical weights on every rank, BatchNorm statistics averaged at each
epoch's end, rank 0 writing the run directory, a preempted run resuming to the weights of an uninterrupted one.

Engine choice (`distributed.engine`): Horovod when importable (TF 2.15, the default), else tf.distribute's
MultiWorkerMirroredStrategy (any TF from 2.15; the only one on TF >= 2.19). One process trains alone with
either, exactly as without an engine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import tensorflow as tf

from layer1_patches.shared.errors import CamnetError, first_line

# the types live in `ranks` (the engines import them without importing this module); callers know them from here
from layer2_training.ranks import Dist as Dist
from layer2_training.ranks import Engine as Engine
from layer2_training.ranks import pin_gpu as pin_gpu

if TYPE_CHECKING:
    from layer2_training.config import DistributedConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


def horovod_importable() -> bool:
    return importlib.util.find_spec("horovod") is not None


def init(cfg: DistributedConfig | None = None) -> Dist:
    """The configured engine's world (`distributed.engine`; null: Horovod when importable, else tf.distribute).

    An error when the launcher started several ranks and the engine sees another number (gloo under srun without
    a rendezvous: every rank alone, each training on all the data)."""
    engine = cfg.engine if cfg is not None else None
    port = cfg.port if cfg is not None else None
    if engine is None:
        engine = "horovod" if horovod_importable() else "tf_distribute"
    if engine == "horovod":
        if not horovod_importable():
            raise CamnetError("config key 'distributed.engine': horovod is not installed in this environment "
                              "(it builds against TF <= 2.18: `make horovod`); set distributed.engine: tf_distribute")
        from layer2_training import horovod_engine

        try:
            dist = horovod_engine.init()
        except ImportError as err:  # installed, but built against another TensorFlow (or its MPI is missing)
            raise CamnetError(f"config key 'distributed.engine': horovod is installed but cannot be imported "
                              f"({first_line(err)}); rebuild it against this TensorFlow (`make horovod`) or set "
                              "distributed.engine: tf_distribute") from None
    else:
        from layer2_training import tf_distribute_engine

        dist = tf_distribute_engine.init(port)
    if dist.engine is None:
        return Dist(placement=((socket.gethostname(), 0),))
    placement = tuple(tuple(p) for p in gather_arrays(dist, [socket.gethostname(), dist.local_rank],
                                                      "camnet_placement"))
    return Dist(dist.rank, dist.size, dist.local_rank, dist.engine, placement)


def scope(dist: Dist) -> AbstractContextManager[Any]:
    """Where the model, its optimiser and metrics are built (tf.distribute mirrors what is created there)."""
    return dist.engine.scope() if dist.engine is not None else contextlib.nullcontext()


def distribute(dist: Dist, make: Callable[[], tf.data.Dataset]) -> Any:
    """This rank's dataset (`make()`, already this rank's shard) as `fit` takes it under the engine."""
    return dist.engine.distribute(make) if dist.engine is not None else make()


def fit_callbacks(dist: Dist) -> list[Any]:
    return dist.engine.fit_callbacks() if dist.engine is not None else []


def wrap_optimizer(dist: Dist, optimizer: Any) -> Any:
    return dist.engine.wrap_optimizer(optimizer) if dist.engine is not None else optimizer


def any_rank(dist: Dist, flag: bool) -> bool:
    """True on every rank when any rank saw `flag`: all ranks must stop at the same step."""
    return dist.engine.any_rank(flag) if dist.engine is not None else flag


def broadcast_variables(dist: Dist, variables: list[Any]) -> None:
    """Rank 0's initial (or restored) state everywhere, before the first step."""
    if dist.engine is not None:
        dist.engine.broadcast_variables(variables)


def local_values(dist: Dist, variables: list[Any]) -> list[np.ndarray]:
    """This rank's own values: under tf.distribute, reading a BatchNorm statistic otherwise averages it over
    the ranks (a collective)."""
    if dist.engine is None:
        return [np.asarray(v.numpy()) for v in variables]
    return [dist.engine.local_value(v) for v in variables]


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
    if dist.engine is not None and variables:
        dist.engine.average_variables(variables)


def statistics(model: tf.keras.Model) -> list[Any]:
    """The variables no optimiser trains (BatchNorm moving statistics), by how they were created: unlike
    `model.non_trainable_variables` the list does not change with the phase's frozen layers."""
    return [v for v in model.weights if not v.trainable]


def gather_arrays(dist: Dist, arrays: list[Any], name: str = "camnet_rank_state") -> list[list[Any]]:
    """Every rank's `arrays` (numpy arrays or plain values), in rank order, on every rank."""
    if dist.engine is None:
        return [arrays]
    return list(dist.engine.allgather_object(arrays, name))


class ChiefFailed(Exception):
    """Raised on the other ranks when rank 0 (or a rank writing with it) failed (its error line says why), so
    that every rank stops."""


def chief_ok(dist: Dist, ok: bool) -> bool:
    """Rank 0's `ok` on every rank; the other ranks' values are ignored."""
    return dist.engine.chief_flag(ok) if dist.engine is not None else ok


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


def on_writers(dist: Dist, action: Callable[[], object]) -> None:
    """Run a checkpoint save on rank 0, or on every rank when the engine's saves are collective (the others
    write into their scratch folders); if any rank fails, every rank stops (as `on_chief`). Under tf.distribute an
    action whose first failure could come before a collective save runs its steps through `in_step`."""
    if dist.saves_on_every_rank:
        in_step(dist, action)
    else:
        on_chief(dist, action)


def in_step(dist: Dist, action: Callable[[], T]) -> T:
    """One step of an `on_writers` action: where every rank saves, all ranks learn that every rank's step succeeded
    before any goes on to the next collective. A rank whose history write failed (full disk) would otherwise skip
    the checkpoint save whose BatchNorm reads the others wait in, and the ranks' collectives would pair up wrongly:
    a hang, or a stop without the error line."""
    if not dist.saves_on_every_rank:
        return action()
    try:
        out = action()
    except BaseException:
        any_rank(dist, True)
        raise
    if any_rank(dist, False):
        raise ChiefFailed(f"rank {dist.rank}: stopped because another rank failed to save (its error line says why)")
    return out


@contextlib.contextmanager
def exported(dist: Dist, model: tf.keras.Model, rebuild: Callable[[], tf.keras.Model]) -> Iterator[Any]:
    """The trained model as rank 0 exports and evaluates it (None on the other ranks): the model itself, or
    under tf.distribute a plain copy (`rebuild()` outside the strategy, same phase) holding its weights, read
    on every rank (a collective), since predicting or saving the mirrored model on rank 0 alone would hang.
    Under tf.distribute the other ranks then wait for rank 0's export and evaluation, and stop with it if it
    fails: a worker leaving early is reported to the chief as a failed task by TensorFlow's coordination service."""
    if not dist.saves_on_every_rank:
        yield model if dist.is_chief else None
        return
    weights = model.get_weights()
    if not dist.is_chief:
        yield None
        if not chief_ok(dist, True):
            raise ChiefFailed(f"rank {dist.rank}: stopped because rank 0 failed (its error line says why)")
        return
    plain = rebuild()
    plain.set_weights(weights)
    try:
        yield plain
    except BaseException:
        chief_ok(dist, False)
        raise
    chief_ok(dist, True)
