"""Secret syncs (and a deleting connection) through every state a user meets, saved as the API server returns them,
then judged by Argo CD's Lua VM (deploy/argocd/secret-sync-health.lua) and by kstatus, which Flux uses.

Connections in the other states are saved by tests/cluster/test_argocd_health.py; both runs write to a temporary
folder, and with OCTOCONN_UPDATE_ARGOCD_TESTDATA=1 replace the saved copies in the repository
(tests/argocd/sync/ and tests/argocd/connection-deleting/), which the non-cluster tier checks again
(tests/packaging/test_argocd_health.py, tests/packaging/test_kstatus.py).

Named to run after test_secret_sync.py, whose first test counts every secret-sync write the session's Infisical
double has seen.
"""

from __future__ import annotations

import base64
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.conftest import Kube, Remotes, own_namespace
from tests.cluster.test_argocd_health import Capture, ready_message, run_argocd_health, start_operator
from tests.cluster.test_secret_sync import SYNCS, Syncs
from tests.envtest.controlplane import ClusterAccess
from tests.kstatus.cases import CASES, CONNECTIONS, run_kstatus, write_tests

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "argocd" / "secret-sync-health.lua"
SYNC_TESTDATA = ROOT / "tests" / "argocd" / "sync"
CONNECTION_SCRIPT = ROOT / "deploy" / "argocd" / "health.lua"
DELETING_TESTDATA = ROOT / "tests" / "argocd" / "connection-deleting"
GROUP_KIND = "octoconn.dev/OctopusDeploySecretSync"

NO_STATUS = "Waiting for the operator to reconcile this secret sync."
NEW_GENERATION = "Waiting for the operator to reconcile the latest change of this secret sync."
PAUSED = "Paused by the annotation octoconn.dev/paused: the operator makes no calls to Octopus or Infisical."


@pytest.fixture
def namespace_of_our_own(kube_api: client.ApiClient) -> Iterator[str]:
    # Not watched by the session's operator, so the first objects can be saved before any operator sees them.
    with own_namespace(kube_api, "states") as name:
        yield name


def _world(kube: Kube, remotes: Remotes) -> tuple[str, str, str]:
    """An Octopus project, an Infisical folder with two secrets, a Secret and a connection: (project, folder, key)."""
    project = f"Flux {uuid.uuid4().hex[:6]}"
    remotes.octopus.state.projects.add_project("Spaces-1", project)
    infisical_project = remotes.infisical.state.add_project(str(uuid.uuid4()))
    for name, value in (("DB_PASS", "s3cret-flux-db"), ("API_TOKEN", "s3cret-flux-token")):
        remotes.infisical.state.secrets.set_secret(infisical_project, "prod", "/apps/web", name, value)
        remotes.issued_secrets.append(value)
    key = remotes.new_key()
    kube.put_secret("octopus-key", {"apiKey": key})
    kube.apply_odc(
        "octopus",
        {
            "instanceUrl": remotes.octopus_url,
            "apiKeySecretRef": {"name": "octopus-key"},
            "connectionName": f"flux-{uuid.uuid4().hex[:8]}",
        },
    )
    return project, infisical_project, key


def _ready(syncs: Syncs, name: str) -> dict[str, Any]:
    return syncs.wait_condition(name, "Ready", "True", "Available", timeout=60)


