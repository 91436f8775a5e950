# Shared by the container scripts (sourced, not run): the cache folder and the Docker engine they talk to.
#
# CAMNET_CONTAINER_CACHE (default ~/.cache/camnet-container) keeps what a rebuild can reuse between runs on the
# same machine: the private Docker engine's data root (image layers), the base-image tarballs, the image archive
# and the SIF, Apptainer's cache.
CACHE="${CAMNET_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/camnet-container}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$CACHE"

say() { echo "container: $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# The Docker engine: DOCKER_HOST when it answers, else the system's, else a private dockerd (root only) with its
# own socket, data root and exec root in the cache, on the host network (--bridge=none: no bridge, no iptables
# rules on the host; every build and run then uses --network host).
engine() {
  if docker info >/dev/null 2>&1; then return 0; fi
  local dir="$CACHE/docker"
  export DOCKER_HOST="unix://$dir/docker.sock"
  if docker info >/dev/null 2>&1; then return 0; fi
  [ "$(id -u)" = 0 ] || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST}); start one, or run as root to start a private dockerd"
  command -v dockerd >/dev/null || die "dockerd not found: install Debian's docker.io (apt-get install docker.io)"
  mkdir -p "$dir/data" "$dir/exec"
  say "starting a private dockerd (socket $dir/docker.sock, log $dir/dockerd.log)"
  setsid dockerd -H "$DOCKER_HOST" --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
    --bridge=none --iptables=false --ip6tables=false >>"$dir/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 1 100); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.3
  done
  die "the private dockerd did not answer within 30 s: see $dir/dockerd.log"
}

# One build or test run per cache folder at a time (they share the engine, the image tag and the SIF); a script
# called by one that holds the lock (CAMNET_CONTAINER_LOCKED=1) does not take it again.
lock_cache() {
  [ "${CAMNET_CONTAINER_LOCKED:-}" = 1 ] && return 0
  exec 9>"$CACHE/lock"
  if ! flock -n 9; then
    say "waiting for another build or test run using $CACHE"
    flock 9
  fi
  export CAMNET_CONTAINER_LOCKED=1
}

# True when no Docker engine answers yet (the caller would start the private one).
no_engine() {
  ! docker info >/dev/null 2>&1 && ! DOCKER_HOST="unix://$CACHE/docker/docker.sock" docker info >/dev/null 2>&1
}

# For a script that builds or tests: the cache's lock, then an engine; a dockerd started here stops when the
# script exits, whatever the outcome (scripts it calls find the engine running and leave it).
engine_for_run() {
  lock_cache
  CAMNET_ENGINE_STARTED=
  if no_engine; then CAMNET_ENGINE_STARTED=1; fi
  trap '[ -z "$CAMNET_ENGINE_STARTED" ] || engine_stop' EXIT
  engine
}

# Stops the private dockerd, if this cache's is running.
engine_stop() {
  local pidfile="$CACHE/docker/docker.pid"
  [ -f "$pidfile" ] || return 0
  local pid
  pid="$(cat "$pidfile")"
  # only a dockerd: a stale pidfile's number may belong to another process by now
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  # dockerd leaves its network namespace mounted, which would make the cache folder impossible to delete
  if mountpoint -q "$CACHE/docker/exec/netns/default" 2>/dev/null; then umount "$CACHE/docker/exec/netns/default" || true; fi
}

# containers/extra/ emptied (but for its README), then the CAs pip must trust copied in: CAMNET_EXTRA_CA
# (':'-separated PEM files; `none`: none), by default the host's /usr/local/share/ca-certificates/*.crt.
stage_extra_cas() {
  local extra="$REPO/containers/extra" ca cas
  find "$extra" -mindepth 1 ! -name README.md -exec rm -rf {} +
  [ "${CAMNET_EXTRA_CA:-}" != none ] || return 0
  IFS=: read -r -a cas <<< "${CAMNET_EXTRA_CA:-$(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null | paste -sd:)}"
  for ca in "${cas[@]}"; do
    [ -n "$ca" ] || continue
    [ -f "$ca" ] || die "CAMNET_EXTRA_CA: $ca: no such file"
    cp "$ca" "$extra/$(basename "${ca%.*}").crt"
  done
}
