#!/usr/bin/env bash
# `make container`: the CPU image from containers/Dockerfile (Docker), then its Apptainer SIF (docker-archive route).
#
#   bash containers/build.sh            # prints the image tag and the SIF's path at the end
#
# Environment:
#   CAMNET_CONTAINER_CACHE  cache folder kept between runs (default ~/.cache/camnet-container): Docker's data root
#                           when this script starts its own dockerd, base images, the image archive, the SIF
#   CAMNET_BASE_IMAGE       base of both stages (default: camnet-base:bookworm made by base-images.sh with
#                           mmdebstrap when root, else debian:bookworm-slim from a registry)
# Without an apptainer on the host, the SIF needs the camnet-apptainer:sid image (base-images.sh: root, mmdebstrap).
#   CAMNET_EXTRA_CA         PEM files pip must trust, ':'-separated; `none` for none (default: the host's
#                           /usr/local/share/ca-certificates/*.crt)
#   CAMNET_IMAGE            tag (default camnet:cpu)
# The SIF is built by the Apptainer of the camnet-apptainer:sid image (base-images.sh) unless the host has its own.
set -euo pipefail
# shellcheck source=containers/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO"
engine_for_run
IMAGE="${CAMNET_IMAGE:-camnet:cpu}"
SIF="$CACHE/camnet-cpu.sif"
ARCHIVE="$CACHE/camnet-cpu.tar"

base="${CAMNET_BASE_IMAGE:-}"
if [ -z "$base" ]; then
  if docker image inspect camnet-base:bookworm >/dev/null 2>&1 || { [ "$(id -u)" = 0 ] && command -v mmdebstrap >/dev/null; }; then
    base=camnet-base:bookworm
  else
    base=debian:bookworm-slim
  fi
fi
need=()
[ "$base" != camnet-base:bookworm ] || need+=(bookworm)
command -v apptainer >/dev/null || need+=(apptainer)  # the SIF is then built by the sid image's Apptainer
[ "${#need[@]}" -eq 0 ] || bash "$REPO/containers/base-images.sh" "${need[@]}"

# Build inputs staged in containers/extra/ (see its README): extra CAs, and the host's Horovod wheel when it fits.
extra="$REPO/containers/extra"
stage_extra_cas
mkdir -p "$extra/wheels"
host_debian="$(. /etc/os-release 2>/dev/null && echo "${ID:-}${VERSION_ID:-}" || true)"
case "$base" in camnet-base:bookworm|debian:bookworm*) base_debian=debian12 ;; *) base_debian= ;; esac
if [ "$host_debian" = debian12 ] && [ "$host_debian" = "$base_debian" ] && [ -x "$REPO/.venv/bin/pip" ]; then
  wheel="$("$REPO/.venv/bin/pip" cache list horovod --format=abspath 2>/dev/null | grep 'horovod-0.28.1-cp311' | head -n1 || true)"
  if [ -n "$wheel" ]; then
    say "reusing the host's Horovod wheel: $wheel"
    cp "$wheel" "$extra/wheels/"
  fi
fi

commit="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
git -C "$REPO" diff --quiet HEAD -- 2>/dev/null || commit="$commit-dirty"
version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/layer1_patches/__init__.py")"
say "docker build $IMAGE from $base (commit $commit; log $CACHE/build.log)"
start=$SECONDS
# The classic builder: --network host works without BuildKit entitlements (the private dockerd has no bridge).
if ! DOCKER_BUILDKIT=0 docker build --network host -f containers/Dockerfile -t "$IMAGE" \
    --build-arg BUILD_IMAGE="$base" --build-arg BASE_IMAGE="$base" \
    --build-arg TF_PACKAGE=tensorflow-cpu==2.15.1 --build-arg HOROVOD_GPU_OPERATIONS= \
    --build-arg VERSION="$version" --build-arg GIT_COMMIT="$commit" . > "$CACHE/build.log" 2>&1; then
  tail -n 30 "$CACHE/build.log" >&2
  die "docker build failed: see $CACHE/build.log"
fi
say "image $IMAGE built in $((SECONDS - start)) s: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"

# The SIF, remade only when the image changed.
id="$(docker image inspect -f '{{.Id}}' "$IMAGE")"
if [ -s "$SIF" ] && [ "$(cat "$SIF.image-id" 2>/dev/null)" = "$id" ]; then
  say "SIF up to date: $SIF"
else
  start=$SECONDS
  rm -f "$ARCHIVE"
  docker save "$IMAGE" -o "$ARCHIVE.part" || die "docker save $IMAGE failed (disk full?): see the message above"
  mv "$ARCHIVE.part" "$ARCHIVE"
  if command -v apptainer >/dev/null; then
    apptainer build --force --build-arg archive="$ARCHIVE" "$SIF.part" containers/camnet.def
  else
    # As root inside the container: no %test here (running an image as root needs loop devices the container
    # lacks); the tests run it as a user.
    docker run --rm --network host --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
      -v "$CACHE:$CACHE" -v "$REPO/containers:/def:ro" -e APPTAINER_CACHEDIR="$CACHE/apptainer" \
      camnet-apptainer:sid apptainer --quiet build --notest --force --build-arg archive="$ARCHIVE" "$SIF.part" /def/camnet.def
  fi
  rm -f "$SIF.image-id"
  mv "$SIF.part" "$SIF"  # atomic: a test run of the previous SIF keeps its open file
  echo "$id" > "$SIF.image-id"
  rm -f "$ARCHIVE"  # 2+ GB, and the engine keeps the image
  say "SIF built in $((SECONDS - start)) s: $(du -h "$SIF" | cut -f1)"
fi
echo "image: $IMAGE"
echo "sif: $SIF"
