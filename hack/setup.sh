#!/usr/bin/env bash
# Installs everything octoconn's tests and demo need, on a fresh Debian machine or a warm one (idempotent):
# Debian packages, uv, the locked Python dependencies, the Go-built kube-apiserver/kubectl/etcd/helm/promtool and
# Argo CD health-check runner, and the local Python base image that the operator image is built on when no registry
# is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
SECONDS=0

need_apt=()
# podman + runc build and run the operator image without a daemon; mmdebstrap makes its base image.
for tool in make git podman runc mmdebstrap; do
  # runc lives in /usr/sbin, which a non-root PATH may lack.
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || need_apt+=("$tool")
done
[ -f /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
if [ "${#need_apt[@]}" -gt 0 ]; then
  step "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v go >/dev/null 2>&1; then
  echo "octoconn needs the Go toolchain (>= 1.26) to build kube-apiserver, etcd, kubectl and helm; install it first." >&2
  exit 1
fi

UV_VERSION=0.13.9
if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | awk '{print $2}')" != "$UV_VERSION" ]; then
  step "installing uv $UV_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

step "installing the locked Python dependencies (uv sync --frozen)"
uv sync --frozen --quiet

step "building the test binaries from Go modules (cached in ${OCTOCONN_CACHE:-$HOME/.cache/octoconn})"
uv run --frozen python -m tests.envtest.binaries

step "the image's Python base (localhost/python-base:3.11, built once with mmdebstrap)"
bash hack/image.sh base

echo "setup done in ${SECONDS}s"