def test_every_state_as_argo_cd_and_flux_show_it(
    control_plane: ClusterAccess,
    crd: str,
    remotes: Remotes,
    kube_api: client.ApiClient,
    namespace_of_our_own: str,
    tmp_path: Path,
) -> None:
    update = os.environ.get("OCTOCONN_UPDATE_ARGOCD_TESTDATA") == "1"
    argo = Capture(tmp_path / "sync")
    others = Capture(tmp_path / "connection-deleting")
    kube = Kube(kube_api, namespace_of_our_own)
    syncs = Syncs(kube_api, namespace_of_our_own)
    project, infisical_project, key = _world(kube, remotes)
    name = "flux-sync"
    syncs.apply(
        name,
        {
            "connectionRef": {"name": "octopus"},
            "source": {"projectId": infisical_project, "environment": "prod", "secretPath": "/apps/web"},
            "destination": {"space": "Default", "project": project},
        },
    )
    argo.save(syncs.odc(name) or {}, "progressing_no_status", "Progressing", NO_STATUS)

    operator = start_operator(control_plane, remotes, namespace_of_our_own, tmp_path / "operator.log")
    try:
        obj = _ready(syncs, name)
        argo.save(obj, "healthy", "Healthy", ready_message(obj))

        # Infisical runs a requested sync while Octopus answers slowly: Ready is Unknown/Syncing "(running)".
        remotes.octopus.state.faults.latency(4.0, path_suffix="/variables")
        syncs.patch(name, {"metadata": {"annotations": {"octoconn.dev/sync-requested-at": "flux-1"}}})
        obj = syncs.wait_status(name, lambda s: "(running)" in _ready_text(s), "a running sync", timeout=60)
        argo.save(obj, "progressing_running", "Progressing", ready_message(obj))
        remotes.octopus.state.faults.clear()
        syncs.wait_status(name, lambda s: s.get("handledSyncRequest") == "flux-1", "the requested sync handled")
        _ready(syncs, name)

        # A spec change while the operator is stopped: the generation moves ahead of status.
        operator.stop()
        syncs.patch(name, {"spec": {"description": "changed while the operator was away"}})
        obj = syncs.odc(name) or {}
        assert obj["metadata"]["generation"] == obj["status"]["observedGeneration"] + 1 == 2
        argo.save(obj, "progressing_new_generation", "Progressing", NEW_GENERATION)
        operator = start_operator(control_plane, remotes, namespace_of_our_own, tmp_path / "operator2.log")
        syncs.wait_status(name, lambda s: s.get("observedGeneration") == 2, "generation 2")

        # A destination that does not exist: Ready is False, the operator waits for a change.
        syncs.patch(name, {"spec": {"destination": {"project": "No Such Project"}}})
        obj = syncs.wait_condition(name, "DestinationVerified", "False", "DestinationNotFound")
        argo.save(obj, "degraded_destination_not_found", "Degraded", ready_message(obj))
        syncs.patch(name, {"spec": {"destination": {"project": project}}})
        _ready(syncs, name)

        syncs.patch(name, {"metadata": {"annotations": {"octoconn.dev/paused": "true"}}})
        obj = syncs.wait_condition(name, "Synced", "False", "ReconcilePaused")
        argo.save(obj, "suspended_paused", "Suspended", PAUSED)
        syncs.patch(name, {"metadata": {"annotations": {"octoconn.dev/paused": None}}})
        _ready(syncs, name)

        _save_blocked_deletions(kube, syncs, remotes, argo, others, name)
    finally:
        operator.stop()
        remotes.octopus.state.faults.clear()
        remotes.infisical.state.faults.clear()

    _check_argocd(argo, others)
    _check_kstatus(tmp_path, argo, others)
    saved = "".join(p.read_text() for folder in (argo, others) for p in sorted((folder.folder / "testdata").glob("*")))
    assert key not in saved  # the objects go into the repository: nothing secret may be in them
    assert base64.b64encode(key.encode()).decode() not in saved
    assert "s3cret-flux" not in saved
    if update:
        shutil.rmtree(SYNC_TESTDATA, ignore_errors=True)
        shutil.copytree(argo.folder, SYNC_TESTDATA)
        shutil.rmtree(DELETING_TESTDATA, ignore_errors=True)
        shutil.copytree(others.folder, DELETING_TESTDATA)


def _ready_text(status: dict[str, object]) -> str:
    conditions = status.get("conditions") or []
    assert isinstance(conditions, list)
    return next((str(c.get("message")) for c in conditions if c.get("type") == "Ready"), "")


def _save_blocked_deletions(
    kube: Kube, syncs: Syncs, remotes: Remotes, argo: Capture, others: Capture, name: str
) -> None:
    """Deleting while Infisical refuses (500): the finalizer stays, Ready says why; then Infisical recovers."""
    remotes.infisical.state.faults.error(500, times=None, path_prefix=f"{SYNCS}/")
    syncs.delete(name)
    obj = syncs.wait_condition(name, "Ready", "False", "DeletionBlocked", timeout=60)
    assert obj["metadata"].get("deletionTimestamp")
    argo.save(obj, "deleting_blocked", "Degraded", ready_message(obj))
    remotes.infisical.state.faults.clear()
    syncs.wait_gone(name, timeout=90)

    remotes.infisical.state.faults.error(500, times=None, path_prefix="/api/v1/app-connections")
    kube.delete_odc("octopus")
    obj = kube.wait_condition("octopus", "Ready", "False", "DeletionBlocked", timeout=60)
    others.save(obj, "connection_deleting", "Degraded", ready_message(obj))
    remotes.infisical.state.faults.clear()
    kube.wait_gone("octopus", timeout=90)


def _check_argocd(argo: Capture, others: Capture) -> None:
    tests = argo.write()
    results = run_argocd_health(tests, script=SCRIPT, group_kind=GROUP_KIND)
    assert [r["inputPath"] for r in results] == [t["inputPath"] for t in argo.tests]
    assert [r for r in results if not r["ok"]] == []
    assert {r["got"]["status"] for r in results} == {"Healthy", "Progressing", "Degraded", "Suspended"}
    deleting = run_argocd_health(others.write(), script=CONNECTION_SCRIPT)
    assert [r for r in deleting if not r["ok"]] == []


def _check_kstatus(tmp_path: Path, argo: Capture, others: Capture) -> None:
    folders = {"connections": CONNECTIONS, "syncs": argo.folder / "testdata", "others": others.folder / "testdata"}
    code, results = run_kstatus(write_tests(tmp_path / "kstatus_test.yaml", folders))
    assert [r for r in results if not r["ok"]] == []
    assert code == 0
    assert len(results) == len(CASES)
