"""tf.distribute's MultiWorkerMirroredStrategy, on any TensorFlow from 2.15 (with tf_keras from 2.16).

The workers find each other through SLURM (`srun`: `SlurmClusterResolver`) or `TF_CONFIG`; one process without
either trains alone, with no strategy. Each rank is one replica (one GPU, or the CPU), as a Horovod rank: the
batch size and the data shard are per rank, and each rank's own `tf.data` pipeline goes to `fit` whole
(`distribute_datasets_from_function`, no re-batching, so ranks' batches may differ by one sample as Horovod's).

Found when probing, and handled here:
- `SlurmClusterResolver` builds no cluster without GPUs (its task list zips the tasks with the GPU ids), so it
  is given one notional GPU per task for the spec only, and the strategy is told the GPUs this rank really sees.
- Its spec packs ranks onto the sorted node names in order (block distribution); a rank placed otherwise would
  serve on another node than the one the others dial, and the step would hang: refused with one error line.
- BatchNorm statistics are sync-on-read variables: reading one (a checkpoint save, `get_weights`) averages it
  over the workers, a collective, so every rank saves (`saves_on_every_rank`) and exports go through a plain copy
  (`distributed.exported`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import tensorflow as tf

from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.launch import check_world_size, launched_size
from layer2_training.ranks import Dist, one_replica_per_rank, pin_gpu

PORT_BASE, PORT_STRIDE, PORT_JOBS = 20000, 40, 1000  # ports 20000-59999; up to 40 ranks per node


def slurm_port(environ: Mapping[str, str]) -> int:
    """First port of a node's ranks: apart for jobs whose ids differ by less than 1000, so jobs sharing a node
    do not collide."""
    job = environ.get("SLURM_JOB_ID", "0")
    return PORT_BASE + PORT_STRIDE * (int(job) % PORT_JOBS if job.isdigit() else 0)


class TfDistributeEngine:
    name = "tf_distribute"
    saves_on_every_rank = True

    def __init__(self, strategy: Any, rank: int, size: int) -> None:
        self.strategy, self.rank, self.size = strategy, rank, size

    def scope(self) -> AbstractContextManager[Any]:
        return self.strategy.scope()

    def distribute(self, make: Callable[[], tf.data.Dataset]) -> Any:
        return self.strategy.distribute_datasets_from_function(lambda _context: make())

    def wrap_optimizer(self, optimizer: Any) -> Any:
        return optimizer  # the strategy all-reduces gradients inside `fit`

    def fit_callbacks(self) -> list[Any]:
        return []  # metrics are sync-on-read: the logs are already over all ranks (AUC exact)

    def _sum(self, array: np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks, the same array on every rank (a ring all-reduce)."""
        value = tf.constant(array)
        per_replica = self.strategy.run(lambda: tf.identity(value))
        return np.asarray(self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))

    def any_rank(self, flag: bool) -> bool:
        return bool(self._sum(np.array(1.0 if flag else 0.0, np.float32)) > 0)

    def chief_flag(self, flag: bool) -> bool:
        mine = 1.0 if flag and self.rank == 0 else 0.0  # only rank 0's counts
        return bool(self._sum(np.array(mine, np.float32)) > 0)

    def _sum_by_dtype(self, values: list[np.ndarray]) -> list[np.ndarray]:
        """Sums of `values` over ranks, one all-reduce per dtype (not per variable: a model has hundreds)."""
        out: list[np.ndarray | None] = [None] * len(values)
        for dtype in dict.fromkeys(v.dtype for v in values):
            picked = [i for i, v in enumerate(values) if v.dtype == dtype]
            summed = self._sum(np.concatenate([values[i].ravel() for i in picked]))
            ends = np.cumsum([values[i].size for i in picked])
            for i, part in zip(picked, np.split(summed, ends[:-1]), strict=True):
                out[i] = part.reshape(values[i].shape)
        return [v for v in out if v is not None]

    def broadcast_variables(self, variables: list[Any]) -> None:
        # rank 0's values plus zeros from the others: exact for any dtype
        local = [self.local_value(v) for v in variables]
        mine = local if self.rank == 0 else [np.zeros_like(v) for v in local]
        for var, value in zip(variables, self._sum_by_dtype(mine), strict=True):
            var.assign(value)

    def average_variables(self, variables: list[Any]) -> None:
        local = [self.local_value(v) for v in variables]
        for var, value in zip(variables, self._sum_by_dtype(local), strict=True):
            var.assign((value / self.size).astype(value.dtype))

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        del name  # collectives are matched by call order
        blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        lengths = np.zeros(self.size, np.int64)
        lengths[self.rank] = len(blob)
        lengths = self._sum(lengths)
        width = -(-int(lengths.max()) // 8)  # int64 words (the collective takes no bytes)
        table = np.zeros((self.size, width * 8), np.uint8)
        table[self.rank, :len(blob)] = np.frombuffer(blob, np.uint8)
        words = self._sum(table.view(np.int64).ravel()).reshape(self.size, width)
        rows = words.view(np.uint8)
        return [pickle.loads(rows[r, :int(lengths[r])].tobytes()) for r in range(self.size)]

    def local_value(self, variable: Any) -> np.ndarray:
        return np.asarray(self.strategy.experimental_local_results(variable)[0].numpy())


def host_of(address: str) -> str:
    """"n1" of "n1:20000"."""
    return address.rsplit(":", 1)[0]


def slurm_resolver(port: int | None, environ: Mapping[str, str]) -> tuple[Any, int, int]:
    """(cluster spec, rank, local rank) of this srun task."""
    from tensorflow.python.distribute.cluster_resolver import SlurmClusterResolver

    tasks = int(environ["SLURM_STEP_NUM_TASKS"])
    # one notional GPU per task: its spec has no task otherwise on CPU-only nodes (see the module doc)
    resolver = SlurmClusterResolver(jobs={"worker": tasks}, port_base=port or slurm_port(environ),
                                    gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)
    spec = resolver.cluster_spec()
    rank = int(environ["SLURM_PROCID"])
    node = environ.get("SLURMD_NODENAME")
    host = host_of(spec.as_dict()["worker"][rank])
    if node and host != node:
        raise CamnetError(f"tf_distribute: rank {rank} runs on {node} but SLURM's block order puts it on {host} "
                          f"(SLURM_DISTRIBUTION={environ.get('SLURM_DISTRIBUTION', 'unset')}); launch with "
                          "srun --distribution=block")
    return spec, rank, int(environ.get("SLURM_LOCALID", "0"))


def tf_config_resolver(text: str) -> tuple[Any, int, int]:
    """(cluster spec, rank, local rank) from TF_CONFIG: workers only, rank = the task index."""
    try:
        config = json.loads(text)
        workers, task = config["cluster"]["worker"], config["task"]
        kind, rank = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise CamnetError(f"TF_CONFIG: not a worker cluster and task ({type(err).__name__}: {err})") from None
    if set(config["cluster"]) != {"worker"} or kind != "worker" or not 0 <= rank < len(workers):
        raise CamnetError("TF_CONFIG: tf_distribute takes a cluster of workers only, this task one of them "
                          f"(cluster jobs {sorted(config['cluster'])}, task {kind} {rank})")
    local = sum(1 for w in workers[:rank] if host_of(w) == host_of(workers[rank]))
    return tf.train.ClusterSpec({"worker": workers}), rank, local


def init(port: int | None, environ: Mapping[str, str] | None = None) -> Dist:
    env = os.environ if environ is None else environ
    launched = launched_size(env)
    if env.get("TF_CONFIG"):
        spec, rank, local = tf_config_resolver(env["TF_CONFIG"])
    elif launched > 1 and "SLURM_PROCID" in env and env.get("SLURM_STEP_NUM_TASKS"):
        spec, rank, local = slurm_resolver(port, env)
    elif launched > 1:
        raise CamnetError(f"tf_distribute: {launched} ranks were launched but not by srun, and TF_CONFIG is not "
                          "set: the ranks cannot find each other (launch with srun, or set TF_CONFIG)")
    else:
        pin_gpu(0)
        return Dist()
    size = spec.num_tasks("worker")
    # before anything waits for workers: a TF_CONFIG inherited into a 2-task srun step, say, names another world
    check_world_size("tf.distribute (TF_CONFIG)" if env.get("TF_CONFIG") else "tf.distribute", size, env)
    pin_gpu(local)
    if size == 1:
        return Dist()
    from tensorflow.python.distribute.cluster_resolver import SimpleClusterResolver

    gpus = len(tf.config.get_visible_devices("GPU"))
    resolver = SimpleClusterResolver(spec, task_type="worker", task_id=rank, num_accelerators={"GPU": gpus},
                                     rpc_layer="grpc")
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    # it logs every collective at INFO ("Collective all_reduce tensors: ..."): thousands of lines per epoch
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    dist = Dist(rank, size, local, TfDistributeEngine(strategy, rank, size))
    one_replica_per_rank(dist, strategy.num_replicas_in_sync)
    return dist
