"""Cluster-tier fixtures: the CRD installed, both test servers, and the real operator running against them.

One operator process serves the whole session (as in a cluster, it watches every namespace); each test works in
a namespace of its own. The operator's intervals are shortened so retries and periodic checks happen within
seconds, and every key and secret the session hands out is remembered for the leak scan.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from octoconn.models import GROUP, PLURAL, VERSION
from octoconn.sync_models import PLURAL as SYNC_PLURAL
from tests.cluster.operator_process import OperatorProcess
from tests.envtest.controlplane import ClusterAccess
from tests.servers.infisical import InfisicalServer, KubeApiConfig
from tests.servers.infisical_syncs import SyncTiming
from tests.servers.octopus import OctopusServer

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "octoconn.dev_octopusdeployconnections.yaml"
SYNC_CRD_FILE = ROOT / "crds" / "octoconn.dev_octopusdeploysecretsyncs.yaml"
PEERING_CRD_FILE = ROOT / "crds" / "kopf.dev_peerings.yaml"
CLIENT_ID = "octoconn-operator-client"
CLIENT_SECRET = "client-secret-0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@dataclass
class Remotes:
    octopus: OctopusServer
    infisical: InfisicalServer
    issued_secrets: list[str] = field(default_factory=list)

    def new_key(self, **kwargs: Any) -> str:
        key = self.octopus.state.issue_key(**kwargs)
        self.issued_secrets.append(key)
        return key

    @property
    def octopus_url(self) -> str:
        return self.octopus.url

    def connection_named(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.infisical.state.connections() if c["name"] == name), None)


@pytest.fixture(scope="session")
def remotes(control_plane: ClusterAccess) -> Iterator[Remotes]:
    octopus = OctopusServer().start()
    # Kubernetes Auth logins are checked with a real TokenReview against the cluster under test.
    kube_api = KubeApiConfig(
        url=control_plane.url,
        ca_file=control_plane.ca_file,
        client_cert_file=control_plane.admin_cert_file,
        client_key_file=control_plane.admin_key_file,
    )
    infisical = InfisicalServer(allow_internal_ips=True, kube_api=kube_api).start()
    # Infisical's real sync timings (first delay up to 10 s, backoff from 3 s) with the same shape, in milliseconds.
    infisical.state.syncs.timing = SyncTiming.fast()
    infisical.state.add_universal_identity(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    try:
        yield Remotes(octopus=octopus, infisical=infisical, issued_secrets=[CLIENT_SECRET])
    finally:
        infisical.stop()
        octopus.stop()


@pytest.fixture(autouse=True)
def _clear_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "remotes" in request.fixturenames:
        remotes: Remotes = request.getfixturevalue("remotes")
        remotes.octopus.state.faults.clear()
        remotes.infisical.state.faults.clear()


@pytest.fixture(scope="session")
def crd(control_plane: ClusterAccess) -> str:
    control_plane.kubectl("apply", "--server-side", "-f", str(CRD_FILE), "-f", str(SYNC_CRD_FILE))
    for plural in (PLURAL, SYNC_PLURAL):
        control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{plural}.{GROUP}")
    return f"{PLURAL}.{GROUP}"


@pytest.fixture(scope="session")
def peering_crds(control_plane: ClusterAccess) -> None:
    """Kopf's peering CRDs, for operators that run peered (without --standalone), as the chart's replicas do."""
    control_plane.kubectl("apply", "--server-side", "-f", str(PEERING_CRD_FILE))
    control_plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/kopfpeerings.kopf.dev",
        "crd/clusterkopfpeerings.kopf.dev",
    )


def operator_env(remotes: Remotes, **overrides: str) -> dict[str, str]:
    """The settings every test operator shares: the session's test servers, the operator's own identity."""
    env = {
        "OCTOCONN_INFISICAL_URL": remotes.infisical.url,
        "OCTOCONN_CLIENT_ID": CLIENT_ID,
        "OCTOCONN_CLIENT_SECRET": CLIENT_SECRET,
        "OCTOCONN_ALLOW_HTTP": "true",
        # The test double has no read limit; pacing reads would only slow the tests down.
        "OCTOCONN_INFISICAL_READS_PER_MINUTE": "0",
    }
    env.update(overrides)
    return env


@contextlib.contextmanager
def own_namespace(api: client.ApiClient, prefix: str) -> Iterator[str]:
    """A namespace outside the session operator's t-* pattern, for a test that runs an operator of its own."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture(scope="session")
