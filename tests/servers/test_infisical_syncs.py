"""Tests of the Infisical double's Octopus Deploy secret syncs, with the real Octopus double over HTTP.

The table in tests/servers/infisical_syncs.py maps each behaviour to these tests. Timings are
``SyncTiming.fast()``; tests poll with deadlines and never assert on durations.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.infisical import InfisicalServer
from tests.servers.infisical_syncs import (
    CONNECTION_IN_USE,
    FOLDER_GONE_JOB,
    FOLDER_GONE_REQUEST,
    IMPORT_NOT_SUPPORTED,
    JOB_GATE_EXHAUSTED,
    KEY_SCHEMA_MESSAGE,
    LOCK_HELD,
    SyncTiming,
)
from tests.servers.octopus import OctopusServer
from tests.servers.test_infisical_server import assert_error, client_for

SYNCS = "/api/v1/secret-syncs/octopus-deploy"
CONNECTIONS = "/api/v1/app-connections/octopus-deploy"
VARIABLES = "/api/Spaces-1/projects/Projects-1/variables"
RESPONSE_KEYS = {
    "id", "name", "description", "destination", "isAutoSyncEnabled", "version", "projectId", "folderId",
    "connectionId", "createdAt", "updatedAt", "syncStatus", "lastSyncJobId", "lastSyncMessage", "lastSyncedAt",
    "importStatus", "lastImportJobId", "lastImportMessage", "lastImportedAt", "removeStatus", "lastRemoveJobId",
    "lastRemoveMessage", "lastRemovedAt", "syncOptions", "connection", "environment", "folder", "destinationConfig",
}  # fmt: skip


@dataclass
class World:
    infisical: InfisicalServer
    octopus: OctopusServer
    api: httpx.Client
    project_id: str
    connection_id: str
    key: str

    def body(self, name: str = "web-prod", **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name,
            "projectId": self.project_id,
            "connectionId": self.connection_id,
            "environment": "prod",
            "secretPath": "/apps/web",
            "syncOptions": {"initialSyncBehavior": "overwrite-destination"},
            "destinationConfig": {"spaceId": "Spaces-1", "scope": "project", "projectId": "Projects-1"},
        }
        body.update(overrides)
        return body

    def create(self, name: str = "web-prod", **overrides: Any) -> dict[str, Any]:
        response = self.api.post(SYNCS, json=self.body(name, **overrides))
        assert response.status_code == 200, response.text
        sync: dict[str, Any] = response.json()["secretSync"]
        return sync

    def get(self, sync_id: str) -> httpx.Response:
        return self.api.get(f"{SYNCS}/{sync_id}")

    def wait(self, sync_id: str, field: str, values: set[str | None], timeout: float = 30) -> dict[str, Any]:
        """Poll GET until ``field`` takes one of ``values``; a 404 counts as ``"gone"``."""
        deadline = time.monotonic() + timeout
        seen: Any = None
        while time.monotonic() < deadline:
            response = self.get(sync_id)
            if response.status_code == 404 and "gone" in values:
                return {}
            seen = response.json()["secretSync"]
            if seen[field] in values:
                result: dict[str, Any] = seen
                return result
            time.sleep(0.02)
        raise AssertionError(f"{field} never became one of {values}; last seen {seen}")

    def secret(self, key: str, value: str, path: str = "/apps/web", environment: str = "prod") -> None:
        """Set a secret and wait until the syncs it triggers (if any) have run."""
        self.infisical.state.secrets.set_secret(self.project_id, environment, path, key, value)
        self.settle()

    def settle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.infisical.secret_syncs.busy():
            assert time.monotonic() < deadline, "the sync engine never became idle"
            time.sleep(0.01)

    def octopus_values(self, project: str = "Projects-1") -> dict[str, str | None]:
        return {v["Name"]: v["Value"] for v in self.octopus.state.projects.variables(project)}


@pytest.fixture
def world(infisical: InfisicalServer, octopus: OctopusServer) -> Iterator[World]:
    infisical.state.syncs.timing = SyncTiming.fast()
    project_id = infisical.state.add_project()
    infisical.state.secrets.add_folder(project_id, "prod", "/apps/web")
    key = octopus.state.issue_key()
    with client_for(infisical) as api:
        response = api.post(
            CONNECTIONS,
            json={"name": "octo", "method": "api-key", "credentials": {"instanceUrl": octopus.url, "apiKey": key}},
        )
        assert response.status_code == 200, response.text
        yield World(infisical, octopus, api, project_id, response.json()["appConnection"]["id"], key)


def variable_puts(octopus: OctopusServer) -> int:
    return len([r for r in octopus.state.requests_to("/variables") if r.method == "PUT"])


# --- Create and the first sync ---------------------------------------------------------------------------------------


def test_create_answers_pending_without_calling_octopus(world: World) -> None:
    # A long first delay: the answer must come before any Octopus call.
    world.secret("DB_PASS", "hunter2")
    world.infisical.state.syncs.timing = replace(SyncTiming.fast(), first_delay_min=0.5, first_delay_max=0.5)
    sync = world.create()

    assert set(sync) == RESPONSE_KEYS
    assert sync["syncStatus"] == "pending"
    assert sync["destination"] == "octopus-deploy"
    assert sync["version"] == 1
    assert sync["connection"] == {"app": "octopus-deploy", "name": "octo", "id": world.connection_id}
    assert sync["environment"]["slug"] == "prod"
    assert sync["environment"]["name"] == "Production"
    assert sync["folder"]["path"] == "/apps/web"
    assert sync["lastSyncedAt"] is None
    assert "apiKey" not in json.dumps(sync)
    assert world.octopus.state.requests_to("/variables") == []
    done = world.wait(sync["id"], "syncStatus", {"succeeded"})
    assert done["lastSyncMessage"] is None
    assert done["lastSyncJobId"] is not None
    assert done["lastSyncedAt"] is not None


def test_create_without_auto_sync_queues_nothing(world: World) -> None:
    world.secret("A", "1")
    sync = world.create(isAutoSyncEnabled=False)
    assert sync["syncStatus"] is None
    world.secret("B", "2")  # a secret change does not queue a sync without auto-sync either (secret() settles)
    assert world.octopus.state.requests_to("/variables") == []
    assert world.get(sync["id"]).json()["secretSync"]["syncStatus"] is None


def test_sync_writes_sensitive_variables(world: World) -> None:
    world.infisical.state.secrets.set_secret(world.project_id, "prod", "/apps/web", "DB_PASS", "hunter2", comment="db")
    world.secret("EMPTY", "")
    sync = world.create()
    world.wait(sync["id"], "syncStatus", {"succeeded"})

    stored = world.octopus.state.projects.variables("Projects-1")
    assert sorted((v["Name"], v["Value"]) for v in stored) == [("DB_PASS", "hunter2"), ("EMPTY", "")]
    db = next(v for v in stored if v["Name"] == "DB_PASS")
    assert db["Type"] == "Sensitive"
    assert db["IsSensitive"] is True
    assert db["IsEditable"] is False
    assert db["Description"] == "db"
    assert db["Scope"] == {}
    assert db["Prompt"] is None
    calls = [c for c in world.infisical.state.outbound if "/variables" in c.url]
    assert [c.method for c in calls] == ["GET", "PUT"]
    assert calls[0].url == world.octopus.url + VARIABLES
    assert calls[0].headers["X-Octopus-ApiKey"] == "***"
    assert calls[0].headers["X-NuGet-ApiKey"] == "***"
    recorded = world.octopus.state.requests_to("/variables")[0]
    assert recorded.headers["x-octopus-apikey"] == world.key
    assert recorded.headers["content-type"] == "application/json"


def test_key_schema_and_scope_values(world: World) -> None:
    dev = world.octopus.state.projects.add_environment("Spaces-1", "Prod")
    world.secret("DB_PASS", "x")
    scope = {"environments": [dev], "roles": ["web-server"], "machines": [], "channels": ["Channels-1"]}
    sync = world.create(
        syncOptions={"initialSyncBehavior": "overwrite-destination", "keySchema": "WEB_{{environment}}_{{secretKey}}"},
        destinationConfig={"spaceId": "Spaces-1", "scope": "project", "projectId": "Projects-1", "scopeValues": scope},
    )
    world.wait(sync["id"], "syncStatus", {"succeeded"})

    [variable] = world.octopus.state.projects.variables("Projects-1")
    assert variable["Name"] == "WEB_prod_DB_PASS"
    assert variable["Scope"] == {"Environment": [dev], "Role": ["web-server"], "Machine": [], "Channel": ["Channels-1"]}


def test_sync_keeps_other_variables(world: World) -> None:
    projects = world.octopus.state.projects
    plain = projects.set_variable("Projects-1", "DB_HOST", "db.internal")
    kept = projects.set_variable("Projects-1", "HAND_MADE", "keep-me", sensitive=True)
    world.secret("A", "1")
    sync = world.create(syncOptions={"initialSyncBehavior": "overwrite-destination", "keySchema": "APP_{{secretKey}}"})
    world.wait(sync["id"], "syncStatus", {"succeeded"})

    by_name = {v["Name"]: v for v in projects.variables("Projects-1")}
    assert by_name["DB_HOST"]["Id"] == plain
    assert by_name["DB_HOST"]["Value"] == "db.internal"
    assert by_name["HAND_MADE"]["Id"] == kept
    assert by_name["HAND_MADE"]["Value"] == "keep-me"  # sent back with its Id and Value null: Octopus kept it
    assert by_name["APP_A"]["Value"] == "1"


def test_sync_deletes_matching_sensitive_variables(world: World) -> None:
    projects = world.octopus.state.projects
    projects.set_variable("Projects-1", "APP_OLD", "stale", sensitive=True)
    projects.set_variable("Projects-1", "OTHER_OLD", "not ours", sensitive=True)
    world.secret("NEW", "1")
    sync = world.create(syncOptions={"initialSyncBehavior": "overwrite-destination", "keySchema": "APP_{{secretKey}}"})
    world.wait(sync["id"], "syncStatus", {"succeeded"})
    assert world.octopus_values() == {"OTHER_OLD": "not ours", "APP_NEW": "1"}

    # Without a key schema every sensitive variable not in the map is the sync's to delete.
    second = world.octopus.state.projects.add_project("Spaces-1", "Second")
    projects.set_variable(second, "HAND_MADE", "gone soon", sensitive=True)
    bare = world.create("bare", destinationConfig={"spaceId": "Spaces-1", "scope": "project", "projectId": second})
    world.wait(bare["id"], "syncStatus", {"succeeded"})
    assert world.octopus_values("Projects-2") == {"NEW": "1"}


def test_disable_secret_deletion(world: World) -> None:
    projects = world.octopus.state.projects
    env = projects.add_environment("Spaces-1", "Prod")
    projects.set_variable("Projects-1", "OLD", "stays", sensitive=True)
    projects.set_variable("Projects-1", "A", "other scope", sensitive=True, scope={"Environment": ["Environments-9"]})
    world.secret("A", "new")
    sync = world.create(
        syncOptions={"initialSyncBehavior": "overwrite-destination", "disableSecretDeletion": True},
        destinationConfig={
            "spaceId": "Spaces-1",
            "scope": "project",
            "projectId": "Projects-1",
            "scopeValues": {"environments": [env]},
        },
    )
    world.wait(sync["id"], "syncStatus", {"succeeded"})

    stored = [(v["Name"], v["Value"], v["Scope"]) for v in projects.variables("Projects-1")]
    # OLD survives; the same-name A in another scope is dropped and re-scoped all the same.
    assert stored == [("OLD", "stays", {}), ("A", "new", {"Environment": [env]})]


def test_two_syncs_without_prefixes_fight(world: World) -> None:
    world.infisical.state.secrets.add_folder(world.project_id, "dev", "/apps/web")
    world.secret("PROD_ONLY", "p")
    world.secret("DEV_ONLY", "d", environment="dev")
    prod = world.create("prod-sync")
    world.wait(prod["id"], "syncStatus", {"succeeded"})
    assert world.octopus_values() == {"PROD_ONLY": "p"}

    dev = world.create("dev-sync", environment="dev")
    world.wait(dev["id"], "syncStatus", {"succeeded"})
    assert world.octopus_values() == {"DEV_ONLY": "d"}  # the dev sync deleted the prod sync's variable


def test_two_syncs_with_distinct_prefixes_coexist(world: World) -> None:
    world.infisical.state.secrets.add_folder(world.project_id, "dev", "/apps/web")
    world.secret("PASS", "p")
    world.secret("PASS", "d", environment="dev")
    options = {"initialSyncBehavior": "overwrite-destination"}
    prod = world.create("prod-sync", syncOptions={**options, "keySchema": "PROD_{{secretKey}}"})
    world.wait(prod["id"], "syncStatus", {"succeeded"})
    dev = world.create("dev-sync", environment="dev", syncOptions={**options, "keySchema": "DEV_{{secretKey}}"})
    world.wait(dev["id"], "syncStatus", {"succeeded"})
    assert world.octopus_values() == {"PROD_PASS": "p", "DEV_PASS": "d"}


# --- Failures --------------------------------------------------------------------------------------------------------


def test_wrong_project_fails_later_with_octopus_body(world: World) -> None:
    world.secret("A", "1")
    sync = world.create(destinationConfig={"spaceId": "Spaces-1", "scope": "project", "projectId": "Projects-99"})
    assert sync["syncStatus"] == "pending"  # accepted: Infisical never asked Octopus

    failed = world.wait(sync["id"], "syncStatus", {"failed"})
    assert json.loads(failed["lastSyncMessage"]) == {"ErrorMessage": "The resource you requested was not found."}
    assert failed["lastSyncJobId"] is not None
    assert failed["lastSyncedAt"] is None
    gets = [r for r in world.octopus.state.requests_to("/variables") if r.method == "GET"]
    assert len(gets) == 5  # five attempts, one GET each (404 is not retried inside an attempt)


def test_failure_stays_running_through_five_attempts(world: World) -> None:
    world.secret("A", "1")
    sync = world.create()
    first = world.wait(sync["id"], "syncStatus", {"succeeded"})
    world.settle()
    # Now Octopus denies every GET: watch the statuses the sync goes through.
    world.octopus.state.faults.error(400, times=None, path_suffix="/variables")
    world.infisical.state.syncs.timing = replace(SyncTiming.fast(), backoff_base=0.1)
    world.api.post(f"{SYNCS}/{sync['id']}/sync-secrets")
    statuses: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = world.get(sync["id"]).json()["secretSync"]
        if not statuses or statuses[-1] != current["syncStatus"]:
            statuses.append(current["syncStatus"])
        if current["syncStatus"] == "failed":
            break
        if current["syncStatus"] == "running":
            assert current["lastSyncMessage"] is None  # nothing recorded between attempts
        time.sleep(0.01)
    assert statuses[-1] == "failed"
    assert "succeeded" not in statuses[1:]
    assert "running" in statuses
    assert len(world.octopus.state.requests_to("/variables")) - 2 == 5
    final = world.get(sync["id"]).json()["secretSync"]
    assert "HTTP 400" in json.loads(final["lastSyncMessage"])["ErrorMessage"]
    assert final["lastSyncedAt"] == first["lastSyncedAt"]  # keeps the last success


def test_transient_failure_heals_on_retry(world: World) -> None:
    world.secret("A", "1")
    world.octopus.state.faults.error(403, times=2, path_suffix="/variables")
    sync = world.create()
    done = world.wait(sync["id"], "syncStatus", {"succeeded", "failed"})
    assert done["syncStatus"] == "succeeded"
    assert world.octopus_values() == {"A": "1"}


def test_missing_permission_message_is_the_octopus_body(world: World) -> None:
    limited = world.octopus.state.issue_key(permissions={"ProjectView", "VariableView"})
    world.infisical.state.rewrite_credentials_out_of_band(world.connection_id, api_key=limited)
    world.secret("A", "1")
    sync = world.create()

    failed = world.wait(sync["id"], "syncStatus", {"failed"})
    message = json.loads(failed["lastSyncMessage"])
    assert message["ErrorMessage"].endswith("Missing permission: VariableEdit")
    assert "HelpText" in message
    assert world.octopus_values() == {}


def test_unreachable_octopus_message(world: World) -> None:
    world.infisical.state.rewrite_credentials_out_of_band(world.connection_id, instance_url="http://127.0.0.1:1")
    world.secret("A", "1")
    sync = world.create()
    failed = world.wait(sync["id"], "syncStatus", {"failed"})
    assert failed["lastSyncMessage"] == "connect ECONNREFUSED 127.0.0.1:1"


def test_redirect_is_a_failure(world: World, octopus_factory: Callable[..., OctopusServer]) -> None:
    redirector = octopus_factory(redirect_to=world.octopus.url, redirect_status=302)
    world.infisical.state.rewrite_credentials_out_of_band(world.connection_id, instance_url=redirector.url)
    world.secret("A", "1")
    sync = world.create()
    failed = world.wait(sync["id"], "syncStatus", {"failed"})
    assert failed["lastSyncMessage"] == "Request failed with status code 302"
    assert world.octopus.state.requests_to("/variables") == []


def test_5xx_retried_inside_an_attempt(world: World) -> None:
    world.secret("A", "1")
    world.octopus.state.faults.error(503, times=3, path_suffix="/variables")
    sync = world.create()
    world.wait(sync["id"], "syncStatus", {"succeeded"})
    attempts = [c.attempt for c in world.infisical.state.outbound if "/variables" in c.url and c.method == "GET"]
    assert attempts == [1, 2, 3, 4]


def test_long_message_is_cut(world: World) -> None:
    world.secret("A", "1")
    world.octopus.state.projects.validate_scope_ids = True
    sync = world.create(
        destinationConfig={
            "spaceId": "Spaces-1",
            "scope": "project",
            "projectId": "Projects-1",
            "scopeValues": {"environments": ["Environments-" + "9" * 2000]},
        }
    )
    failed = world.wait(sync["id"], "syncStatus", {"failed"})
    assert len(failed["lastSyncMessage"]) == 1024
    assert failed["lastSyncMessage"].endswith("...")


# --- Updates, triggers, removal, deletion --------------------------------------------------------------------------


def test_every_patch_queues_a_full_sync(world: World) -> None:
    world.secret("A", "1")
    sync = world.create()
    world.wait(sync["id"], "syncStatus", {"succeeded"})
    world.settle()
    puts, version = variable_puts(world.octopus), world.octopus.state.projects.version("Projects-1")

    response = world.api.patch(f"{SYNCS}/{sync['id']}", json={})

    assert response.status_code == 200
    patched = response.json()["secretSync"]
    assert patched["syncStatus"] == "pending"
    assert patched["updatedAt"] > sync["updatedAt"]
    world.settle()
    assert variable_puts(world.octopus) == puts + 1
    assert world.octopus.state.projects.version("Projects-1") == version + 1  # Octopus rewritten for nothing


def test_patch_replaces_nested_objects(world: World) -> None:
    sync = world.create(syncOptions={"initialSyncBehavior": "overwrite-destination", "keySchema": "A_{{secretKey}}"})
    response = world.api.patch(
        f"{SYNCS}/{sync['id']}",
        json={"syncOptions": {"initialSyncBehavior": "overwrite-destination"}, "projectId": "ignored", "x": 1},
    )
    assert response.status_code == 200
    patched = response.json()["secretSync"]
    assert patched["syncOptions"] == {"initialSyncBehavior": "overwrite-destination"}
    assert patched["projectId"] == world.project_id
    partial = world.api.patch(f"{SYNCS}/{sync['id']}", json={"destinationConfig": {"spaceId": "Spaces-1"}})
    assert partial.status_code == 422
    only_path = world.api.patch(f"{SYNCS}/{sync['id']}", json={"secretPath": "/other"})
    assert_error(only_path, 400, "Must specify both source environment and secret path")
    missing_folder = world.api.patch(f"{SYNCS}/{sync['id']}", json={"secretPath": "/nope", "environment": "prod"})
    assert_error(
        missing_folder,
        400,
        f'Could not find folder with path "/nope" in environment "prod" for project with ID "{world.project_id}"',
    )


def test_patch_and_get_not_found_texts(world: World) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    assert_error(
        world.api.patch(f"{SYNCS}/{missing}", json={}), 404, f"Could not find Octopus Deploy Sync with ID {missing}"
    )
    assert_error(world.get(missing), 404, f'Could not find Octopus Deploy Sync with ID "{missing}"')
    assert world.get("not-a-uuid").status_code == 422


def test_secret_change_triggers_auto_sync(world: World) -> None:
    world.secret("A", "1")
    sync = world.create()
    world.wait(sync["id"], "syncStatus", {"succeeded"})
    world.settle()
    puts = variable_puts(world.octopus)

    # Two changes inside the debounce window make one sync.
    world.infisical.state.syncs.timing = replace(SyncTiming.fast(), debounce=0.3)
    secrets = world.infisical.state.secrets
    secrets.set_secret(world.project_id, "prod", "/apps/web", "A", "2")
    secrets.set_secret(world.project_id, "prod", "/apps/web", "B", "3")
    world.settle()
    assert world.octopus_values() == {"A": "2", "B": "3"}
    assert variable_puts(world.octopus) == puts + 1

    # Over HTTP too, and a secret elsewhere does not trigger this sync.
    response = world.api.patch(
        "/api/v3/secrets/raw/A",
        json={"workspaceId": world.project_id, "environment": "prod", "secretPath": "/apps/web", "secretValue": "4"},
    )
    assert response.status_code == 200
    world.secret("ELSEWHERE", "x", path="/")
    world.settle()
    assert world.octopus_values() == {"A": "4", "B": "3"}


def test_sync_now_and_lock_held(world: World) -> None:
    world.secret("A", "1")
    sync = world.create(isAutoSyncEnabled=False)
    world.octopus.state.faults.latency(2.0, path_suffix="/variables")
    response = world.api.post(f"{SYNCS}/{sync['id']}/sync-secrets")
    assert response.status_code == 200
    assert response.json()["secretSync"]["syncStatus"] == "pending"
    world.wait(sync["id"], "syncStatus", {"running"})

    assert_error(world.api.post(f"{SYNCS}/{sync['id']}/sync-secrets"), 400, LOCK_HELD)
    assert_error(world.api.post(f"{SYNCS}/{sync['id']}/remove-secrets"), 400, LOCK_HELD)
    world.octopus.state.faults.clear()
    world.wait(sync["id"], "syncStatus", {"succeeded"})
    assert world.octopus_values() == {"A": "1"}


def test_folder_gone(world: World) -> None:
    world.secret("A", "1")
    sync = world.create(isAutoSyncEnabled=False)
    world.infisical.state.secrets.delete_folder(world.project_id, "prod", "/apps")

    gone = world.get(sync["id"]).json()["secretSync"]
    assert gone["environment"] is None
    assert gone["folder"] is None
    assert gone["folderId"] is None
    assert_error(world.api.post(f"{SYNCS}/{sync['id']}/sync-secrets"), 400, FOLDER_GONE_REQUEST)
    # A job already queued when the folder goes fails at once, without retries.
    world.secret("A", "1")
    world.infisical.state.syncs.timing = replace(SyncTiming.fast(), first_delay_min=0.5, first_delay_max=0.5)
    live = world.create("live")
    world.api.post(f"{SYNCS}/{live['id']}/sync-secrets")
    world.infisical.state.secrets.delete_folder(world.project_id, "prod", "/apps/web")
    failed = world.wait(live["id"], "syncStatus", {"failed"})
    assert failed["lastSyncMessage"] == FOLDER_GONE_JOB


def test_remove_secrets(world: World) -> None:
    projects = world.octopus.state.projects
    world.secret("A", "1")
    world.secret("B", "2")
    sync = world.create()
    world.wait(sync["id"], "syncStatus", {"succeeded"})
    projects.set_variable("Projects-1", "HAND", "h", sensitive=True)
    projects.set_variable("Projects-1", "B", "half", type_="Sensitive")  # IsSensitive false: never removed
    world.settle()
    world.infisical.state.syncs.timing = replace(SyncTiming.fast(), debounce=60)  # no auto-sync in between
    world.infisical.state.secrets.delete_secret(world.project_id, "prod", "/apps/web", "B")

    response = world.api.post(f"{SYNCS}/{sync['id']}/remove-secrets")
    assert response.status_code == 200
    assert response.json()["secretSync"]["removeStatus"] == "pending"
    done = world.wait(sync["id"], "removeStatus", {"succeeded", "failed"})
    assert done["removeStatus"] == "succeeded"
    assert done["lastRemovedAt"] is not None
    # A (a current key) went; B is no longer a key, so both B variables stay; HAND is not a key.
    stored = sorted((v["Name"], v["Value"]) for v in world.octopus.state.projects.variables("Projects-1"))
    assert stored == [("B", "2"), ("B", "half"), ("HAND", "h")]
    assert world.get(sync["id"]).status_code == 200  # the sync itself stays


def test_delete_without_removal(world: World) -> None:
    world.secret("A", "1")
    sync = world.create()
    world.wait(sync["id"], "syncStatus", {"succeeded"})

    response = world.api.delete(f"{SYNCS}/{sync['id']}")
    assert response.status_code == 200
    assert response.json()["secretSync"]["id"] == sync["id"]
    assert world.get(sync["id"]).status_code == 404
    assert world.octopus_values() == {"A": "1"}
    bad = world.api.delete(f"{SYNCS}/{sync['id']}?removeSecrets=yes")
    assert bad.status_code == 422


def test_delete_with_removal_succeeds(world: World) -> None:
    world.secret("A", "1")
    sync = world.create()
    world.wait(sync["id"], "syncStatus", {"succeeded"})
    world.settle()
    world.infisical.state.syncs.timing = replace(SyncTiming.fast(), first_delay_min=0.3, first_delay_max=0.3)

    response = world.api.delete(f"{SYNCS}/{sync['id']}?removeSecrets=true")

    assert response.status_code == 200
    assert response.json()["secretSync"]["removeStatus"] == "pending"
    assert world.get(sync["id"]).status_code == 200  # still there until the removal succeeded
    world.wait(sync["id"], "removeStatus", {"gone"})
    assert world.octopus_values() == {}


def test_delete_with_removal_failure_keeps_the_sync(world: World) -> None:
    world.secret("A", "1")
    sync = world.create()
    world.wait(sync["id"], "syncStatus", {"succeeded"})
    world.octopus.state.faults.error(403, times=1, path_suffix="/variables")

    assert world.api.delete(f"{SYNCS}/{sync['id']}?removeSecrets=true").status_code == 200
    failed = world.wait(sync["id"], "removeStatus", {"failed", "gone"})
    assert failed["removeStatus"] == "failed"
    assert "HTTP 403" in failed["lastRemoveMessage"]
    assert failed["isAutoSyncEnabled"] is True
    assert world.octopus_values() == {"A": "1"}


def test_body_less_calls_with_a_json_type_are_500(world: World) -> None:
    sync = world.create(isAutoSyncEnabled=False)
    headers = {"Content-Type": "application/json"}
    for method, suffix in (("POST", "/sync-secrets"), ("POST", "/remove-secrets"), ("DELETE", "")):
        response = world.api.request(method, f"{SYNCS}/{sync['id']}{suffix}", headers=headers)
        assert_error(response, 500, "Something went wrong")
    assert world.get(sync["id"]).json()["secretSync"]["syncStatus"] is None


def test_import_is_400_before_lookup(world: World) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    url = f"{SYNCS}/{missing}/import-secrets"
    assert_error(world.api.post(url + "?importBehavior=prioritize-source"), 400, IMPORT_NOT_SUPPORTED)
    assert world.api.post(url).status_code == 422


# --- Validation and lookups ----------------------------------------------------------------------------------------


def issues_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "ValidationFailure"
    issues: list[dict[str, Any]] = body["message"]
    return issues


def test_create_validation_errors(world: World) -> None:
    def messages(**overrides: Any) -> list[tuple[list[Any], str]]:
        return [(i["path"], i["message"]) for i in issues_of(world.api.post(SYNCS, json=world.body(**overrides)))]

    assert messages(name="Web_Prod") == [
        (["name"], "name field can only contain lowercase letters, numbers, and hyphens")
    ]
    assert messages(syncOptions={"initialSyncBehavior": "import-prioritize-source"}) == [
        (["syncOptions", "initialSyncBehavior"], 'Invalid literal value, expected "overwrite-destination"')
    ]
    for schema in ("PREFIX_", "{{secretKey}}.x"):
        options = {"initialSyncBehavior": "overwrite-destination", "keySchema": schema}
        assert messages(syncOptions=options) == [(["syncOptions", "keySchema"], KEY_SCHEMA_MESSAGE)]
    config = {"spaceId": "", "scope": "project", "projectId": ""}
    assert messages(destinationConfig=config) == [
        (["destinationConfig", "spaceId"], "Space ID is required"),
        (["destinationConfig", "projectId"], "Project ID is required"),
    ]
    no_scope = {"spaceId": "Spaces-1", "projectId": "Projects-1"}
    assert messages(destinationConfig=no_scope) == [
        (["destinationConfig", "scope"], "Invalid discriminator value. Expected 'project'")
    ]
    assert messages(connectionId="nope") == [(["connectionId"], "Invalid uuid")]
    assert messages(secretPath=" ") == [(["secretPath"], "Secret path required")]
    null_schema = {"initialSyncBehavior": "overwrite-destination", "keySchema": None}
    assert messages(syncOptions=null_schema) == [(["syncOptions", "keySchema"], "Expected string, received null")]
    assert world.octopus.state.requests_to("/variables") == []


def test_create_normalises_and_drops_unknown_keys(world: World) -> None:
    sync = world.create(
        secretPath="/apps/web/",
        description="  trimmed  ",
        surprise=True,
        syncOptions={"initialSyncBehavior": "overwrite-destination", "keySchema": " W_{{secretKey}} ", "x": 1},
        destinationConfig={"spaceId": "Spaces-1", "scope": "project", "projectId": "Projects-1", "extra": 1},
    )
    assert sync["folder"]["path"] == "/apps/web"
    assert sync["description"] == "trimmed"
    assert sync["isAutoSyncEnabled"] is True
    assert "surprise" not in sync
    assert sync["syncOptions"] == {"initialSyncBehavior": "overwrite-destination", "keySchema": "W_{{secretKey}}"}
    assert sync["destinationConfig"] == {"spaceId": "Spaces-1", "scope": "project", "projectId": "Projects-1"}


def test_create_lookup_errors(world: World) -> None:
    world.create("taken")
    assert_error(
        world.api.post(SYNCS, json=world.body("taken")),
        400,
        f'A Secret Sync with the name "taken" already exists for the project with ID "{world.project_id}"',
    )
    # A machine identity that is no member of the project (it does not exist here) is refused, as by Infisical.
    assert_error(
        world.api.post(SYNCS, json=world.body(projectId="nope")), 403, "You are not allowed to access this project"
    )
    foreign = world.infisical.state.add_project(org_id="11111111-1111-4111-8111-111111111111")
    response = world.api.post(SYNCS, json=world.body(projectId=foreign))
    assert_error(response, 403, "This project does not belong to your selected organization.")
    assert_error(
        world.api.post(SYNCS, json=world.body(secretPath="/missing")),
        400,
        f'Could not find folder with path "/missing" in environment "prod" for project with ID "{world.project_id}"',
    )


def test_create_connection_errors(world: World) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    response = world.api.post(SYNCS, json=world.body(connectionId=missing))
    assert_error(response, 404, f"Could not find App Connection with ID {missing}")
    aws = world.infisical.state.add_foreign_connection(app="aws", name="aws")
    response = world.api.post(SYNCS, json=world.body(connectionId=aws))
    assert_error(response, 400, f"aws Connection with ID {aws} cannot be used to connect to Octopus Deploy")


def test_get_by_name_list_and_options(world: World) -> None:
    sync = world.create()
    by_name = world.api.get(f"{SYNCS}/sync-name/web-prod", params={"projectId": world.project_id})
    assert by_name.json()["secretSync"]["id"] == sync["id"]
    assert_error(
        world.api.get(f"{SYNCS}/sync-name/nope", params={"projectId": world.project_id}),
        404,
        'Could not find Octopus Deploy Sync with name "nope"',
    )
    assert world.api.get(f"{SYNCS}/sync-name/web-prod").status_code == 422
    listed = world.api.get(SYNCS, params={"projectId": world.project_id}).json()["secretSyncs"]
    assert [s["id"] for s in listed] == [sync["id"]]
    assert world.api.get(SYNCS).status_code == 422
    everything = world.api.get("/api/v1/secret-syncs", params={"projectId": world.project_id}).json()
    assert [s["id"] for s in everything["secretSyncs"]] == [sync["id"]]
    options = world.api.get("/api/v1/secret-syncs/options").json()["secretSyncOptions"]
    assert {
        "name": "Octopus Deploy",
        "destination": "octopus-deploy",
        "connection": "octopus-deploy",
    }.items() <= options[0].items()
    assert options[0]["canImportSecrets"] is False


def test_other_destination_is_400(world: World) -> None:
    other = world.infisical.state.syncs.add_foreign_sync(
        destination="aws-parameter-store",
        name="aws-sync",
        project_id=world.project_id,
        connection_id=world.connection_id,
    )
    message = f'Secret sync with ID "{other}" is not configured for Octopus Deploy'
    assert_error(world.get(other), 400, message)
    assert_error(world.api.get(f"{SYNCS}/sync-name/aws-sync", params={"projectId": world.project_id}), 400, message)
    response = world.api.post(SYNCS, json=world.body("aws-sync"))
    assert response.status_code == 400  # names are unique across destinations


def test_check_destination(world: World) -> None:
    sync = world.create()
    config = sync["destinationConfig"]
    url = f"{SYNCS}/check-destination"
    same = world.api.post(url, json={"destinationConfig": config, "projectId": world.project_id})
    assert same.json() == {"hasDuplicate": True, "duplicateProjectId": world.project_id}
    scoped = {**config, "scopeValues": {"environments": ["Environments-1"]}}
    assert world.api.post(url, json={"destinationConfig": scoped, "projectId": world.project_id}).json() == {
        "hasDuplicate": False
    }
    excluded = {"destinationConfig": config, "projectId": world.project_id, "excludeSyncId": sync["id"]}
    assert world.api.post(url, json=excluded).json() == {"hasDuplicate": False}


def test_block_duplicate_destinations(world: World) -> None:
    world.create("first")
    assert world.api.post(SYNCS, json=world.body("second")).status_code == 200  # allowed by default
    world.infisical.state.syncs.block_duplicate_destinations = True
    assert_error(
        world.api.post(SYNCS, json=world.body("third")), 400, "A secret sync with this destination already exists."
    )


def test_connection_with_syncs_cannot_be_deleted(world: World) -> None:
    sync = world.create()
    assert_error(world.api.delete(f"{CONNECTIONS}/{world.connection_id}"), 400, CONNECTION_IN_USE)
    world.api.delete(f"{SYNCS}/{sync['id']}")
    assert world.api.delete(f"{CONNECTIONS}/{world.connection_id}").status_code == 200


def test_jobs_per_connection_are_limited(world: World) -> None:
    world.secret("A", "1")
    for n in range(2, 6):
        world.octopus.state.projects.add_project("Spaces-1", f"P{n}")
    world.octopus.state.faults.latency(0.5, path_suffix="/variables")
    world.infisical.state.syncs.timing = replace(SyncTiming.fast(), requeue_min=0.1, requeue_max=0.2)
    syncs = [
        world.create(
            f"s{n}", destinationConfig={"spaceId": "Spaces-1", "scope": "project", "projectId": f"Projects-{n}"}
        )
        for n in range(2, 6)
    ]
    for sync in syncs:
        world.wait(sync["id"], "syncStatus", {"succeeded"})
    assert world.infisical.secret_syncs.max_concurrency_seen <= 3
    assert world.infisical.secret_syncs.max_concurrency_seen == 3

    # A gate that never frees: the job gives up after max_requeues with upstream's text.
    world.octopus.state.faults.clear()
    world.settle()
    world.infisical.state.syncs.timing = replace(SyncTiming.fast(), max_jobs_per_connection=0, max_requeues=2)
    world.api.post(f"{SYNCS}/{syncs[0]['id']}/sync-secrets")
    failed = world.wait(syncs[0]["id"], "syncStatus", {"failed"})
    assert failed["lastSyncMessage"] == JOB_GATE_EXHAUSTED


def test_cli_seeds_secrets_and_runs_syncs(octopus: OctopusServer) -> None:
    root = Path(__file__).resolve().parents[2]
    project = "3f6d0c6e-6f7e-4c1a-9a53-1b7d2a4c9e10"
    command = [sys.executable, "-m", "tests.servers.infisical", "--port", "0", "--allow-internal-ips"]
    command += ["--client-id", "cli-id", "--client-secret", "cli-secret", "--project-id", project]
    command += ["--seed-secret", f"{project}:prod:/apps/web:DB_PASS=a:b=c", "--sync-timing", "fast"]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip().removeprefix("infisical test server listening on ")
        token = httpx.post(
            url + "/api/v1/auth/universal-auth/login", json={"clientId": "cli-id", "clientSecret": "cli-secret"}
        )
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token.json()['accessToken']}"}) as api:
            listed = api.get(
                "/api/v3/secrets/raw", params={"workspaceId": project, "environment": "prod", "secretPath": "/apps/web"}
            )
            assert [(s["secretKey"], s["secretValue"]) for s in listed.json()["secrets"]] == [("DB_PASS", "a:b=c")]
            key = octopus.state.issue_key()
            connection = api.post(
                CONNECTIONS,
                json={"name": "octo", "method": "api-key", "credentials": {"instanceUrl": octopus.url, "apiKey": key}},
            ).json()["appConnection"]
            body = {
                "name": "cli-sync",
                "projectId": project,
                "connectionId": connection["id"],
                "environment": "prod",
                "secretPath": "/apps/web",
                "syncOptions": {"initialSyncBehavior": "overwrite-destination"},
                "destinationConfig": {"spaceId": "Spaces-1", "scope": "project", "projectId": "Projects-1"},
            }
            sync = api.post(SYNCS, json=body).json()["secretSync"]
            deadline = time.monotonic() + 30
            while api.get(f"{SYNCS}/{sync['id']}").json()["secretSync"]["syncStatus"] != "succeeded":
                assert time.monotonic() < deadline, "the sync never succeeded"
                time.sleep(0.05)
        assert [(v["Name"], v["Value"]) for v in octopus.state.projects.variables("Projects-1")] == [
            ("DB_PASS", "a:b=c")
        ]
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0
