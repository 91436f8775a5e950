# Network namespaces for the multi-node test cluster (slurm/local/start.sh --nodes N). Source it, don't run it.
#
# One Linux network namespace per node (camnet-n1 ... camnet-nN), each with a veth pair into a bridge in the host
# namespace: the host (slurmctld) is 10.213.0.1, node k is 10.213.0.(10+k). Each slurmd then runs in its node's
# network namespace plus private mount and hostname namespaces, where /etc/hosts is the cluster's hosts file and
# the hostname is the node's name: its job steps see one host each, as on a real cluster, while the files
# (the repository, the outputs, munge's socket) stay shared, as on a cluster's shared filesystem.
# shellcheck shell=bash disable=SC2034  # the names are used by start.sh and stop.sh

CAMNET_NETNS_BRIDGE=camnet-br0
CAMNET_NETNS_PREFIX=camnet-n
CAMNET_NETNS_NET=10.213.0
CAMNET_NETNS_HOST_ADDR=10.213.0.1

netns_node_addr() { echo "$CAMNET_NETNS_NET.$((10 + $1))"; }

# netns_up N HOSTS_FILE HOSTNAME: the bridge, N namespaces and the hosts file every node mounts on /etc/hosts.
netns_up() {
  local n="$1" hosts="$2" host="$3" k ns
  {
    echo "127.0.0.1 localhost"
    echo "$CAMNET_NETNS_HOST_ADDR $host"
    for k in $(seq "$n"); do echo "$(netns_node_addr "$k") n$k"; done
  } >"$hosts"
  ip link add "$CAMNET_NETNS_BRIDGE" type bridge
  ip addr add "$CAMNET_NETNS_HOST_ADDR/24" dev "$CAMNET_NETNS_BRIDGE"
  ip link set "$CAMNET_NETNS_BRIDGE" up
  for k in $(seq "$n"); do
    ns="$CAMNET_NETNS_PREFIX$k"
    ip netns add "$ns"
    # the same interface name on every node (camnet0), as gloo and NCCL want one name for all hosts
    ip link add "camnet-v$k" type veth peer name camnet0 netns "$ns"
    ip link set "camnet-v$k" master "$CAMNET_NETNS_BRIDGE" up
    ip -n "$ns" addr add "$(netns_node_addr "$k")/24" dev camnet0
    ip -n "$ns" link set camnet0 up
    ip -n "$ns" link set lo up
  done
}

# netns_down N: delete the namespaces, their veth pairs and the bridge (each only if present).
netns_down() {
  local n="$1" k
  for k in $(seq "$n"); do
    ip netns del "$CAMNET_NETNS_PREFIX$k" 2>/dev/null || true
    ip link del "camnet-v$k" 2>/dev/null || true
  done
  ip link del "$CAMNET_NETNS_BRIDGE" 2>/dev/null || true
}

# netns_exec K HOSTS_FILE CMD...: run CMD as node nK. Plain `ip netns exec` would remount /sys, leaving no cgroup
# filesystem, and slurmd exits; nsenter joins only the network namespace, unshare adds the private mount (for
# /etc/hosts) and hostname namespaces.
netns_exec() {
  local k="$1" hosts="$2"
  shift 2
  nsenter --net="/run/netns/$CAMNET_NETNS_PREFIX$k" unshare --mount --uts --propagation private \
    sh -c 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"' sh "$hosts" "n$k" "$@"
}
