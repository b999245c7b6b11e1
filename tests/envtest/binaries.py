"""Build and cache the Go binaries the test tier needs: kube-apiserver, kubectl, etcd, helm and promtool.

The binaries are built from the Go module proxy (no other download site is reachable here) and cached under
``$OCTOCONN_CACHE`` (default ``~/.cache/octoconn``), one folder per tool and version, so a warm machine never
rebuilds. Run ``python -m tests.envtest.binaries`` to build whatever is missing and print the paths.

``k8s.io/kubernetes`` cannot be ``go install``-ed: its go.mod points every ``k8s.io/*`` staging module at a
local ``./staging`` folder. We therefore build it inside a small wrapper module that requires it and replaces
each staging module with its published ``v0.X.Y`` release; the list of staging modules is read from the
kubernetes go.mod itself, so a version bump needs no hand-edited list.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.3"
HELM_VERSION = "v3.22.0"
# Prometheus 3.x is published as module versions v0.3XX.Y (3.16.0 -> v0.316.0).
PROMTOOL_VERSION = "v0.316.0"


def cache_dir() -> Path:
    return Path(os.environ.get("OCTOCONN_CACHE", Path.home() / ".cache" / "octoconn"))


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    kubectl: Path
    etcd: Path
    helm: Path


def expected_paths(root: Path | None = None) -> Binaries:
    root = root or cache_dir()
    k8s = root / "bin" / f"kubernetes-{KUBERNETES_VERSION}"
    return Binaries(
        kube_apiserver=k8s / "kube-apiserver",
        kubectl=k8s / "kubectl",
        etcd=root / "bin" / f"etcd-{ETCD_VERSION}" / "etcd",
        helm=root / "bin" / f"helm-{HELM_VERSION}" / "helm",
    )


def _log(msg: str) -> None:
    print(f"[binaries] {msg}", file=sys.stderr, flush=True)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOFLAGS", "-buildvcs=false")
    return env


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_go_env(), text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _upstream_gomod(module: str, version: str, workdir: Path) -> dict:
    """Return ``go mod edit -json`` of a module's own go.mod, fetched from the module proxy."""
    info = json.loads(_run(["go", "mod", "download", "-json", f"{module}@{version}"], workdir))
    if info.get("Error"):
        raise RuntimeError(f"cannot download {module}@{version}: {info['Error']}")
    return json.loads(_run(["go", "mod", "edit", "-json", info["GoMod"]], workdir))


def _wrapper_module(name: str, module: str, version: str, replaces: dict[str, str], imports: list[str]) -> Path:
    src = cache_dir() / "src" / f"{name}-{version}"
    src.mkdir(parents=True, exist_ok=True)
    lines = [f"module octoconn.dev/build/{name}", "", "go 1.26", "", f"require {module} {version}", ""]
    for old, new in sorted(replaces.items()):
        lines.append(f"replace {old} => {new}")
    (src / "go.mod").write_text("\n".join(lines) + "\n")
    # A blank-import file keeps the main packages in the module graph, so `go mod tidy` records their deps.
    body = "\n".join(f'\t_ "{imp}"' for imp in imports)
    (src / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{body}\n)\n")
    _run(["go", "mod", "tidy"], src)
    return src


def _version_ldflags(version: str) -> str:
    major, minor, _ = version.lstrip("v").split(".")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={stamp}",
        ]
    return " ".join(flags)


def _build(src: Path, package: str, out: Path, ldflags: str) -> None:
    # One temporary name per process: two test sessions that both find the binary missing may build it at once,
    # and a shared name would let one rename the other's half-written file away.
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _log(f"building {package} -> {out}")
    _run(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), package], src)
    tmp.rename(out)  # atomic: an interrupted build never leaves a half-written binary behind
    _log(f"built {out.name} in {time.monotonic() - started:.0f}s")


def build_kubernetes(paths: Binaries) -> None:
    if paths.kube_apiserver.exists() and paths.kubectl.exists():
        return
    work = cache_dir() / "src"
    work.mkdir(parents=True, exist_ok=True)
    gomod = _upstream_gomod("k8s.io/kubernetes", KUBERNETES_VERSION, work)
    staging_version = "v0." + KUBERNETES_VERSION.split(".", 1)[1]
    replaces = {
        r["Old"]["Path"]: f"{r['Old']['Path']} {staging_version}"
        for r in gomod.get("Replace") or []
        if r["New"]["Path"].startswith("./staging/")
    }
    _log(f"k8s.io/kubernetes {KUBERNETES_VERSION}: {len(replaces)} staging modules -> {staging_version}")
    mains = ["k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl"]
    src = _wrapper_module("kubernetes", "k8s.io/kubernetes", KUBERNETES_VERSION, replaces, mains)
    ldflags = _version_ldflags(KUBERNETES_VERSION)
    if not paths.kube_apiserver.exists():
        _build(src, mains[0], paths.kube_apiserver, ldflags)
    if not paths.kubectl.exists():
        _build(src, mains[1], paths.kubectl, ldflags)


