"""OctopusDeploySecretSync end to end: the real operator process and API server, Infisical's sync engine (the test
double runs syncs in the background and really PUTs to the Octopus double), and the Octopus double's variable sets.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from octoconn.models import GROUP, VERSION
from octoconn.sync_models import PLURAL
from tests.cluster.conftest import Kube, Remotes, operator_env, own_namespace
from tests.cluster.operator_process import OperatorProcess
from tests.envtest.controlplane import ClusterAccess

pytestmark = pytest.mark.cluster

SYNCS = "/api/v1/secret-syncs/octopus-deploy"


class Syncs(Kube):
    """``Kube``'s waiting helpers, pointed at OctopusDeploySecretSyncs."""

    def apply(self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "OctopusDeploySecretSync",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": spec,
        }
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )
        return result

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)

    def odc(self, name: str) -> dict[str, Any] | None:  # the helpers read through this
        try:
            result: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)


@dataclass
class World:
    """One test's Octopus project, Infisical project, connection and a helper to wait on the Octopus side."""

    kube: Kube
    syncs: Syncs
    remotes: Remotes
    project_id: str  # Octopus
    project_name: str
    infisical_project: str
    key: str

    def spec(self, **overrides: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "connectionRef": {"name": "octopus"},
            "source": {"projectId": self.infisical_project, "environment": "prod", "secretPath": "/apps/web"},
            "destination": {"space": "Default", "project": self.project_name},
        }
        spec.update(overrides)
        return spec

    def variables(self) -> dict[str, dict[str, Any]]:
        return {v["Name"]: v for v in self.remotes.octopus.state.projects.variables(self.project_id)}

    def wait_octopus(
        self, predicate: Callable[[dict[str, dict[str, Any]]], bool], what: str, timeout: float = 45
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.variables()):
                return
            time.sleep(0.25)
        raise AssertionError(f"Octopus never showed {what}; variables: {sorted(self.variables())}")

    def infisical_requests_of(self, name: str, *, since: int) -> list[tuple[str, str]]:
        """Secret-sync requests that can only be this sync's: by its name, or by the id Infisical gave it."""
        ids = {s["id"] for s in self.syncs_in_infisical() if s["name"] == name}
        return [
            (r.method, r.path)
            for r in self.remotes.infisical.state.requests[since:]
            if r.path.startswith(SYNCS)
            and (
                r.path.endswith(f"/sync-name/{name}")
                or (isinstance(r.json, dict) and r.json.get("name") == name)
                or any(i in r.path for i in ids)
            )
        ]

    def syncs_in_infisical(self) -> list[dict[str, Any]]:
        return [s for s in self.remotes.infisical.state.syncs.all() if s["projectId"] == self.infisical_project]


def make_world(kube: Kube, remotes: Remotes, *, permissions: set[str] | None = None) -> World:
    project_name = f"Web {uuid.uuid4().hex[:6]}"  # every test shares the session's Octopus double
    project_id = remotes.octopus.state.projects.add_project("Spaces-1", project_name)
    infisical_project = remotes.infisical.state.add_project(str(uuid.uuid4()))
    secrets = remotes.infisical.state.secrets
    secrets.set_secret(infisical_project, "prod", "/apps/web", "DB_PASS", "s3cret-db-pass")
    secrets.set_secret(infisical_project, "prod", "/apps/web", "API_TOKEN", "s3cret-api-token")
    remotes.issued_secrets += ["s3cret-db-pass", "s3cret-api-token"]
    key = remotes.new_key(permissions=permissions) if permissions is not None else remotes.new_key()
    kube.put_secret("octopus-key", {"apiKey": key})
    # Infisical connection names are unique per organisation, and every test shares the session's Infisical.
    connection_name = f"octopus-{uuid.uuid4().hex[:8]}"
    kube.apply_odc(
        "octopus",
        {
            "instanceUrl": remotes.octopus_url,
            "apiKeySecretRef": {"name": "octopus-key"},
            "connectionName": connection_name,
        },
    )
    kube.wait_condition("octopus", "Ready", "True", "Available")
    syncs = Syncs(kube.custom.api_client, kube.namespace)
    return World(kube, syncs, remotes, project_id, project_name, infisical_project, key)


