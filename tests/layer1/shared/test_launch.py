"""The launcher's world size against the runtime's: the gloo-under-srun trap (issue 19)."""

from __future__ import annotations

import pytest

from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.launch import check_world_size, launched_size


def test_a_plain_process_and_a_one_task_step_are_one_rank() -> None:
    assert launched_size({}) == 1
    assert launched_size({"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "4"}) == 1
    # the innermost launcher decides: `mpirun -np 1` (or horovodrun) inside a step of 4 tasks is one rank
    assert launched_size({"OMPI_COMM_WORLD_SIZE": "1", "SLURM_STEP_NUM_TASKS": "4"}) == 1
    assert launched_size({"HOROVOD_SIZE": "1", "SLURM_STEP_NUM_TASKS": "4"}) == 1
    check_world_size("Horovod", 1, {"SLURM_NTASKS": "4"})  # a batch script, no srun: not started as ranks


@pytest.mark.parametrize("env", [{"SLURM_STEP_NUM_TASKS": "3"}, {"OMPI_COMM_WORLD_SIZE": "3"},
                                 {"HOROVOD_SIZE": "3", "SLURM_STEP_NUM_TASKS": "1"}, {"PMI_SIZE": "3"}])
def test_each_launcher_variable_counts(env: dict[str, str]) -> None:
    assert launched_size(env) == 3
    check_world_size("Horovod", 3, env)


def test_gloo_under_srun_without_rendezvous_is_one_error_line_naming_what_was_seen() -> None:
    env = {"SLURM_STEP_NUM_TASKS": "2", "HOROVOD_CONTROLLER": "gloo", "SLURM_NODELIST": "n[1-2]",
           "SLURM_MPI_TYPE": "none", "UNRELATED": "x"}
    with pytest.raises(CamnetError) as err:
        check_world_size("Horovod", 1, env)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("the launcher started 2 ranks (SLURM_STEP_NUM_TASKS=2 HOROVOD_CONTROLLER=gloo "
                           "SLURM_MPI_TYPE=none SLURM_NODELIST=n[1-2]) but Horovod reports a world of size 1;")
    assert "UNRELATED" not in text and "srun --mpi=pmix" in text


def test_a_different_size_above_one_is_an_error_too() -> None:
    with pytest.raises(CamnetError, match=r"started 4 ranks .* reports a world of size 2$"):
        check_world_size("MPI (mpi4py)", 2, {"OMPI_COMM_WORLD_SIZE": "4"})
