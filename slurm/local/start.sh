#!/usr/bin/env bash
# Start a SLURM test cluster on this machine (root only; Debian's slurm-wlm + munge): one node, or N nodes in
# network namespaces (slurm/local/netns.sh).
#
#   slurm/local/start.sh [STATE_DIR]            # one node `localhost`; default: ${TMPDIR:-/tmp}/camnet-slurm
#   slurm/local/start.sh --nodes 3 [STATE_DIR]  # nodes n1-n3; default: ${TMPDIR:-/tmp}/camnet-slurm-nodes
#   eval "$(slurm/local/start.sh)"              # start and export SLURM_CONF in this shell
#   . "${TMPDIR:-/tmp}/camnet-slurm/env.sh"     # later shells: export SLURM_CONF
#
# Writes STATE_DIR/slurm.conf (+ state, spool, pid and log dirs), starts munged if no munge daemon answers,
# then slurmctld and the slurmd(s), and waits until every node is idle. Progress goes to stderr, the
# `export SLURM_CONF=...` line to stdout. One-node mode: if /etc/slurm/slurm.conf does not exist it becomes a
# symlink to STATE_DIR/slurm.conf so that plain `sbatch`/`squeue` work without SLURM_CONF (stop.sh removes it).
# The two modes run side by side: their own state dirs and ports (one node: 6817/6818; N nodes: 6827/6828);
# the multi-node mode needs SLURM_CONF in every client's environment. One multi-node cluster per machine.
# Idempotent: when this state dir's daemons already run, it says so and exits 0.
# Env: CAMNET_SLURM_START_TIMEOUT (seconds, default 60). Stop with slurm/local/stop.sh [STATE_DIR].
set -euo pipefail

nodes=1
if [ "${1:-}" = --nodes ]; then
  nodes="${2:-}"
  shift 2 || true
  case "$nodes" in
    [1-9] | [1-9][0-9]) ;;
    *) echo "start.sh: error: --nodes: expected a number of nodes from 1 to 99, got '$nodes'" >&2; exit 2 ;;
  esac
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "$nodes" -gt 1 ] && [ -z "${1:-}" ]; then
  # not CAMNET_SLURM_STATE_DIR: env.sh exports the one-node cluster's
  set -- "${TMPDIR:-/tmp}/camnet-slurm-nodes"
fi
# shellcheck source=slurm/local/env.sh
. "$here/env.sh" "${1:-}"
# shellcheck source=slurm/local/netns.sh
. "$here/netns.sh"
S="$CAMNET_SLURM_STATE_DIR"
if [ "$nodes" = 1 ]; then
  node_names=(localhost)
  ctld_port=6817
else
  node_names=()
  for k in $(seq "$nodes"); do node_names+=("n$k"); done
  ctld_port=6827
fi
timeout_s="${CAMNET_SLURM_START_TIMEOUT:-60}"
t0=$SECONDS
t0_us="${EPOCHREALTIME/./}"

say() { echo "start.sh: $*" >&2; }
die() { echo "start.sh: error: $*" >&2; exit 1; }

# alive PIDFILE NAME: the pid file names a running process called NAME
alive() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

slurmd_pid_file() { echo "${CAMNET_SLURMD_PID//%n/$1}"; }
slurmd_log_file() { echo "${CAMNET_SLURMD_LOG//%n/$1}"; }

all_alive() {
  local node
  alive "$CAMNET_SLURM_CTLD_PID" slurmctld || return 1
  for node in "${node_names[@]}"; do alive "$(slurmd_pid_file "$node")" slurmd || return 1; done
}

# node_states: one line per node, "NAME STATE", from this cluster's slurmctld
node_states() { timeout 5 sinfo -h -N -o "%N %T" 2>/dev/null | sort -u; }
usable() { case "$1" in idle | mixed | allocated | completing) return 0 ;; esac; return 1; }

print_export() {
  echo "export SLURM_CONF=$CAMNET_SLURM_CONF"
}

