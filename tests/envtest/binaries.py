"""Build and cache the Go binaries the tests and the demo need, from Go modules.

The binaries are built from the Go module proxy (no other download site is reachable here) and cached under
``$OCTOCONN_CACHE`` (default ``~/.cache/octoconn``), one folder per tool and version, so a warm machine never
rebuilds. ``TOOLS`` lists them; ``python -m tests.envtest.binaries`` builds whatever is missing and prints the
paths, ``--demo`` only what ``make demo`` uses (etcd, kube-apiserver, kubectl). Each build prints which binary it
is, how far the whole run is, and an estimate from the time that binary took on the previous run on this machine
(``build-times.json`` in the cache), or a documented two-core figure on a first run.

All builds share Go's own per-user build and module caches (``go env GOCACHE GOMODCACHE``): nothing here points a
build elsewhere, so packages that two tools compile alike (the Go standard library, shared dependencies at equal
versions) are compiled once.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.3"
HELM_VERSION = "v3.22.0"
# Prometheus 3.x is published as module versions v0.3XX.Y (3.16.0 -> v0.316.0).
PROMTOOL_VERSION = "v0.316.0"
# Prometheus's documented build tag that leaves out every optional service discovery (its README, "Service
# discovery plugins"): promtool's rule checks and unit tests need none of them. Kubernetes SD stays in because
# promtool imports it directly. The tag is part of the cache path, as the binary differs.
PROMTOOL_TAGS = "remove_all_sd"
OSV_SCANNER_VERSION = "v2.6.0"
# The ServiceMonitor and PrometheusRule CRDs the chart's monitoring objects are dry-run against: prometheus-operator's
# own, from its Go module (example/prometheus-operator-crd/).
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"


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


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env={**_go_env(), **(env or {})}, text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _upstream_gomod(module: str, version: str, workdir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Return ``go mod edit -json`` of a module's own go.mod, fetched from the module proxy."""
    info = json.loads(_run(["go", "mod", "download", "-json", f"{module}@{version}"], workdir, env))
    if info.get("Error"):
        raise RuntimeError(f"cannot download {module}@{version}: {info['Error']}")
    parsed: dict[str, Any] = json.loads(_run(["go", "mod", "edit", "-json", info["GoMod"]], workdir, env))
    return parsed


def _wrapper_module(
    name: str,
    module: str,
    version: str,
    replaces: dict[str, str],
    imports: list[str],
    env: dict[str, str] | None = None,
) -> Path:
    src = cache_dir() / "src" / f"{name}-{version}"
    src.mkdir(parents=True, exist_ok=True)
    lines = [f"module octoconn.dev/build/{name}", "", "go 1.26", "", f"require {module} {version}", ""]
    for old, new in sorted(replaces.items()):
        lines.append(f"replace {old} => {new}")
    (src / "go.mod").write_text("\n".join(lines) + "\n")
    # A blank-import file keeps the main packages in the module graph, so `go mod tidy` records their deps.
    body = "\n".join(f'\t_ "{imp}"' for imp in imports)
    (src / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{body}\n)\n")
    _run(["go", "mod", "tidy"], src, env)
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


def _build(
    src: Path, package: str, out: Path, ldflags: str, *, tags: str = "", env: dict[str, str] | None = None
) -> None:
    # One temporary name per process: two test sessions that both find the binary missing may build it at once,
    # and a shared name would let one rename the other's half-written file away.
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["go", "build", "-trimpath", "-ldflags", ldflags, *(["-tags", tags] if tags else []), "-o", str(tmp), package]
    _run(cmd, src, env)
    tmp.rename(out)  # atomic: an interrupted build never leaves a half-written binary behind


def _kubernetes_src() -> Path:
    work = cache_dir() / "src"
    work.mkdir(parents=True, exist_ok=True)
    gomod = _upstream_gomod("k8s.io/kubernetes", KUBERNETES_VERSION, work)
    staging_version = "v0." + KUBERNETES_VERSION.split(".", 1)[1]
    replaces = {
        r["Old"]["Path"]: f"{r['Old']['Path']} {staging_version}"
        for r in gomod.get("Replace") or []
        if r["New"]["Path"].startswith("./staging/")
    }
    mains = [f"k8s.io/kubernetes/cmd/{name}" for name in ("kube-apiserver", "kubectl")]
    return _wrapper_module("kubernetes", "k8s.io/kubernetes", KUBERNETES_VERSION, replaces, mains)


