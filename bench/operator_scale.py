"""How the real operator copes with many resources, measured beside a floor in the same run.

Starts the local control plane (with an audit log of writes), each test server in a process of its own
(``bench/servers.py``: the Infisical double checks keys against the Octopus double over HTTP between processes, as
Infisical does), the operator process, and the floor (``bench/floor.py``, a minimal httpx client making only the
calls the operator must make, in a process of its own, on a namespace the operator does not watch). Then, printing
each figure beside its target (issue 19; issue 9 for the older ones):

1. latency: one resource at a time on an idle operator, ``create`` -> Ready seen on a watch (p50 of ``--samples``),
   beside the same calls made one by one by this script with the operator's own clients;
2. the floor: N resources sharing one Secret created for the floor process, then one rotation of that Secret;
3. the operator: the same N and the same rotation; CPU per resource, kube-apiserver CPU and wall time beside the
   floor's, with their ratios, and the two-core bound (every process's CPU-seconds added up and halved);
4. Kubernetes writes per resource (from the audit log), Infisical creates and name lookups, RSS;
5. a restart with a 10 s periodic interval: writes while every resource runs its first (quiet) periodic check;
6. a restart followed at once by a rotation: time from "operator up" until Infisical has the new key everywhere.

``--syncs N`` runs the secret-sync scenario instead (``bench/sync_scale.py``). Every phase prints the CPU seconds of
each process. Asserts counts only, never times (shared machines make timed assertions flaky). ``--paced`` runs step
4 only for the operator, with its default paces against a test server enforcing Infisical Cloud's limits.

    uv run python bench/operator_scale.py --resources 1000
    uv run python bench/operator_scale.py --resources 500 --paced
    uv run python bench/operator_scale.py --syncs 200
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import ssl
import statistics
import subprocess
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

import httpx  # noqa: E402
import kopf  # noqa: E402
from kubernetes import client, watch  # noqa: E402

from bench.servers import ServerProcess  # noqa: E402
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
from tests.envtest.controlplane import ControlPlane, child_preexec  # noqa: E402

NAMESPACE = "bench"
FLOOR_NAMESPACE = "bench-floor"  # not watched by the operator: the one-by-one latency floor
SCALE_FLOOR_NAMESPACE = "bench-floor-n"  # not watched by the operator: the floor process's N resources
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


@dataclass
class Phase:
    """CPU seconds each process spent during one phase, and its wall time."""

    label: str
    wall: float
    cpu: dict[str, float]

    @property
    def bound(self) -> float:
        """The two-core bound: no wall time on two cores can be shorter than all the CPU spent, halved."""
        return sum(v for v in self.cpu.values() if v == v) / 2

    def report(self) -> str:
        parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.cpu.items())
        return f"{parts} (in {self.wall:.1f} s wall; two-core bound {self.bound:.1f} s)"


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

    def stop(self, label: str) -> Phase:
        now, wall = self._now(), time.monotonic() - self.wall
        return Phase(label, wall, {name: now[name] - self.start[name] for name in self.pids})


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def put_secret(core: client.CoreV1Api, key: str, namespace: str = NAMESPACE, name: str = "octopus-key") -> str:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name), data={"apiKey": base64.b64encode(key.encode()).decode()}
    )
    try:
        return str(core.replace_namespaced_secret(name, namespace, body).metadata.resource_version)
    except client.exceptions.ApiException:
        return str(core.create_namespaced_secret(namespace, body).metadata.resource_version)


def odc(name: str, octopus_url: str, secret: str = "octopus-key") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OctopusDeployConnection",
        "metadata": {"name": name},
        "spec": {"instanceUrl": octopus_url, "apiKeySecretRef": {"name": secret}},
    }


@dataclass
class Watcher:
    """Follows the resources of one namespace on a watch: when each first showed Ready, when each first showed a
    given Secret version, and its last status. Times are taken as the events arrive, not when a waiter looks."""

    custom: client.CustomObjectsApi
    namespace: str
    plural: str = PLURAL
    ready_at: dict[str, float] = field(default_factory=dict)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    version_at: dict[tuple[str, str], float] = field(default_factory=dict)
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
                    self.plural,
                    resource_version=version or None,
                    timeout_seconds=300,
                ):
                    version = self._seen(event["object"], time.monotonic())
                    if self._stop.is_set():
                        return
            except Exception:  # a dropped watch is restarted
                time.sleep(0.1)
                version = ""

    def _seen(self, obj: dict[str, Any], now: float) -> str:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        with self.changed:
            self.status[name] = status
            if ready and name not in self.ready_at:
                self.ready_at[name] = now
            secret_version = status.get("secretResourceVersion")
            if secret_version:
                self.version_at.setdefault((name, secret_version), now)
            self.changed.notify_all()
        return str(obj["metadata"]["resourceVersion"])

    def wait(self, label: str, predicate: Callable[[], tuple[int, int]], timeout: float, quiet: bool = False) -> float:
        """Until predicate says done == total. Looked at no more than 4 times a second (it may ask a test server)."""
        started = time.monotonic()
        last = ""
        while True:
            with self.changed:
                done, total = predicate()
            if not quiet and f"{done}/{total}" != last and (done == total or done % max(1, total // 10) == 0):
                last = f"{done}/{total}"
                print(f"  {label}: {last} after {time.monotonic() - started:5.1f}s", flush=True)
            if done >= total:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise SystemExit(f"{label}: timed out after {timeout:.0f}s at {done}/{total}")
            time.sleep(0.05 if quiet else 0.25)

    def stop(self) -> None:
        self._stop.set()


class FloorProcess:
    """``bench/floor.py`` in a child process, on a namespace of its own."""

    def __init__(
        self, cluster: ControlPlane, infisical_url: str, namespace: str, log_path: Path, profile_dir: Path | None
    ) -> None:
        assert cluster.ca_file is not None
        assert cluster.admin_cert_file is not None
        assert cluster.admin_key_file is not None
        argv = [sys.executable, str(ROOT / "bench" / "floor.py"), "--server", cluster.url, "--ca", cluster.ca_file]
        argv += ["--cert", cluster.admin_cert_file, "--key", cluster.admin_key_file, "--namespace", namespace]
        argv += ["--infisical-url", infisical_url, "--client-id", CLIENT_ID]
        profile = {"FLOOR_PROFILE": str(profile_dir / "floor.prof")} if profile_dir is not None else {}
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self.popen = subprocess.Popen(
            argv,
            env={**os.environ, "FLOOR_CLIENT_SECRET": CLIENT_SECRET, **profile},
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=child_preexec(os.getpid()),  # dies with the benchmark
        )
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline().decode()
        if "watching" not in line:
            raise SystemExit(f"the floor did not start ({line!r}); see {log_path}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=15)
        self._log.close()


@dataclass
class Bench:
    args: argparse.Namespace
    cluster: ControlPlane
    octopus: ServerProcess
    infisical: ServerProcess
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    tmp: Path
    figures: list[tuple[str, str, str]] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    profile_dir: Path | None = None
    floor: FloorProcess | None = None
    namespaces: tuple[str, ...] = (NAMESPACE,)

    def figure(self, label: str, value: str, target: str = "") -> None:
        self.figures.append((label, value, target))
        shown = f"{label}: {value}" if value else label
        print(f"  -> {shown}" + (f"   (target {target})" if target else ""), flush=True)

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
            namespaces=list(self.namespaces),
            entry=entry,
        ).start()

    def meter(self, operator: OperatorProcess) -> CpuMeter:
        assert operator.popen is not None
        pids = {"operator": operator.popen.pid}
        if self.floor is not None:
            pids["floor"] = self.floor.popen.pid
        pids |= {"bench": os.getpid(), "octopus double": self.octopus.pid, "infisical double": self.infisical.pid}
        return CpuMeter(pids | self.cluster.pids)

    def phase(self, meter: CpuMeter, label: str) -> Phase:
        phase = meter.stop(label)
        self.figure(f"  ... CPU seconds, {label}", phase.report())
        return phase

    def operator_writes(self, since: int = 0, namespace: str = NAMESPACE, plural: str = PLURAL) -> list[dict[str, Any]]:
        """Writes in the operator's namespace that this script did not make: it only creates resources and
        replaces the Secret (by user agent alone an older operator, on the official client, looks like us)."""
        events = self.cluster.audit_writes()
        return [
            e
            for e in events[since:]
            if e["objectRef"].get("namespace") == namespace
            and not (e["verb"] == "create" and e["objectRef"].get("resource") == plural)
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


def create_many(bench: Bench, watcher: Watcher, prefix: str) -> tuple[list[str], float]:
    """Create N resources in the watcher's namespace; wait until all are Ready; time from the first create."""
    n, namespace = bench.args.resources, watcher.namespace
    started = time.monotonic()
    names = [f"{prefix}-{i:04d}" for i in range(n)]
    asyncio.run(submit(bench, namespace, [odc(name, bench.octopus.url) for name in names]))
    print(f"  submitted in {time.monotonic() - started:.1f}s", flush=True)
    watcher.wait("Ready", lambda: (sum(1 for x in names if x in watcher.ready_at), n), bench.args.timeout)
    return names, max(watcher.ready_at[x] for x in names) - started


