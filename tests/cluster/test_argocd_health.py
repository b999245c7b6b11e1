"""Argo CD's health check (deploy/argocd/health.lua) over real objects: the operator drives a resource through every
state the script distinguishes, the test saves each object as the API server returns it, and Argo CD's own Lua VM
(tests/argocd, built from Go modules) judges them.

The saved objects and the expected results form a health_test.yaml in Argo CD's layout. They go to a temporary
folder on every run; with OCTOCONN_UPDATE_ARGOCD_TESTDATA=1 they replace tests/argocd/health_test.yaml and
tests/argocd/testdata/, which the non-cluster tier checks again (tests/packaging/test_argocd_health.py).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.cluster.conftest import Kube, Remotes, operator_env, own_namespace, request_reconcile
from tests.cluster.operator_process import OperatorProcess
from tests.envtest.binaries import ensure_argocd_health
from tests.envtest.controlplane import ClusterAccess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "argocd" / "health.lua"
TESTDATA = ROOT / "tests" / "argocd"

# The script's own words for the states that have no Ready message to show.
NO_STATUS = "Waiting for the operator to reconcile this connection."
NEW_GENERATION = "Waiting for the operator to reconcile the latest change of this connection."
PAUSED = "Paused by the annotation octoconn.dev/paused: the operator makes no calls to Octopus or Infisical."


class Capture:
    """Saved objects and what Argo CD must say about each, in Argo CD's health_test.yaml layout."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tests: list[dict[str, Any]] = []

    def save(self, obj: dict[str, Any], name: str, status: str, message: str) -> None:
        obj = json.loads(json.dumps(obj))
        obj["metadata"].pop("managedFields", None)  # bookkeeping of field owners, not part of the object's state
        path = self.folder / "testdata" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        self.tests.append(
            {"healthStatus": {"status": status, "message": message}, "inputPath": f"testdata/{name}.yaml"}
        )

    def write(self) -> Path:
        path = self.folder / "health_test.yaml"
        path.write_text(yaml.safe_dump({"tests": self.tests}, sort_keys=False))
        return path


def ready_message(obj: dict[str, Any]) -> str:
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    return str(ready["message"])


def run_argocd_health(
    tests: Path, *, script: Path = SCRIPT, group_kind: str = "octoconn.dev/OctopusDeployConnection"
) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(ensure_argocd_health()), "-script", str(script), "-tests", str(tests), "-group-kind", group_kind],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture
def namespace_of_our_own(kube_api: client.ApiClient) -> Iterator[str]:
    # Not watched by the session's operator, so the first object can be saved before any operator sees it.
    with own_namespace(kube_api, "argocd") as name:
        yield name


def start_operator(control_plane: ClusterAccess, remotes: Remotes, namespace: str, log: Path) -> OperatorProcess:
    env = operator_env(remotes, OCTOCONN_RESYNC_INTERVAL_SECONDS="3600", OCTOCONN_AUTH_RETRY_SECONDS="3600")
    return OperatorProcess(kubeconfig=control_plane.kubeconfig, env=env, log_path=log, namespaces=[namespace]).start()


def test_health_lua_judges_every_state_the_operator_writes(
    control_plane: ClusterAccess,
    crd: str,
    remotes: Remotes,
    kube_api: client.ApiClient,
    namespace_of_our_own: str,
    tmp_path: Path,
) -> None:
    update = os.environ.get("OCTOCONN_UPDATE_ARGOCD_TESTDATA") == "1"
    capture = Capture(tmp_path / "argocd")
    kube = Kube(kube_api, namespace_of_our_own)
    name = "argo-watched"
    key = remotes.new_key()
    kube.put_secret("octopus-key", {"apiKey": key})
    kube.apply_odc(name, {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": "octopus-key"}})
    capture.save(kube.odc(name) or {}, "progressing_no_status", "Progressing", NO_STATUS)

    operator = start_operator(control_plane, remotes, namespace_of_our_own, tmp_path / "operator.log")
    try:
        obj = kube.wait_condition(name, "Ready", "True", "Available")
        capture.save(obj, "healthy", "Healthy", ready_message(obj))

        # A spec change the operator has not seen yet (it is stopped): the generation moves ahead of status.
        operator.stop()
        obj = kube.patch_odc(name, {"spec": {"description": "changed while the operator was away"}})
        assert obj["metadata"]["generation"] == obj["status"]["observedGeneration"] + 1
        capture.save(obj, "progressing_new_generation", "Progressing", NEW_GENERATION)
        operator = start_operator(control_plane, remotes, namespace_of_our_own, tmp_path / "operator2.log")
        kube.wait_status(name, lambda s: s.get("observedGeneration") == obj["metadata"]["generation"], "generation 2")

        # Octopus down: Ready is Unknown, the connection in Infisical is untouched.
        remotes.octopus.state.faults.error(503, times=None, path_suffix="/api")
        request_reconcile(kube, name)
        obj = kube.wait_condition(name, "Ready", "Unknown", "OctopusUnreachable")
        capture.save(obj, "progressing_ready_unknown", "Progressing", ready_message(obj))
        remotes.octopus.state.faults.clear()

        # The Secret deleted: Ready is False. (Not a revoked key: Octopus's 401 message names a web site, and these
        # objects are kept in the repository.)
        kube.core.delete_namespaced_secret("octopus-key", namespace_of_our_own)
        obj = kube.wait_condition(name, "Ready", "False", "SecretNotFound")
        capture.save(obj, "degraded_secret_not_found", "Degraded", ready_message(obj))

        # Paused: Suspended, whatever Ready says (False/ReconcilePaused).
        kube.patch_odc(name, {"metadata": {"annotations": {"octoconn.dev/paused": "true"}}})
        obj = kube.wait_condition(name, "Synced", "False", "ReconcilePaused")
        capture.save(obj, "suspended_paused", "Suspended", PAUSED)

        # Clean up while the operator runs: paused, the Infisical connection is left alone and the finalizer goes.
        kube.delete_odc(name)
        kube.wait_gone(name)
    finally:
        operator.stop()

    tests = capture.write()
    results = run_argocd_health(tests)
    assert [r["inputPath"] for r in results] == [t["inputPath"] for t in capture.tests]
    assert [r for r in results if not r["ok"]] == []
    assert {r["got"]["status"] for r in results} == {"Healthy", "Progressing", "Degraded", "Suspended"}
    saved = "".join(path.read_text() for path in sorted((capture.folder / "testdata").glob("*.yaml")))
    assert key not in saved  # the objects go into the repository: nothing secret may be in them
    assert base64.b64encode(key.encode()).decode() not in saved
    if update:
        shutil.rmtree(TESTDATA / "testdata", ignore_errors=True)
        shutil.copytree(capture.folder / "testdata", TESTDATA / "testdata")
        shutil.copy(tests, TESTDATA / "health_test.yaml")