def operator(
    control_plane: ClusterAccess, crd: str, remotes: Remotes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    env = operator_env(
        remotes,
        # Long on purpose: every test must reach its state through a watch event (spec, annotation, Secret) or a
        # retry, never by waiting for the periodic check (tests/cluster/test_periodic.py covers that one).
        OCTOCONN_RESYNC_INTERVAL_SECONDS="3600",
        OCTOCONN_RETRY_BACKOFF_CAP_SECONDS="2",
        OCTOCONN_AUTH_RETRY_SECONDS="3",
        OCTOCONN_LOG_LEVEL="DEBUG",
    )
    # Test namespaces are all named t-*; other namespaces belong to operators that tests start themselves.
    process = OperatorProcess(
        kubeconfig=control_plane.kubeconfig, env=env, log_path=log_path, namespaces=["t-*"]
    ).start()
    try:
        yield process
    finally:
        process.stop()


def request_reconcile(kube: Kube, name: str) -> None:
    """What a user does to ask for a re-check now."""
    stamp = f"{time.time():.6f}"
    kube.patch_odc(name, {"metadata": {"annotations": {"octoconn.dev/reconcile-requested-at": stamp}}})


class Kube:
    """Small, explicit helpers over the admin API client for one test namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    # Secrets
    def put_secret(self, name: str, data: dict[str, str], namespace: str | None = None) -> str:
        ns = namespace or self.namespace
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        )
        try:
            result = self.core.create_namespaced_secret(ns, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            result = self.core.replace_namespaced_secret(name, ns, body)
        return str(result.metadata.resource_version)

    def secret(self, name: str, namespace: str | None = None) -> Any:
        return self.core.read_namespaced_secret(name, namespace or self.namespace)

    # OctopusDeployConnections
    def apply_odc(self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "OctopusDeployConnection",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": spec,
        }
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )
        return result

    def patch_odc(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, patch
        )
        return result

    def odc(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def delete_odc(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        obj = self.odc(name) or {}
        return next((c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == type_), None)

    def wait_condition(
        self, name: str, type_: str, status: str, reason: str | None = None, timeout: float = 45
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            seen = self.condition(name, type_)
            if seen and seen["status"] == status and (reason is None or seen["reason"] == reason):
                return self.odc(name) or {}
            time.sleep(0.25)
        raise AssertionError(f"{name}: {type_} never became {status}/{reason}; last seen: {seen}")

    def wait_status(self, name: str, predicate: Any, what: str, timeout: float = 45) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            obj = self.odc(name)
            if obj is not None and predicate(obj.get("status") or {}):
                return obj
            time.sleep(0.25)
        raise AssertionError(f"{name}: never saw {what}; last status: {(obj or {}).get('status')}")

    def wait_gone(self, name: str, timeout: float = 45) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.odc(name) is None:
                return
            time.sleep(0.25)
        raise AssertionError(f"{name} was not deleted; finalizers: {(self.odc(name) or {}).get('metadata')}")

    def wait_event(self, name: str, reason: str, timeout: float = 20) -> Any:
        """Events are posted asynchronously (Kopf queues them), so poll for one instead of reading once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events(name) if e.reason == reason]
            if found:
                return found[0]
            time.sleep(0.25)
        raise AssertionError(f"{name}: no {reason} Event; saw {sorted({e.reason for e in self.events(name)})}")

    def events(self, name: str | None = None) -> list[Any]:
        items = self.core.list_namespaced_event(self.namespace).items
        return [e for e in items if name is None or e.involved_object.name == name]


@pytest.fixture
def kube(kube_api: client.ApiClient, namespace: str) -> Kube:
    return Kube(kube_api, namespace)
