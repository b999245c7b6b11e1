"""The ownership rule (``octoconn.ownership``) through the connection reconciler, real clients, real test servers.

Each test is a way the operator could act on a connection that is not its own, or fail to recognise its own:
the loser of a name conflict deleting the winner's connection, a create whose answer was lost, a same-named
connection made by hand just before the resource.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from octoconn.infisical import InfisicalClient
from octoconn.models import ANNOTATION_ADOPT_EXISTING, ANNOTATION_PENDING_CREATE, OctopusDeployConnectionStatus
from octoconn.octopus import OctopusClient
from octoconn.reconcile import ConnectionReconciler, Resource
from tests.contract.test_reconciler import MemorySecrets, MemoryStatus, Stores, creates
from tests.servers.infisical import InfisicalServer
from tests.servers.octopus import OctopusServer

BASE = "/api/v1/app-connections/octopus-deploy"


class Owners:
    """The operator's owners index: connection id -> the resources whose status records it."""

    def __init__(self) -> None:
        self.by_id: dict[str, list[str]] = {}

    def record(self, connection_id: str | None, ref: str) -> None:
        assert connection_id is not None
        self.by_id.setdefault(connection_id, []).append(ref)

    def __call__(self, connection_id: str) -> Iterable[str]:
        return self.by_id.get(connection_id, ())


def reconciler(
    secrets: MemorySecrets, octopus: OctopusClient, store: InfisicalClient, owners: Owners | None = None
) -> ConnectionReconciler:
    return ConnectionReconciler(
        secrets=secrets,
        octopus=octopus,
        stores=Stores(store),
        status_writer=MemoryStatus(),
        owners_of=owners or Owners(),
    )