async def submit(bench: Bench, namespace: str, bodies: list[dict[str, Any]], in_flight: int = 16) -> None:
    """Create the resources a few at a time, so that submitting 1000 takes seconds, not the whole phase (one
    synchronous create after another took 20-30 s on a loaded machine, longer than the work it measured)."""
    cluster = bench.cluster
    assert cluster.ca_file is not None
    assert cluster.admin_cert_file is not None
    context = ssl.create_default_context(cafile=cluster.ca_file)
    context.load_cert_chain(cluster.admin_cert_file, cluster.admin_key_file)
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    pending = iter(bodies)
    async with httpx.AsyncClient(base_url=cluster.url, verify=context, timeout=60) as kube:

        async def worker() -> None:
            for body in pending:
                (await kube.post(path, json=body)).raise_for_status()

        await asyncio.gather(*(worker() for _ in range(in_flight)))


def rotate_all(bench: Bench, watcher: Watcher, names: list[str]) -> float:
    """Replace the shared Secret with a new key; time until every resource's status shows its new version."""
    rotated_at = time.monotonic()
    version = put_secret(bench.core, bench.octopus.call("issue_key"), watcher.namespace)

    def reached() -> tuple[int, int]:
        return sum(1 for x in names if (x, version) in watcher.version_at), len(names)

    watcher.wait("rotated", reached, bench.args.timeout)
    return max(watcher.version_at[(x, version)] for x in names) - rotated_at