@pytest.fixture
def world(kube: Kube, remotes: Remotes, operator: OperatorProcess) -> World:
    return make_world(kube, remotes)


def ready(syncs: Syncs, name: str, timeout: float = 60) -> dict[str, Any]:
    return syncs.wait_condition(name, "Ready", "True", "Available", timeout=timeout)


def test_sync_becomes_ready_and_octopus_holds_the_secrets(world: World) -> None:
    production = f"Production {world.project_id}"
    environment = world.remotes.octopus.state.projects.add_environment("Spaces-1", production)
    world.syncs.apply(
        "web",
        world.spec(
            destination={
                "space": "Default",
                "project": world.project_name,
                "scope": {"environments": [production.lower()]},  # names match in any case
            },
            options={"keySchema": "WEB_{{secretKey}}"},
        ),
    )
    obj = ready(world.syncs, "web")
    status = obj["status"]
    assert status["destination"]["projectId"] == world.project_id
    assert status["destination"]["spaceId"] == "Spaces-1"
    assert status["destination"]["scope"] == {"environments": [environment]}
    assert status["syncStatus"] == "succeeded"
    assert status["lastSyncedAt"]
    row = world.remotes.infisical.state.syncs.sync(status["id"])
    assert row is not None
    assert row["destinationConfig"]["projectId"] == world.project_id
    for type_ in ("DestinationVerified", "Synced"):
        condition = world.syncs.condition("web", type_)
        assert condition is not None
        assert condition["status"] == "True"
        assert condition["observedGeneration"] == obj["metadata"]["generation"]

    variables = world.variables()
    assert variables["WEB_DB_PASS"]["Value"] == "s3cret-db-pass"
    assert variables["WEB_DB_PASS"]["IsSensitive"] is True
    assert variables["WEB_DB_PASS"]["Type"] == "Sensitive"
    assert variables["WEB_DB_PASS"]["Scope"] == {"Environment": [environment]}
    assert variables["WEB_API_TOKEN"]["Value"] == "s3cret-api-token"

    # A secret changed in Infisical reaches Octopus through Infisical's auto-sync, with no spec change.
    world.remotes.infisical.state.secrets.set_secret(
        world.infisical_project, "prod", "/apps/web", "DB_PASS", "rotated-db-pass"
    )
    world.remotes.issued_secrets.append("rotated-db-pass")
    world.wait_octopus(lambda v: v.get("WEB_DB_PASS", {}).get("Value") == "rotated-db-pass", "the rotated secret")

    # The operator never sent an update that changes nothing: one create, no PATCH.
    # Other test files share the session's Infisical double: look only at what can be this sync's.
    writes = [(m, p) for m, p in world.infisical_requests_of("web", since=0) if m != "GET"]
    assert writes == [("POST", SYNCS)]
    world.kube.wait_event("web", "Created")


def test_missing_permission_is_named_before_anything_is_created(
    kube: Kube, remotes: Remotes, operator: OperatorProcess
) -> None:
    world = make_world(kube, remotes, permissions={"SpaceView", "ProjectView", "VariableView"})
    world.syncs.apply("no-edit", world.spec())
    world.syncs.wait_condition("no-edit", "DestinationVerified", "False", "MissingPermission")
    ready_condition = world.syncs.condition("no-edit", "Ready")
    assert ready_condition is not None
    assert ready_condition["reason"] == "MissingPermission"
    message = ready_condition["message"]
    assert "VariableEdit" in message
    assert world.project_id in message
    assert "Nothing was created in Infisical" in message
    assert world.syncs_in_infisical() == []
    assert world.key not in message


