#!/usr/bin/env bash
# Stop the one-node SLURM test cluster started by slurm/local/start.sh.
#
#   slurm/local/stop.sh [--munge] [STATE_DIR]     # default: ${TMPDIR:-/tmp}/camnet-slurm
#
# Cancels the cluster's jobs, stops slurmd and slurmctld by the PID files in STATE_DIR (TERM, then KILL
# after 15 s) and removes /etc/slurm/slurm.conf if it is start.sh's symlink to this state dir.
# munged keeps running unless --munge is given. Job state and logs stay in STATE_DIR. Idempotent.
set -euo pipefail

stop_munge=0
if [ "${1:-}" = --munge ]; then
  stop_munge=1
  shift
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=slurm/local/env.sh
. "$here/env.sh" "${1:-}"

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

if slurmd_pid="$(pid_of "$CAMNET_SLURMD_PID" slurmd)"; then
  stop_pid "$slurmd_pid" slurmd
fi
if [ -n "$ctld" ]; then
  stop_pid "$ctld" slurmctld
fi
[ -z "$ctld" ] && [ -z "${slurmd_pid:-}" ] && say "not running (state dir $CAMNET_SLURM_STATE_DIR)"

if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CAMNET_SLURM_CONF" ]; then
  rm -f /etc/slurm/slurm.conf
fi

if [ "$stop_munge" = 1 ] && munge_pid="$(pid_of /run/munge/munged.pid munged)"; then
  stop_pid "$munge_pid" munged
fi
exit 0