@dataclass
class Run:
    """One side of the comparison: creation and rotation of N, wall times and CPU per process."""

    who: str
    to_ready: float
    created: Phase
    to_rotate: float = float("nan")
    rotated: Phase | None = None
    rss: float = float("nan")
    writes: dict[str, str] = field(default_factory=dict)  # phase -> what was written to the API server
    calls: dict[str, str] = field(default_factory=dict)  # phase -> the requests Infisical and Octopus answered


def floor_run(bench: Bench, operator: OperatorProcess) -> Run:
    """The floor process creates and rotates N resources of its own namespace, in this run, on this machine."""
    n = bench.args.resources
    bench.floor = FloorProcess(
        bench.cluster,
        bench.infisical.url,
        SCALE_FLOOR_NAMESPACE,
        (bench.args.log_dir or bench.tmp) / "floor.log",
        bench.profile_dir,
    )
    watcher = Watcher(bench.custom, SCALE_FLOOR_NAMESPACE).start()
    try:
        print(f"the floor: creating {n} OctopusDeployConnections sharing one Secret (load {loadavg()})", flush=True)
        meter, mark, seen = bench.meter(operator), len(bench.cluster.audit_writes()), remote_marks(bench)
        names, to_ready = create_many(bench, watcher, "floor")
        bench.figure(f"floor: all {n} Ready after creation", f"{to_ready:.1f} s")
        run = Run("floor", to_ready, bench.phase(meter, "floor creation"))
        run.writes["creation"] = write_mix(bench, mark, SCALE_FLOOR_NAMESPACE)
        run.calls["creation"] = call_mix(bench, seen, "python-httpx/")
        run.rss = rss_mib(bench.floor.popen.pid)
        print(f"the floor: rotating the shared Secret (load {loadavg()})", flush=True)
        meter, mark, seen = bench.meter(operator), len(bench.cluster.audit_writes()), remote_marks(bench)
        run.to_rotate = rotate_all(bench, watcher, names)
        bench.figure(f"floor: one rotation reaches all {n}", f"{run.to_rotate:.1f} s")
        run.rotated = bench.phase(meter, "floor rotation")
        run.writes["rotation"] = write_mix(bench, mark, SCALE_FLOOR_NAMESPACE)
        run.calls["rotation"] = call_mix(bench, seen, "python-httpx/")
        return run
    finally:
        watcher.stop()


