"""How the tf_distribute engine finds its workers (SLURM's variables, TF_CONFIG) and what it refuses, without
starting any: the cluster runs are in test_tf_distribute.py."""

from __future__ import annotations

import itertools
import json

import pytest

from layer1_patches.shared.errors import CamnetError
from layer2_training import distributed, tf_distribute_engine
from layer2_training.config import DistributedConfig
from layer2_training.tf_distribute_engine import slurm_port, slurm_resolver, tf_config_resolver


def slurm_env(monkeypatch: pytest.MonkeyPatch, rank: int, node: str, **extra: str) -> dict[str, str]:
    """srun -N2 --ntasks-per-node=2 (block distribution: ranks 0, 1 on n1; 2, 3 on n2), in os.environ too: the
    resolver reads it there."""
    env = {"SLURM_JOB_ID": "1234", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % 2),
            "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
            "SLURMD_NODENAME": node, **extra}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_slurm_spec_on_cpu_only_nodes_has_every_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: SlurmClusterResolver pairs tasks with GPU ids, so without GPUs (gpus_per_node=0) its cluster
    spec had no task at all."""
    spec, rank, local = slurm_resolver(None, slurm_env(monkeypatch, 3, "n2"))
    port = slurm_port({"SLURM_JOB_ID": "1234"})
    assert port == 20000 + 40 * 234
    assert spec.as_dict() == {"worker": [f"n1:{port}", f"n1:{port + 1}", f"n2:{port}", f"n2:{port + 1}"]}
    assert (rank, local) == (3, 1)
    assert slurm_resolver(21000, slurm_env(monkeypatch, 0, "n1"))[0].as_dict()["worker"][0] == "n1:21000"


def test_a_rank_not_where_the_block_order_puts_it_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: with cyclic distribution rank 1 runs on n2 while the spec says n1; its peers dial n1 and hang."""
    with pytest.raises(CamnetError, match=r"rank 1 runs on n2 but SLURM's block order puts it on n1 .*"
                                          r"SLURM_DISTRIBUTION=cyclic.*--distribution=block"):
        slurm_resolver(None, slurm_env(monkeypatch, 1, "n2", SLURM_DISTRIBUTION="cyclic"))


def test_jobs_sharing_a_node_get_ports_apart() -> None:
    ports = {slurm_port({"SLURM_JOB_ID": str(job)}) for job in range(5000, 5010)}
    assert len(ports) == 10 and min(b - a for a, b in itertools.pairwise(sorted(ports))) == 40
    assert slurm_port({}) == 20000


def test_tf_config_gives_rank_and_local_rank() -> None:
    workers = ["a:1", "a:2", "b:1"]
    spec, rank, local = tf_config_resolver(json.dumps({"cluster": {"worker": workers},
                                                       "task": {"type": "worker", "index": 1}}))
    assert spec.as_dict() == {"worker": workers} and (rank, local) == (1, 1)
    assert tf_config_resolver(json.dumps({"cluster": {"worker": workers},
                                          "task": {"type": "worker", "index": 2}}))[1:] == (2, 0)


@pytest.mark.parametrize("text, message", [
    ("{not json", r"TF_CONFIG: not a worker cluster and task \(JSONDecodeError"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), r"TF_CONFIG: not a worker cluster and task \(KeyError: 'task'"),
    (json.dumps({"cluster": {"chief": ["a:1"], "worker": ["a:2"]}, "task": {"type": "chief", "index": 0}}),
     r"workers only.*cluster jobs \['chief', 'worker'\], task chief 0"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}), r"task worker 3"),
])
def test_a_tf_config_that_is_not_a_worker_cluster_is_one_error(text: str, message: str) -> None:
    with pytest.raises(CamnetError, match=message):
        tf_config_resolver(text)


def test_ranks_launched_without_srun_or_tf_config_are_refused() -> None:
    """Regression: mpirun -np 2 without TF_CONFIG would have started two lone workers, each training on all the
    data into the same run dir."""
    with pytest.raises(CamnetError, match=r"tf_distribute: 2 ranks were launched but not by srun, and TF_CONFIG is "
                                          r"not set"):
        tf_distribute_engine.init(None, {"OMPI_COMM_WORLD_SIZE": "2"})


def test_one_process_has_no_engine() -> None:
    dist = tf_distribute_engine.init(None, {})
    assert dist.engine is None and dist.size == 1


def test_a_tf_config_of_one_worker_inside_a_two_task_step_is_refused() -> None:
    """Regression: a TF_CONFIG inherited into an srun step of 2 tasks made each a lone worker training on all the
    data (the world-size check came after the one-worker return)."""
    one = json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}})
    with pytest.raises(CamnetError, match=r"the launcher started 2 ranks \(SLURM_STEP_NUM_TASKS=2\) but "
                                          r"tf.distribute \(TF_CONFIG\) reports a world of size 1"):
        tf_distribute_engine.init(None, {"TF_CONFIG": one, "SLURM_STEP_NUM_TASKS": "2"})


def test_horovod_asked_for_where_it_is_not_installed_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TF_CONFIG", "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "HOROVOD_SIZE"):
        monkeypatch.delenv(var, raising=False)  # one plain process, whatever launched the tests
    monkeypatch.setattr(distributed, "horovod_importable", lambda: False)
    with pytest.raises(CamnetError, match=r"config key 'distributed.engine': horovod is not installed in this "
                                          r"environment .*set distributed.engine: tf_distribute"):
        distributed.init(DistributedConfig(engine="horovod"))
    # unset: the other engine, which trains one process alone
    assert distributed.init(DistributedConfig()).engine is None


def test_horovod_installed_but_not_importable_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a Horovod built against another TensorFlow ended the run in an ImportError traceback."""
    from layer2_training import horovod_engine

    def broken() -> None:
        raise ImportError("/venv/horovod/tensorflow/mpi_lib.so: undefined symbol: _ZN10tensorflow8OpKernel\nmore")

    monkeypatch.setattr(distributed, "horovod_importable", lambda: True)
    monkeypatch.setattr(horovod_engine, "init", broken)
    with pytest.raises(CamnetError, match=r"^config key 'distributed.engine': horovod is installed but cannot be "
                                          r"imported \(/venv/horovod/tensorflow/mpi_lib.so: undefined symbol: "
                                          r"_ZN10tensorflow8OpKernel\); rebuild it .*tf_distribute$"):
        distributed.init(DistributedConfig(engine="horovod"))