def _build_plain(
    name: str, module: str, version: str, package: str, out: Path, ldflags: Callable[[dict[str, Any]], str]
) -> None:
    """Build ``package`` from ``module@version``; ``ldflags`` is computed from the module's own go.mod."""
    if out.exists():
        return
    work = cache_dir() / "src"
    work.mkdir(parents=True, exist_ok=True)
    gomod = _upstream_gomod(module, version, work)
    # Local (./...) replaces point into the module's own repository; their targets are published modules of the
    # same release, so pin them to that version. Remote replaces are copied as they are.
    replaces: dict[str, str] = {}
    for r in gomod.get("Replace") or []:
        old, new = r["Old"]["Path"], r["New"]
        if new["Path"].startswith("."):
            replaces[old] = f"{old} {version}"
        else:
            replaces[old] = f"{new['Path']} {new.get('Version', '')}".strip()
    src = _wrapper_module(name, module, version, replaces, [package])
    _build(src, package, out, ldflags(gomod))


def _helm_ldflags(gomod: dict[str, Any]) -> str:
    """Stamp helm's version and the Kubernetes version it was built against, as helm's own Makefile does.

    Without the latter, helm assumes Kubernetes 1.20 and refuses charts with a newer ``kubeVersion``.
    """
    client_go = next(r["Version"] for r in gomod.get("Require") or [] if r["Path"] == "k8s.io/client-go")
    minor = client_go.lstrip("v").split(".")[1]
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"]
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {pkg}.k8sVersionMajor=1", f"-X {pkg}.k8sVersionMinor={minor}"]
    return " ".join(flags)


def promtool_path(root: Path | None = None) -> Path:
    return (root or cache_dir()) / "bin" / f"promtool-{PROMTOOL_VERSION}" / "promtool"


def _promtool_ldflags(_: dict[str, Any]) -> str:
    _, minor, patch = PROMTOOL_VERSION.lstrip("v").split(".")
    release = f"{minor[0]}.{int(minor[1:])}.{patch}"  # v0.316.0 -> 3.16.0
    return f"-s -w -X github.com/prometheus/common/version.Version={release}"


def ensure_promtool() -> Path:
    """Build promtool (checks and unit-tests the chart's alerting rules) if it is missing; return its path."""
    out = promtool_path()
    if out.exists():
        return out
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is required to build promtool (go not found on PATH)")
    module = "github.com/prometheus/prometheus"
    _build_plain("promtool", module, PROMTOOL_VERSION, f"{module}/cmd/promtool", out, _promtool_ldflags)
    return out


ARGOCD_HEALTH_SOURCE = Path(__file__).resolve().parents[1] / "argocd"


def argocd_health_path(root: Path | None = None) -> Path:
    """The runner of tests/argocd, cached per content of its sources: an edit of go.mod or main.go rebuilds it."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((ARGOCD_HEALTH_SOURCE / name).read_bytes())
    return (root or cache_dir()) / "bin" / f"argocd-health-{digest.hexdigest()[:12]}" / "argocd-health"


def ensure_argocd_health() -> Path:
    """Build the program that runs Argo CD health scripts in Argo CD's own Lua VM (tests/argocd) if missing."""
    out = argocd_health_path()
    if out.exists():
        return out
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is required to build tests/argocd (go not found on PATH)")
    _build(ARGOCD_HEALTH_SOURCE, ".", out, "-s -w")
    return out


def ensure_binaries() -> Binaries:
    """Build every missing binary and return their paths. Cheap when the cache is warm."""
    paths = expected_paths()
    if all(p.exists() for p in vars(paths).values()):
        return paths  # a warm cache needs no Go toolchain: a machine may ship the binaries without Go
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is required to build the test binaries (go not found on PATH)")
    build_kubernetes(paths)
    _build_plain(
        "etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION, "go.etcd.io/etcd/server/v3", paths.etcd, lambda _: "-s -w"
    )
    _build_plain("helm", "helm.sh/helm/v3", HELM_VERSION, "helm.sh/helm/v3/cmd/helm", paths.helm, _helm_ldflags)
    return paths


TOXIPROXY_VERSION = "v2.5.0"


def toxiproxy_path(root: Path | None = None) -> Path:
    return (root or cache_dir()) / "bin" / f"toxiproxy-{TOXIPROXY_VERSION}" / "toxiproxy-server"


def ensure_toxiproxy() -> Path:
    """Build Toxiproxy's server (the fault tier's network faults, driven over its HTTP API) if it is missing."""
    out = toxiproxy_path()
    if out.exists():
        return out
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is required to build toxiproxy (go not found on PATH)")
    module = "github.com/Shopify/toxiproxy/v2"
    stamp = f"-s -w -X {module}.Version={TOXIPROXY_VERSION.lstrip('v')}"
    _build_plain("toxiproxy", module, TOXIPROXY_VERSION, f"{module}/cmd/server", out, lambda _: stamp)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-dir", action="store_true", help="print the folder holding kubectl and helm")
    args = parser.parse_args()
    started = time.monotonic()
    paths = ensure_binaries()
    promtool = ensure_promtool()
    argocd_health = ensure_argocd_health()
    _log(f"all binaries present ({time.monotonic() - started:.0f}s)")
    if args.print_dir:
        print(paths.kubectl.parent)
    else:
        for field, value in vars(paths).items():
            print(f"{field}={value}")
        print(f"promtool={promtool}")
        print(f"argocd_health={argocd_health}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