def latency(bench: Bench, watcher: Watcher) -> None:
    latencies = []
    # A Secret of their own: the rotation later measures the N resources that share "octopus-key", and only them.
    put_secret(bench.core, bench.octopus.call("issue_key"), NAMESPACE, "latency-key")
    for i in range(bench.args.samples + 1):
        name = f"lat-{i:03d}"
        started = time.monotonic()
        body = odc(name, bench.octopus.url, "latency-key")
        bench.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
        watcher.wait(name, lambda n=name: (int(n in watcher.ready_at), 1), 30, quiet=True)  # type: ignore[misc]
        if i > 0:
            latencies.append(watcher.ready_at[name] - started)
        time.sleep(0.3)  # idle again: the next sample starts on a quiet operator
    floor = asyncio.run(floor_samples(bench, bench.args.samples))
    p50, floor50 = statistics.median(latencies), statistics.median(floor)
    bench.figure("one resource apply -> Ready, p50", f"{p50:.3f} s", "<= 0.100 s")
    bench.figure("floor (same calls made directly), p50", f"{floor50:.3f} s")
    bench.figure("operator latency / floor", f"{p50 / floor50:.2f} x", "<= 1.5 x")


def write_mix(bench: Bench, since: int, namespace: str) -> str:
    """What the API server wrote for one side in one phase, beyond the benchmark's own creates and Secrets."""
    counts: dict[str, int] = {}
    for e in bench.operator_writes(since, namespace=namespace):
        ref = e["objectRef"]
        key = f"{e['verb']} {ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def remote_marks(bench: Bench) -> tuple[int, int]:
    return len(bench.infisical.requests()), len(bench.octopus.requests())


def call_mix(bench: Bench, marks: tuple[int, int], agent: str) -> str:
    """The requests one side made to the two test servers since the marks, by server, method and route."""
    counts: dict[str, int] = {}
    for server, mark in zip(("infisical", "octopus"), marks, strict=True):
        process = bench.infisical if server == "infisical" else bench.octopus
        for r in process.requests()[mark:]:
            if r.user_agent.startswith(agent):
                route = "/".join("{id}" if len(part) >= 32 else part for part in r.path.split("/")[-2:])
                key = f"{server} {r.method} .../{route}"
                counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f} x" if b > 0 else "n/a"


def compare(bench: Bench, op: Run, floor: Run | None) -> None:
    """The issue-19 table: the operator beside the floor, same run, same machine, same servers."""
    n = bench.args.resources
    sides = [("creation", "created", op.created, floor.created if floor else None, "14", "20")]
    if op.rotated is not None:
        sides.append(("rotation", "rotated", op.rotated, floor.rotated if floor else None, "7", "10"))
    for phase, done, ours, theirs, ms, wall_target in sides:
        mine = ours.cpu["operator"] / n * 1000
        wall_op = op.to_ready if phase == "creation" else op.to_rotate
        if theirs is None:
            bench.figure(f"operator CPU per {done} resource", f"{mine:.1f} ms", f"<= {ms} ms")
            bench.figure(f"  ... Kubernetes writes during {phase}", str(op.writes.get(phase)))
            bench.figure(f"  ... Infisical and Octopus requests during {phase}", str(op.calls.get(phase)))
            continue
        wall_floor = floor.to_ready if phase == "creation" and floor else floor.to_rotate if floor else 0
        base = theirs.cpu["floor"] / n * 1000
        bench.figure(
            f"CPU per {done} resource: operator / floor",
            f"{mine:.1f} / {base:.1f} ms = {ratio(mine, base)}",
            f"<= 1.25 x (about {ms} ms)",
        )
        api, api_floor = ours.cpu["kube-apiserver"], theirs.cpu["kube-apiserver"]
        bench.figure(
            f"kube-apiserver CPU during {phase}: operator / floor",
            f"{api:.1f} / {api_floor:.1f} s = {ratio(api, api_floor)}",
            "<= 1.1 x",
        )
        bench.figure(
            f"{phase} of {n}, wall: operator / floor",
            f"{wall_op:.1f} / {wall_floor:.1f} s = {ratio(wall_op, wall_floor)}",
            f"<= 1.1 x, <= {wall_target} s for 1000",
        )
        bench.figure(
            f"  ... Kubernetes writes during {phase}: operator / floor",
            f"{op.writes.get(phase)} / {floor.writes.get(phase) if floor else ''}",
        )
        bench.figure(
            f"  ... Infisical and Octopus requests during {phase}: operator / floor",
            f"{op.calls.get(phase)} / {floor.calls.get(phase) if floor else ''}",
        )
        bench.figure(
            f"  ... two-core bound during {phase}: operator / floor",
            f"{ours.bound:.1f} / {theirs.bound:.1f} s (all CPU-seconds / 2)",
        )
        inf, inf_floor = ours.cpu["infisical double"] / n * 1000, theirs.cpu["infisical double"] / n * 1000
        bench.figure(
            f"  ... Infisical double CPU per {done} resource: operator / floor run",
            f"{inf:.1f} / {inf_floor:.1f} ms",
            "<= 10 ms" if phase == "creation" else "",
        )
    if floor is not None:
        bench.figure(f"RSS with {n} resources: operator / floor", f"{op.rss:.0f} / {floor.rss:.0f} MiB", "<= 100 MiB")