def _build_kubernetes(command: str, out: Path) -> None:
    _build(_kubernetes_src(), f"k8s.io/kubernetes/cmd/{command}", out, _version_ldflags(KUBERNETES_VERSION))


def _pinned_replaces(gomod: dict[str, Any], version: str) -> dict[str, str]:
    """A module's own replaces, usable from outside its repository.

    Local (./...) replaces point into the module's own repository; their targets are published modules of the
    same release, so pin them to that version. Remote replaces are copied as they are.
    """
    replaces: dict[str, str] = {}
    for r in gomod.get("Replace") or []:
        old, new = r["Old"]["Path"], r["New"]
        if new["Path"].startswith("."):
            replaces[old] = f"{old} {version}"
        else:
            replaces[old] = f"{new['Path']} {new.get('Version', '')}".strip()
    return replaces


def _build_plain(
    name: str,
    module: str,
    version: str,
    package: str,
    out: Path,
    ldflags: Callable[[dict[str, Any]], str],
    *,
    tags: str = "",
    env: dict[str, str] | None = None,
) -> None:
    """Build ``package`` from ``module@version``; ``ldflags`` is computed from the module's own go.mod."""
    work = cache_dir() / "src"
    work.mkdir(parents=True, exist_ok=True)
    gomod = _upstream_gomod(module, version, work, env)
    src = _wrapper_module(name, module, version, _pinned_replaces(gomod, version), [package], env)
    _build(src, package, out, ldflags(gomod), tags=tags, env=env)


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
    return (root or cache_dir()) / "bin" / f"promtool-{PROMTOOL_VERSION}-{PROMTOOL_TAGS}" / "promtool"


def _promtool_ldflags(_gomod: dict[str, Any]) -> str:
    _, minor, patch = PROMTOOL_VERSION.lstrip("v").split(".")
    release = f"{minor[0]}.{int(minor[1:])}.{patch}"  # v0.316.0 -> 3.16.0
    return f"-s -w -X github.com/prometheus/common/version.Version={release}"


def _build_promtool(out: Path) -> None:
    module = "github.com/prometheus/prometheus"
    pkg = f"{module}/cmd/promtool"
    _build_plain("promtool", module, PROMTOOL_VERSION, pkg, out, _promtool_ldflags, tags=PROMTOOL_TAGS)


# Argo CD releases after v3.2 and osv-scanner v2.6 need Go 1.27; the module proxy serves that toolchain, and Go
# fetches it by itself for the builds that ask for it (the machine's own Go may stay older).
GO127 = {"GOTOOLCHAIN": "go1.27.3"}
TESTS = Path(__file__).resolve().parents[1]
ARGOCD_HEALTH_SOURCE = TESTS / "argocd"
KSTATUS_SOURCE = TESTS / "kstatus"
# The newest Argo CD v3 release that builds from Go modules (with GO127); tests/argocd's go.mod keeps v3.2.12.
ARGOCD_LATEST_VERSION = "v3.6.1"


def _source_digest(folder: Path, names: tuple[str, ...], extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for name in names:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:12]


def argocd_health_path(root: Path | None = None, version: str | None = None) -> Path:
    """The runner of tests/argocd, cached per content of its sources: an edit of go.mod or main.go rebuilds it.

    ``version``: the same main.go built against another Argo CD release than tests/argocd/go.mod's.
    """
    if version is None:
        tag = _source_digest(ARGOCD_HEALTH_SOURCE, ("go.mod", "go.sum", "main.go"))
        return (root or cache_dir()) / "bin" / f"argocd-health-{tag}" / "argocd-health"
    tag = _source_digest(ARGOCD_HEALTH_SOURCE, ("main.go",), version)
    return (root or cache_dir()) / "bin" / f"argocd-health-{version}-{tag}" / "argocd-health"