def test_wrong_project_name_is_reported_before_anything_is_created(world: World) -> None:
    world.syncs.apply("typo", world.spec(destination={"space": "Default", "project": "Web Shopp"}))
    world.syncs.wait_condition("typo", "DestinationVerified", "False", "DestinationNotFound")
    message = world.syncs.condition("typo", "Ready")["message"]  # type: ignore[index]
    assert '"Web Shopp"' in message
    assert world.syncs_in_infisical() == []

    # Fixing the name is all it takes.
    world.syncs.patch("typo", {"spec": {"destination": {"project": world.project_name}}})
    ready(world.syncs, "typo")


def test_a_conflicting_second_sync_is_refused(world: World) -> None:
    world.syncs.apply("first", world.spec())  # no key schema: it owns every sensitive variable of the project
    ready(world.syncs, "first")
    world.syncs.apply("second", world.spec(options={"keySchema": "API_{{secretKey}}"}))
    world.syncs.wait_condition("second", "DestinationVerified", "False", "ConflictingSync")
    message = world.syncs.condition("second", "Ready")["message"]  # type: ignore[index]
    assert f"{world.kube.namespace}/first" in message
    assert [s["name"] for s in world.syncs_in_infisical()] == ["first"]


@pytest.mark.parametrize("remove", [False, True], ids=["keep-variables", "remove-variables"])
def test_deletion_with_and_without_removal(world: World, remove: bool) -> None:
    world.syncs.apply("gone", world.spec(removeSecrets=remove, options={"keySchema": "GONE_{{secretKey}}"}))
    sync_id = ready(world.syncs, "gone")["status"]["id"]
    world.remotes.octopus.state.projects.set_variable(world.project_id, "HAND_MADE", "kept", sensitive=True)
    assert "GONE_DB_PASS" in world.variables()

    world.syncs.delete("gone")
    world.syncs.wait_gone("gone", timeout=60)
    assert world.remotes.infisical.state.syncs.sync(sync_id) is None
    variables = world.variables()
    assert "HAND_MADE" in variables
    if remove:
        assert "GONE_DB_PASS" not in variables
        assert "GONE_API_TOKEN" not in variables
    else:
        assert variables["GONE_DB_PASS"]["Value"] == "s3cret-db-pass"


def test_orphan_leaves_the_sync_running(world: World) -> None:
    world.syncs.apply("orphan", world.spec(deletionPolicy="Orphan"))
    sync_id = ready(world.syncs, "orphan")["status"]["id"]
    world.syncs.delete("orphan")
    world.syncs.wait_gone("orphan")
    assert world.remotes.infisical.state.syncs.sync(sync_id) is not None
    world.remotes.infisical.state.secrets.set_secret(
        world.infisical_project, "prod", "/apps/web", "LATER", "later-value"
    )
    world.wait_octopus(
        lambda v: v.get("LATER", {}).get("Value") == "later-value", "a secret synced after the orphaning"
    )


def test_a_paused_sync_makes_no_call(world: World) -> None:
    infisical_before = len(world.remotes.infisical.state.requests)
    octopus_before = len(world.remotes.octopus.state.requests)
    # By project id: any pass that is not paused reads /api/Spaces-1/projects/<id> first. (The session operator keeps
    # serving earlier tests' resources meanwhile, so only requests that can be this sync's are looked at.)
    spec = world.spec(destination={"space": "Spaces-1", "project": world.project_id})
    world.syncs.apply("paused", spec, annotations={"octoconn.dev/paused": "true"})
    world.syncs.wait_condition("paused", "Synced", "False", "ReconcilePaused")
    octopus = [
        r.path for r in world.remotes.octopus.state.requests[octopus_before:] if world.project_id in r.path.split("/")
    ]
    assert octopus == []
    assert world.infisical_requests_of("paused", since=infisical_before) == []

    world.syncs.patch("paused", {"metadata": {"annotations": {"octoconn.dev/paused": None}}})
    ready(world.syncs, "paused")
    assert world.infisical_requests_of("paused", since=infisical_before)  # the same filter sees a working sync


