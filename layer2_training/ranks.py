"""Who this rank is (`Dist`) and what an engine does for it (`Engine`): the types the training loop, the engines
(`horovod_engine`, `tf_distribute_engine`) and `distributed` share, apart so that none imports another's module."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tensorflow as tf

from layer1_patches.shared.errors import CamnetError


class Engine(Protocol):
    """What an engine does for `Dist`; every collective is called by all ranks in the same order."""

    name: str
    # tf.distribute reads BatchNorm statistics (sync-on-read variables) through a collective, so a checkpoint
    # save is collective: every rank saves, the others into a scratch folder. Horovod: rank 0 alone.
    saves_on_every_rank: bool

    def scope(self) -> AbstractContextManager[Any]: ...
    def distribute(self, make: Callable[[], tf.data.Dataset]) -> Any: ...
    def wrap_optimizer(self, optimizer: Any) -> Any: ...
    def fit_callbacks(self) -> list[Any]: ...
    def any_rank(self, flag: bool) -> bool: ...
    def chief_flag(self, flag: bool) -> bool: ...
    def broadcast_variables(self, variables: list[Any]) -> None: ...
    def average_variables(self, variables: list[Any]) -> None: ...
    def allgather_object(self, obj: Any, name: str) -> list[Any]: ...
    def local_value(self, variable: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    engine: Engine | None = None  # None: one process
    # every rank's host and local rank, in rank order (environment.json records where the ranks ran)
    placement: tuple[tuple[str, int], ...] = ()

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def engine_name(self) -> str:
        return self.engine.name if self.engine is not None else "none"

    @property
    def saves_on_every_rank(self) -> bool:
        return self.engine is not None and self.engine.saves_on_every_rank


def pin_gpu(local_rank: int) -> None:
    """One GPU per local rank, growing memory as needed (several ranks may share a node)."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[local_rank % len(gpus)], "GPU")


def one_replica_per_rank(dist: Dist, replicas: int) -> None:
    """Each rank is one replica (one GPU, or the CPU), as Horovod's ranks: the batch size and the sharding
    are per rank."""
    if replicas != dist.size:
        raise CamnetError(f"{dist.engine_name}: {replicas} replicas on {dist.size} ranks; run one rank per GPU "
                          "(srun --ntasks-per-node = GPUs per node)")
