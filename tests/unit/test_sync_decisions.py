"""Pure decisions of ``octoconn.sync``: conflicts, permissions, scope resolution, patch plans, status, messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from octoconn import errors
from octoconn.remote import Named, OctopusDestination, PermissionGrant, SecretSync
from octoconn.sync import (
    PeerSync,
    SyncResource,
    conflicting_peer,
    desired_body,
    missing_permissions,
    name_pattern,
    names_can_collide,
    plan_patch,
    readable_message,
    resolve_scope,
    sync_state,
)
from octoconn.sync_models import ResolvedDestination, ResolvedScope


def resource(
    *, name: str = "web", created: str = "2026-01-01T00:00:10Z", uid: str = "u-web", **spec: Any
) -> SyncResource:
    body_spec: dict[str, Any] = {
        "connectionRef": {"name": "octopus"},
        "source": {"projectId": "proj-1", "environment": "prod", "secretPath": "/apps/web/"},
        "destination": {"space": "Default", "project": "Web"},
    }
    body_spec.update(spec)
    return SyncResource.from_body(
        {
            "metadata": {"name": name, "namespace": "team", "uid": uid, "generation": 1, "creationTimestamp": created},
            "spec": body_spec,
        }
    )


def peer(key_schema: str | None, *, environment: str = "prod", created: str = "2026-01-01T00:00:00Z") -> PeerSync:
    return PeerSync(ref="team/other", uid="u-other", created=created, key_schema=key_schema, environment=environment)


# --- conflicts -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b", "collide"),
    [
        ((None, "prod"), (None, "prod"), True),  # no schema: every name
        ((None, "prod"), ("WEB_{{secretKey}}", "prod"), True),  # a schema-less sync claims every sensitive name
        (("WEB_{{secretKey}}", "prod"), ("API_{{secretKey}}", "prod"), False),
        (("WEB_{{secretKey}}", "prod"), ("WEB_DB_{{secretKey}}", "prod"), True),  # WEB_DB_X is WEB_ + DB_X
        (("{{secretKey}}_WEB", "prod"), ("{{secretKey}}_API", "prod"), False),
        (("{{environment}}_{{secretKey}}", "prod"), ("{{environment}}_{{secretKey}}", "dev"), False),
        (("{{environment}}_{{secretKey}}", "prod"), ("{{environment}}_{{secretKey}}", "prod"), True),
        (("A_{{secretKey}}_X", "prod"), ("A_{{secretKey}}_Y", "prod"), False),
    ],
)
def test_names_can_collide(a: tuple[str | None, str], b: tuple[str | None, str], collide: bool) -> None:
    assert names_can_collide(name_pattern(*a), name_pattern(*b)) is collide
    assert names_can_collide(name_pattern(*b), name_pattern(*a)) is collide


def test_the_younger_sync_yields_to_the_older_one() -> None:
    younger = resource(options={"keySchema": "WEB_{{secretKey}}"})
    assert conflicting_peer(younger, [peer(None)]) is not None
    assert conflicting_peer(younger, [peer("API_{{secretKey}}")]) is None
    older = resource(created="2025-12-31T00:00:00Z")
    assert conflicting_peer(older, [peer(None)]) is None  # the other one must yield
    assert conflicting_peer(resource(uid="u-other"), [peer(None)]) is None  # never in conflict with itself


# --- permissions -----------------------------------------------------------------------------------------------------
def destination(permissions: dict[str, list[PermissionGrant]]) -> OctopusDestination:
    return OctopusDestination(
        user=Named("Users-1", "svc"),
        space=Named("Spaces-1", "Default"),
        project=Named("Projects-1", "Web"),
        project_group_id="ProjectGroups-1",
        scope_values={},
        permissions={k: tuple(v) for k, v in permissions.items()},
    )


def grant(
    *, projects: set[str] | None = None, environments: set[str] | None = None, space: str = "Spaces-1"
) -> PermissionGrant:
    return PermissionGrant(
        space_id=space,
        project_ids=frozenset(projects or ()),
        environment_ids=frozenset(environments or ()),
        project_group_ids=frozenset(),
    )


def test_unrestricted_view_and_edit_suffice() -> None:
    assert missing_permissions(destination({"VariableView": [grant()], "VariableEdit": [grant()]}), []) == []


def test_edit_missing_or_for_another_project_or_space_is_named() -> None:
    assert missing_permissions(destination({"VariableView": [grant()]}), []) == ["VariableEdit"]
    other = {"VariableView": [grant()], "VariableEdit": [grant(projects={"Projects-2"})]}
    assert missing_permissions(destination(other), []) == ["VariableEdit"]
    space = {"VariableView": [grant(space="Spaces-2")], "VariableEdit": [grant()]}
    assert missing_permissions(destination(space), []) == ["VariableView"]


def test_environment_limited_edit_covers_only_scoped_variables() -> None:
    limited = {"VariableView": [grant()], "VariableEdit": [grant(environments={"Environments-1"})]}
    assert missing_permissions(destination(limited), ["Environments-1"]) == []
    assert missing_permissions(destination(limited), ["Environments-2"]) == ["VariableEdit"]
    assert missing_permissions(destination(limited), []) == ["VariableEditUnscoped"]
    unscoped = {**limited, "VariableEditUnscoped": [grant(projects={"Projects-1"})]}
    assert missing_permissions(destination(unscoped), []) == []
    # ...Unscoped adds to an environment-limited VariableEdit; it does not replace VariableEdit.
    only_unscoped = {"VariableView": [grant()], "VariableEditUnscoped": [grant()]}
    assert missing_permissions(destination(only_unscoped), []) == ["VariableEdit"]


# --- scope values ----------------------------------------------------------------------------------------------------
OFFERED = {
    "Environments": (Named("Environments-1", "Production"), Named("Environments-2", "Test")),
    "Roles": (Named("web-server", "web-server"),),
    "Channels": (Named("Channels-1", "Default"),),
}


def test_scope_names_and_ids_resolve_to_ids() -> None:
    scope = resolve_scope({"environments": ["production", "Environments-2"], "roles": ["web-server"]}, OFFERED)
    assert scope == ResolvedScope(environments=["Environments-1", "Environments-2"], roles=["web-server"])


def test_an_unknown_scope_value_names_what_is_offered() -> None:
    with pytest.raises(errors.DestinationNotFound) as caught:
        resolve_scope({"channels": ["Beta"]}, OFFERED)
    assert "scope.channels" in caught.value.message
    assert '"Beta"' in caught.value.message
    assert "Default (Channels-1)" in caught.value.message


# --- what is sent ----------------------------------------------------------------------------------------------------
RESOLVED = ResolvedDestination(
    instance_url="https://octo.example",
    space_id="Spaces-1",
    project_id="Projects-1",
    scope=ResolvedScope(environments=["Environments-1"]),
)


def remote_from(body: dict[str, Any], **overrides: Any) -> SecretSync:
    data = {
        "id": "sync-1",
        "name": body["name"],
        "description": body["description"],
        "projectId": body["projectId"],
        "connectionId": body["connectionId"],
        "isAutoSyncEnabled": body["isAutoSyncEnabled"],
        "environment": {"slug": body["environment"]},
        "folder": {"path": body["secretPath"]},
        "syncOptions": body["syncOptions"],
        "destinationConfig": body["destinationConfig"],
        "syncStatus": "succeeded",
    }
    data.update(overrides)
    return SecretSync.from_api(data)


def test_desired_body_follows_infisical_rules() -> None:
    body = desired_body(resource(options={"keySchema": "WEB_{{secretKey}}"}), "conn-1", RESOLVED)
    assert body["secretPath"] == "/apps/web"  # one trailing slash removed, as Infisical does
    assert body["syncOptions"] == {
        "initialSyncBehavior": "overwrite-destination",
        "disableSecretDeletion": False,
        "keySchema": "WEB_{{secretKey}}",
    }
    assert body["destinationConfig"] == {
        "spaceId": "Spaces-1",
        "scope": "project",
        "projectId": "Projects-1",
        "scopeValues": {"environments": ["Environments-1"]},
    }
    assert body["isAutoSyncEnabled"] is True


def test_nothing_is_patched_when_nothing_differs() -> None:
    body = desired_body(resource(), "conn-1", RESOLVED)
    assert plan_patch(body, remote_from(body)) == {}
    # Infisical may echo extra keys (spaceName) and empty scope lists: still equal.
    echoed = {
        **body["destinationConfig"],
        "spaceName": "Default",
        "scopeValues": {"environments": ["Environments-1"], "roles": []},
    }
    assert plan_patch(body, remote_from(body, destinationConfig=echoed)) == {}


def test_a_patch_carries_only_what_differs_with_nested_objects_whole() -> None:
    body = desired_body(resource(options={"keySchema": "WEB_{{secretKey}}"}), "conn-1", RESOLVED)
    remote = remote_from(body, syncOptions={"initialSyncBehavior": "overwrite-destination"}, folder={"path": "/old"})
    patch = plan_patch(body, remote)
    assert set(patch) == {"syncOptions", "environment", "secretPath"}
    assert patch["syncOptions"] == body["syncOptions"]


# --- following Infisical --------------------------------------------------------------------------------------------
def sync(**fields: Any) -> SecretSync:
    data = {"id": "s", "name": "n", "projectId": "p", "connectionId": "c"}
    data.update(fields)
    return SecretSync.from_api(data)


def test_synced_only_after_a_success_newer_than_the_last_request() -> None:
    requested = "2026-01-01T00:00:05.000Z"
    before = sync(syncStatus="succeeded", lastSyncedAt="2026-01-01T00:00:01.000Z")
    after = sync(syncStatus="succeeded", lastSyncedAt="2026-01-01T00:00:09.000Z")
    assert sync_state(before, requested_at=requested, destination="P")[:2] == ("Unknown", "Syncing")
    assert sync_state(after, requested_at=requested, destination="P")[:2] == ("True", "Synced")
    running = sync(syncStatus="running", lastSyncedAt="2026-01-01T00:00:09.000Z")
    assert sync_state(running, requested_at=requested, destination="P")[:2] == ("Unknown", "Syncing")


def test_a_final_failure_reads_like_octopus_and_says_what_to_grant() -> None:
    body = {
        "ErrorMessage": "You do not have permission to perform this action. Please contact your Octopus administrator. "
        "Missing permission: VariableEdit",
        "HelpText": "noise",
    }
    failed = sync(syncStatus="failed", lastSyncMessage=json.dumps(body))
    state, reason, message = sync_state(failed, requested_at=None, destination="Octopus project Web (Projects-1)")
    assert (state, reason) == ("False", "SyncFailed")
    assert "Missing permission: VariableEdit" in message
    assert "{" not in message
    assert "noise" not in message
    assert "Grant VariableEdit on Octopus project Web (Projects-1)" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('"<html>Bad gateway</html>"', "<html>Bad gateway</html>"),
        ("Request failed with status code 404", "Request failed with status code 404"),
        (
            '{"ErrorMessage":"There was a problem","Errors":["Variable names cannot be empty."]}',
            "There was a problem Variable names cannot be empty.",
        ),
        (
            '{"error":"Invalid Secret Sync source configuration: folder no longer exists."}',
            "Invalid Secret Sync source configuration: folder no longer exists.",
        ),
        (None, "Infisical gave no message."),
    ],
)
def test_readable_message(raw: str | None, expected: str) -> None:
    assert readable_message(raw) == expected


def test_readable_message_masks_keys_and_is_bounded() -> None:
    text = readable_message(
        '{"ErrorMessage":"key API-ABCDEFGHIJKLMNOP refused; secret s3cr3t-value"}', ["s3cr3t-value"]
    )
    assert "ABCDEFGH" not in text
    assert "s3cr3t-value" not in text
    assert len(readable_message("x" * 5000)) == 1024


# --- the status memory serves both kinds ---------------------------------------------------------------------------
class _Kube:
    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], *, plural: str
    ) -> dict[str, Any] | None:
        return {"metadata": {"namespace": namespace, "name": name, "uid": plural}, "status": dict(status)}


async def test_status_memory_keeps_a_connection_and_a_sync_of_one_name_apart() -> None:
    from octoconn.stores import StatusMemory
    from octoconn.sync_models import PLURAL

    memory = StatusMemory(_Kube())  # type: ignore[arg-type]
    await memory.patch_status("ns", "web", {"id": "sync-1"}, plural=PLURAL)
    stale_sync = {"metadata": {"namespace": "ns", "name": "web", "uid": PLURAL}, "status": {}}
    connection = {"metadata": {"namespace": "ns", "name": "web", "uid": "octopusdeployconnections"}, "status": {}}
    assert memory.view(stale_sync, plural=PLURAL)["status"] == {"id": "sync-1"}  # our own write, not the stale body
    assert memory.view(connection)["status"] == {}  # the connection named web is another object


def test_a_sync_in_progress_is_a_normal_event_and_a_real_problem_a_warning() -> None:
    from octoconn.conditions import transition_events
    from octoconn.models import Condition
    from octoconn.sync_models import OctopusDeploySecretSyncStatus

    def ready(status: str, reason: str) -> OctopusDeploySecretSyncStatus:
        condition = Condition(
            type="Ready",
            status=status,  # type: ignore[arg-type]
            reason=reason,
            message=f"{reason} message",
            last_transition_time="2026-01-01T00:00:00Z",
            observed_generation=1,
        )
        return OctopusDeploySecretSyncStatus(conditions=[condition])

    before = OctopusDeploySecretSyncStatus()
    assert [e.type for e in transition_events(before, ready("Unknown", "Syncing"))] == ["Normal"]
    assert [e.type for e in transition_events(before, ready("True", "Available"))] == ["Normal"]
    assert [e.type for e in transition_events(before, ready("Unknown", "InfisicalUnreachable"))] == ["Warning"]
    assert [e.type for e in transition_events(before, ready("False", "SyncFailed"))] == ["Warning"]
