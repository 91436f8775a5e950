#!/usr/bin/env bash
# Base images made without an image registry, from Debian's packages alone, imported into the Docker engine:
#   camnet-base:bookworm     Debian 12 minbase + CA certificates: the CPU image's build and runtime base
#   camnet-base:trixie       Debian 13 minbase + CA certificates: the modern variant's base (Python 3.13)
#   camnet-apptainer:sid     Debian sid + Apptainer (not packaged for Debian 12), with a non-root user `runner`
#                            (uid 4321): builds the SIF, and runs it for the tests (tests/container/apptainer)
# Each tarball is kept in the cache; an image already in the engine is not made again.
#   bash containers/base-images.sh [bookworm] [trixie] [apptainer]     (default: bookworm and apptainer)
# Needs root, mmdebstrap, and the host's Debian mirror (read from apt; CAMNET_DEBIAN_MIRROR overrides it).
set -euo pipefail
# shellcheck source=containers/lib.sh
source "$(dirname "$0")/lib.sh"
engine
command -v mmdebstrap >/dev/null || die "mmdebstrap not found (apt-get install mmdebstrap)"

mirror="${CAMNET_DEBIAN_MIRROR:-$(apt-get indextargets --format '$(REPO_URI)' 2>/dev/null | grep -E '/debian/?$' | head -n1 || true)}"
[ -n "$mirror" ] || die "no Debian mirror in the host's apt sources: set CAMNET_DEBIAN_MIRROR"
security="${mirror%/debian/}"; security="${security%/debian}/debian-security"
mkdir -p "$CACHE/base"

make_base() {  # image tag, tarball name, suite, packages, customize hook (or ''), apt option (or ''), mirror lines...
  local tag="$1" tar="$CACHE/base/$2" suite="$3" include="$4" hook="$5" aptopt="$6"; shift 6
  if docker image inspect "$tag" >/dev/null 2>&1; then return 0; fi
  if [ ! -s "$tar" ]; then
    say "mmdebstrap $suite -> $tar (2-3 minutes)"
    local part="${tar%.tar}.part.tar"  # the name's ending tells mmdebstrap the format
    mmdebstrap --quiet --variant=minbase --include="$include" ${hook:+--customize-hook="$hook"} ${aptopt:+--aptopt="$aptopt"} \
      "$suite" "$part" "$@"
    mv "$part" "$tar"
  fi
  say "docker import $tar as $tag"
  docker import --change 'CMD ["/bin/bash"]' "$tar" "$tag" >/dev/null
}

want=("$@")
[ "$#" -gt 0 ] || want=(bookworm apptainer)
has() { local w; for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }

if has bookworm; then
  make_base camnet-base:bookworm bookworm.tar bookworm ca-certificates '' '' \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" "deb $security bookworm-security main"
fi

if has trixie; then
  make_base camnet-base:trixie trixie.tar trixie ca-certificates '' '' \
    "deb $mirror trixie main" "deb $mirror trixie-updates main" "deb $security trixie-security main"
fi

# sid's Release file is valid for a week only: a mirror that is a frozen snapshot or a slow cache serves an expired
# one, which this test-only image accepts. /root is opened (0755) so that `runner` reaches host paths under /root
# bound at the same place (a root-owned checkout or cache). Apptainer runs unprivileged (user namespaces +
# squashfuse) as `runner`: as root it needs loop devices that a container does not have.
if has apptainer; then
  make_base camnet-apptainer:sid sid-apptainer.tar sid \
    apptainer,ca-certificates,squashfs-tools,e2fsprogs,squashfuse,fuse3,fuse2fs,uidmap,gocryptfs \
    'chroot "$1" useradd --create-home --uid 4321 --shell /bin/bash runner && chmod 755 "$1/root"' \
    'Acquire::Check-Valid-Until "false"' \
    "deb $mirror sid main"
fi
