# Paths of a local SLURM test cluster (slurm/local/start.sh). Source it, don't run it:
#   . slurm/local/env.sh [STATE_DIR]     # exports SLURM_CONF for that cluster (default state dir below)
# start.sh and stop.sh source it too. Default state dir: ${TMPDIR:-/tmp}/camnet-slurm
# (override with the first argument or CAMNET_SLURM_STATE_DIR).
# shellcheck shell=bash disable=SC2034  # the paths are used by start.sh and stop.sh

CAMNET_SLURM_STATE_DIR="${1:-${CAMNET_SLURM_STATE_DIR:-${TMPDIR:-/tmp}/camnet-slurm}}"
case "$CAMNET_SLURM_STATE_DIR" in
  /*) ;;
  *) CAMNET_SLURM_STATE_DIR="$PWD/$CAMNET_SLURM_STATE_DIR" ;;
esac
CAMNET_SLURM_CONF="$CAMNET_SLURM_STATE_DIR/slurm.conf"
CAMNET_SLURM_CTLD_PID="$CAMNET_SLURM_STATE_DIR/run/slurmctld.pid"
CAMNET_SLURM_CTLD_LOG="$CAMNET_SLURM_STATE_DIR/log/slurmctld.log"
# one slurmd per node: %n is the node's name (localhost, or n1 ... nN)
CAMNET_SLURMD_PID="$CAMNET_SLURM_STATE_DIR/run/slurmd.%n.pid"
CAMNET_SLURMD_LOG="$CAMNET_SLURM_STATE_DIR/log/slurmd.%n.log"
# the node names, one per line, and the number of network namespaces (0 in one-node mode), written by start.sh
CAMNET_SLURM_NODES_FILE="$CAMNET_SLURM_STATE_DIR/nodes"
SLURM_CONF="$CAMNET_SLURM_CONF"
export CAMNET_SLURM_STATE_DIR SLURM_CONF