def marker_at(when: datetime, name: str = "shared") -> str:
    return json.dumps({"name": name, "startedAt": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")})


def body(
    octopus: OctopusServer,
    *,
    namespace: str,
    name: str,
    uid: str,
    status: OctopusDeployConnectionStatus | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> Resource:
    return Resource.from_body(
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "generation": 1,
                "annotations": annotations or {},
            },
            "spec": {"instanceUrl": octopus.url, "apiKeySecretRef": {"name": "key"}, **spec},
            "status": (status or OctopusDeployConnectionStatus()).to_patch(),
        }
    )


async def _winner_and_loser(
    octopus: OctopusServer, infisical_client: InfisicalClient, octopus_client: OctopusClient, owners: Owners
) -> tuple[MemorySecrets, Resource, Resource, str]:
    """A in team-a is Ready with connectionName ``shared``; B in team-b asks for the same name a moment later."""
    secrets = MemorySecrets()
    key = octopus.state.issue_key()
    secrets.put("key", {"apiKey": key}, namespace="team-a")
    secrets.put("key", {"apiKey": key}, namespace="team-b")
    live = reconciler(secrets, octopus_client, infisical_client, owners)
    a = body(octopus, namespace="team-a", name="a", uid="uid-a", connectionName="shared")
    won = await live.reconcile(a)
    assert won.error is None
    owners.record(won.status.id, "team-a/a")
    marker = marker_at(datetime.now(UTC))
    live.remember_marker("uid-b", marker)
    b = body(
        octopus,
        namespace="team-b",
        name="b",
        uid="uid-b",
        annotations={ANNOTATION_PENDING_CREATE: marker},
        connectionName="shared",
    )
    lost = await live.reconcile(b)
    assert lost.error is not None
    assert lost.error.reason == "NameConflict"
    assert "team-a/a" in lost.error.message
    b = body(
        octopus,
        namespace="team-b",
        name="b",
        uid="uid-b",
        status=lost.status,
        annotations={ANNOTATION_PENDING_CREATE: marker},
        connectionName="shared",
    )
    assert won.status.id is not None
    return secrets, a, b, won.status.id


async def test_the_loser_of_a_name_conflict_deletes_nothing(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    owners = Owners()
    secrets, _, loser, winner_id = await _winner_and_loser(octopus, infisical_client, octopus_client, owners)
    # A restarted operator: the marker is no longer this process's own, the case the issue was found in.
    restarted = reconciler(secrets, octopus_client, infisical_client, owners)
    events = await restarted.finalize(loser)
    assert [c["id"] for c in infisical.state.connections()] == [winner_id]
    assert [r for r in infisical.state.requests if r.method == "DELETE"] == []
    assert [e.type for e in events] == ["Warning"]
    assert events[0].reason == "LeftInPlace"
    assert winner_id in events[0].message
    assert "team-a/a" in events[0].message


async def test_the_loser_deletes_nothing_with_the_operator_alive(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    owners = Owners()
    secrets, _, loser, winner_id = await _winner_and_loser(octopus, infisical_client, octopus_client, owners)
    live = reconciler(secrets, octopus_client, infisical_client, owners)
    live.remember_marker("uid-b", loser.annotations[ANNOTATION_PENDING_CREATE])
    await live.finalize(loser)
    assert [c["id"] for c in infisical.state.connections()] == [winner_id]
    assert [r for r in infisical.state.requests if r.method == "DELETE"] == []


async def test_a_create_whose_answer_was_lost_is_adopted_though_the_update_after_failed(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()}, namespace="team-a")
    live = reconciler(secrets, octopus_client, infisical_client)
    marker = marker_at(datetime.now(UTC))
    live.remember_marker("uid-a", marker)
    res = body(
        octopus,
        namespace="team-a",
        name="a",
        uid="uid-a",
        annotations={ANNOTATION_PENDING_CREATE: marker},
        connectionName="shared",
    )
    infisical.state.faults.drop(after_action=True, path_prefix=BASE)
    first = await live.reconcile(res)
    assert first.error is not None
    assert first.status.id is None
    [made] = infisical.state.connections()  # Infisical acted; only its answer was lost

    # The adoption's update fails too: the memory of the unanswered create must outlive it.
    infisical.state.faults.error(500, path_prefix=f"{BASE}/{made['id']}")
    second = await live.reconcile(res)
    assert second.error is not None
    assert second.status.id is None

    third = await live.reconcile(res)
    assert third.error is None, third.error
    assert third.status.id == made["id"]
    assert [c["id"] for c in infisical.state.connections()] == [made["id"]]
    adopted = [e for e in third.events if e.reason == "Adopted"]
    assert adopted
    assert "answer was lost" in adopted[0].message
    assert len(creates(infisical)) == 1


async def test_a_create_answered_with_500_after_acting_is_adopted_at_the_retry(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()}, namespace="team-a")
    live = reconciler(secrets, octopus_client, infisical_client)
    marker = marker_at(datetime.now(UTC))
    live.remember_marker("uid-a", marker)
    res = body(
        octopus,
        namespace="team-a",
        name="a",
        uid="uid-a",
        annotations={ANNOTATION_PENDING_CREATE: marker},
        connectionName="shared",
    )
    infisical.state.faults.error(500, after_action=True, path_prefix=BASE)
    assert (await live.reconcile(res)).error is not None
    retried = await live.reconcile(res)
    assert retried.error is None, retried.error
    assert [c["id"] for c in infisical.state.connections()] == [retried.status.id]


async def test_an_interrupted_create_still_deletes_its_own_connection(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()}, namespace="team-a")
    for restart in (False, True):
        live = reconciler(secrets, octopus_client, infisical_client)
        marker = marker_at(datetime.now(UTC))
        live.remember_marker("uid-a", marker)
        res = body(
            octopus,
            namespace="team-a",
            name="a",
            uid="uid-a",
            annotations={ANNOTATION_PENDING_CREATE: marker},
            connectionName="shared",
        )
        infisical.state.faults.drop(after_action=True, path_prefix=BASE)
        assert (await live.reconcile(res)).error is not None
        assert len(infisical.state.connections()) == 1
        finalizer = reconciler(secrets, octopus_client, infisical_client) if restart else live
        events = await finalizer.finalize(res)
        assert [e.reason for e in events] == ["Deleted"], (restart, events)
        assert infisical.state.connections() == []


