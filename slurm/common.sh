# CamNet helpers for sbatch scripts. Source it, then run pipeline commands through camnet_run:
#
#   . "${CAMNET_ROOT:-$SLURM_SUBMIT_DIR}/slurm/common.sh"
#   camnet_run python -m layer1_patches extract --config cfg.yaml        # one process
#   camnet_srun --mpi=pmix -n "$SLURM_NTASKS" -- python -m layer2_training train --config cfg.yaml
#
# With CAMNET_SIF=/path/camnet.sif the command runs as `apptainer exec --env PYTHONSAFEPATH=1 [--nv] --bind ... IMAGE CMD...`
# (singularity when apptainer is missing); without it, on the host, where a leading `python`/`python3`
# becomes CAMNET_PYTHON (default: the repo's .venv/bin/python if present, else python3).
#   CAMNET_SIF     container image; missing file or no apptainer/singularity -> one error line, status 2
#   CAMNET_BIND    extra bind spec for the container, e.g. "/data,/scratch:/scratch" (the repo is always bound)
#   CAMNET_GPU     1: add --nv; 0: never; unset: --nv when SLURM_JOB_GPUS or CUDA_VISIBLE_DEVICES is set
#   CAMNET_PYTHON  host python (see above)
# Arguments are passed as given ("$@", no eval), so quotes, spaces and `$(...)` reach CMD unchanged.
# Safe under `set -euo pipefail`.
# shellcheck shell=bash

CAMNET_ROOT="${CAMNET_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
# HDF5's file locks fail or hang on many NFS/Lustre mounts; every CamNet file has a single writer anyway.
export HDF5_USE_FILE_LOCKING="${HDF5_USE_FILE_LOCKING:-FALSE}"

# _camnet_build CMD...: fill the array CAMNET_CMD with the command line camnet_run would run.
_camnet_build() {
  if [ "$#" -eq 0 ]; then
    echo "camnet_run: error: no command given" >&2
    return 2
  fi
  CAMNET_CMD=()
  if [ -n "${CAMNET_SIF:-}" ]; then
    if [ ! -f "$CAMNET_SIF" ]; then
      echo "camnet_run: error: CAMNET_SIF=$CAMNET_SIF: image file not found" >&2
      return 2
    fi
    local runner
    if command -v apptainer >/dev/null 2>&1; then
      runner=apptainer
    elif command -v singularity >/dev/null 2>&1; then
      runner=singularity
    else
      echo "camnet_run: error: CAMNET_SIF=$CAMNET_SIF is set but neither apptainer nor singularity is on PATH" >&2
      return 2
    fi
    # Apptainer in user-namespace mode (the default without setuid) puts each task in its own user namespace, where
    # OpenMPI's shared-memory transport cannot use CMA single copy: 2 ranks on one node then hang on the first large
    # message (OpenMPI 4.1, measured in tests/container/). Copy-in/copy-out works everywhere.
    export OMPI_MCA_btl_vader_single_copy_mechanism="${OMPI_MCA_btl_vader_single_copy_mechanism:-none}"
    # PYTHONSAFEPATH: `python -m` would put the working directory first on the path, and jobs run from the checkout
    # (CAMNET_ROOT), whose sources would then shadow the image's CamNet (Python >= 3.11 honours it)
    CAMNET_CMD=("$runner" exec --env PYTHONSAFEPATH=1)
    local gpu="${CAMNET_GPU:-}"
    if [ -z "$gpu" ]; then
      if [ -n "${SLURM_JOB_GPUS:-}" ] \
          || { [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [ "$CUDA_VISIBLE_DEVICES" != -1 ]; }; then
        gpu=1
      fi
    fi
    [ "$gpu" = 1 ] && CAMNET_CMD+=(--nv)
    CAMNET_CMD+=(--bind "$CAMNET_ROOT")
    [ -n "${CAMNET_BIND:-}" ] && CAMNET_CMD+=(--bind "$CAMNET_BIND")
    CAMNET_CMD+=("$CAMNET_SIF" "$@")
    return 0
  fi
  case "$1" in
    python | python3)
      local py="${CAMNET_PYTHON:-}"
      if [ -z "$py" ]; then
        if [ -x "$CAMNET_ROOT/.venv/bin/python" ]; then
          py="$CAMNET_ROOT/.venv/bin/python"
        else
          py=python3
        fi
      fi
      shift
      CAMNET_CMD=("$py" "$@")
      ;;
    *) CAMNET_CMD=("$@") ;;
  esac
}

# camnet_check_ranks: refuse, with one error line, a launch whose ranks could not find each other. Horovod's gloo
# controller finds the other ranks through a rendezvous server that horovodrun starts and srun does not: under srun
# every rank would come up alone (size 1) and train or infer on all the data, N times over. Under srun, Horovod
# runs over MPI (srun --mpi=pmix), which these scripts use. (The Python side checks the world size too.)
camnet_check_ranks() {
  if [ "${HOROVOD_CONTROLLER:-}" = gloo ] && [ -z "${HOROVOD_GLOO_RENDEZVOUS_ADDR:-}" ] \
      && [ "${SLURM_NTASKS:-1}" -gt 1 ]; then
    echo "error: HOROVOD_CONTROLLER=gloo with SLURM_NTASKS=$SLURM_NTASKS: srun starts no gloo rendezvous, so each" \
         "rank would run alone; unset HOROVOD_CONTROLLER (these scripts run Horovod over MPI: srun --mpi=pmix)" \
         "or start the ranks yourself with horovodrun --gloo" >&2
    return 2
  fi
}

# camnet_run CMD...: run CMD in the container (CAMNET_SIF) or on the host; returns CMD's status.
camnet_run() {
  _camnet_build "$@" || return
  "${CAMNET_CMD[@]}"
}

# camnet_srun SRUN_OPTIONS... -- CMD...: `srun SRUN_OPTIONS...` launching camnet_run's command line.
camnet_srun() {
  local srun_opts=()
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
    srun_opts+=("$1")
    shift
  done
  if [ "$#" -eq 0 ]; then
    echo "camnet_srun: error: usage: camnet_srun SRUN_OPTIONS... -- CMD..." >&2
    return 2
  fi
  shift
  _camnet_build "$@" || return
  srun "${srun_opts[@]}" "${CAMNET_CMD[@]}"
}
