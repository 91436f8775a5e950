"""Horovod (TF <= 2.18): ranks from horovodrun, mpirun or srun --mpi=pmix; gradients averaged by its
DistributedOptimizer, everything else by its named collectives. Rank 0 alone writes checkpoints."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import tensorflow as tf

from layer1_patches.shared.launch import check_world_size
from layer2_training.ranks import Dist, pin_gpu


class HorovodEngine:
    name = "horovod"
    saves_on_every_rank = False

    def __init__(self, hvd: Any) -> None:
        import horovod.tensorflow as hvd_tf

        self.hvd, self.tf = hvd, hvd_tf  # horovod.tensorflow.keras, horovod.tensorflow

    def scope(self) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def distribute(self, make: Callable[[], tf.data.Dataset]) -> Any:
        return make()

    def wrap_optimizer(self, optimizer: Any) -> Any:
        return self.hvd.DistributedOptimizer(optimizer)

    def fit_callbacks(self) -> list[Any]:
        # validation metrics are computed on each rank's shard; averaging them is exact for loss and accuracy,
        # an approximation for AUC (the final metrics.json AUC is exact)
        return [self.hvd.callbacks.MetricAverageCallback()]

    def any_rank(self, flag: bool) -> bool:
        total = self.tf.allreduce(tf.constant(1.0 if flag else 0.0), op=self.tf.Sum, name="camnet_stop")
        return bool(float(total) > 0)

    def chief_flag(self, flag: bool) -> bool:
        value = self.tf.broadcast(tf.constant(1 if flag else 0, dtype=tf.int32), root_rank=0, name="camnet_chief_ok")
        return bool(int(value))

    def broadcast_variables(self, variables: list[Any]) -> None:
        self.tf.broadcast_variables(variables, root_rank=0)

    def average_variables(self, variables: list[Any]) -> None:
        for i, var in enumerate(variables):
            var.assign(self.tf.allreduce(var, op=self.tf.Average, name=f"camnet_avg_{i}"))

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        return list(self.tf.allgather_object(obj, name=name))

    def local_value(self, variable: Any) -> np.ndarray:
        return np.asarray(variable.numpy())


def init() -> Dist:
    """Horovod's world; one process (no engine) when it has a single rank."""
    import horovod.tensorflow.keras as hvd

    hvd.init()
    check_world_size("Horovod", hvd.size())
    pin_gpu(hvd.local_rank())
    if hvd.size() == 1:
        return Dist()
    return Dist(hvd.rank(), hvd.size(), hvd.local_rank(), HorovodEngine(hvd))
