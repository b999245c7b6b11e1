"""How the real operator copes with many resources: latency against its floor, time to Ready, rotation, restarts,
writes and memory.

Starts the local control plane (with an audit log of writes), both test servers and the operator process (as the
cluster tier does), then, printing each figure beside its target from issue 9:

1. latency: one resource at a time on an idle operator, ``create`` -> Ready seen on a watch (p50 of ``--samples``);
2. the floor: the same Kubernetes, Octopus and Infisical calls one create needs, made directly by this script with
   the operator's own clients, in a namespace the operator does not watch, timed the same way;
3. N resources sharing one Secret: time until all are Ready, Kubernetes writes per resource (from the audit log),
   operator RSS;
4. one rotation of the shared Secret: time until every resource's status shows the new Secret version;
5. a restart with a 10 s periodic interval: writes to Kubernetes and Infisical while every resource runs its first
   (quiet) periodic check;
6. a restart followed at once by a rotation: time from "operator up" until Infisical has the new key everywhere.

Asserts nothing about timing (shared machines make timed assertions flaky). ``--paced`` runs step 3 only, with the
operator's default paces against a test server enforcing Infisical Cloud's limits, and counts 429s.

    uv run python bench/operator_scale.py --resources 1000
    uv run python bench/operator_scale.py --resources 500 --paced
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kopf  # noqa: E402
from kubernetes import client, watch  # noqa: E402

from octoconn.infisical import InfisicalClient, UniversalAuth  # noqa: E402
from octoconn.kube import KubeClient  # noqa: E402
from octoconn.models import (  # noqa: E402
    ANNOTATION_PENDING_CREATE,
    GROUP,
    PLURAL,
    VERSION,
    Condition,
    OctopusDeployConnectionSpec,
    OctopusDeployConnectionStatus,
)
from octoconn.octopus import OctopusClient  # noqa: E402
from octoconn.reconcile import new_marker, rfc3339, utcnow  # noqa: E402
from tests.cluster.operator_process import OperatorProcess  # noqa: E402
from tests.envtest.binaries import expected_paths  # noqa: E402
from tests.envtest.controlplane import ControlPlane  # noqa: E402
from tests.servers.infisical import InfisicalServer  # noqa: E402
from tests.servers.octopus import OctopusServer  # noqa: E402

NAMESPACE = "bench"
FLOOR_NAMESPACE = "bench-floor"  # not watched by the operator
CLIENT_ID, CLIENT_SECRET = "bench", "bench-secret-0123456789abcdef"
FINALIZER = f"{GROUP}/finalizer"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its waited-for children), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by each process of the benchmark during one phase: what bounds the wall time."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.wall = time.monotonic()
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = cpu_seconds(pid)
            except OSError:
                out[name] = float("nan")
        return out

    def report(self) -> str:
        now, wall = self._now(), time.monotonic() - self.wall
        parts = [f"{name} {now[name] - self.start[name]:.1f}" for name in self.pids]
        return f"CPU seconds in {wall:.1f} s wall: " + ", ".join(parts)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def put_secret(core: client.CoreV1Api, key: str, namespace: str = NAMESPACE) -> str:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name="octopus-key"), data={"apiKey": base64.b64encode(key.encode()).decode()}
    )
    try:
        return str(core.replace_namespaced_secret("octopus-key", namespace, body).metadata.resource_version)
    except client.exceptions.ApiException:
        return str(core.create_namespaced_secret(namespace, body).metadata.resource_version)


def odc(name: str, octopus_url: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OctopusDeployConnection",
        "metadata": {"name": name},
        "spec": {"instanceUrl": octopus_url, "apiKeySecretRef": {"name": "octopus-key"}},
    }


@dataclass
class Watcher:
    """Follows the resources of one namespace on a watch: when each first showed Ready, and its last status."""

    custom: client.CustomObjectsApi
    namespace: str
    ready_at: dict[str, float] = field(default_factory=dict)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Watcher:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    resource_version=version or None,
                    timeout_seconds=300,
                ):
                    now = time.monotonic()
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    version = obj["metadata"]["resourceVersion"]
                    status = obj.get("status") or {}
                    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
                    with self.changed:
                        self.status[name] = status
                        if ready and name not in self.ready_at:
                            self.ready_at[name] = now
                        self.changed.notify_all()
                    if self._stop.is_set():
                        return
            except Exception:  # a dropped watch is restarted
                time.sleep(0.1)
                version = ""

    def wait(self, label: str, predicate: Callable[[], tuple[int, int]], timeout: float, quiet: bool = False) -> float:
        started = time.monotonic()
        last = ""
        with self.changed:
            while True:
                done, total = predicate()
                if not quiet and f"{done}/{total}" != last and (done == total or done % max(1, total // 10) == 0):
                    last = f"{done}/{total}"
                    print(f"  {label}: {last} after {time.monotonic() - started:5.1f}s", flush=True)
                if done >= total:
                    return time.monotonic() - started
                if time.monotonic() - started > timeout:
                    raise SystemExit(f"{label}: timed out after {timeout:.0f}s at {done}/{total}")
                self.changed.wait(0.5)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Bench:
    args: argparse.Namespace
    cluster: ControlPlane
    octopus: OctopusServer
    infisical: InfisicalServer
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    tmp: Path
    figures: list[tuple[str, str, str]] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    profile_dir: Path | None = None

    def figure(self, label: str, value: str, target: str = "") -> None:
        self.figures.append((label, value, target))
        print(f"  -> {label}: {value}" + (f"   (target {target})" if target else ""), flush=True)

    def operator(self, **env: str) -> OperatorProcess:
        settings = {
            "OCTOCONN_INFISICAL_URL": self.infisical.url,
            "OCTOCONN_CLIENT_ID": CLIENT_ID,
            "OCTOCONN_CLIENT_SECRET": CLIENT_SECRET,
            "OCTOCONN_ALLOW_HTTP": "true",
            **self.extra_env,
            **env,
        }
        if not self.args.paced:
            settings.setdefault("OCTOCONN_INFISICAL_WRITES_PER_MINUTE", "1000000")
            settings.setdefault("OCTOCONN_INFISICAL_READS_PER_MINUTE", "0")
        entry = None
        if self.profile_dir is not None:
            entry = [str(ROOT / "bench" / "profiled_operator.py"), str(self.profile_dir)]
        if self.args.operator_src is not None:
            settings["PYTHONPATH"] = str(self.args.operator_src)  # ahead of the installed package
        return OperatorProcess(
            kubeconfig=self.cluster.kubeconfig,
            env=settings,
            log_path=(self.args.log_dir or self.tmp) / "operator.log",
            namespaces=[NAMESPACE],
            entry=entry,
        ).start()

    def meter(self, operator: OperatorProcess) -> CpuMeter:
        assert operator.popen is not None
        return CpuMeter({"operator": operator.popen.pid, "bench+test servers": os.getpid(), **self.cluster.pids})

    def operator_writes(self, since: int = 0) -> list[dict[str, Any]]:
        """Writes in the operator's namespace that this script did not make: it only creates resources and
        replaces the Secret (by user agent alone an older operator, on the official client, looks like us)."""
        events = self.cluster.audit_writes()
        return [
            e
            for e in events[since:]
            if e["objectRef"].get("namespace") == NAMESPACE
            and not (e["verb"] == "create" and e["objectRef"].get("resource") == PLURAL)
            and e["objectRef"].get("resource") != "secrets"
        ]


async def floor_samples(bench: Bench, samples: int) -> list[float]:
    """The calls one create needs, made directly: create, read Secret, verify, finalizer+marker, POST, status."""
    cluster, watcher = bench.cluster, Watcher(bench.custom, FLOOR_NAMESPACE).start()
    kube = KubeClient(lambda: kopf.login_with_kubeconfig(settings=kopf.OperatorSettings()))  # type: ignore[arg-type, return-value]
    octopus = OctopusClient(allow_http=True)
    infisical = InfisicalClient(
        base_url=bench.infisical.url, auth=UniversalAuth(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    )
    os.environ["KUBECONFIG"] = cluster.kubeconfig
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{FLOOR_NAMESPACE}/{PLURAL}"
    times = []
    try:
        await infisical.get_by_name("warm-up", project_id=None)  # the operator is logged in already too
        for i in range(samples + 1):
            name = f"floor-{i:03d}"
            body = odc(name, bench.octopus.url)
            started = time.monotonic()
            await kube._request("POST", path, "create", json=body)  # the bench's own call
            secret = await kube.read_secret(FLOOR_NAMESPACE, "octopus-key")
            assert secret is not None
            identity = await octopus.verify(bench.octopus.url, secret.data["apiKey"])
            marker = new_marker(OctopusDeployConnectionSpec.model_validate(body["spec"]), name, utcnow())
            await kube._request(
                "PATCH",
                f"{path}/{name}",
                "finalizer",
                json={"metadata": {"finalizers": [FINALIZER], "annotations": {ANNOTATION_PENDING_CREATE: marker}}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            remote = await infisical.create(
                name=f"{name}-{time.time_ns()}",
                description=None,
                project_id=None,
                instance_url=bench.octopus.url,
                api_key=secret.data["apiKey"],
            )
            now = rfc3339(utcnow())
            conditions = [
                Condition(type=t, status="True", reason=r, message="m", last_transition_time=now, observed_generation=1)
                for t, r in (("Ready", "Available"), ("CredentialsVerified", "ApiKeyValid"), ("Synced", "UpToDate"))
            ]
            status = OctopusDeployConnectionStatus(
                id=remote.id, version=remote.version, credentials_hash=remote.credentials_hash, conditions=conditions
            )
            assert identity.user_id
            await kube.patch_status(FLOOR_NAMESPACE, name, status.to_patch())
            watcher.wait(name, lambda n=name: (int(n in watcher.ready_at), 1), 30, quiet=True)  # type: ignore[misc]
            if i > 0:  # the first one warms the connections up
                times.append(watcher.ready_at[name] - started)
    finally:
        watcher.stop()
        await kube.aclose()
        await octopus.aclose()
        await infisical.aclose()
    return times


def run(bench: Bench) -> None:
    args, n = bench.args, bench.args.resources
    core, custom = bench.core, bench.custom
    watcher = Watcher(custom, NAMESPACE).start()
    operator = bench.operator()
    assert operator.popen is not None
    time.sleep(3)
    bench.figure("operator RSS idle", f"{rss_mib(operator.popen.pid):.0f} MiB", "<= 100 MiB")
    try:
        if not args.paced and args.samples:
            latencies = []
            for i in range(args.samples + 1):
                name = f"lat-{i:03d}"
                started = time.monotonic()
                custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, odc(name, bench.octopus.url))
                watcher.wait(name, lambda n=name: (int(n in watcher.ready_at), 1), 30, quiet=True)  # type: ignore[misc]
                if i > 0:
                    latencies.append(watcher.ready_at[name] - started)
                time.sleep(0.3)  # idle again: the next sample starts on a quiet operator
            floor = asyncio.run(floor_samples(bench, args.samples))
            p50, floor50 = statistics.median(latencies), statistics.median(floor)
            bench.figure("one resource apply -> Ready, p50", f"{p50:.3f} s", "<= 0.100 s")
            bench.figure("floor (same calls made directly), p50", f"{floor50:.3f} s")
            bench.figure("operator latency / floor", f"{p50 / floor50:.2f} x", "<= 1.5 x")

        before = len(bench.cluster.audit_writes())
        requests_before = len(bench.infisical.state.requests)
        print(f"creating {n} OctopusDeployConnections sharing one Secret (load {loadavg()})", flush=True)
        meter = bench.meter(operator)
        started = time.monotonic()
        names = [f"conn-{i:04d}" for i in range(n)]
        for name in names:
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, odc(name, bench.octopus.url))
        print(f"  submitted in {time.monotonic() - started:.1f}s", flush=True)
        watcher.wait("Ready", lambda: (sum(1 for x in names if x in watcher.ready_at), n), args.timeout)
        to_ready = max(watcher.ready_at[x] for x in names) - started
        bench.figure(f"all {n} Ready after creation", f"{to_ready:.1f} s ({n / to_ready:.0f}/s)", "<= 20 s for 1000")
        bench.figure("  ... " + meter.report(), "")
        assert operator.popen is not None
        bench.figure(f"operator RSS with {n} resources", f"{rss_mib(operator.popen.pid):.0f} MiB", "<= 200 MiB")
        if bench.profile_dir is not None:
            os.kill(operator.popen.pid, signal.SIGUSR1)
        time.sleep(2)  # late writes (there should be none) are counted too
        writes = bench.operator_writes(before)
        to_odc = [e for e in writes if e["objectRef"]["resource"] == PLURAL]
        events = [e for e in writes if e["objectRef"]["resource"] == "events"]
        verbs: dict[str, int] = {}
        for e in to_odc:
            key = f"{e['verb']} {e['objectRef'].get('subresource') or 'object'}"
            verbs[key] = verbs.get(key, 0) + 1
        bench.figure(
            "Kubernetes writes per created resource",
            f"{len(to_odc) / n:.2f} ({', '.join(f'{k}: {v}' for k, v in sorted(verbs.items()))})",
            "<= 2",
        )
        bench.figure("Events posted per created resource", f"{len(events) / n:.2f} (Created, Available)")
        new_requests = bench.infisical.state.requests[requests_before:]
        limited = [r for r in new_requests if r.fault == "rate_limit"]
        posts = [r for r in new_requests if r.method == "POST" and r.path.endswith("octopus-deploy")]
        lookups = [r for r in new_requests if "/connection-name/" in r.path]
        bench.figure("Infisical creates / name lookups", f"{len(posts)} / {len(lookups)}", f"{n} / 0")
        if args.paced:
            bench.figure("429 answers from Infisical", str(len(limited)), "0")
            return

        print(f"rotating the shared Secret (load {loadavg()})", flush=True)
        octopus_before = len(bench.octopus.state.requests)
        meter = bench.meter(operator)
        rotated_at = time.monotonic()
        version = put_secret(core, bench.octopus.state.issue_key())
        watcher.wait(
            "rotated",
            lambda: (sum(1 for x in names if watcher.status.get(x, {}).get("secretResourceVersion") == version), n),
            args.timeout,
        )
        bench.figure(f"one rotation reaches all {n}", f"{time.monotonic() - rotated_at:.1f} s", "<= 10 s for 1000")
        bench.figure("  ... " + meter.report(), "")
        checks = [
            r
            for r in bench.octopus.state.requests[octopus_before:]
            if r.path.endswith("/users/me") and r.headers.get("user-agent", "").startswith("octoconn/")
        ]
        bench.figure(f"Octopus key checks for the rotation of {n}", str(len(checks)))

        # A restart with a short interval: every resource runs its first periodic check, and nothing changed.
        operator.stop()
        audit_mark, requests_mark = len(bench.cluster.audit_writes()), len(bench.infisical.state.requests)
        operator = bench.operator(OCTOCONN_RESYNC_INTERVAL_SECONDS="10")
        ids = {watcher.status[x].get("id") for x in names}

        def checked() -> tuple[int, int]:
            after = bench.infisical.state.requests[requests_mark:]
            return len({r.path.rsplit("/", 1)[-1] for r in after if r.method == "GET"} & ids), n

        watcher.wait("checked after restart", checked, args.timeout)
        time.sleep(1)
        quiet = bench.operator_writes(audit_mark)
        after = bench.infisical.state.requests[requests_mark:]
        app_writes = [r for r in after if r.method in ("POST", "PATCH", "DELETE") and "/auth/" not in r.path]
        logins = [r for r in after if "/auth/" in r.path]
        reads = [r for r in after if r.method == "GET"]
        bench.figure(
            f"restart + one quiet periodic check of {n}: Kubernetes writes",
            f"{len(quiet)} ({', '.join(sorted({e['verb'] + ' ' + e['objectRef']['resource'] for e in quiet}))})",
            "0",
        )
        bench.figure(
            "  ... Infisical app-connection writes / logins / reads",
            f"{len(app_writes)} / {len(logins)} / {len(reads)}",
            "0 writes",
        )

        # A restart, then a rotation as soon as the operator is up.
        operator.stop()
        requests_mark = len(bench.infisical.state.requests)
        operator = bench.operator()
        up = time.monotonic()
        key = bench.octopus.state.issue_key()
        put_secret(core, key)

        def pushed() -> tuple[int, int]:
            patches = [
                r
                for r in bench.infisical.state.requests[requests_mark:]
                if r.method == "PATCH" and "credentials" in (r.json or {})
            ]
            return len(patches), n

        first = watcher.wait("pushed after restart", lambda: (min(pushed()[0], 1), 1), args.timeout, quiet=True)
        watcher.wait("pushed after restart", pushed, args.timeout)
        bench.figure(
            f"restart, then a rotation reaches Infisical for all {n}",
            f"{time.monotonic() - up:.1f} s after the operator was up (first after {first:.1f} s)",
            "<= 5 s",
        )
    finally:
        watcher.stop()
        operator.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=15, help="single-resource latency samples")
    parser.add_argument("--paced", action="store_true", help="default paces against Infisical Cloud's limits")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--profile", type=Path, help="run the operator under cProfile + tracemalloc, output here")
    parser.add_argument("--log-dir", type=Path, help="keep the operator's log here")
    parser.add_argument(
        "--env", action="append", default=[], help="extra operator setting, e.g. OCTOCONN_LOG_LEVEL=DEBUG"
    )
    parser.add_argument("--operator-src", type=Path, help="run the operator package found here (e.g. an older one)")
    args = parser.parse_args()

    print(f"load average at start: {loadavg()} ({os.cpu_count()} CPUs)", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="octoconn-bench-") as tmp,
        ControlPlane(binaries=expected_paths()) as cluster,
    ):
        octopus = OctopusServer().start()
        infisical = InfisicalServer(allow_internal_ips=True).start()
        infisical.state.add_universal_identity(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        if args.paced:
            infisical.state.faults.rate_limit(reads_per_minute=60, writes_per_minute=200)
        api = cluster.kubernetes_api_client()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        # Both kinds: the operator watches secret syncs too (none are made here).
        for kind in ("octopusdeployconnections", "octopusdeploysecretsyncs"):
            cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / f"octoconn.dev_{kind}.yaml"))
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{kind}.{GROUP}")
        key = octopus.state.issue_key()
        for namespace in (NAMESPACE, FLOOR_NAMESPACE):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
            put_secret(core, key, namespace)
        bench = Bench(args, cluster, octopus, infisical, core, custom, Path(tmp), profile_dir=args.profile)
        bench.extra_env = dict(item.split("=", 1) for item in args.env)
        try:
            run(bench)
        finally:
            infisical.stop()
            octopus.stop()
            api.close()

    print()
    print(f"resources {args.resources}, {'default paces vs Cloud limits' if args.paced else 'unpaced'}")
    print(f"load average at the end: {loadavg()}")
    width = max(len(label) for label, _, _ in bench.figures)
    for label, value, target in bench.figures:
        print(f"{label:<{width}}  {value:<44} {('target ' + target) if target else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