fail_with_logs() {
  echo "start.sh: error: $*" >&2
  timeout 5 sinfo -R 2>/dev/null >&2 || true
  local f node
  for f in "$CAMNET_SLURM_CTLD_LOG" $(for node in "${node_names[@]}"; do slurmd_log_file "$node"; done); do
    if [ -f "$f" ]; then
      echo "---- last lines of $f" >&2
      tail -n 10 "$f" >&2
    fi
  done
  exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (the test cluster runs slurmctld/slurmd with SlurmUser=root)"
needed=(slurmctld slurmd sinfo munged munge unmunge)
[ "$nodes" -gt 1 ] && needed+=(ip nsenter unshare)
for cmd in "${needed[@]}"; do
  command -v "$cmd" >/dev/null || die "'$cmd' not found: apt-get install slurm-wlm munge iproute2 util-linux"
done
if [ -f "$CAMNET_SLURM_NODES_FILE" ] && [ "$(head -n 1 "$CAMNET_SLURM_NODES_FILE")" != "${node_names[*]}" ]; then
  alive "$CAMNET_SLURM_CTLD_PID" slurmctld \
    && die "$S runs a cluster of nodes '$(head -n 1 "$CAMNET_SLURM_NODES_FILE")', not '${node_names[*]}': stop it first (slurm/local/stop.sh $S)"
fi

if all_alive && [ -n "$(node_states)" ]; then
  say "already running (state dir $S, nodes: $(node_states | tr '\n' ' '))"
  print_export
  exit 0
fi

# listening HOST PORT: something accepts TCP connections there
listening() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
# Another cluster (or an older one from this state dir whose PID file is gone) would own our ports.
if ! alive "$CAMNET_SLURM_CTLD_PID" slurmctld && listening 127.0.0.1 "$ctld_port"; then
  die "port $ctld_port is in use (another slurmctld, not from $S?): stop it first"
fi
if [ "$nodes" = 1 ] && ! alive "$(slurmd_pid_file localhost)" slurmd && listening 127.0.0.1 6818; then
  die "port 6818 is in use (another slurmd, not from $S?): stop it first"
fi
if [ "$nodes" -gt 1 ] && ip link show "$CAMNET_NETNS_BRIDGE" >/dev/null 2>&1 \
    && [ "$(tail -n 1 "$CAMNET_SLURM_NODES_FILE" 2>/dev/null)" != "$nodes" ]; then
  die "the bridge $CAMNET_NETNS_BRIDGE exists but $S did not make it: another multi-node cluster runs (stop it first)"
fi

# --- munge --------------------------------------------------------------------------------------
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
  key=/etc/munge/munge.key
  if [ ! -s "$key" ]; then
    say "creating $key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$key"
    else
      dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
    fi
    chown munge:munge "$key" 2>/dev/null || true
    chmod 0400 "$key"
  fi
  mkdir -p /run/munge
  chown munge:munge /run/munge 2>/dev/null || true
  say "starting munged"
  munged --force 2>/dev/null || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || die "munged started but 'munge -n | unmunge' fails (see /var/log/munge/munged.log)"
fi

# --- network namespaces (N nodes) -----------------------------------------------------------------
mkdir -p "$S/state" "$S/run" "$S/log"
for node in "${node_names[@]}"; do mkdir -p "$S/spool/$node" "$S/tmp/$node"; done
if [ "$nodes" -gt 1 ]; then
  if ! ip link show "$CAMNET_NETNS_BRIDGE" >/dev/null 2>&1; then
    netns_down "$nodes"   # leftovers of a cluster whose bridge is gone
    say "network namespaces for ${node_names[*]} (bridge $CAMNET_NETNS_BRIDGE, $CAMNET_NETNS_NET.0/24)"
    netns_up "$nodes" "$S/hosts" "$(hostname -s)" || { netns_down "$nodes"; die "could not create the network namespaces"; }
  fi
  printf '%s\n%s\n' "${node_names[*]}" "$nodes" >"$CAMNET_SLURM_NODES_FILE"
else
  printf '%s\n%s\n' localhost 0 >"$CAMNET_SLURM_NODES_FILE"
fi

# --- slurm.conf ---------------------------------------------------------------------------------
# The node line as slurmd detects it (CPUs, sockets, cores, threads, RealMemory), renamed to each node.
hw="$(slurmd -C 2>/dev/null | head -n 1)" || true
case "$hw" in
  NodeName=*) hw="${hw#NodeName=* }" ;;
  *) hw="CPUs=$(nproc) RealMemory=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024))" ;;
esac
if [ "$nodes" = 1 ]; then
  ctld_host=localhost
  node_lines="NodeName=localhost NodeAddr=127.0.0.1 $hw State=UNKNOWN"
  partition_nodes=localhost
  # Bind each task to the CPUs it was given, as production clusters do (task/affinity or task/cgroup): with
  # task/none a 1-CPU task also used the second core whenever it ran alone.
  task_plugin=task/affinity
else
  # slurmctld only starts where SlurmctldHost names this host; the nodes reach it on the bridge
  ctld_host="$(hostname -s)($CAMNET_NETNS_HOST_ADDR)"
  node_lines=""
  for k in $(seq "$nodes"); do
    node_lines+="NodeName=n$k NodeAddr=$(netns_node_addr "$k") $hw State=UNKNOWN"$'\n'
  done
  partition_nodes="n[1-$nodes]"
  # Every node believes it owns all of this machine's CPUs: task/affinity would pin the first task of each node
  # to the same CPU 0, so ranks on different "nodes" would share one core while the other idles.
  task_plugin=task/none
