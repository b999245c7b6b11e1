"""The ownership rule through the real operator process: which remote objects a deletion may remove, and which
connection or sync a create whose answer was lost may adopt (README: "Which remote objects the operator treats as
its own")."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from octoconn.infisical import InfisicalClient, UniversalAuth
from tests.cluster.conftest import CLIENT_ID, CLIENT_SECRET, Kube, Remotes
from tests.cluster.test_secret_sync import SYNCS, World, make_world, ready

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator")]

CONNECTIONS = "/api/v1/app-connections/octopus-deploy"


@pytest.fixture
def other_team(kube_api: client.ApiClient) -> Iterator[Kube]:
    """A second namespace the session operator watches (t-*), for a second team's resources."""
    name = f"t-other-team-{secrets.token_hex(3)}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield Kube(kube_api, name)
    finally:
        core.delete_namespace(name, propagation_policy="Background")


def spec(remotes: Remotes, **extra: Any) -> dict[str, Any]:
    return {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": "octopus-key"}, **extra}


def deletes_of(remotes: Remotes, object_id: str) -> list[Any]:
    return [r for r in remotes.infisical.state.requests if r.method == "DELETE" and object_id in r.path]


def test_deleting_the_loser_of_a_name_conflict_leaves_the_winners_connection(
    kube: Kube, other_team: Kube, remotes: Remotes
) -> None:
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("winner", spec(remotes, connectionName=shared))
    won = kube.wait_condition("winner", "Ready", "True", "Available")["status"]

    other_team.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    other_team.apply_odc("loser", spec(remotes, connectionName=shared))
    other_team.wait_condition("loser", "Synced", "False", "NameConflict")
    assert f"managed by OctopusDeployConnection {kube.namespace}/winner" in (
        other_team.condition("loser", "Ready") or {}
    ).get("message", "")

    other_team.delete_odc("loser")
    other_team.wait_gone("loser")
    assert deletes_of(remotes, won["id"]) == []
    row = remotes.infisical.state.connection(won["id"])
    assert row is not None
    assert row["credentialsHash"] == won["credentialsHash"]
    after = kube.wait_condition("winner", "Ready", "True", "Available")["status"]
    assert (after["id"], after["credentialsHash"]) == (won["id"], won["credentialsHash"])


def test_a_create_whose_answer_was_lost_is_adopted_and_still_deleted_on_deletion(kube: Kube, remotes: Remotes) -> None:
    name = f"lost-answer-{uuid.uuid4().hex[:6]}"
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    # Infisical creates the connection, then the connection to the operator drops before the answer.
    remotes.infisical.state.faults.drop(after_action=True, path_prefix=CONNECTIONS, method="POST")
    kube.apply_odc(name, spec(remotes))
    status = kube.wait_condition(name, "Ready", "True", "Available", timeout=60)["status"]
    assert [c["id"] for c in remotes.infisical.state.connections() if c["name"] == name] == [status["id"]]
    adopted = kube.wait_event(name, "Adopted")
    assert adopted.type == "Normal"
    assert "answer was lost" in adopted.message

    kube.delete_odc(name)
    kube.wait_gone(name)
    assert remotes.infisical.state.connection(status["id"]) is None


def test_a_connection_made_by_hand_just_before_is_neither_adopted_nor_deleted(kube: Kube, remotes: Remotes) -> None:
    name = f"by-hand-{uuid.uuid4().hex[:6]}"

    async def create_by_hand() -> str:
        store = InfisicalClient(
            base_url=remotes.infisical.url, auth=UniversalAuth(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        )
        try:
            made = await store.create(
                name=name,
                description=None,
                project_id=None,
                instance_url=remotes.octopus_url,
                api_key=remotes.new_key(),
            )
        finally:
            await store.aclose()
        return made.id

    by_hand = asyncio.run(create_by_hand())
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc(name, spec(remotes))
    # Unknown while the hand-made connection is under a minute old (another process's record could be on its way),
    # then False; never adopted either way.
    kube.wait_condition(name, "Synced", "Unknown", "NameConflict")
    assert (kube.odc(name) or {}).get("status", {}).get("id") is None
    kube.delete_odc(name)
    kube.wait_gone(name)
    assert remotes.infisical.state.connection(by_hand) is not None
    assert deletes_of(remotes, by_hand) == []


@pytest.fixture
def world(kube: Kube, remotes: Remotes) -> World:
    return make_world(kube, remotes)


def test_deleting_the_loser_of_a_sync_name_conflict_leaves_the_winners_sync(world: World, remotes: Remotes) -> None:
    other_project = f"Other {uuid.uuid4().hex[:6]}"  # another Octopus project: the syncs clash by name only
    remotes.octopus.state.projects.add_project("Spaces-1", other_project)
    world.syncs.apply("winner", world.spec(syncName="shared-sync"))
    won = ready(world.syncs, "winner")["status"]
    destination = {"space": "Default", "project": other_project}
    world.syncs.apply("loser", world.spec(syncName="shared-sync", destination=destination))
    world.syncs.wait_condition("loser", "Synced", "False", "NameConflict")

    world.syncs.delete("loser")
    world.syncs.wait_gone("loser")
    assert deletes_of(remotes, won["id"]) == []
    assert remotes.infisical.state.syncs.sync(won["id"]) is not None
    after = ready(world.syncs, "winner")["status"]
    assert after["id"] == won["id"]


def test_a_sync_create_whose_answer_was_lost_is_adopted_and_deleted(world: World, remotes: Remotes) -> None:
    remotes.infisical.state.faults.drop(after_action=True, path_prefix=SYNCS, method="POST")
    world.syncs.apply("lost", world.spec())
    status = ready(world.syncs, "lost")["status"]
    assert [s["id"] for s in world.syncs_in_infisical()] == [status["id"]]

    world.syncs.delete("lost")
    world.syncs.wait_gone("lost", timeout=60)
    assert remotes.infisical.state.syncs.sync(status["id"]) is None