def creation_counts(bench: Bench, before: int, requests_before: int) -> None:
    n = bench.args.resources
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
    bench.figure("Events posted per created resource", f"{len(events) / n:.2f} (Created)", "1")
    new_requests = [r for r in bench.infisical.requests()[requests_before:] if r.user_agent.startswith("octoconn/")]
    limited = [r for r in new_requests if r.fault == "rate_limit"]
    posts = [r for r in new_requests if r.method == "POST" and r.path.endswith("octopus-deploy")]
    lookups = [r for r in new_requests if "/connection-name/" in r.path]
    bench.figure("Infisical creates / name lookups", f"{len(posts)} / {len(lookups)}", f"{n} / 0")
    if bench.args.paced:  # unpaced, the test server enforces no limit
        bench.figure("429 answers from Infisical", str(len(limited)), "0")


def run(bench: Bench) -> None:
    args, n = bench.args, bench.args.resources
    watcher = Watcher(bench.custom, NAMESPACE).start()
    operator = bench.operator()
    assert operator.popen is not None
    time.sleep(3)
    bench.figure("operator RSS idle", f"{rss_mib(operator.popen.pid):.0f} MiB", "<= 100 MiB")
    try:
        if not args.paced and args.samples:
            latency(bench, watcher)
        floor = floor_run(bench, operator) if not args.paced and not args.no_floor and n > 1 else None

        before = len(bench.cluster.audit_writes())
        requests_before, octopus_mark = remote_marks(bench)
        print(f"the operator: creating {n} OctopusDeployConnections sharing one Secret (load {loadavg()})", flush=True)
        meter = bench.meter(operator)
        names, to_ready = create_many(bench, watcher, "conn")
        bench.figure(f"all {n} Ready after creation", f"{to_ready:.1f} s ({n / to_ready:.0f}/s)", "<= 20 s for 1000")
        op = Run("operator", to_ready, bench.phase(meter, "operator creation"))
        op.writes["creation"] = write_mix(bench, before, NAMESPACE)
        op.calls["creation"] = call_mix(bench, (requests_before, octopus_mark), "octoconn/")
        op.rss = rss_mib(operator.popen.pid)
        bench.figure(f"operator RSS with {n} resources", f"{op.rss:.0f} MiB", "<= 100 MiB (issue 9: <= 200)")
        if bench.profile_dir is not None:
            os.kill(operator.popen.pid, signal.SIGUSR1)
        time.sleep(2)  # late writes (there should be none) are counted too
        creation_counts(bench, before, requests_before)
        if args.paced:
            return

        print(f"the operator: rotating the shared Secret (load {loadavg()})", flush=True)
        mark, seen = len(bench.cluster.audit_writes()), remote_marks(bench)
        octopus_before = seen[1]
        meter = bench.meter(operator)
        op.to_rotate = rotate_all(bench, watcher, names)
        bench.figure(f"one rotation reaches all {n}", f"{op.to_rotate:.1f} s", "<= 10 s for 1000")
        op.rotated = bench.phase(meter, "operator rotation")
        op.writes["rotation"] = write_mix(bench, mark, NAMESPACE)
        op.calls["rotation"] = call_mix(bench, seen, "octoconn/")
        checks = [
            r
            for r in bench.octopus.requests()[octopus_before:]
            if r.path.endswith("/users/me") and r.user_agent.startswith("octoconn/")
        ]
        bench.figure(f"Octopus key checks for the rotation of {n}", str(len(checks)))
        compare(bench, op, floor)
        if bench.floor is not None:
            bench.floor.stop()
            bench.floor = None
        if not args.no_restarts:
            operator = restart_quiet(bench, operator, watcher, names)
            operator = restart_rotation(bench, operator, watcher)
    finally:
        watcher.stop()
        operator.stop()
        if bench.floor is not None:
            bench.floor.stop()


