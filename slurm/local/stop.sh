#!/usr/bin/env bash
# Stop a SLURM test cluster started by slurm/local/start.sh.
#
#   slurm/local/stop.sh [--munge] [STATE_DIR]     # default: ${TMPDIR:-/tmp}/camnet-slurm
#   slurm/local/stop.sh --nodes [STATE_DIR]       # default: ${TMPDIR:-/tmp}/camnet-slurm-nodes (start.sh --nodes N)
#
# Cancels the cluster's jobs, stops the slurmds and slurmctld by the PID files in STATE_DIR (TERM, then KILL
# after 15 s), deletes the network namespaces and the bridge of a multi-node cluster, and removes
# /etc/slurm/slurm.conf if it is start.sh's symlink to this state dir. Another cluster's daemons are not touched.
# munged keeps running unless --munge is given. Job state and logs stay in STATE_DIR. Idempotent.
set -euo pipefail

stop_munge=0
multi=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    --munge) stop_munge=1 ;;
    --nodes) multi=1; case "${2:-}" in [0-9]*) shift ;; esac ;;   # `--nodes 3` as for start.sh: N is not needed
    *) break ;;
  esac
  shift
done
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "$multi" = 1 ] && [ -z "${1:-}" ]; then
  # not CAMNET_SLURM_STATE_DIR: env.sh exports the one-node cluster's
  set -- "${TMPDIR:-/tmp}/camnet-slurm-nodes"
fi
# shellcheck source=slurm/local/env.sh
. "$here/env.sh" "${1:-}"
# shellcheck source=slurm/local/netns.sh
. "$here/netns.sh"
nodes_line="$(head -n 1 "$CAMNET_SLURM_NODES_FILE" 2>/dev/null || echo localhost)"
netns_count="$(tail -n 1 "$CAMNET_SLURM_NODES_FILE" 2>/dev/null || echo 0)"
read -r -a node_names <<<"$nodes_line"

say() { echo "stop.sh: $*" >&2; }

# pid_of PIDFILE NAME: print the pid if the file names a running process called NAME
pid_of() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] \
    && echo "$pid"
}

# stop_pid PID NAME: TERM, wait up to 15 s, then KILL
stop_pid() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 150); do
    kill -0 "$1" 2>/dev/null || { say "stopped $2 (pid $1)"; return 0; }
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
  say "killed $2 (pid $1): it ignored TERM for 15 s"
}

if ctld="$(pid_of "$CAMNET_SLURM_CTLD_PID" slurmctld)"; then
  # Job steps outlive slurmd with proctrack/linuxproc: cancel the jobs while slurmctld still answers.
  jobs="$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')" || jobs=""
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086  # job ids are numbers, one word each
    timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(timeout 5 squeue -h -t R,CG -o %A 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
else
  ctld=""
fi

stopped=0
# a slurmd started by an older start.sh wrote run/slurmd.pid
if slurmd_pid="$(pid_of "$CAMNET_SLURM_STATE_DIR/run/slurmd.pid" slurmd)"; then
  stop_pid "$slurmd_pid" slurmd
  stopped=1
fi
for node in "${node_names[@]}"; do
  if slurmd_pid="$(pid_of "${CAMNET_SLURMD_PID//%n/$node}" slurmd)"; then
    stop_pid "$slurmd_pid" "slurmd $node"
    stopped=1
  fi
done
if [ -n "$ctld" ]; then
  stop_pid "$ctld" slurmctld
fi
[ -z "$ctld" ] && [ "$stopped" = 0 ] && say "not running (state dir $CAMNET_SLURM_STATE_DIR)"
if [ "$netns_count" -gt 0 ] 2>/dev/null; then
  netns_down "$netns_count"
  printf '%s\n%s\n' "$nodes_line" 0 >"$CAMNET_SLURM_NODES_FILE"
  say "deleted the network namespaces of ${node_names[*]}"
fi

if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CAMNET_SLURM_CONF" ]; then
  rm -f /etc/slurm/slurm.conf
fi

if [ "$stop_munge" = 1 ] && munge_pid="$(pid_of /run/munge/munged.pid munged)"; then
  stop_pid "$munge_pid" munged
fi
exit 0
