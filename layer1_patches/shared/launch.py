"""How many ranks the launcher started, and the check that the distributed runtime sees as many.

horovodrun, mpirun and srun tell each process how many were started, in their environment. The runtime
(Horovod, MPI) then has to find the others; when it cannot, each process comes up alone, as a world of size
1, and silently does the whole job by itself, N times over, writing the same outputs: Horovod's gloo
controller under srun without a rendezvous server, Horovod not importable in a job step of several tasks,
an MPI library that does not speak the launcher's PMI. The launcher's variables say what was asked for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from layer1_patches.shared.errors import CamnetError

# The world size each launcher exports: horovodrun (gloo), Open MPI's mpirun, MPICH/PMI, srun (per job step).
# SLURM_NTASKS is not among them: a batch script sees the job's task count without having started any rank.
SIZE_VARS = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS")
# What decides how Horovod finds the other ranks; named in the error so the cause can be read off it.
RUNTIME_VARS = ("HOROVOD_CONTROLLER", "HOROVOD_GLOO_RENDEZVOUS_ADDR", "SLURM_MPI_TYPE", "SLURM_NODELIST")


def launched_size(environ: Mapping[str, str] | None = None) -> int:
    """Ranks started by horovodrun, mpirun or srun; 1 when run as a plain process. The innermost launcher's
    variable decides (`mpirun -np 1` inside a 4-task srun step is one rank)."""
    env = os.environ if environ is None else environ
    for var in SIZE_VARS:
        value = env.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def check_world_size(runtime: str, size: int, environ: Mapping[str, str] | None = None) -> None:
    """Stop with one error line when the launcher started several ranks but `runtime` reports another size."""
    env = os.environ if environ is None else environ
    launched = launched_size(env)
    if launched == 1 or size == launched:
        return
    seen = " ".join(f"{var}={env[var]}" for var in (*SIZE_VARS, *RUNTIME_VARS) if env.get(var))
    hint = ""
    if size == 1:
        hint = ("; each rank would work alone on all the data. Under srun, Horovod needs MPI (srun --mpi=pmix, "
                "HOROVOD_CONTROLLER unset) or horovodrun's rendezvous for gloo")
    raise CamnetError(f"the launcher started {launched} ranks ({seen}) but {runtime} reports a world of size "
                      f"{size}{hint}")