def test_sync_requested_at_triggers_a_sync_now(world: World) -> None:
    world.syncs.apply("manual", world.spec(options={"autoSync": False}))
    first = ready(world.syncs, "manual")["status"]
    # Without auto-sync a secret change is not synced...
    world.remotes.infisical.state.secrets.set_secret(world.infisical_project, "prod", "/apps/web", "DB_PASS", "v2-pass")
    world.remotes.issued_secrets.append("v2-pass")
    world.syncs.patch("manual", {"metadata": {"annotations": {"octoconn.dev/sync-requested-at": "1"}}})
    # ...until asked for.
    world.wait_octopus(lambda v: v.get("DB_PASS", {}).get("Value") == "v2-pass", "the requested sync")
    obj = world.syncs.wait_status(
        "manual",
        lambda s: s.get("handledSyncRequest") == "1" and s.get("lastSyncedAt") != first["lastSyncedAt"],
        "the sync",
    )
    assert obj["status"]["syncStatus"] == "succeeded"


def test_a_failed_sync_is_reported_with_octopus_words(world: World) -> None:
    world.syncs.apply("revoked", world.spec())
    ready(world.syncs, "revoked")
    # The key loses VariableEdit on this project after the sync was created: Infisical's next sync fails.
    world.remotes.octopus.state.projects.restrict(world.key, "VariableEdit", projects=["Projects-999999"])
    world.syncs.patch("revoked", {"metadata": {"annotations": {"octoconn.dev/sync-requested-at": "again"}}})
    world.syncs.wait_condition("revoked", "Synced", "False", "SyncFailed", timeout=90)
    message = world.syncs.condition("revoked", "Ready")["message"]  # type: ignore[index]
    assert "Missing permission: VariableEdit" in message
    assert "{" not in message  # Octopus's JSON body made readable
    assert world.key not in message


# --- restart: its own operator, so it can be stopped and started -----------------------------------------------------
@pytest.fixture
def restartable(
    control_plane: ClusterAccess, crd: str, remotes: Remotes, kube_api: client.ApiClient, tmp_path: Path
) -> Iterator[tuple[Kube, OperatorProcess]]:
    with own_namespace(kube_api, "sync-restart") as name:
        env = operator_env(remotes, OCTOCONN_RESYNC_INTERVAL_SECONDS="3600", OCTOCONN_RETRY_BACKOFF_CAP_SECONDS="2")
        operator = OperatorProcess(
            kubeconfig=control_plane.kubeconfig, env=env, log_path=tmp_path / "operator.log", namespaces=[name]
        )
        try:
            yield Kube(kube_api, name), operator
        finally:
            operator.stop()


def test_a_restart_makes_no_write(restartable: tuple[Kube, OperatorProcess], remotes: Remotes) -> None:
    kube, operator = restartable
    operator.start()
    world = make_world(kube, remotes)
    world.syncs.apply("steady", world.spec())
    ready(world.syncs, "steady")
    operator.stop()

    sync_id = world.syncs.odc("steady")["status"]["id"]  # type: ignore[index]
    infisical_before = len(remotes.infisical.state.requests)
    octopus_before = len(remotes.octopus.state.requests)
    version = remotes.octopus.state.projects.version(world.project_id)
    operator.start()
    # A settled sync waits for its periodic check after a restart; an annotation change wakes it for a full pass
    # now. Changes are seen from the watch once the sync's loop runs (a change made before that is in the body the
    # loop starts from, and a settled sync waits anyway), so poke until the loop answers.
    deadline = time.monotonic() + 20
    pokes = 0
    while not [r for r in remotes.infisical.state.requests[infisical_before:] if r.path == f"{SYNCS}/{sync_id}"]:
        assert time.monotonic() < deadline, "the restarted operator never read the sync back"
        pokes += 1
        world.syncs.patch("steady", {"metadata": {"annotations": {"example.com/touched": str(pokes)}}})
        time.sleep(1)
    time.sleep(2)  # a negative check: give a (wrong) write that would follow the read time to happen
    # The session operator may still serve earlier tests' resources: look only at what can be this sync's.
    assert [m for m, _ in world.infisical_requests_of("steady", since=infisical_before) if m != "GET"] == []
    # The destination was verified before the restart: no call to Octopus about this project.
    assert [
        r.path for r in remotes.octopus.state.requests[octopus_before:] if world.project_id in r.path.split("/")
    ] == []
    assert remotes.octopus.state.projects.version(world.project_id) == version
    assert world.syncs.condition("steady", "Ready")["status"] == "True"  # type: ignore[index]


