#!/usr/bin/env bash
# Run a command (the test suite) with a SLURM cluster when there can be one:
#   - a cluster already answers (SLURM_CONF or /etc/slurm): use it;
#   - else, as root with slurm-wlm installed: start the local one-node cluster (start.sh), and stop it afterwards;
#   - else: run the command as is; the tests marked `slurm` are then skipped with a reason.
# With a cluster, CAMNET_REQUIRE_SLURM=1 (unless set), so a SLURM test that cannot reach it fails, not skips.
# As root with slurm-wlm and iproute2, CAMNET_REQUIRE_MULTINODE=1 (unless set): the tests marked `multinode` start
# the multi-node test cluster themselves (tests/conftest.py) and fail, not skip, when it cannot start.
#   slurm/local/with-cluster.sh CMD...
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${TMPDIR:-/tmp}/camnet-slurm"
if timeout 10 sinfo -h >/dev/null 2>&1; then
  export CAMNET_REQUIRE_SLURM="${CAMNET_REQUIRE_SLURM:-1}"
elif [ "$(id -u)" = 0 ] && command -v slurmctld >/dev/null; then
  export SLURM_CONF="$state/slurm.conf"
  trap 'bash "$here/stop.sh" "$state" || true' EXIT
  bash "$here/start.sh" "$state" >/dev/null
  export CAMNET_REQUIRE_SLURM="${CAMNET_REQUIRE_SLURM:-1}"
else
  echo "with-cluster.sh: no SLURM cluster answers and none can be started here (needs root and slurm-wlm):" \
       "the tests marked slurm will be skipped" >&2
fi
if [ "$(id -u)" = 0 ] && command -v slurmctld >/dev/null && command -v ip >/dev/null && command -v nsenter >/dev/null \
    && command -v unshare >/dev/null; then
  export CAMNET_REQUIRE_MULTINODE="${CAMNET_REQUIRE_MULTINODE:-1}"
fi
"$@"