async def test_a_connection_made_by_hand_just_before_is_neither_adopted_nor_deleted(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    key = octopus.state.issue_key()
    by_hand = await infisical_client.create(
        name="shared", description=None, project_id=None, instance_url=octopus.url, api_key=key
    )
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": key}, namespace="team-a")
    # The resource appeared 30 s after the hand-made connection; the operator crashed after writing the marker.
    marker = marker_at(datetime.now(UTC) + timedelta(seconds=30))
    res = body(
        octopus,
        namespace="team-a",
        name="a",
        uid="uid-a",
        annotations={ANNOTATION_PENDING_CREATE: marker},
        connectionName="shared",
    )
    restarted = reconciler(secrets, octopus_client, infisical_client)
    outcome = await restarted.reconcile(res)
    assert outcome.error is not None
    assert outcome.error.reason == "NameConflict"
    assert ANNOTATION_ADOPT_EXISTING in outcome.error.message
    assert outcome.status.id is None
    events = await reconciler(secrets, octopus_client, infisical_client).finalize(res)
    assert [c["id"] for c in infisical.state.connections()] == [by_hand.id]
    assert [e.type for e in events] == ["Warning"]
    assert by_hand.id in events[0].message
    # With the opt-in it is taken over; another resource's connection never is.
    adopting = body(
        octopus,
        namespace="team-a",
        name="a",
        uid="uid-a",
        annotations={ANNOTATION_PENDING_CREATE: marker, ANNOTATION_ADOPT_EXISTING: "true"},
        connectionName="shared",
    )
    taken = await reconciler(secrets, octopus_client, infisical_client).reconcile(adopting)
    assert taken.error is None
    assert taken.status.id == by_hand.id


async def test_two_operator_processes_on_one_resource_end_with_one_connection_and_neither_in_name_conflict(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    """Two --standalone operators started by mistake: both wrote a marker with Kopf's first patch (the second one's
    is what the resource carries), both send a create. The second's is refused; its owners index has not seen the
    first's status write yet, so the connection is not proven its own and is not adopted, but the refusal is looked
    at again soon; by then the first's record has arrived, and the second agrees with it."""
    from octoconn import errors

    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()}, namespace="team-a")
    first, second = (reconciler(secrets, octopus_client, infisical_client) for _ in range(2))
    first.remember_marker("uid-a", marker_at(datetime.now(UTC) - timedelta(milliseconds=5)))
    kept = marker_at(datetime.now(UTC))
    second.remember_marker("uid-a", kept)

    def seen(status: OctopusDeployConnectionStatus | None = None) -> Resource:
        annotations = {ANNOTATION_PENDING_CREATE: kept}
        return body(octopus, namespace="team-a", name="a", uid="uid-a", status=status, annotations=annotations)

    won = await first.reconcile(seen())
    assert won.error is None, won.error
    refused = await second.reconcile(seen())
    assert refused.error is not None
    assert refused.error.reason == "NameConflict"
    assert refused.error.retry == errors.Retry.BACKOFF  # looked at again within seconds, not after a change
    assert "another operator process" in refused.error.message
    # The refused pass's status, written over the first's, keeps the id that proves the connection is ours.
    written = {**won.status.to_patch(), **refused.status.to_patch()}
    assert written["id"] == won.status.id

    again = await second.reconcile(seen(OctopusDeployConnectionStatus.model_validate(written)))
    assert again.error is None, again.error
    assert again.status.id == won.status.id
    assert [c["id"] for c in infisical.state.connections()] == [won.status.id]
    assert [r for r in infisical.state.requests if r.method == "DELETE"] == []