def test_no_key_or_secret_value_in_logs_events_status_or_annotations(world: World, operator: OperatorProcess) -> None:
    """A sync's whole life, including a failure whose message comes from Octopus, then a scan of what was written."""
    world.syncs.apply("leak-check", world.spec(options={"keySchema": "LEAK_{{secretKey}}"}), annotations={})
    ready(world.syncs, "leak-check")
    world.remotes.octopus.state.projects.restrict(world.key, "VariableEdit", projects=["Projects-999999"])
    world.syncs.patch("leak-check", {"metadata": {"annotations": {"octoconn.dev/sync-requested-at": "leak"}}})
    obj = world.syncs.wait_condition("leak-check", "Synced", "False", "SyncFailed", timeout=90)
    texts = [operator.log_text(), repr(obj.get("status")), repr(obj["metadata"].get("annotations"))]
    texts += [f"{e.reason} {e.message}" for e in world.kube.events()]
    world.syncs.delete("leak-check")
    world.syncs.wait_gone("leak-check")
    texts.append(operator.log_text())
    secrets = [*world.remotes.issued_secrets, *world.remotes.infisical.state.issued_access_tokens()]
    assert "s3cret-db-pass" in secrets
    blob = "\n".join(texts)
    assert [s[:6] + "..." for s in secrets if s in blob] == []
    assert [s[:6] + "..." for s in secrets if base64.b64encode(s.encode()).decode() in blob] == []


def test_a_key_schema_change_keeps_the_old_variables_and_says_so_once(
    restartable: tuple[Kube, OperatorProcess], remotes: Remotes
) -> None:
    kube, operator = restartable
    operator.start()
    world = make_world(kube, remotes)
    world.syncs.apply("renamed", world.spec(options={"keySchema": "OLD_{{secretKey}}"}))
    ready(world.syncs, "renamed")
    world.wait_octopus(lambda v: "OLD_DB_PASS" in v and "OLD_API_TOKEN" in v, "the old names")

    world.syncs.patch("renamed", {"spec": {"options": {"keySchema": "NEW_{{secretKey}}"}}})
    world.wait_octopus(lambda v: "NEW_DB_PASS" in v and "NEW_API_TOKEN" in v, "the new names")
    event = kube.wait_event("renamed", "VariablesLeftInOctopus")
    assert event.type == "Warning"
    assert "OLD_DB_PASS" in event.message
    assert "OLD_API_TOKEN" in event.message
    assert "s3cret" not in event.message

    def left_events() -> int:
        return sum(e.count or 1 for e in kube.events("renamed") if e.reason == "VariablesLeftInOctopus")

    # Further passes, then a restart followed by passes: the Event is not posted again.
    for round_ in ("before", "after"):
        if round_ == "after":
            operator.stop()
            operator.start()
        for poke in range(3):
            world.syncs.patch("renamed", {"metadata": {"annotations": {"example.com/touched": f"{round_}-{poke}"}}})
            time.sleep(1)
        time.sleep(2)  # a negative check: give a (wrong) second Event time to be posted
        assert left_events() == 1
    assert world.syncs.condition("renamed", "Ready")["status"] == "True"  # type: ignore[index]

    # Kept, with their last values: neither Infisical nor the operator removed them.
    variables = world.variables()
    assert variables["OLD_DB_PASS"]["Value"] == "s3cret-db-pass"
    assert variables["OLD_API_TOKEN"]["Value"] == "s3cret-api-token"
    assert variables["NEW_DB_PASS"]["Value"] == "s3cret-db-pass"