fi

# Rewritten on every start; slurmctld keeps job state in $S/state across restarts.
cat >"$CAMNET_SLURM_CONF".tmp <<EOF
# Generated by slurm/local/start.sh: test cluster of ${node_names[*]}, state in $S. Do not edit; re-run start.sh.
ClusterName=camnet
SlurmctldHost=$ctld_host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=$ctld_port
SlurmdPort=$((ctld_port + 1))
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool/%n
SlurmctldPidFile=$CAMNET_SLURM_CTLD_PID
SlurmdPidFile=$CAMNET_SLURMD_PID
SlurmctldLogFile=$CAMNET_SLURM_CTLD_LOG
SlurmdLogFile=$CAMNET_SLURMD_LOG
# Per node, as on separate hosts: without it, PMIx on the second node fails ("Cannot create directory .../spmix_appdir")
TmpFS=$S/tmp/%n
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=$task_plugin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# A 2-CPU test cluster with short array tasks would spend much of its time waiting for the scheduler: by
# default it runs at most every 2 s (sched_min_interval) and may hold batch jobs back 3 s (batch_sched_delay),
# which showed as a 3 s gap between the tasks of a throttled array. With these, the gap is about 1 s.
SchedulerParameters=sched_min_interval=100000,batch_sched_delay=0
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
# Finished jobs stay visible to 'scontrol show job' for an hour (no accounting storage, so no sacct).
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
Waittime=0
$node_lines
# OverSubscribe=FORCE:2: each core may hold two jobs, so tests can run alongside another 2-task job.
PartitionName=debug Nodes=$partition_nodes Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:2
EOF
mv "$CAMNET_SLURM_CONF".tmp "$CAMNET_SLURM_CONF"
# cgroup.conf is read by slurmd even without cgroup plugins (proctrack/linuxproc, task/affinity); keep it
# from touching cgroups.
cat >"$S/cgroup.conf" <<EOF
# Generated by slurm/local/start.sh
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
echo "export SLURM_CONF=$CAMNET_SLURM_CONF" >"$S/env.sh"

etc_conf=/etc/slurm/slurm.conf
if [ "$nodes" = 1 ] && [ ! -e "$etc_conf" ]; then   # also true for a dangling symlink left by an old state dir
  mkdir -p /etc/slurm
  ln -sfn "$CAMNET_SLURM_CONF" "$etc_conf"
  say "linked $etc_conf -> $CAMNET_SLURM_CONF (plain sbatch works without SLURM_CONF)"
fi

# --- daemons ------------------------------------------------------------------------------------
if ! alive "$CAMNET_SLURM_CTLD_PID" slurmctld; then
  say "starting slurmctld"
  slurmctld -f "$CAMNET_SLURM_CONF" || fail_with_logs "slurmctld did not start"
else
  scontrol reconfigure >/dev/null 2>&1 || true
fi
k=0
for node in "${node_names[@]}"; do
  k=$((k + 1))
  alive "$(slurmd_pid_file "$node")" slurmd && continue
  say "starting slurmd $node"
  if [ "$nodes" = 1 ]; then
    slurmd -f "$CAMNET_SLURM_CONF" -N localhost || fail_with_logs "slurmd did not start"
  else
    netns_exec "$k" "$S/hosts" slurmd -f "$CAMNET_SLURM_CONF" -N "$node" || fail_with_logs "slurmd $node did not start"
  fi
done

states=""
while [ $((SECONDS - t0)) -lt "$timeout_s" ]; do
  states="$(node_states)"
  ready=0
  while read -r node state; do
    [ -n "$node" ] || continue
    if usable "$state"; then
      ready=$((ready + 1))
    else
      case "$state" in
        # A previous run may have left the node down/drained; the fresh slurmd is healthy, resume it.
        drained* | draining* | down* | fail*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
      esac
    fi
  done <<<"$states"
  [ "$ready" = "$nodes" ] && break
  sleep 0.25
done
[ "${ready:-0}" = "$nodes" ] \
  || fail_with_logs "not every node idle after ${timeout_s}s: $(echo "${states:-no answer}" | tr '\n' ' ')"
all_alive || fail_with_logs "a daemon exited"

elapsed_ms=$(((${EPOCHREALTIME/./} - t0_us) / 1000))
say "cluster up in $((elapsed_ms / 1000)).$(printf %03d $((elapsed_ms % 1000)))s: $(echo "$states" | tr '\n' ' ')state dir $S"
say "clients need SLURM_CONF: eval the line below or '. $S/env.sh'"
print_export