def _build_argocd_latest(out: Path) -> None:
    """tests/argocd/main.go in a module of its own that requires the newer Argo CD, with Argo CD's replaces."""
    module, version = "github.com/argoproj/argo-cd/v3", ARGOCD_LATEST_VERSION
    work = cache_dir() / "src"
    work.mkdir(parents=True, exist_ok=True)
    gomod = _upstream_gomod(module, version, work, GO127)
    src = work / f"argocd-health-{version}"
    src.mkdir(parents=True, exist_ok=True)
    lines = ["module octoconn.dev/build/argocd-health", "", "go 1.27.0", "", f"require {module} {version}", ""]
    lines += [f"replace {old} => {new}" for old, new in sorted(_pinned_replaces(gomod, version).items())]
    (src / "go.mod").write_text("\n".join(lines) + "\n")
    shutil.copy(ARGOCD_HEALTH_SOURCE / "main.go", src / "main.go")
    _run(["go", "mod", "tidy"], src, GO127)
    _build(src, ".", out, "-s -w", env=GO127)


def kstatus_path(root: Path | None = None) -> Path:
    """The kstatus runner of tests/kstatus, cached per content of its sources."""
    tag = _source_digest(KSTATUS_SOURCE, ("go.mod", "go.sum", "main.go"))
    return (root or cache_dir()) / "bin" / f"kstatus-{tag}" / "kstatus"


def osv_scanner_path(root: Path | None = None) -> Path:
    return (root or cache_dir()) / "bin" / f"osv-scanner-{OSV_SCANNER_VERSION}" / "osv-scanner"


def _build_osv_scanner(out: Path) -> None:
    module = "github.com/google/osv-scanner/v2"
    package = f"{module}/cmd/osv-scanner"
    _build_plain("osv-scanner", module, OSV_SCANNER_VERSION, package, out, lambda _: "-s -w", env=GO127)


@dataclass(frozen=True)
class Tool:
    """One binary: where it is cached, how it is built, and whether ``make demo`` needs it.

    ``default_seconds``: its cold build on a fresh two-core machine (issue 17's measurements, or this file's
    author's), shown as the estimate until this machine has built it once.
    """

    name: str
    path: Callable[[], Path]
    build: Callable[[Path], None]
    default_seconds: float
    demo: bool = False


TOOLS: tuple[Tool, ...] = (
    Tool("etcd", lambda: expected_paths().etcd, lambda out: _build_etcd(out), 53, demo=True),
    Tool(
        "kube-apiserver",
        lambda: expected_paths().kube_apiserver,
        lambda o: _build_kubernetes("kube-apiserver", o),
        321,
        demo=True,
    ),
    Tool("kubectl", lambda: expected_paths().kubectl, lambda out: _build_kubernetes("kubectl", out), 37, demo=True),
    Tool("helm", lambda: expected_paths().helm, lambda out: _build_helm(out), 122),
    Tool("promtool", promtool_path, _build_promtool, 404),
    Tool("argocd-health", argocd_health_path, lambda out: _build(ARGOCD_HEALTH_SOURCE, ".", out, "-s -w"), 158),
    Tool("argocd-health-latest", lambda: argocd_health_path(version=ARGOCD_LATEST_VERSION), _build_argocd_latest, 200),
    Tool("kstatus", kstatus_path, lambda out: _build(KSTATUS_SOURCE, ".", out, "-s -w"), 60),
    Tool("osv-scanner", osv_scanner_path, _build_osv_scanner, 150),
)


def monitoring_crds() -> list[Path]:
    """prometheus-operator's ServiceMonitor and PrometheusRule CRDs, from the module cache (downloaded if missing)."""
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is required to fetch prometheus-operator's CRDs (go not found on PATH)")
    module = f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}"
    work = cache_dir() / "src"
    work.mkdir(parents=True, exist_ok=True)
    info = json.loads(_run(["go", "mod", "download", "-json", module], work))
    if info.get("Error"):
        raise RuntimeError(f"cannot download {module}: {info['Error']}")
    folder = Path(info["Dir"]) / "example" / "prometheus-operator-crd"
    return [folder / f"monitoring.coreos.com_{plural}.yaml" for plural in ("servicemonitors", "prometheusrules")]


def _build_etcd(out: Path) -> None:
    module = "go.etcd.io/etcd/server/v3"
    _build_plain("etcd", module, ETCD_VERSION, module, out, lambda _: "-s -w")


def _build_helm(out: Path) -> None:
    _build_plain("helm", "helm.sh/helm/v3", HELM_VERSION, "helm.sh/helm/v3/cmd/helm", out, _helm_ldflags)


def _times_file() -> Path:
    return cache_dir() / "build-times.json"


