"""Secret syncs on the connections' footing, through the real operator: a create marker in Kopf's first patch, quiet
periodic checks, a quiet restart, a refused create kept refused, a key with a byte-order mark, Normal Events for a
healthy create, and a held-back sync woken when the sync in its way is deleted.

Kubernetes writes are counted in the API server's audit log, Infisical's in the test server's request log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from octoconn.sync_models import PLURAL as SYNC_PLURAL
from tests.cluster.conftest import Kube, Remotes, operator_env, own_namespace
from tests.cluster.operator_process import OperatorProcess
from tests.cluster.test_secret_sync import SYNCS, World, make_world, ready
from tests.envtest.controlplane import ClusterAccess

pytestmark = pytest.mark.cluster

OPERATOR_AGENTS = ("kopf/", "octoconn/")


def sync_writes(control_plane: ClusterAccess, namespace: str, name: str, since: int = 0) -> list[str]:
    return [
        f"{e['verb']} {e['objectRef'].get('subresource') or 'object'}"
        for e in control_plane.audit_writes()[since:]
        if e.get("userAgent", "").startswith(OPERATOR_AGENTS)
        and e["objectRef"].get("resource") == SYNC_PLURAL
        and e["objectRef"].get("namespace") == namespace
        and e["objectRef"].get("name") == name
    ]


def reads_of(remotes: Remotes, sync_id: str, since: int = 0) -> int:
    return len([r for r in remotes.infisical.state.requests[since:] if r.method == "GET" and r.path.endswith(sync_id)])


@pytest.fixture
def quick(
    control_plane: ClusterAccess, crd: str, remotes: Remotes, kube_api: client.ApiClient, tmp_path: Path
) -> Iterator[tuple[Kube, OperatorProcess]]:
    """An operator of its own whose settled syncs check every 2 s and whose periodic checks come every 3 s."""
    with own_namespace(kube_api, "sync-quiet") as name:
        env = operator_env(
            remotes,
            OCTOCONN_SYNC_CHECK_INTERVAL_SECONDS="2",
            OCTOCONN_RESYNC_INTERVAL_SECONDS="3",
            OCTOCONN_RETRY_BACKOFF_CAP_SECONDS="2",
        )
        operator = OperatorProcess(
            kubeconfig=control_plane.kubeconfig, env=env, log_path=tmp_path / "operator.log", namespaces=[name]
        )
        try:
            yield Kube(kube_api, name), operator.start()
        finally:
            operator.stop()


def test_quiet_checks_and_a_restart_write_nothing_for_a_settled_sync(
    quick: tuple[Kube, OperatorProcess], control_plane: ClusterAccess, remotes: Remotes
) -> None:
    kube, operator = quick
    world = make_world(kube, remotes)
    world.syncs.apply("quiet", world.spec())
    sync_id = ready(world.syncs, "quiet")["status"]["id"]
    created = sync_writes(control_plane, kube.namespace, "quiet")
    # Kopf's first patch carried the finalizer and the create marker: one object write, the rest is status.
    assert created.count("patch object") == 1, created
    assert set(created) == {"patch object", "patch status"}, created

    time.sleep(1)  # let the last status write of the create settle in the audit log
    audit, mark = len(control_plane.audit_writes()), len(remotes.infisical.state.requests)
    world.syncs.wait_status("quiet", lambda _: reads_of(remotes, sync_id, mark) >= 3, "three quiet checks", 30)
    assert sync_writes(control_plane, kube.namespace, "quiet", since=audit) == []
    assert [m for m, _ in world.infisical_requests_of("quiet", since=mark) if m != "GET"] == []

    operator.stop()
    audit, mark = len(control_plane.audit_writes()), len(remotes.infisical.state.requests)
    operator.start()
    world.syncs.wait_status("quiet", lambda _: reads_of(remotes, sync_id, mark) >= 2, "checks after a restart", 30)
    assert sync_writes(control_plane, kube.namespace, "quiet", since=audit) == []
    assert [m for m, _ in world.infisical_requests_of("quiet", since=mark) if m != "GET"] == []
    assert (world.syncs.condition("quiet", "Ready") or {}).get("status") == "True"


def test_a_refused_create_is_not_sent_again_by_checks_or_a_restart(
    quick: tuple[Kube, OperatorProcess], remotes: Remotes
) -> None:
    kube, operator = quick
    world = make_world(kube, remotes)
    source = {"projectId": world.infisical_project, "environment": "prod", "secretPath": "/no/such/folder"}
    world.syncs.apply("refused", world.spec(source=source))
    world.syncs.wait_condition("refused", "Synced", "False", "InfisicalRejected", timeout=60)

    def creates() -> int:
        return len([m for m, p in world.infisical_requests_of("refused", since=0) if (m, p) == ("POST", SYNCS)])

    assert creates() == 1
    time.sleep(8)  # the 3-second checks come and go
    assert creates() == 1
    operator.stop()
    operator.start()
    time.sleep(8)
    assert creates() == 1
    message = (world.syncs.condition("refused", "Ready") or {}).get("message", "")
    assert "not sent again" in message
    # Asking for it sends it once more.
    world.syncs.patch("refused", {"metadata": {"annotations": {"octoconn.dev/sync-requested-at": "after-fix"}}})
    deadline = time.monotonic() + 30
    while creates() < 2:
        assert time.monotonic() < deadline, "a sync-requested-at never sent the create again"
        time.sleep(0.5)


@pytest.fixture
def world(kube: Kube, remotes: Remotes, operator: OperatorProcess) -> World:
    return make_world(kube, remotes)


def test_a_key_with_a_byte_order_mark_works_for_syncs(kube: Kube, remotes: Remotes, operator: OperatorProcess) -> None:
    world = make_world(kube, remotes)
    kube.put_secret("octopus-key", {"apiKey": "\ufeff" + world.key + "\r\n"})  # as some editors save it
    kube.wait_condition("octopus", "Ready", "True", "Available")
    world.syncs.apply("bom", world.spec())
    ready(world.syncs, "bom")
    world.wait_octopus(lambda v: "DB_PASS" in v, "the secret in Octopus")


def test_a_healthy_create_raises_no_warning_event(world: World) -> None:
    world.syncs.apply("calm", world.spec())
    ready(world.syncs, "calm")
    world.syncs.wait_event("calm", "Available")
    events: list[Any] = world.syncs.events("calm")
    assert [(e.type, e.reason) for e in events if e.type != "Normal"] == []


def test_deleting_the_older_sync_wakes_the_one_it_held_back(world: World) -> None:
    world.syncs.apply("older", world.spec())  # no key schema: it owns every sensitive variable of the project
    ready(world.syncs, "older")
    world.syncs.apply("younger", world.spec(options={"keySchema": "APP_{{secretKey}}"}))
    world.syncs.wait_condition("younger", "DestinationVerified", "False", "ConflictingSync")
    world.syncs.delete("older")
    # The session operator checks every hour: only the wake-up from the deletion can make this quick.
    ready(world.syncs, "younger", timeout=45)
    world.wait_octopus(lambda v: "APP_DB_PASS" in v, "the younger sync's variables")
