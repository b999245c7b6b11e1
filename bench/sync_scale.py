"""Secret syncs at scale: N ``OctopusDeploySecretSync`` on one connection, Infisical's own sync timing in the double.

Run through ``operator_scale.py --syncs N``. Each sync writes the same Infisical folder into an Octopus project of
its own (two syncs into one project would delete each other's variables). The Infisical double runs its sync jobs
with upstream's delays (a random 0-10 s first delay, at most 3 jobs per connection at once, a lock re-queue), so the
time until all are Ready is bound by that engine, not only by the operator. Figures: time until all Ready, CPU per
sync of every process, Kubernetes writes per created sync, writes after a restart and in a quiet periodic check.
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client

from bench.operator_scale import (
    Bench,
    Watcher,
    loadavg,
    odc,
    put_secret,
    rss_mib,
)
from octoconn.models import GROUP, VERSION
from octoconn.sync_models import PLURAL as SYNC_PLURAL
from tests.cluster.operator_process import OperatorProcess

SYNC_NAMESPACE = "bench-syncs"
CONNECTION = "octopus"
SYNCS_PREFIX = "/api/v1/secret-syncs/octopus-deploy"


def sync_body(name: str, infisical_project: str, octopus_project: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OctopusDeploySecretSync",
        "metadata": {"name": name},
        "spec": {
            "connectionRef": {"name": CONNECTION},
            "source": {"projectId": infisical_project, "environment": "prod", "secretPath": "/apps/web"},
            "destination": {"space": "Default", "project": octopus_project},
        },
    }


def seed(bench: Bench, n: int) -> tuple[str, list[str]]:
    """One Infisical project with a folder of two secrets, N Octopus projects, one Secret and one connection."""
    infisical_project = bench.infisical.call("add_project")
    for key, value in (("DB_PASS", "bench-db-pass"), ("API_TOKEN", "bench-api-token")):
        bench.infisical.call(
            "set_secret", project_id=infisical_project, environment="prod", path="/apps/web", key=key, value=value
        )
    projects = [f"Bench {i:03d}" for i in range(n)]
    for name in projects:
        bench.octopus.call("add_project", name=name)
    bench.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SYNC_NAMESPACE)))
    put_secret(bench.core, bench.octopus.call("issue_key"), SYNC_NAMESPACE)
    return infisical_project, projects


def writes_of_syncs(bench: Bench, since: int) -> list[dict[str, Any]]:
    return [
        e
        for e in bench.operator_writes(since, namespace=SYNC_NAMESPACE, plural=SYNC_PLURAL)
        if e["objectRef"].get("resource") == SYNC_PLURAL
    ]


def summary(events: list[dict[str, Any]]) -> str:
    verbs: dict[str, int] = {}
    for e in events:
        key = f"{e['verb']} {e['objectRef'].get('subresource') or 'object'}"
        verbs[key] = verbs.get(key, 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(verbs.items())) or "none"


def run_syncs(bench: Bench) -> None:
    n = bench.args.syncs
    bench.namespaces = (SYNC_NAMESPACE,)
    infisical_project, projects = seed(bench, n)
    connections = Watcher(bench.custom, SYNC_NAMESPACE).start()
    syncs = Watcher(bench.custom, SYNC_NAMESPACE, plural=SYNC_PLURAL).start()
    operator = bench.operator()
    try:
        bench.custom.create_namespaced_custom_object(
            GROUP, VERSION, SYNC_NAMESPACE, "octopusdeployconnections", odc(CONNECTION, bench.octopus.url)
        )
        connections.wait("connection Ready", lambda: (int(CONNECTION in connections.ready_at), 1), 120, quiet=True)
        operator = create_syncs(bench, operator, syncs, infisical_project, projects)
        operator = restarts(bench, operator, syncs)
    finally:
        connections.stop()
        syncs.stop()
        operator.stop()


def create_syncs(
    bench: Bench, operator: OperatorProcess, syncs: Watcher, infisical_project: str, projects: list[str]
) -> OperatorProcess:
    n = len(projects)
    names = [f"sync-{i:03d}" for i in range(n)]
    before, requests_before = len(bench.cluster.audit_writes()), len(bench.infisical.requests())
    octopus_before = len(bench.octopus.requests())
    print(f"creating {n} OctopusDeploySecretSyncs on one connection (load {loadavg()})", flush=True)
    meter = bench.meter(operator)
    started = time.monotonic()
    for name, project in zip(names, projects, strict=True):
        bench.custom.create_namespaced_custom_object(
            GROUP, VERSION, SYNC_NAMESPACE, SYNC_PLURAL, sync_body(name, infisical_project, project)
        )
    print(f"  submitted in {time.monotonic() - started:.1f}s", flush=True)
    syncs.wait("Ready", lambda: (sum(1 for x in names if x in syncs.ready_at), n), bench.args.timeout)
    to_ready = max(syncs.ready_at[x] for x in names) - started
    bench.figure(f"all {n} secret syncs Ready after creation", f"{to_ready:.1f} s", "none set (Infisical's timing)")
    phase = bench.phase(meter, "sync creation")
    bench.figure(
        "CPU per created sync: operator / kube-apiserver / Infisical double",
        " / ".join(f"{phase.cpu[p] / n * 1000:.1f}" for p in ("operator", "kube-apiserver", "infisical double"))
        + " ms",
    )
    assert operator.popen is not None
    bench.figure(f"operator RSS with {n} syncs", f"{rss_mib(operator.popen.pid):.0f} MiB")
    time.sleep(2)  # late writes are counted too
    writes = writes_of_syncs(bench, before)
    bench.figure(
        "Kubernetes writes per created sync", f"{len(writes) / n:.2f} ({summary(writes)})", "<= 2 (a connection's)"
    )
    ours = [r for r in bench.infisical.requests()[requests_before:] if r.user_agent.startswith("octoconn/")]
    octopus = [r for r in bench.octopus.requests()[octopus_before:] if r.user_agent.startswith("octoconn/")]
    creates = [r for r in ours if r.method == "POST" and r.path.rstrip("/") == SYNCS_PREFIX]
    bench.figure(
        "operator requests per created sync: Infisical / Octopus",
        f"{len(ours) / n:.1f} / {len(octopus) / n:.1f} ({len(creates)} creates)",
    )
    return operator


def restarts(bench: Bench, operator: OperatorProcess, syncs: Watcher) -> OperatorProcess:
    """After a restart (default interval), then a restart with a 10 s interval: the first periodic check of all."""
    names = sorted(syncs.ready_at)
    ids = {syncs.status[x].get("id") for x in names} - {None}
    operator.stop()
    mark = len(bench.cluster.audit_writes())
    operator = bench.operator()
    time.sleep(20)  # every sync is seen and settled; its first periodic check is up to an interval away
    quiet = writes_of_syncs(bench, mark)
    bench.figure(
        f"restart with {len(names)} syncs Ready: Kubernetes writes in the first 20 s",
        f"{len(quiet)} ({summary(quiet)})",
        "0",
    )

    operator.stop()
    mark, requests_mark = len(bench.cluster.audit_writes()), len(bench.infisical.requests())
    operator = bench.operator(OCTOCONN_RESYNC_INTERVAL_SECONDS="10")
    meter = bench.meter(operator)

    def checked() -> tuple[int, int]:
        after = bench.infisical.requests()[requests_mark:]
        return len({r.path.rsplit("/", 1)[-1] for r in after if r.method == "GET"} & ids), len(ids)

    syncs.wait("syncs checked after restart", checked, bench.args.timeout)
    time.sleep(1)
    phase = bench.phase(meter, "quiet periodic check")
    quiet = writes_of_syncs(bench, mark)
    after = [r for r in bench.infisical.requests()[requests_mark:] if r.path.startswith(SYNCS_PREFIX)]
    writes = [r for r in after if r.method in ("POST", "PATCH", "DELETE")]
    bench.figure(
        f"restart + one quiet periodic check of {len(ids)} syncs: Kubernetes writes",
        f"{len(quiet)} ({summary(quiet)})",
        "0",
    )
    bench.figure(
        "  ... Infisical secret-sync writes / reads", f"{len(writes)} / {len(after) - len(writes)}", "0 writes"
    )
    bench.figure("  ... operator CPU per checked sync", f"{phase.cpu['operator'] / max(1, len(ids)) * 1000:.1f} ms")
    return operator