def _measured_times() -> dict[str, float]:
    try:
        data = json.loads(_times_file().read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)} if isinstance(data, dict) else {}


def _record_time(name: str, seconds: float) -> None:
    times = _measured_times()
    times[name] = round(seconds, 1)
    path = _times_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
    tmp.rename(path)  # atomic, as for the binaries: a concurrent reader sees the old or the new file


def _estimate(tool: Tool, times: dict[str, float]) -> tuple[float, str]:
    if tool.name in times:
        return times[tool.name], "its build on the previous run"
    return tool.default_seconds, "a fresh two-core machine"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def tools(names: Iterable[str] | None = None, *, demo: bool = False) -> list[Tool]:
    """The tools by name (all if None), or only those ``make demo`` needs."""
    chosen = [t for t in TOOLS if not demo or t.demo]
    if names is None:
        return chosen
    wanted = set(names)
    unknown = wanted - {t.name for t in TOOLS}
    if unknown:
        raise ValueError(f"unknown binaries: {', '.join(sorted(unknown))}")
    return [t for t in chosen if t.name in wanted]


def ensure(selected: list[Tool]) -> dict[str, Path]:
    """Build each missing binary of ``selected``, one line per build with N of M and the time left; return paths."""
    missing = [t for t in selected if not t.path().exists()]
    if missing and shutil.which("go") is None:
        # A warm cache needs no Go toolchain: a machine may ship the binaries without Go.
        raise RuntimeError(f"the Go toolchain is required to build {missing[0].name} (go not found on PATH)")
    times = _measured_times()
    left = sum(_estimate(t, times)[0] for t in missing)
    for number, tool in enumerate(missing, 1):
        expected, basis = _estimate(tool, times)
        _log(
            f"[{number}/{len(missing)}] building {tool.name}: about {_minutes(expected)} ({basis}); "
            f"about {_minutes(left)} left for the {len(missing) - number + 1} still to build"
        )
        started = time.monotonic()
        tool.build(tool.path())
        took = time.monotonic() - started
        _record_time(tool.name, took)
        left = max(left - expected, 0.0)
        _log(f"[{number}/{len(missing)}] built {tool.name} in {_minutes(took)} -> {tool.path()}")
    return {t.name: t.path() for t in selected}


def ensure_binaries() -> Binaries:
    """Build the control plane's binaries (etcd, kube-apiserver, kubectl) if missing. Cheap when the cache is warm.

    ``helm`` in the result is where helm is cached; ``ensure_helm()`` builds it.
    """
    ensure(tools(["etcd", "kube-apiserver", "kubectl"]))
    return expected_paths()


def _ensure_one(name: str) -> Path:
    return ensure(tools([name]))[name]


def ensure_helm() -> Path:
    return _ensure_one("helm")


def ensure_promtool() -> Path:
    """promtool checks and unit-tests the chart's alerting rules."""
    return _ensure_one("promtool")


def ensure_argocd_health(latest: bool = False) -> Path:
    """The program that runs Argo CD health scripts in Argo CD's own Lua VM (tests/argocd): built against
    tests/argocd/go.mod's Argo CD, or with ``latest`` against ``ARGOCD_LATEST_VERSION``."""
    return _ensure_one("argocd-health-latest" if latest else "argocd-health")


def ensure_kstatus() -> Path:
    """The program that computes kstatus (what Flux shows) for saved objects (tests/kstatus)."""
    return _ensure_one("kstatus")


def ensure_osv_scanner() -> Path:
    return _ensure_one("osv-scanner")


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
    parser.add_argument(
        "--demo", action="store_true", help="only what `make demo` needs (etcd, kube-apiserver, kubectl)"
    )
    parser.add_argument("--print-dir", action="store_true", help="print the folder holding kubectl")
    parser.add_argument("names", nargs="*", help=f"only these binaries, of: {', '.join(t.name for t in TOOLS)}")
    args = parser.parse_args()
    started = time.monotonic()
    try:
        paths = ensure(tools(args.names or None, demo=args.demo))
    except (RuntimeError, ValueError) as exc:
        _log(f"error: {exc}")
        return 1
    _log(f"{len(paths)} binaries present ({time.monotonic() - started:.0f}s)")
    if args.print_dir:
        print(expected_paths().kubectl.parent)
    else:
        for name, path in paths.items():
            print(f"{name}={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
