"""The operator end to end: real kube-apiserver, real operator process, Octopus and Infisical test servers."""

from __future__ import annotations

import base64
import datetime as dt
import time
from typing import Any

import pytest

from tests.cluster.conftest import Kube, Remotes, request_reconcile
from tests.cluster.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator")]


def spec(remotes: Remotes, secret: str = "octopus-key", **extra: Any) -> dict[str, Any]:
    return {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": secret}, **extra}


def ready(kube: Kube, name: str, timeout: float = 45) -> dict[str, Any]:
    return kube.wait_condition(name, "Ready", "True", "Available", timeout=timeout)


def patches_to(remotes: Remotes, connection_id: str) -> list[Any]:
    return [
        r
        for r in remotes.infisical.state.requests
        if r.method == "PATCH" and r.path.endswith(f"/app-connections/octopus-deploy/{connection_id}")
    ]


def test_create_becomes_ready_with_status_equal_to_infisical(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("prod-octopus", spec(remotes, description="Production Octopus"))

    obj = ready(kube, "prod-octopus")
    status = obj["status"]
    row = remotes.infisical.state.connection(status["id"])
    assert row is not None
    assert status["id"] == row["id"]
    assert status["version"] == row["version"] == 1
    assert status["credentialsHash"] == row["credentialsHash"]
    assert status["orgId"] == row["orgId"]
    assert status["connectionName"] == row["name"] == "prod-octopus"
    assert status["instanceUrl"] == row["credentials"]["instanceUrl"] == remotes.octopus_url
    assert row["description"] == "Production Octopus"
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["octopus"]["userId"] == "Users-1"
    assert status["secretResourceVersion"] == kube.secret("octopus-key").metadata.resource_version
    assert status.get("pendingCreate") is None
    for type_ in ("Ready", "CredentialsVerified", "Synced"):
        assert kube.condition("prod-octopus", type_)["status"] == "True"  # type: ignore[index]
    kube.wait_event("prod-octopus", "Created")
    # Only the story of the resource, not one Event per log line or handler run; "Created" says Ready too, so a new
    # connection costs one Event write, not two (issue 19).
    assert [e.reason for e in kube.events("prod-octopus")] == ["Created"]
    assert "octoconn.dev/finalizer" in obj["metadata"]["finalizers"]


def test_wrong_key_is_reported_and_nothing_is_created(kube: Kube, remotes: Remotes) -> None:
    wrong = "API-" + "WRONGKEY" * 4
    remotes.issued_secrets.append(wrong)
    kube.put_secret("octopus-key", {"apiKey": wrong})
    kube.apply_odc("wrong-key", spec(remotes))

    obj = kube.wait_condition("wrong-key", "CredentialsVerified", "False", "InvalidApiKey")
    assert kube.condition("wrong-key", "Ready")["reason"] == "InvalidApiKey"  # type: ignore[index]
    assert remotes.connection_named("wrong-key") is None
    assert obj["status"].get("id") is None
    assert kube.wait_event("wrong-key", "InvalidApiKey").type == "Warning"


def test_missing_secret_then_secret_appears(kube: Kube, remotes: Remotes) -> None:
    kube.apply_odc("late-secret", spec(remotes, secret="not-yet"))
    condition = kube.wait_condition("late-secret", "CredentialsVerified", "False", "SecretNotFound")
    assert "not-yet" in kube.condition("late-secret", "Ready")["message"]  # type: ignore[index]
    assert condition["status"]["conditions"]

    kube.put_secret("not-yet", {"apiKey": remotes.new_key()})
    # No annotation, no restart: the Secret watch wakes the resource.
    ready(kube, "late-secret", timeout=20)


def test_secret_key_missing(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"token": remotes.new_key()})
    kube.apply_odc("key-missing", spec(remotes))
    kube.wait_condition("key-missing", "CredentialsVerified", "False", "SecretKeyMissing")
    message = kube.condition("key-missing", "Ready")["message"]  # type: ignore[index]
    assert '"apiKey"' in message
    assert "token" in message  # the keys present are named, their values are not


def test_secret_in_another_namespace_cannot_be_referenced(
    kube: Kube, remotes: Remotes, kube_api: Any, control_plane: Any
) -> None:
    from kubernetes import client

    other = f"{kube.namespace}-other"
    client.CoreV1Api(kube_api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    kube.put_secret("shared-key", {"apiKey": remotes.new_key()}, namespace=other)

    # kubectl's strict field validation rejects the attempt outright...
    manifest = {
        "apiVersion": "octoconn.dev/v1alpha1",
        "kind": "OctopusDeployConnection",
        "metadata": {"name": "steal", "namespace": kube.namespace},
        "spec": {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": "shared-key", "namespace": other}},
    }
    import json

    result = control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.apiKeySecretRef.namespace"' in result.stderr

    # ...and a client that skips validation gets the field pruned: the operator only looks in its own namespace.
    kube.custom.create_namespaced_custom_object(
        "octoconn.dev", "v1alpha1", kube.namespace, "octopusdeployconnections", manifest, field_validation="Ignore"
    )
    kube.wait_condition("steal", "CredentialsVerified", "False", "SecretNotFound")
    assert "namespace" not in kube.odc("steal")["spec"]["apiKeySecretRef"]  # type: ignore[index]
    assert remotes.connection_named("steal") is None


def test_description_and_name_edits_patch_without_credentials(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("edit-me", spec(remotes, description="one"))
    status = ready(kube, "edit-me")["status"]
    connection_id, first_hash = status["id"], status["credentialsHash"]

    kube.patch_odc("edit-me", {"spec": {"description": "two", "connectionName": "edited-name"}})
    obj = kube.wait_status("edit-me", lambda s: s.get("connectionName") == "edited-name", "the rename")
    row = remotes.infisical.state.connection(connection_id)
    assert row is not None
    assert row["name"] == "edited-name"
    assert row["description"] == "two"
    assert row["credentialsHash"] == first_hash == obj["status"]["credentialsHash"]
    patches = patches_to(remotes, connection_id)
    assert patches, "expected a PATCH"
    assert all("credentials" not in (p.json or {}) for p in patches)


def test_url_change_sends_credentials(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("moving", spec(remotes))
    status = ready(kube, "moving")["status"]

    # The same Octopus reached under another address (a second listener sharing the first one's state).
    from tests.servers.octopus import OctopusServer

    with OctopusServer(state=remotes.octopus.state) as moved:
        kube.patch_odc("moving", {"spec": {"instanceUrl": moved.url + "/"}})
        obj = kube.wait_status("moving", lambda s: s.get("instanceUrl") == moved.url, "the new URL")
        row = remotes.infisical.state.connection(status["id"])
        assert row is not None
        assert row["credentials"]["instanceUrl"] == moved.url  # normalised before it was sent
        assert obj["status"]["credentialsHash"] == row["credentialsHash"] != status["credentialsHash"]
        patches = patches_to(remotes, status["id"])
        assert any("credentials" in (p.json or {}) for p in patches)
        ready(kube, "moving")


def test_rotation_pushes_new_key_within_seconds(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("rotating", spec(remotes))
    before = ready(kube, "rotating")["status"]

    new_version = kube.put_secret("octopus-key", {"apiKey": remotes.new_key(user_id="Users-2")})
    after = kube.wait_status(
        "rotating", lambda s: s.get("secretResourceVersion") == new_version, "the rotated Secret", timeout=20
    )["status"]
    assert after["id"] == before["id"]
    assert after["credentialsHash"] != before["credentialsHash"]
    assert after["octopus"]["userId"] == "Users-2"
    assert remotes.infisical.state.connection(after["id"])["credentialsHash"] == after["credentialsHash"]  # type: ignore[index]
    # The user's Secret is never written to: no annotations, no finalizers from us.
    secret = kube.secret("octopus-key")
    assert not any(k.startswith(("octoconn.dev", "kopf")) for k in (secret.metadata.annotations or {}))
    assert not secret.metadata.finalizers


def test_revoked_key_is_noticed(kube: Kube, remotes: Remotes) -> None:
    key = remotes.new_key()
    kube.put_secret("octopus-key", {"apiKey": key})
    kube.apply_odc("revoked", spec(remotes))
    ready(kube, "revoked")

    remotes.octopus.state.revoke_key(key)
    request_reconcile(kube, "revoked")
    kube.wait_condition("revoked", "CredentialsVerified", "False", "InvalidApiKey", timeout=20)
    assert kube.condition("revoked", "Ready")["status"] == "False"  # type: ignore[index]


def test_connection_deleted_in_infisical_is_recreated(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("recreate-me", spec(remotes))
    first = ready(kube, "recreate-me")["status"]["id"]

    remotes.infisical.state.delete_connection_out_of_band(first)
    request_reconcile(kube, "recreate-me")
    obj = kube.wait_status("recreate-me", lambda s: s.get("id") not in (None, first), "a new id", timeout=30)
    assert remotes.infisical.state.connection(obj["status"]["id"]) is not None
    assert kube.wait_event("recreate-me", "DriftRepaired").type == "Warning"


def test_credentials_rewritten_in_infisical_are_repaired(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("drift", spec(remotes))
    status = ready(kube, "drift")["status"]

    remotes.infisical.state.rewrite_credentials_out_of_band(status["id"])
    tampered = remotes.infisical.state.connection(status["id"])["credentialsHash"]  # type: ignore[index]
    request_reconcile(kube, "drift")
    obj = kube.wait_status(
        "drift", lambda s: s.get("credentialsHash") not in (status["credentialsHash"], tampered), "the repair", 30
    )
    assert remotes.infisical.state.connection(status["id"])["credentialsHash"] == obj["status"]["credentialsHash"]  # type: ignore[index]
    assert kube.wait_event("drift", "DriftRepaired").type == "Warning"


def test_name_managed_by_another_resource_is_never_taken_over(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("first-owner", spec(remotes, connectionName="contested"))
    first = ready(kube, "first-owner")["status"]

    # Even with the opt-in annotation: two resources would overwrite each other's key.
    kube.apply_odc(
        "second-owner", spec(remotes, connectionName="contested"), annotations={"octoconn.dev/adopt-existing": "true"}
    )
    kube.wait_condition("second-owner", "Synced", "False", "NameConflict")
    message = kube.condition("second-owner", "Ready")["message"]  # type: ignore[index]
    assert f"managed by OctopusDeployConnection {kube.namespace}/first-owner" in message
    assert len([c for c in remotes.infisical.state.connections() if c["name"] == "contested"]) == 1
    assert remotes.infisical.state.connection(first["id"])["credentialsHash"] == first["credentialsHash"]  # type: ignore[index]


def test_connection_made_outside_the_cluster_is_adopted_only_on_request(kube: Kube, remotes: Remotes) -> None:
    import asyncio

    from octoconn.infisical import InfisicalClient, UniversalAuth
    from tests.cluster.conftest import CLIENT_ID, CLIENT_SECRET

    async def create_by_hand() -> str:
        client = InfisicalClient(
            base_url=remotes.infisical.url, auth=UniversalAuth(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        )
        try:
            made = await client.create(
                name="made-by-hand",
                description=None,
                project_id=None,
                instance_url=remotes.octopus_url,
                api_key=remotes.new_key(),
            )
        finally:
            await client.aclose()
        return made.id

    existing = asyncio.run(create_by_hand())
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("by-hand", spec(remotes, connectionName="made-by-hand"))
    # Unknown while the connection is under a minute old (looked at again soon), False after; never adopted unasked.
    kube.wait_condition("by-hand", "Synced", "Unknown", "NameConflict")
    assert "octoconn.dev/adopt-existing" in kube.condition("by-hand", "Ready")["message"]  # type: ignore[index]

    kube.patch_odc("by-hand", {"metadata": {"annotations": {"octoconn.dev/adopt-existing": "true"}}})
    obj = ready(kube, "by-hand", timeout=15)  # the annotation alone wakes the resource
    assert obj["status"]["id"] == existing
    assert kube.wait_event("by-hand", "Adopted").type == "Normal"


def test_paused_resource_makes_no_remote_calls(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("paused", spec(remotes), annotations={"octoconn.dev/paused": "true"})
    kube.wait_condition("paused", "Synced", "False", "ReconcilePaused")
    assert remotes.connection_named("paused") is None

    kube.patch_odc("paused", {"metadata": {"annotations": {"octoconn.dev/paused": None}}})
    connection_id = ready(kube, "paused", timeout=15)["status"]["id"]

    # Pausing a working resource takes effect at once, and a rotation is then left alone.
    kube.patch_odc("paused", {"metadata": {"annotations": {"octoconn.dev/paused": "true"}}})
    kube.wait_condition("paused", "Synced", "False", "ReconcilePaused", timeout=15)
    hash_before = remotes.infisical.state.connection(connection_id)["credentialsHash"]  # type: ignore[index]
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    time.sleep(3)  # a negative check: give a (wrong) reaction time to happen
    assert remotes.infisical.state.connection(connection_id)["credentialsHash"] == hash_before  # type: ignore[index]


def test_reconcile_requested_at_rechecks_now(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("recheck", spec(remotes))
    first = ready(kube, "recheck")["status"]["lastVerifiedTime"]
    time.sleep(1.1)  # lastVerifiedTime has a resolution of one second
    request_reconcile(kube, "recheck")
    # The session's periodic interval is an hour: only the annotation can explain a new verification.
    kube.wait_status("recheck", lambda s: s.get("lastVerifiedTime", first) > first, "a new verification", 15)


@pytest.mark.parametrize("policy", ["Delete", "Orphan"])
def test_delete_honours_policy(kube: Kube, remotes: Remotes, policy: str) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    name = f"delete-{policy.lower()}"
    kube.apply_odc(name, spec(remotes, deletionPolicy=policy))
    connection_id = ready(kube, name)["status"]["id"]

    kube.delete_odc(name)
    kube.wait_gone(name)
    row = remotes.infisical.state.connection(connection_id)
    if policy == "Delete":
        assert row is None
    else:
        assert row is not None


def test_stuck_deletion_is_visible_and_orphan_releases_it(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("stuck", spec(remotes))
    connection_id = ready(kube, "stuck")["status"]["id"]
    remotes.infisical.state.faults.error(
        503, times=None, path_prefix=f"/api/v1/app-connections/octopus-deploy/{connection_id}"
    )

    kube.delete_odc("stuck")
    kube.wait_condition("stuck", "Ready", "False", "DeletionBlocked")
    message = kube.condition("stuck", "Ready")["message"]  # type: ignore[index]
    assert "InfisicalUnavailable" in message
    assert "deletionPolicy to Orphan" in message
    assert kube.wait_event("stuck", "DeletionBlocked").type == "Warning"
    assert kube.odc("stuck") is not None  # the finalizer holds it

    kube.patch_odc("stuck", {"spec": {"deletionPolicy": "Orphan"}})
    kube.wait_gone("stuck", timeout=45)
    remotes.infisical.state.faults.clear()
    assert remotes.infisical.state.connection(connection_id) is not None  # left in place, as asked


def test_infisical_down_at_create_time_converges(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    remotes.infisical.state.faults.error(503, times=4)
    kube.apply_odc("flaky-infisical", spec(remotes))
    obj = ready(kube, "flaky-infisical", timeout=60)
    assert len([c for c in remotes.infisical.state.connections() if c["name"] == "flaky-infisical"]) == 1
    assert remotes.infisical.state.connection(obj["status"]["id"]) is not None


def test_no_key_material_in_logs_events_status_or_annotations(
    kube: Kube, remotes: Remotes, operator: OperatorProcess
) -> None:
    """Runs a full life (create, wrong key, rotation, delete) and then scans everything the operator wrote."""
    good = remotes.new_key()
    kube.put_secret("octopus-key", {"apiKey": good})
    kube.apply_odc("leak-check", spec(remotes))
    ready(kube, "leak-check")
    wrong = "API-" + "NOPE" * 7
    remotes.issued_secrets.append(wrong)
    kube.put_secret("octopus-key", {"apiKey": wrong})
    kube.wait_condition("leak-check", "CredentialsVerified", "False", "InvalidApiKey", timeout=20)
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    obj = ready(kube, "leak-check", timeout=20)

    texts = [
        operator.log_text(),
        repr(obj.get("status")),
        repr(obj["metadata"].get("annotations")),
        repr(kube.secret("octopus-key").metadata.annotations),
    ]
    texts += [f"{e.reason} {e.message}" for e in kube.events()]
    kube.delete_odc("leak-check")
    kube.wait_gone("leak-check")
    texts.append(operator.log_text())
    tokens = remotes.infisical.state.issued_access_tokens()
    secrets = [*remotes.issued_secrets, *tokens]
    assert tokens, "the operator must have logged in"
    assert len(secrets) > 3
    blob = "\n".join(texts)
    leaked = [s[:6] + "..." for s in secrets if s in blob]
    assert leaked == []
    # The base64 form of a key would be a leak too.
    leaked_b64 = [s[:6] + "..." for s in secrets if base64.b64encode(s.encode()).decode() in blob]
    assert leaked_b64 == []


def test_status_times_are_rfc3339(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("times", spec(remotes))
    status = ready(kube, "times")["status"]
    for field in ("lastVerifiedTime", "lastSyncedTime"):
        parsed = dt.datetime.fromisoformat(status[field].replace("Z", "+00:00"))
        assert parsed.tzinfo is not None
