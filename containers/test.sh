#!/usr/bin/env bash
# `make container-test`: builds the image and SIF (containers/build.sh, cached) and the modern variant
# (containers/build-modern.sh), then runs tests/container/ with the local SLURM cluster; a dockerd this run started
# is stopped at the end, whatever the outcome.
set -euo pipefail
# shellcheck source=containers/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO"
engine_for_run
bash containers/build.sh
bash containers/build-modern.sh
CAMNET_CONTAINER_TEST=1 bash slurm/local/with-cluster.sh .venv/bin/pytest -q tests/container "$@"
