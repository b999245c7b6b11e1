#!/usr/bin/env bash
# Builds the operator image with podman, without a container daemon or a registry.
#
#   hack/image.sh base     build the local Python base image if it is missing (FORCE=1 rebuilds it)
#   hack/image.sh build    build the operator image (the base image first, when it is the local one) and copy its
#                          CycloneDX SBOM (/app/sbom.cdx.json in the image) out to SBOM
#
# Settings (environment): IMAGE (default localhost/octoconn:dev), PYTHON_IMAGE (default localhost/python-base:3.11,
# the local base image; set python:3.11-slim when a registry is reachable), SBOM (default dist/sbom.cdx.json),
# SSL_CERT_FILE (a CA bundle mounted into
# the build, for networks whose TLS passes through a proxy with its own CA; never copied into the image).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-localhost/octoconn:dev}"
SBOM="${SBOM:-dist/sbom.cdx.json}"
BASE_IMAGE=localhost/python-base:3.11
PYTHON_IMAGE="${PYTHON_IMAGE:-$BASE_IMAGE}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/hack/podman/containers.conf}"

for tool in podman runc; do
  command -v "$tool" >/dev/null 2>&1 || { echo "hack/image.sh: $tool is missing; run hack/setup.sh" >&2; exit 1; }
done

build_base() {
  if [ "${FORCE:-0}" != 1 ] && podman image exists "$BASE_IMAGE"; then
    echo "base image $BASE_IMAGE exists"
    return
  fi
  command -v mmdebstrap >/dev/null 2>&1 || { echo "hack/image.sh: mmdebstrap is missing; run hack/setup.sh" >&2; exit 1; }
  # Debian 12's Python 3.11 in a minimal root file system: what python:3.11-slim offers, minus what a registry
  # would have to provide. The "essential" variant has no apt (nothing is installed later); docs, locales and glibc's
  # iconv modules (Python's codecs are its own) are left out. pip stays: the Dockerfile's build stage installs uv
  # with it. The host's bookworm apt sources are reused when it has them, so a machine that reaches Debian only
  # through its own mirror builds this too.
  local sources=() tmp
  if grep -qs '^VERSION_CODENAME=bookworm$' /etc/os-release && [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sources=(/etc/apt/sources.list.d/debian.sources)
  fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "${tmp:-}"; trap - RETURN' RETURN
  SECONDS=0
  mmdebstrap --quiet --variant=essential --format=tar \
    --include=python3,python3-pip,ca-certificates,passwd \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*' \
    --customize-hook='ln -sf /usr/bin/python3 "$1/usr/local/bin/python3"' \
    --customize-hook='rm -f "$1"/usr/lib/python3.*/EXTERNALLY-MANAGED' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
    bookworm "$tmp/rootfs.tar" "${sources[@]}"
  podman import --quiet \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    "$tmp/rootfs.tar" "$BASE_IMAGE" >/dev/null
  echo "base image $BASE_IMAGE built in ${SECONDS}s ($(image_size "$BASE_IMAGE"))"
}

image_size() {
  podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1000000}'
}

build_image() {
  [ "$PYTHON_IMAGE" != "$BASE_IMAGE" ] || build_base
  local mounts=()
  if [ -n "${SSL_CERT_FILE:-}" ] && [ -f "$SSL_CERT_FILE" ]; then
    # uv and pip in the build reach PyPI through whatever CA the host trusts.
    mounts=(--volume "$(realpath "$SSL_CERT_FILE"):/etc/ssl/certs/ca-certificates.crt:ro")
  fi
  SECONDS=0
  podman build --layers "${mounts[@]}" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --tag "$IMAGE" .
  echo "image $IMAGE built in ${SECONDS}s ($(image_size "$IMAGE"))"
  copy_sbom
}

copy_sbom() {
  # The image's own copy, so the file beside it is exactly what the image carries.
  local container
  mkdir -p "$(dirname "$SBOM")"
  container="$(podman create --quiet "$IMAGE")"
  podman cp "$container:/app/sbom.cdx.json" "$SBOM"
  podman rm --force "$container" >/dev/null
  python3 - "$SBOM" <<'PY'
import json, sys
bom = json.load(open(sys.argv[1]))
count = len(bom.get("components", []))
print(f"SBOM {sys.argv[1]}: CycloneDX {bom['specVersion']}, {count} components (also /app/sbom.cdx.json in the image)")
PY
}

case "${1:-build}" in
  base) build_base ;;
  build) build_image ;;
  *) echo "usage: hack/image.sh [base|build]" >&2; exit 2 ;;
esac
