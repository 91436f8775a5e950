#!/usr/bin/env bash
# `make container-modern`: the modern variant (containers/Dockerfile.modern: Debian 13, Python 3.13, TF 2.21 +
# tf_keras, no Horovod) as a Docker image; tests/container/test_modern.py runs its smoke test with `docker run`.
#
#   bash containers/build-modern.sh     # prints the image tag at the end
#
# Environment: CAMNET_CONTAINER_CACHE and CAMNET_EXTRA_CA as for containers/build.sh;
#   CAMNET_MODERN_BASE   base image (default: camnet-base:trixie made by base-images.sh with mmdebstrap when root,
#                        else debian:trixie-slim from a registry)
#   CAMNET_MODERN_IMAGE  tag (default camnet:modern)
set -euo pipefail
# shellcheck source=containers/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO"
engine_for_run
IMAGE="${CAMNET_MODERN_IMAGE:-camnet:modern}"
base="${CAMNET_MODERN_BASE:-}"
if [ -z "$base" ]; then
  if docker image inspect camnet-base:trixie >/dev/null 2>&1 || { [ "$(id -u)" = 0 ] && command -v mmdebstrap >/dev/null; }; then
    base=camnet-base:trixie
    bash "$REPO/containers/base-images.sh" trixie
  else
    base=debian:trixie-slim
  fi
fi
stage_extra_cas

commit="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
git -C "$REPO" diff --quiet HEAD -- 2>/dev/null || commit="$commit-dirty"
version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/layer1_patches/__init__.py")"
say "docker build $IMAGE from $base (commit $commit; log $CACHE/build-modern.log)"
start=$SECONDS
if ! DOCKER_BUILDKIT=0 docker build --network host -f containers/Dockerfile.modern -t "$IMAGE" \
    --build-arg BASE_IMAGE="$base" --build-arg VERSION="$version" --build-arg GIT_COMMIT="$commit" . \
    > "$CACHE/build-modern.log" 2>&1; then
  tail -n 30 "$CACHE/build-modern.log" >&2
  die "docker build failed: see $CACHE/build-modern.log"
fi
say "image $IMAGE built in $((SECONDS - start)) s: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
echo "image: $IMAGE"
