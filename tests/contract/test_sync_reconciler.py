"""The secret sync's reconciler and clients against both test servers: Infisical's sync engine runs in the
background and really writes into the Octopus double. Only Kubernetes is in memory here (the connection object, the
key Secret and the status patches); the cluster tier runs the same code against a real API server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from octoconn import errors
from octoconn.apikeys import SecretData
from octoconn.conditions import Event
from octoconn.infisical import InfisicalClient, UniversalAuth
from octoconn.models import ANNOTATION_PENDING_CREATE
from octoconn.octopus import OctopusClient
from octoconn.remote import SecretSync
from octoconn.sync import (
    PeerSync,
    RemovingSecrets,
    SyncReconciler,
    SyncResource,
    SyncStore,
    destination_key,
)
from octoconn.sync_models import OctopusDeploySecretSyncStatus
from tests.servers.infisical import InfisicalServer
from tests.servers.infisical_syncs import SyncTiming
from tests.servers.octopus import OctopusServer

SYNCS = "/api/v1/secret-syncs/octopus-deploy"


@dataclass
class MemoryKube:
    secrets: dict[tuple[str, str], SecretData] = field(default_factory=dict)
    connections: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    patches: list[Mapping[str, Any]] = field(default_factory=list)
    annotations: list[Mapping[str, str | None]] = field(default_factory=list)

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        return self.secrets.get((namespace, name))

    async def read_connection(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.connections.get((namespace, name))

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], *, plural: str) -> None:
        self.patches.append(dict(status))

    async def patch_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None], *, plural: str
    ) -> None:
        self.annotations.append(dict(annotations))


class Stores:
    def __init__(self, store: InfisicalClient) -> None:
        self.store = store

    def default(self) -> SyncStore:
        return self.store

    def for_identity(self, *, host_url: str | None, client_id: str, client_secret: str) -> SyncStore:
        raise AssertionError("not used here")


@dataclass
class Setup:
    octopus: OctopusServer
    infisical: InfisicalServer
    client: InfisicalClient
    kube: MemoryKube
    reconciler: SyncReconciler
    project_id: str
    infisical_project: str
    key: str
    peers: dict[str, list[PeerSync]]
    octopus_client: OctopusClient
    owners: dict[str, list[str]] = field(default_factory=dict)

    def resource(
        self,
        status: OctopusDeploySecretSyncStatus | None = None,
        *,
        generation: int = 1,
        annotations: dict[str, str] | None = None,
        **spec: Any,
    ) -> SyncResource:
        body_spec: dict[str, Any] = {
            "connectionRef": {"name": "octopus"},
            "source": {"projectId": self.infisical_project, "environment": "prod", "secretPath": "/apps/web"},
            "destination": {"space": "Default", "project": "Web"},
        }
        body_spec.update(spec)
        return SyncResource.from_body(
            {
                "metadata": {
                    "name": "web",
                    "namespace": "team",
                    "uid": "uid-web",
                    "generation": generation,
                    "creationTimestamp": "2026-01-01T00:00:10Z",
                    "annotations": annotations or {},
                },
                "spec": body_spec,
                "status": (status or OctopusDeploySecretSyncStatus()).to_patch(),
            }
        )

    def variables(self) -> dict[str, dict[str, Any]]:
        return {v["Name"]: v for v in self.octopus.state.projects.variables(self.project_id)}

    def writes(self) -> list[tuple[str, str]]:
        return [
            (r.method, r.path) for r in self.infisical.state.requests if r.path.startswith(SYNCS) and r.method != "GET"
        ]


@pytest.fixture
async def setup(octopus: OctopusServer, infisical: InfisicalServer) -> AsyncIterator[Setup]:
    infisical.state.syncs.timing = SyncTiming.fast()
    project_id = octopus.state.projects.add_project("Spaces-1", "Web")
    infisical_project = infisical.state.add_project(str(uuid.uuid4()))
    infisical.state.secrets.set_secret(infisical_project, "prod", "/apps/web", "DB_PASS", "db-pass-value")
    key = octopus.state.issue_key()
    client = InfisicalClient(
        base_url=infisical.url,
        auth=UniversalAuth(client_id=infisical.client_id, client_secret=infisical.client_secret),  # type: ignore[attr-defined]
    )
    connection = await client.create(
        name="octopus", description=None, project_id=None, instance_url=octopus.url, api_key=key
    )
    kube = MemoryKube()
    kube.secrets[("team", "key")] = SecretData(resource_version="1", data={"apiKey": key})
    kube.connections[("team", "octopus")] = {
        "metadata": {"name": "octopus", "namespace": "team", "generation": 1},
        "spec": {"instanceUrl": octopus.url, "apiKeySecretRef": {"name": "key"}},
        "status": {
            "id": connection.id,
            "instanceUrl": octopus.url,
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Available",
                    "message": "ok",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "observedGeneration": 1,
                }
            ],
        },
    }
    octopus_client = OctopusClient(allow_http=True, timeout=5)
    peers: dict[str, list[PeerSync]] = {}
    owners: dict[str, list[str]] = {}
    reconciler = SyncReconciler(
        connections=kube,
        secrets=kube,
        octopus=octopus_client,
        stores=Stores(client),
        status_writer=kube,
        peers_at=lambda k: peers.get(k, []),
        owners_of=lambda sync_id: owners.get(sync_id, []),
    )
    yield Setup(
        octopus, infisical, client, kube, reconciler, project_id, infisical_project, key, peers, octopus_client, owners
    )
    await client.aclose()
    await octopus_client.aclose()


async def settle(
    setup: Setup, res: Callable[[OctopusDeploySecretSyncStatus], SyncResource], status: OctopusDeploySecretSyncStatus
) -> OctopusDeploySecretSyncStatus:
    """Run passes, as the loop would (requeue_after), until nothing is moving any more."""
    for _ in range(100):
        outcome = await setup.reconciler.reconcile(res(status))
        status = outcome.status
        if outcome.requeue_after is None:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"never settled: {status.conditions}")


async def settle_with_events(
    setup: Setup, res: Callable[[OctopusDeploySecretSyncStatus], SyncResource], status: OctopusDeploySecretSyncStatus
) -> tuple[OctopusDeploySecretSyncStatus, list[Event]]:
    """``settle``, keeping every Event the passes produced."""
    events: list[Event] = []
    for _ in range(100):
        outcome = await setup.reconciler.reconcile(res(status))
        status = outcome.status
        events += outcome.events
        if outcome.requeue_after is None:
            return status, events
        await asyncio.sleep(0.1)
    raise AssertionError(f"never settled: {status.conditions}")


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    for _ in range(100):
        result = check()
        if await result if asyncio.iscoroutine(result) else result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never saw {what}")


async def test_create_follow_and_no_update_that_changes_nothing(setup: Setup) -> None:
    status = await settle(
        setup, lambda s: setup.resource(s, options={"keySchema": "WEB_{{secretKey}}"}), OctopusDeploySecretSyncStatus()
    )
    ready = status.condition("Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("True", "Available")
    assert status.sync_status == "succeeded"
    assert status.destination is not None
    assert status.destination.project_id == setup.project_id
    assert setup.variables()["WEB_DB_PASS"]["Value"] == "db-pass-value"
    assert setup.writes() == [("POST", SYNCS)]
    # The marker went out before the POST (here the reconciler's fallback; in a cluster it rides in Kopf's first patch).
    assert json.loads(setup.kube.annotations[0][ANNOTATION_PENDING_CREATE] or "")["name"] == "web"

    # Another pass with nothing changed: reads only, and no call to Octopus (verified at this generation).
    octopus_before = len(setup.octopus.state.requests)
    status = await settle(setup, lambda s: setup.resource(s, options={"keySchema": "WEB_{{secretKey}}"}), status)
    assert setup.writes() == [("POST", SYNCS)]
    assert len(setup.octopus.state.requests) == octopus_before

    # A spec change: verified again, one PATCH with only what differs, Ready only after a new success.
    status = await settle(
        setup,
        lambda s: setup.resource(s, generation=2, options={"keySchema": "APP_{{secretKey}}"}),
        status,
    )
    writes = setup.writes()
    assert writes[1][0] == "PATCH"
    assert len(writes) == 2
    patch = next(r for r in setup.infisical.state.requests if r.method == "PATCH")
    assert set(patch.json) == {"syncOptions"}
    assert status.condition("Ready").status == "True"  # type: ignore[union-attr]
    assert setup.variables()["APP_DB_PASS"]["Value"] == "db-pass-value"


async def test_crash_between_create_and_status_write_adopts(setup: Setup) -> None:
    first = await setup.reconciler.reconcile(setup.resource())
    assert first.status.id is not None
    marker = setup.kube.annotations[0][ANNOTATION_PENDING_CREATE]
    assert marker is not None
    # A restarted operator: the marker is not its own, so the name is looked up and the sync adopted.
    restarted = SyncReconciler(
        connections=setup.kube,
        secrets=setup.kube,
        octopus=setup.octopus_client,
        stores=Stores(setup.client),
        status_writer=setup.kube,
    )
    second = await restarted.reconcile(setup.resource(annotations={ANNOTATION_PENDING_CREATE: marker}))
    assert second.error is None, second.error
    assert second.status.id == first.status.id
    assert any(e.reason == "Adopted" for e in second.events)
    assert setup.writes() == [("POST", SYNCS)]


async def test_a_new_sync_is_created_without_a_name_lookup(setup: Setup) -> None:
    marker = json.dumps({"name": "web", "startedAt": "2999-01-01T00:00:00Z"})
    setup.reconciler.remember_marker("uid-web", marker)  # written by this process with Kopf's first patch
    outcome = await setup.reconciler.reconcile(setup.resource(annotations={ANNOTATION_PENDING_CREATE: marker}))
    assert outcome.error is None, outcome.error
    lookups = [r for r in setup.infisical.state.requests if "/sync-name/" in r.path]
    assert lookups == []
    assert setup.kube.annotations == []


async def test_a_legacy_status_marker_is_read_once_and_cleared(setup: Setup) -> None:
    first = await setup.reconciler.reconcile(setup.resource())
    legacy = OctopusDeploySecretSyncStatus.model_validate(
        {"pendingCreate": {"name": "web", "startedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}}
    )
    restarted = SyncReconciler(
        connections=setup.kube,
        secrets=setup.kube,
        octopus=setup.octopus_client,
        stores=Stores(setup.client),
        status_writer=setup.kube,
    )
    second = await restarted.reconcile(setup.resource(legacy, annotations={ANNOTATION_PENDING_CREATE: "x"}))
    assert second.status.id == first.status.id
    assert second.status.pending_create is None


async def test_a_create_whose_answer_was_lost_is_adopted_and_deleted_as_its_own(setup: Setup) -> None:
    setup.infisical.state.faults.drop(after_action=True, path_prefix=SYNCS, method="POST")
    first = await setup.reconciler.reconcile(setup.resource())
    assert first.error is not None
    assert first.status.id is None
    [made] = setup.infisical.state.syncs.all()
    second = await setup.reconciler.reconcile(setup.resource(first.status))
    assert second.error is None, second.error
    assert second.status.id == made["id"]
    assert [m for m, _ in setup.writes()] == ["POST"]
    # Deleted as its own even though its status never recorded it.
    events = await setup.reconciler.finalize(setup.resource(first.status))
    assert [e.reason for e in events] == ["Deleted"]
    assert setup.infisical.state.syncs.all() == []


async def test_a_sync_another_resource_records_is_neither_adopted_nor_deleted(setup: Setup) -> None:
    first = await setup.reconciler.reconcile(setup.resource())
    assert first.status.id is not None
    setup.owners[first.status.id] = ["team/other"]  # another sync's status records it
    marker = {ANNOTATION_PENDING_CREATE: setup.kube.annotations[0][ANNOTATION_PENDING_CREATE] or ""}
    setup.reconciler.forget("uid-web")  # as after a restart: the marker is no longer this process's own
    second = await setup.reconciler.reconcile(setup.resource(annotations=marker))
    assert second.status.id is None
    assert second.error is not None
    assert second.error.reason == "NameConflict"
    events = await setup.reconciler.finalize(setup.resource(annotations=marker))
    assert [(e.type, e.reason) for e in events] == [("Warning", "LeftInPlace")]
    assert first.status.id in events[0].message
    assert "team/other" in events[0].message
    assert [s["id"] for s in setup.infisical.state.syncs.all()] == [first.status.id]
    assert [m for m, _ in setup.writes()] == ["POST"]


async def test_name_taken_by_a_sync_made_elsewhere_is_a_conflict(setup: Setup) -> None:
    await setup.client.create_sync(
        {
            "name": "web",
            "projectId": setup.infisical_project,
            "connectionId": setup.kube.connections[("team", "octopus")]["status"]["id"],
            "environment": "prod",
            "secretPath": "/apps/web",
            "isAutoSyncEnabled": False,
            "syncOptions": {"initialSyncBehavior": "overwrite-destination"},
            "destinationConfig": {"spaceId": "Spaces-1", "scope": "project", "projectId": "Projects-999"},
        }
    )
    outcome = await setup.reconciler.reconcile(setup.resource())
    assert outcome.error is not None
    assert outcome.error.reason == "NameConflict"
    assert "spec.syncName" in outcome.error.message


async def test_a_conflicting_peer_stops_the_younger_sync_before_it_is_created(setup: Setup) -> None:
    key = destination_key(setup.octopus.url, "Spaces-1", setup.project_id)
    setup.peers[key] = [PeerSync("team/older", "uid-older", "2026-01-01T00:00:00Z", None, "prod")]
    outcome = await setup.reconciler.reconcile(setup.resource(options={"keySchema": "WEB_{{secretKey}}"}))
    verified = outcome.status.condition("DestinationVerified")
    assert verified is not None
    assert (verified.status, verified.reason) == ("False", "ConflictingSync")
    assert "team/older" in verified.message
    assert setup.writes() == []


async def test_a_final_failure_is_reported_after_infisicals_retries(setup: Setup) -> None:
    status = await settle(setup, lambda s: setup.resource(s), OctopusDeploySecretSyncStatus())
    assert status.condition("Ready").status == "True"  # type: ignore[union-attr]
    setup.octopus.state.projects.restrict(setup.key, "VariableEdit", projects=["Projects-999"])
    requested = {"octoconn.dev/sync-requested-at": "1"}
    status = await settle(setup, lambda s: setup.resource(s, annotations=requested), status)
    synced = status.condition("Synced")
    assert synced is not None
    assert (synced.status, synced.reason) == ("False", "SyncFailed")
    assert "Missing permission: VariableEdit" in synced.message
    assert setup.key not in synced.message
    assert status.last_sync_message is not None
    assert not status.last_sync_message.startswith("{")


@pytest.mark.parametrize("remove", [False, True])
async def test_finalize_with_and_without_removal(setup: Setup, remove: bool) -> None:
    status = await settle(setup, lambda s: setup.resource(s, removeSecrets=remove), OctopusDeploySecretSyncStatus())
    assert "DB_PASS" in setup.variables()
    res = setup.resource(status, removeSecrets=remove)
    if remove:
        with pytest.raises(RemovingSecrets):
            await setup.reconciler.finalize(res)
        assert setup.infisical.state.syncs.sync(status.id or "") is not None  # still there until Octopus is clean

        async def done() -> bool:
            try:
                await setup.reconciler.finalize(res)
            except RemovingSecrets:
                return False
            return True

        await eventually(done, "the removal to finish")
        assert "DB_PASS" not in setup.variables()
    else:
        events = await setup.reconciler.finalize(res)
        assert [e.reason for e in events] == ["Deleted"]
        assert setup.variables()["DB_PASS"]["Value"] == "db-pass-value"
    assert setup.infisical.state.syncs.sync(status.id or "") is None


async def test_orphan_and_paused_finalize_make_no_call(setup: Setup) -> None:
    status = await settle(setup, lambda s: setup.resource(s), OctopusDeploySecretSyncStatus())
    before = len(setup.infisical.state.requests)
    events = await setup.reconciler.finalize(setup.resource(status, deletionPolicy="Orphan"))
    assert [e.reason for e in events] == ["Orphaned"]
    assert len(setup.infisical.state.requests) == before


async def test_connection_not_ready_waits_without_calls(setup: Setup) -> None:
    setup.kube.connections[("team", "octopus")]["status"]["conditions"][0]["status"] = "False"
    before = len(setup.infisical.state.requests), len(setup.octopus.state.requests)
    outcome = await setup.reconciler.reconcile(setup.resource())
    synced = outcome.status.condition("Synced")
    assert synced is not None
    assert (synced.status, synced.reason) == ("Unknown", "ConnectionNotReady")
    assert (len(setup.infisical.state.requests), len(setup.octopus.state.requests)) == before


async def test_client_answers_for_missing_and_busy_syncs(setup: Setup) -> None:
    missing = str(uuid.uuid4())
    assert await setup.client.get_sync(missing) is None
    assert await setup.client.delete_sync(missing, remove_secrets=False) is None
    assert await setup.client.get_sync_by_name("nope", project_id=setup.infisical_project) is None
    with pytest.raises(errors.InfisicalError):
        await setup.client.trigger_sync(missing)
    status = await settle(setup, lambda s: setup.resource(s), OctopusDeploySecretSyncStatus())
    found = await setup.client.get_sync_by_name("web", project_id=setup.infisical_project)
    assert isinstance(found, SecretSync)
    assert found.id == status.id
    assert found.environment == "prod"
    assert found.secret_path == "/apps/web"


async def test_without_auto_sync_the_operator_runs_the_first_sync_and_requests_once(setup: Setup) -> None:
    def res(status: OctopusDeploySecretSyncStatus, request: str | None = None) -> SyncResource:
        annotations = {"octoconn.dev/sync-requested-at": request} if request else None
        return setup.resource(status, annotations=annotations, options={"autoSync": False})

    status = await settle(setup, res, OctopusDeploySecretSyncStatus())
    assert status.condition("Ready").status == "True"  # type: ignore[union-attr]
    assert setup.writes() == [("POST", SYNCS), ("POST", f"{SYNCS}/{status.id}/sync-secrets")]

    setup.infisical.state.secrets.set_secret(setup.infisical_project, "prod", "/apps/web", "DB_PASS", "second")
    status = await settle(setup, lambda s: res(s, "2026-01-02"), status)
    status = await settle(setup, lambda s: res(s, "2026-01-02"), status)  # the same value again: no new request
    assert status.handled_sync_request == "2026-01-02"
    assert setup.writes().count(("POST", f"{SYNCS}/{status.id}/sync-secrets")) == 2
    assert setup.variables()["DB_PASS"]["Value"] == "second"


async def test_an_unknown_infisical_project_is_named_not_blamed_on_the_credentials(setup: Setup) -> None:
    missing = str(uuid.uuid4())
    source = {"projectId": missing, "environment": "prod", "secretPath": "/apps/web"}
    outcome = await setup.reconciler.reconcile(setup.resource(source=source))
    assert outcome.error is not None
    assert outcome.error.reason == "InfisicalProjectUnavailable"
    synced = outcome.status.condition("Synced")
    assert synced is not None
    assert synced.reason == "InfisicalProjectUnavailable"
    assert missing in synced.message
    assert "spec.source.projectId" in synced.message
    assert "credentials" not in synced.message
    assert setup.infisical.state.syncs.all() == []


async def test_a_key_with_a_byte_order_mark_works_for_syncs(setup: Setup) -> None:
    setup.kube.secrets[("team", "key")] = SecretData(resource_version="2", data={"apiKey": "\ufeff" + setup.key + "\n"})
    status = await settle(setup, lambda s: setup.resource(s), OctopusDeploySecretSyncStatus())
    ready = status.condition("Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("True", "Available")


async def test_a_refused_create_is_not_sent_again_until_something_changes(setup: Setup) -> None:
    # Infisical refuses the folder: the same create would be refused again, at every check and every restart.
    spec = {"source": {"projectId": setup.infisical_project, "environment": "prod", "secretPath": "/missing"}}
    first = await setup.reconciler.reconcile(setup.resource(**spec))
    assert first.error is not None
    assert first.error.reason == "InfisicalRejected"
    assert first.status.refused_write is not None
    posts = len([w for w in setup.writes() if w[0] == "POST"])
    assert posts == 1
    again = await setup.reconciler.reconcile(setup.resource(first.status, **spec))
    assert again.error is not None
    assert "not sent again" in again.error.message
    assert len([w for w in setup.writes() if w[0] == "POST"]) == 1
    asked = await setup.reconciler.reconcile(
        setup.resource(again.status, annotations={"octoconn.dev/sync-requested-at": "now"}, **spec)
    )
    assert asked.error is not None
    assert len([w for w in setup.writes() if w[0] == "POST"]) == 2  # a re-check asked for sends it again


async def test_a_missing_permission_recovers_at_the_next_check_once_granted(setup: Setup) -> None:
    setup.octopus.state.grant(setup.key, {"SpaceView", "ProjectView", "VariableView"})
    first = await setup.reconciler.reconcile(setup.resource())
    verified = first.status.condition("DestinationVerified")
    assert verified is not None
    assert (verified.status, verified.reason) == ("False", "MissingPermission")
    setup.octopus.state.grant(setup.key, None)  # fixed in Octopus; nobody touches the resource
    status = await settle(setup, lambda s: setup.resource(s), first.status)  # the next periodic pass
    ready = status.condition("Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("True", "Available")


async def test_a_failed_run_is_run_again_at_a_later_check_once_the_cause_is_fixed(setup: Setup) -> None:
    reconciler = SyncReconciler(
        connections=setup.kube,
        secrets=setup.kube,
        octopus=setup.octopus_client,
        stores=Stores(setup.client),
        status_writer=setup.kube,
        rerun_failed_after=timedelta(0),  # every check is "later" here
    )
    setup.reconciler = reconciler
    status = await settle(setup, lambda s: setup.resource(s), OctopusDeploySecretSyncStatus())
    setup.octopus.state.projects.restrict(setup.key, "VariableEdit", projects=["Projects-999"])
    requested = {"octoconn.dev/sync-requested-at": "1"}
    status = await settle(setup, lambda s: setup.resource(s, annotations=requested), status)
    # The run failed; the check after it looked at the destination again and named the cause.
    assert status.condition("Synced").reason in ("SyncFailed", "MissingPermission")  # type: ignore[union-attr]
    setup.octopus.state.projects.restrict(setup.key, "VariableEdit", projects=None)  # fixed in Octopus
    status = await settle(setup, lambda s: setup.resource(s, annotations=requested), status)
    ready = status.condition("Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("True", "Available")


async def test_a_recreate_never_adopts_a_same_named_sync_made_since(setup: Setup) -> None:
    first = await setup.reconciler.reconcile(setup.resource())
    assert first.status.id is not None
    marker = setup.kube.annotations[0][ANNOTATION_PENDING_CREATE] or ""
    await setup.client.delete_sync(first.status.id, remove_secrets=False)  # deleted in Infisical by hand...
    made = await setup.client.create_sync(  # ...and a sync of the same name, connection and project made there
        {
            "name": "web",
            "projectId": setup.infisical_project,
            "connectionId": setup.kube.connections[("team", "octopus")]["status"]["id"],
            "environment": "prod",
            "secretPath": "/apps/web",
            "isAutoSyncEnabled": False,
            "syncOptions": {"initialSyncBehavior": "overwrite-destination"},
            "destinationConfig": {"spaceId": "Spaces-1", "scope": "project", "projectId": setup.project_id},
        }
    )
    setup.reconciler.forget("uid-web")  # a restarted operator: the marker is another process's now
    outcome = await setup.reconciler.reconcile(
        setup.resource(first.status, annotations={ANNOTATION_PENDING_CREATE: marker})
    )
    assert outcome.error is not None
    assert outcome.error.reason == "NameConflict"
    assert outcome.status.id == first.status.id  # still the recorded (gone) one, not the stranger's
    assert made.id in outcome.error.message


def _restarted(setup: Setup) -> SyncReconciler:
    """A new reconciler over the same servers and cluster state: what an operator restart starts from."""
    return SyncReconciler(
        connections=setup.kube,
        secrets=setup.kube,
        octopus=setup.octopus_client,
        stores=Stores(setup.client),
        status_writer=setup.kube,
    )


@pytest.mark.parametrize("patch_fails_once", [False, True], ids=["at-once", "after-a-failed-update"])
async def test_a_key_schema_change_keeps_the_old_variables_and_names_them_once(
    setup: Setup, patch_fails_once: bool
) -> None:
    old, new = {"keySchema": "OLD_{{secretKey}}"}, {"keySchema": "NEW_{{secretKey}}"}
    status = await settle(setup, lambda s: setup.resource(s, options=old), OctopusDeploySecretSyncStatus())
    setup.octopus.state.projects.set_variable(setup.project_id, "OLD_BY_HAND", "typed", sensitive=True)
    setup.octopus.state.projects.set_variable(setup.project_id, "OLD_PLAIN", "plain")  # never Infisical's
    if patch_fails_once:  # verified at generation 2, then the update failed: the next pass reads the variables itself
        setup.infisical.state.faults.error(500, path_prefix=SYNCS, method="PATCH")
        failed = await setup.reconciler.reconcile(setup.resource(status, generation=2, options=new))
        assert failed.error is not None
        assert not [e for e in failed.events if e.reason == "VariablesLeftInOctopus"]
        status = failed.status

    changed = await setup.reconciler.reconcile(setup.resource(status, generation=2, options=new))
    assert changed.error is None, changed.error
    (left,) = [e for e in changed.events if e.reason == "VariablesLeftInOctopus"]
    assert left.type == "Warning"
    assert "OLD_DB_PASS" in left.message
    assert "OLD_BY_HAND" in left.message
    assert "OLD_PLAIN" not in left.message
    assert "from OLD_{{secretKey}} to NEW_{{secretKey}}" in left.message
    assert "db-pass-value" not in left.message

    # Later passes, a periodic check and a restarted operator report nothing again.
    status = await settle(setup, lambda s: setup.resource(s, generation=2, options=new), changed.status)
    again = await setup.reconciler.reconcile(setup.resource(status, generation=2, options=new))
    restarted = await _restarted(setup).reconcile(setup.resource(again.status, generation=2, options=new))
    for outcome in (again, restarted):
        assert outcome.error is None, outcome.error
        assert not [e for e in outcome.events if e.reason == "VariablesLeftInOctopus"]

    # Nothing was removed: the old names stay in Octopus next to the new one, with their values.
    variables = setup.variables()
    assert variables["NEW_DB_PASS"]["Value"] == "db-pass-value"
    assert variables["OLD_DB_PASS"]["Value"] == "db-pass-value"
    assert variables["OLD_BY_HAND"]["Value"] == "typed"
    assert "OLD_PLAIN" in variables


async def test_a_key_schema_change_that_leaves_nothing_says_nothing(setup: Setup) -> None:
    status = await settle(
        setup, lambda s: setup.resource(s, options={"keySchema": "WEB_{{secretKey}}"}), OctopusDeploySecretSyncStatus()
    )
    # To no schema: the new sync matches every name, so nothing is left outside it.
    changed = await setup.reconciler.reconcile(setup.resource(status, generation=2))
    assert changed.error is None, changed.error
    assert any(e.reason == "Updated" for e in changed.events)
    assert not [e for e in changed.events if e.reason == "VariablesLeftInOctopus"]


@pytest.mark.parametrize(
    ("variable", "sensitive", "key_schema", "clash"),
    [
        ("DB_PASS", False, None, True),
        ("db_pass", False, None, True),  # one name to Octopus
        ("WEB_DB_PASS", False, "WEB_{{secretKey}}", True),
        ("DB_PASS", False, "WEB_{{secretKey}}", False),  # the sync writes WEB_DB_PASS, not DB_PASS
        ("DB_PASS", True, None, False),  # sensitive: Infisical replaces it, no second variable
    ],
)
async def test_a_non_sensitive_variable_with_a_written_name_is_named_once(
    setup: Setup, variable: str, sensitive: bool, key_schema: str | None, clash: bool
) -> None:
    setup.octopus.state.projects.set_variable(setup.project_id, variable, "plain-value", sensitive=sensitive)
    options = {"options": {"keySchema": key_schema}} if key_schema else {}
    infisical_reads = len(setup.infisical.state.requests)
    status, seen = await settle_with_events(
        setup, lambda s: setup.resource(s, **options), OctopusDeploySecretSyncStatus()
    )
    lists = [r for r in setup.infisical.state.requests[infisical_reads:] if r.path.startswith("/api/v3/secrets/raw")]
    assert len(lists) == 1  # one read of the names, at the destination check, and none while following the run
    assert lists[0].query.get("viewSecretValue") == "false"
    verified = status.condition("DestinationVerified")
    ready = status.condition("Ready")
    assert verified is not None
    assert ready is not None
    assert verified.status == "True"
    assert (ready.status, ready.reason) == ("True", "Available")
    events = [e for e in seen if e.reason == "VariableNameClash"]
    if not clash:
        assert verified.reason == "DestinationVerified"
        assert events == []
        return
    written = key_schema.replace("{{secretKey}}", "DB_PASS") if key_schema else "DB_PASS"
    assert verified.reason == "VariableNameClash"
    assert written in verified.message
    (event,) = events
    assert event.type == "Warning"
    assert event.message == verified.message
    assert "db-pass-value" not in json.dumps(status.to_patch()) + event.message

    # Another destination check finds the same (a restart, then a new generation of the same spec): no new Event.
    setup.reconciler = _restarted(setup)
    status, seen = await settle_with_events(setup, lambda s: setup.resource(s, generation=2, **options), status)
    verified = status.condition("DestinationVerified")
    assert verified is not None
    assert (verified.reason, verified.observed_generation) == ("VariableNameClash", 2)
    assert not [e for e in seen if e.reason == "VariableNameClash"]
