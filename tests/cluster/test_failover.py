"""Two peered replicas: the active one is SIGKILLed in the middle of work and the stand-by takes over.

Both are real operator processes with Kopf peering (no ``--standalone``), a random priority each (the default, as
in the chart's Deployment) and the default peering lifetime. Each logs in to Infisical with an identity of its own,
so the test server's request log says which replica sent every request. The kill comes while creates are in flight
(the test server holds them) and a Secret rotation is pending; then one more change is made, and the time until the
stand-by has reconciled it is printed (not asserted: the figure depends on the machine; see docs/install.md).

Asserted: the stand-by sent nothing at all before the kill and the killed replica nothing after it (never two
writers), every resource ends Ready with exactly one Infisical connection (no duplicate from the interrupted
creates), and the rotation made while the replica died reached Infisical (no lost change).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.conftest import Kube, Remotes, operator_env, own_namespace
from tests.cluster.operator_process import OperatorProcess
from tests.envtest.controlplane import ClusterAccess
from tests.servers.infisical import CONNECTIONS_PREFIX, OCTOPUS_APP

pytestmark = pytest.mark.cluster

PEERING = "octoconn"  # OCTOCONN_PEERING_NAME's default
CREATE_PATH = f"{CONNECTIONS_PREFIX}/{OCTOPUS_APP}"
WRITES = {"POST", "PATCH", "DELETE"}


@dataclass
class Replica:
    name: str
    client_id: str
    identity_id: str
    process: OperatorProcess

    def sent(self, request: Any) -> bool:
        """Whether this replica sent a recorded Infisical request: its token, or its login."""
        if request.identity_id is not None:
            return bool(request.identity_id == self.identity_id)
        return isinstance(request.json, dict) and request.json.get("clientId") == self.client_id


@pytest.fixture
def replicas(
    control_plane: ClusterAccess,
    crd: str,
    peering_crds: None,
    remotes: Remotes,
    kube_api: client.ApiClient,
    tmp_path: Path,
) -> Iterator[tuple[Kube, dict[str, Replica]]]:
    with own_namespace(kube_api, "failover") as namespace:
        custom = client.CustomObjectsApi(kube_api)
        body = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}
        custom.create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", body)
        made: dict[str, Replica] = {}
        try:
            for name in ("replica-a", "replica-b"):
                client_id, client_secret = f"{namespace}-{name}", secrets.token_hex(16)
                remotes.issued_secrets.append(client_secret)
                identity_id = remotes.infisical.state.add_universal_identity(
                    client_id=client_id, client_secret=client_secret
                )
                env = operator_env(
                    remotes,
                    OCTOCONN_CLIENT_ID=client_id,
                    OCTOCONN_CLIENT_SECRET=client_secret,
                    OCTOCONN_RETRY_BACKOFF_CAP_SECONDS="2",
                    OCTOCONN_LOG_LEVEL="DEBUG",
                    POD_ID=name,  # Kopf's peer identity, as the chart sets it from the pod name
                )
                process = OperatorProcess(
                    kubeconfig=control_plane.kubeconfig,
                    env=env,
                    log_path=tmp_path / f"{name}.log",
                    namespaces=[namespace],
                    standalone=False,
                )
                made[name] = Replica(name, client_id, identity_id, process)
                # One after the other, as a rollout starts them; the second one meets the first in the peering.
                process.start()
            yield Kube(kube_api, namespace), made
        finally:
            for replica in made.values():
                replica.process.stop()


def peers(kube: Kube) -> dict[str, dict[str, Any]]:
    obj = kube.custom.get_namespaced_custom_object("kopf.dev", "v1", kube.namespace, "kopfpeerings", PEERING)
    return dict(obj.get("status") or {})


def wait_for(predicate: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"never saw {what}")


def creates(remotes: Remotes) -> int:
    return len([r for r in remotes.infisical.state.requests if r.method == "POST" and r.path.startswith(CREATE_PATH)])


def spec(remotes: Remotes, secret: str) -> dict[str, Any]:
    return {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": secret}}


def test_standby_takes_over_after_sigkill_without_duplicates_or_lost_changes(
    replicas: tuple[Kube, dict[str, Replica]], remotes: Remotes
) -> None:
    kube, by_name = replicas
    status = wait_for(lambda: (s := peers(kube)) and set(by_name) <= set(s) and s, "both replicas in the peering")
    priorities = {name: status[name]["priority"] for name in by_name}
    assert len(set(priorities.values())) == 2, priorities  # distinct random priorities, or Kopf pauses both
    active_name = max(priorities, key=priorities.__getitem__)
    active, standby = by_name[active_name], next(r for r in by_name.values() if r.name != active_name)
    if active_name == "replica-b":
        # The later replica outranks the first one, which must step back before any work is handed out.
        wait_for(lambda: "Pausing operations" in by_name["replica-a"].process.log_text(), "replica-a pausing")

    # Steady state: the active replica does all the work.
    names = [f"steady-{i}" for i in range(3)]
    for name in names:
        kube.put_secret(f"{name}-key", {"apiKey": remotes.new_key()})
        kube.apply_odc(name, spec(remotes, f"{name}-key"))
    for name in names:
        kube.wait_condition(name, "Ready", "True", "Available", timeout=60)

    # Mid-work: creates held in flight by the test server, and a rotation whose PATCH is held too.
    remotes.infisical.state.faults.latency(3.0, path_prefix=CREATE_PATH)
    in_flight = [f"inflight-{i}" for i in range(3)]
    creates_before = creates(remotes)
    for name in in_flight:
        kube.put_secret(f"{name}-key", {"apiKey": remotes.new_key()})
        kube.apply_odc(name, spec(remotes, f"{name}-key"))
    rotated_key = remotes.new_key()
    rotated_version = kube.put_secret("steady-0-key", {"apiKey": rotated_key})
    wait_for(lambda: creates(remotes) > creates_before, "a create in flight", timeout=30)

    active.process.kill()
    killed_at = time.monotonic()
    kill_index = len(remotes.infisical.state.requests)
    remotes.infisical.state.faults.clear()
    # The change whose reconcile measures the failover.
    kube.put_secret("after-kill-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("after-kill", spec(remotes, "after-kill-key"))
    kube.wait_condition("after-kill", "Ready", "True", "Available", timeout=120)
    failover = time.monotonic() - killed_at
    print(
        f"\nfailover: {standby.name} reconciled a new change {failover:.1f} s after {active.name} was SIGKILLed "
        f"(priorities {priorities})"
    )

    for name in [*names, *in_flight, "after-kill"]:
        obj = kube.wait_condition(name, "Ready", "True", "Available", timeout=60)
        assert obj["status"].get("pendingCreate") is None, name
        matching = [c for c in remotes.infisical.state.connections() if c["name"] == name]
        assert [c["id"] for c in matching] == [obj["status"]["id"]], f"{name}: {len(matching)} connections"

    # No lost change: the rotation made as the active replica died is in Infisical.
    rotated = kube.wait_status(
        "steady-0", lambda s: s.get("secretResourceVersion") == rotated_version, "the rotation", timeout=60
    )
    row = remotes.infisical.state.connection(rotated["status"]["id"])
    assert row is not None
    assert row["_credentials"]["apiKey"] == rotated_key

    # Never two writers: the stand-by sent nothing, not even a login, while the active replica lived; the killed one
    # sent nothing afterwards; the stand-by did the writing after the kill.
    requests = list(remotes.infisical.state.requests)
    before, after = requests[:kill_index], requests[kill_index:]
    assert [r for r in before if standby.sent(r)] == []
    assert [r for r in after if active.sent(r)] == []
    writes = {
        (replica.name, phase): len([r for r in part if r.method in WRITES and replica.sent(r)])
        for replica in (active, standby)
        for phase, part in (("before", before), ("after", after))
    }
    print(f"Infisical writes by replica and phase: {writes}")
    assert writes[(active.name, "before")] >= len(names)
    assert writes[(standby.name, "after")] >= 1
    assert "NameConflict" not in standby.process.log_text()