def restart_quiet(bench: Bench, operator: OperatorProcess, watcher: Watcher, names: list[str]) -> OperatorProcess:
    """A restart with a short interval: every resource runs its first periodic check, and nothing changed."""
    n = len(names)
    operator.stop()
    audit_mark, requests_mark = len(bench.cluster.audit_writes()), len(bench.infisical.requests())
    operator = bench.operator(OCTOCONN_RESYNC_INTERVAL_SECONDS="10")
    ids = {watcher.status[x].get("id") for x in names}

    def checked() -> tuple[int, int]:
        after = bench.infisical.requests()[requests_mark:]
        return len({r.path.rsplit("/", 1)[-1] for r in after if r.method == "GET"} & ids), n

    watcher.wait("checked after restart", checked, bench.args.timeout)
    time.sleep(1)
    quiet = bench.operator_writes(audit_mark)
    after = bench.infisical.requests()[requests_mark:]
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
    return operator


def restart_rotation(bench: Bench, operator: OperatorProcess, watcher: Watcher) -> OperatorProcess:
    """A restart, then a rotation as soon as the operator is up."""
    n = bench.args.resources
    operator.stop()
    requests_mark = len(bench.infisical.requests())
    operator = bench.operator()
    up = time.monotonic()
    put_secret(bench.core, bench.octopus.call("issue_key"))

    def pushed() -> tuple[int, int]:
        patches = [r for r in bench.infisical.requests()[requests_mark:] if r.method == "PATCH" and r.credentials]
        return len(patches), n

    first = watcher.wait("pushed after restart", lambda: (min(pushed()[0], 1), 1), bench.args.timeout, quiet=True)
    watcher.wait("pushed after restart", pushed, bench.args.timeout)
    bench.figure(
        f"restart, then a rotation reaches Infisical for all {n}",
        f"{time.monotonic() - up:.1f} s after the operator was up (first after {first:.1f} s)",
        "<= 5 s",
    )
    return operator


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
    parser.add_argument("--no-floor", action="store_true", help="skip the floor process's run of N")
    parser.add_argument("--no-restarts", action="store_true", help="skip the two restart phases")
    parser.add_argument("--syncs", type=int, default=0, help="run the secret-sync scenario with this many syncs")
    args = parser.parse_args()

    print(f"load average at start: {loadavg()} ({os.cpu_count()} CPUs)", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="octoconn-bench-") as tmp,
        ControlPlane(binaries=expected_paths()) as cluster,
    ):
        logs = args.log_dir or Path(tmp)
        octopus = ServerProcess("octopus", logs / "octopus-double.log")
        infisical = ServerProcess("infisical", logs / "infisical-double.log")
        api = cluster.kubernetes_api_client()
        try:
            infisical.call("add_identity", client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
            if args.paced:
                infisical.call("rate_limit", reads_per_minute=60, writes_per_minute=200)
            core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
            # Both kinds: the operator watches secret syncs too.
            for kind in ("octopusdeployconnections", "octopusdeploysecretsyncs"):
                cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / f"octoconn.dev_{kind}.yaml"))
                cluster.kubectl("wait", "--for=condition=Established", f"crd/{kind}.{GROUP}")
            bench = Bench(args, cluster, octopus, infisical, core, custom, Path(tmp), profile_dir=args.profile)
            bench.extra_env = dict(item.split("=", 1) for item in args.env)
            if args.syncs:
                from bench.sync_scale import run_syncs

                run_syncs(bench)
            else:
                key = octopus.call("issue_key")
                for namespace in (NAMESPACE, FLOOR_NAMESPACE, SCALE_FLOOR_NAMESPACE):
                    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
                    put_secret(core, key, namespace)
                run(bench)
        finally:
            infisical.stop()
            octopus.stop()
            api.close()

    print()
    what = f"secret syncs {args.syncs}" if args.syncs else f"resources {args.resources}"
    paces = "default paces vs Cloud limits" if args.paced else "unpaced"
    print(f"{what}, {paces}; each test server in a process of its own")
    print(f"load average at the end: {loadavg()}")
    width = max(len(label) for label, _, _ in bench.figures)
    for label, value, target in bench.figures:
        print(f"{label:<{width}}  {value:<44} {('target ' + target) if target else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
