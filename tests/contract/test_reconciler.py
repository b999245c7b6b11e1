"""The reconciler with the real clients against the Octopus and Infisical test servers.

Only the Kubernetes side is in memory here (a dict of Secrets and a list of status patches); the cluster tier runs
the same code against a real API server. These tests cover what is awkward to force in a cluster: a crash between
Infisical's POST and the status write, and an operator restart that must not re-push unchanged credentials.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from octoconn.apikeys import SecretData
from octoconn.infisical import InfisicalClient
from octoconn.models import ANNOTATION_PENDING_CREATE, OctopusDeployConnectionStatus
from octoconn.octopus import OctopusClient
from octoconn.reconcile import ConnectionReconciler, ConnectionStore, Resource
from tests.servers.infisical import InfisicalServer
from tests.servers.octopus import OctopusServer


class MemorySecrets:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], SecretData] = {}
        self._version = 100

    def put(self, name: str, data: dict[str, str], namespace: str = "team") -> str:
        self._version += 1
        self.secrets[(namespace, name)] = SecretData(resource_version=str(self._version), data=data)
        return str(self._version)

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        return self.secrets.get((namespace, name))


class MemoryStatus:
    def __init__(self) -> None:
        self.patches: list[Mapping[str, Any]] = []
        self.annotations: list[Mapping[str, str | None]] = []

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.patches.append(dict(status))

    async def patch_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None], *, plural: str = "connections"
    ) -> None:
        self.annotations.append(dict(annotations))


class Stores:
    def __init__(self, store: InfisicalClient) -> None:
        self.store = store

    def default(self) -> ConnectionStore:
        return self.store

    def for_identity(self, *, host_url: str | None, client_id: str, client_secret: str) -> ConnectionStore:
        raise AssertionError("not used here")


def make_reconciler(
    secrets: MemorySecrets, octopus_client: OctopusClient, store: InfisicalClient, status: MemoryStatus
) -> ConnectionReconciler:
    return ConnectionReconciler(secrets=secrets, octopus=octopus_client, stores=Stores(store), status_writer=status)


def resource(
    octopus: OctopusServer,
    status: OctopusDeployConnectionStatus | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> Resource:
    body = {
        "metadata": {"name": "prod", "namespace": "team", "uid": "uid-1", "generation": 1, "annotations": annotations},
        "spec": {"instanceUrl": octopus.url, "apiKeySecretRef": {"name": "key"}, **spec},
        "status": (status or OctopusDeployConnectionStatus()).to_patch(),
    }
    return Resource.from_body(body)


def creates(infisical: InfisicalServer) -> list[Any]:
    return [r for r in infisical.state.requests if r.method == "POST" and r.path.endswith("/octopus-deploy")]


def credential_patches(infisical: InfisicalServer) -> list[Any]:
    return [r for r in infisical.state.requests if r.method == "PATCH" and "credentials" in (r.json or {})]


async def test_crash_between_post_and_status_write_adopts_instead_of_duplicating(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets, status_sink = MemorySecrets(), MemoryStatus()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, status_sink)

    first = await reconciler.reconcile(resource(octopus))
    assert first.error is None
    assert len(creates(infisical)) == 1
    # The marker reached Kubernetes before the POST (here the reconciler's fallback wrote it; in a cluster it rides
    # in Kopf's finalizer patch); the final status "was lost" in the crash.
    marker = status_sink.annotations[0][ANNOTATION_PENDING_CREATE]
    assert marker is not None
    assert json.loads(marker)["name"] == "prod"

    restarted = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    second = await restarted.reconcile(resource(octopus, annotations={ANNOTATION_PENDING_CREATE: marker}))
    assert second.error is None
    assert second.status.id == first.status.id
    assert second.status.pending_create is None
    assert len(creates(infisical)) == 1
    assert [c["name"] for c in infisical.state.connections()] == ["prod"]
    assert any(e.reason == "Adopted" for e in second.events)


async def test_marker_without_a_connection_creates_it(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    marker = OctopusDeployConnectionStatus.model_validate(
        {"pendingCreate": {"name": "prod", "startedAt": "2026-01-01T00:00:00Z"}}
    )
    outcome = await reconciler.reconcile(resource(octopus, marker))
    assert outcome.error is None
    assert len(creates(infisical)) == 1


async def test_restart_does_not_repush_unchanged_credentials(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    first = await make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus()).reconcile(
        resource(octopus)
    )
    restarted = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    second = await restarted.reconcile(resource(octopus, first.status))
    assert second.error is None
    assert second.status.credentials_hash == first.status.credentials_hash
    assert credential_patches(infisical) == []


async def test_unrelated_secret_edit_does_not_push_credentials(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    key = octopus.state.issue_key()
    secrets.put("key", {"apiKey": key})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    first = await reconciler.reconcile(resource(octopus))

    secrets.put("key", {"apiKey": key, "note": "a label or another key changed"})
    second = await reconciler.reconcile(resource(octopus, first.status))
    assert second.status.secret_resource_version != first.status.secret_resource_version
    assert second.status.credentials_hash == first.status.credentials_hash
    assert credential_patches(infisical) == []

    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    third = await reconciler.reconcile(resource(octopus, second.status))
    assert third.status.credentials_hash != second.status.credentials_hash
    assert len(credential_patches(infisical)) == 1


async def test_invalid_key_never_reaches_infisical(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": "API-THISKEYDOESNOTEXIST0000"})
    outcome = await make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus()).reconcile(
        resource(octopus)
    )
    assert outcome.error is not None
    assert outcome.error.reason == "InvalidApiKey"
    assert outcome.status.condition("CredentialsVerified").status == "False"  # type: ignore[union-attr]
    assert outcome.status.condition("Ready").reason == "InvalidApiKey"  # type: ignore[union-attr]
    assert [r for r in infisical.state.requests if "app-connections" in r.path] == []


async def test_infisical_refusal_is_reported_with_its_message(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets, status_sink = MemorySecrets(), MemoryStatus()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    outcome = await make_reconciler(secrets, octopus_client, infisical_client, status_sink).reconcile(
        resource(octopus, projectId="no-such-project")
    )
    assert outcome.error is not None
    assert outcome.error.reason == "InfisicalRejected"
    synced = outcome.status.condition("Synced")
    assert synced is not None
    assert synced.status == "False"
    assert "Could not find project" in synced.message
    assert outcome.status.pending_create is None  # a definite refusal created nothing
    assert status_sink.annotations[-1] == {ANNOTATION_PENDING_CREATE: None}  # so no marker is left to mislead


async def test_finalize_deletes_and_tolerates_already_gone(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    created = await reconciler.reconcile(resource(octopus))
    res = resource(octopus, created.status)

    events = await reconciler.finalize(res)
    assert [e.reason for e in events] == ["Deleted"]
    assert infisical.state.connections() == []
    again = await reconciler.finalize(res)
    assert [e.reason for e in again] == ["AlreadyGone"]


async def test_finalize_orphan_keeps_the_connection(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    created = await reconciler.reconcile(resource(octopus, deletionPolicy="Orphan"))
    events = await reconciler.finalize(resource(octopus, created.status, deletionPolicy="Orphan"))
    assert [e.reason for e in events] == ["Orphaned"]
    assert len(infisical.state.connections()) == 1


async def test_marker_does_not_adopt_an_older_connection_of_someone_else(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    key = octopus.state.issue_key()
    other = await infisical_client.create(
        name="prod", description=None, project_id=None, instance_url=octopus.url, api_key=key
    )
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": key})
    # Our create attempt started long after the other connection was made, so that one cannot be ours.
    marker = OctopusDeployConnectionStatus.model_validate(
        {"pendingCreate": {"name": "prod", "startedAt": "2999-01-01T00:00:00Z"}}
    )
    outcome = await make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus()).reconcile(
        resource(octopus, marker)
    )
    assert outcome.error is not None
    assert outcome.error.reason == "NameConflict"
    assert other.id in outcome.error.message
    assert [c["id"] for c in infisical.state.connections()] == [other.id]


async def test_spec_change_with_a_failing_key_does_not_claim_synced(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    first = await reconciler.reconcile(resource(octopus))
    assert first.status.condition("Synced").status == "True"  # type: ignore[union-attr]

    # Generation 2 points at a server that is not Octopus: nothing can be pushed.
    changed = Resource.from_body(
        {
            "metadata": {"name": "prod", "namespace": "team", "uid": "uid-1", "generation": 2},
            "spec": {"instanceUrl": infisical.url, "apiKeySecretRef": {"name": "key"}},
            "status": first.status.to_patch(),
        }
    )
    outcome = await reconciler.reconcile(changed)
    assert outcome.error is not None
    assert outcome.error.reason == "NotAnOctopusServer"
    synced = outcome.status.condition("Synced")
    assert synced is not None
    assert (synced.status, synced.reason) == ("Unknown", "WaitingForCredentials")
    assert outcome.status.instance_url == octopus.url  # what Infisical still holds


async def test_key_expiring_soon_warns_once_and_rotation_clears_it(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets, status_sink = MemorySecrets(), MemoryStatus()
    short = octopus.state.issue_key(expires=datetime.now(UTC) + timedelta(days=5))
    secrets.put("key", {"apiKey": short})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, status_sink)

    first = await reconciler.reconcile(resource(octopus))
    verified, ready = first.status.condition("CredentialsVerified"), first.status.condition("Ready")
    assert verified is not None
    assert ready is not None
    assert (verified.status, verified.reason) == ("True", "ApiKeyExpiringSoon")
    assert "in 4 days" in verified.message
    assert "team/key" in verified.message
    assert (ready.status, ready.reason) == ("True", "Available")  # the key still works: Ready stays True
    assert [e.type for e in first.events if e.reason == "ApiKeyExpiringSoon"] == ["Warning"]

    # The same key on the next pass (periodic check, restart): no second Warning.
    second = await reconciler.reconcile(resource(octopus, first.status))
    assert second.status.condition("CredentialsVerified").reason == "ApiKeyExpiringSoon"  # type: ignore[union-attr]
    assert [e for e in second.events if e.reason == "ApiKeyExpiringSoon"] == []

    # A rotation to a key with the default 180-day lifetime clears the warning.
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    third = await reconciler.reconcile(resource(octopus, second.status))
    assert third.status.condition("CredentialsVerified").reason == "ApiKeyValid"  # type: ignore[union-attr]
    assert third.events == [e for e in third.events if e.reason != "ApiKeyExpiringSoon"]

    # Another short-lived key later is a new key: it is warned about again.
    secrets.put("key", {"apiKey": octopus.state.issue_key(expires=datetime.now(UTC) + timedelta(days=2))})
    fourth = await reconciler.reconcile(resource(octopus, third.status))
    assert [e.reason for e in fourth.events].count("ApiKeyExpiringSoon") == 1


async def test_key_expiry_warning_window_zero_turns_it_off(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key(expires=datetime.now(UTC) + timedelta(days=1))})
    reconciler = ConnectionReconciler(
        secrets=secrets,
        octopus=octopus_client,
        stores=Stores(infisical_client),
        status_writer=MemoryStatus(),
        key_expiry_warning=timedelta(0),
    )
    outcome = await reconciler.reconcile(resource(octopus))
    assert outcome.status.condition("CredentialsVerified").reason == "ApiKeyValid"  # type: ignore[union-attr]
    assert outcome.status.octopus is not None
    assert outcome.status.octopus.key_expires_at is not None


async def test_a_new_connection_is_created_without_a_name_lookup(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    # The marker this process wrote with Kopf's first patch when the resource appeared.
    secrets, status_sink = MemorySecrets(), MemoryStatus()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, status_sink)
    marker = json.dumps({"name": "prod", "startedAt": "2999-01-01T00:00:00Z"})
    reconciler.remember_marker("uid-1", marker)
    outcome = await reconciler.reconcile(resource(octopus, annotations={ANNOTATION_PENDING_CREATE: marker}))
    assert outcome.error is None
    assert len(creates(infisical)) == 1
    reads = [r for r in infisical.state.requests if r.method == "GET"]
    assert reads == []  # a create costs one paced write, not a paced read as well
    assert status_sink.annotations == []  # nor a Kubernetes write of its own


async def test_a_marker_another_replica_wrote_is_looked_up_before_creating(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    # Replica A wrote the marker and created the connection, then died before its status write; replica B, running
    # since before the marker, takes over: the connection is adopted, not refused as somebody else's.
    secrets = MemorySecrets()
    key = octopus.state.issue_key()
    secrets.put("key", {"apiKey": key})
    replica_b = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    marker = json.dumps({"name": "prod", "startedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    created = await infisical_client.create(
        name="prod", description=None, project_id=None, instance_url=octopus.url, api_key=key
    )
    outcome = await replica_b.reconcile(resource(octopus, annotations={ANNOTATION_PENDING_CREATE: marker}))
    assert outcome.error is None
    assert outcome.status.id == created.id
    assert any(e.reason == "Adopted" for e in outcome.events)
    assert len(creates(infisical)) == 1


async def test_a_rotation_is_one_patch_without_a_read_first(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    first = await reconciler.reconcile(resource(octopus, description="Production"))

    mark = len(infisical.state.requests)
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    rotated = await reconciler.reconcile(resource(octopus, first.status, description="Production"))
    assert rotated.error is None
    # The PATCH answer is the row: a GET before it would cost a paced read for nothing (issue 19).
    sent = [(r.method, sorted(r.json or {})) for r in infisical.state.requests[mark:] if "octopus-deploy" in r.path]
    assert sent == [("PATCH", ["credentials"])]
    row = infisical.state.connection(first.status.id or "")
    assert row is not None
    assert rotated.status.credentials_hash == row["credentialsHash"] != first.status.credentials_hash
    assert [(e.reason, e.message) for e in rotated.events] == [
        ("Updated", f"Updated credentials of connection {row['id']}.")
    ]


async def test_a_rotation_after_the_connection_was_deleted_in_infisical_recreates_it(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    first = await reconciler.reconcile(resource(octopus))
    infisical.state.delete_connection_out_of_band(first.status.id or "")

    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    rotated = await reconciler.reconcile(resource(octopus, first.status))
    assert rotated.error is None
    assert rotated.status.id not in (None, first.status.id)
    assert infisical.state.connection(rotated.status.id or "") is not None
    assert [e.reason for e in rotated.events] == ["DriftRepaired"]


async def test_a_new_connection_posts_one_event_and_a_recovery_still_says_available(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    first = await reconciler.reconcile(resource(octopus))
    # "Created" says the resource is Ready as well: one Event write per new connection, not two (issue 19).
    assert [(e.type, e.reason) for e in first.events] == [("Normal", "Created")]
    assert first.status.condition("Ready").reason == "Available"  # type: ignore[union-attr]

    del secrets.secrets[("team", "key")]
    failed = await reconciler.reconcile(resource(octopus, first.status))
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", "SecretNotFound")]
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    recovered = await reconciler.reconcile(resource(octopus, failed.status))
    assert [(e.type, e.reason) for e in recovered.events] == [("Normal", "Updated"), ("Normal", "Available")]
