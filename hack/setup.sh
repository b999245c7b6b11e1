#!/usr/bin/env bash
# Installs what octoconn needs, on a fresh Debian machine or a warm one (idempotent).
#
#   hack/setup.sh          everything the tests, lint, image and audit need: Debian packages (podman, runc,
#                          mmdebstrap among them), uv, the locked Python dependencies, every Go-built binary
#                          (tests/envtest/binaries.py: kube-apiserver, kubectl, etcd, helm, promtool, the Argo CD and
#                          kstatus runners, osv-scanner) and the local Python base image of the operator image
#   hack/setup.sh --demo   only what `make demo` uses: make, git, uv, the Python dependencies, etcd,
#                          kube-apiserver and kubectl
set -euo pipefail
cd "$(dirname "$0")/.."

demo=0
case "${1:-}" in
  --demo) demo=1 ;;
  "") ;;
  *) echo "usage: hack/setup.sh [--demo]" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*"; }
SECONDS=0

need_apt=()
tools=(make git)
# podman + runc build and run the operator image without a daemon; mmdebstrap makes its base image.
[ "$demo" = 1 ] || tools+=(podman runc mmdebstrap)
for tool in "${tools[@]}"; do
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
  echo "octoconn needs the Go toolchain (>= 1.26) to build kube-apiserver, etcd, kubectl and the other test binaries; install it first." >&2
  exit 1
fi

UV_VERSION=0.13.9
if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | awk '{print $2}')" != "$UV_VERSION" ]; then
  step "installing uv $UV_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

step "installing the locked Python dependencies (uv sync --frozen)"
uv sync --frozen --quiet

if [ "$demo" = 1 ]; then
  step "building the demo's binaries from Go modules (cached in ${OCTOCONN_CACHE:-$HOME/.cache/octoconn})"
  uv run --frozen python -m tests.envtest.binaries --demo
  echo "setup (demo) done in ${SECONDS}s"
  exit 0
fi

step "building the test binaries from Go modules (cached in ${OCTOCONN_CACHE:-$HOME/.cache/octoconn})"
uv run --frozen python -m tests.envtest.binaries

step "the image's Python base (localhost/python-base:3.11, built once with mmdebstrap)"
bash hack/image.sh base

echo "setup done in ${SECONDS}s"
