"""pytest fixtures for the cluster tier: one control plane per session, an admin API client and a namespace per test.

Set ``OCTOCONN_TEST_KUBECONFIG`` to run the same tests against an existing cluster (kind, a CI service) instead of
the locally built etcd + kube-apiserver; nothing is started then.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.envtest.controlplane import ClusterAccess, ControlPlane, ExternalCluster

EXTERNAL_KUBECONFIG_ENV = "OCTOCONN_TEST_KUBECONFIG"

_sessions: list[ClusterAccess] = []


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterAccess]:
    """The cluster under test: a fresh local control plane, or the one ``OCTOCONN_TEST_KUBECONFIG`` points at."""
    external = os.environ.get(EXTERNAL_KUBECONFIG_ENV)
    # A local control plane lives under pytest's temporary root, which keeps the last few runs: its logs outlive a
    # failure.
    cluster = ExternalCluster(external) if external else ControlPlane(tmp_path_factory.mktemp("envtest"))
    cluster.start()
    _sessions.append(cluster)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kube_api(control_plane: ClusterAccess) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` authenticated as the cluster admin."""
    api = control_plane.kubernetes_api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube_api: Any) -> Iterator[str]:
    """A namespace of its own for one test, deleted afterwards without waiting.

    The local control plane has no namespace controller, so a deleted namespace stays ``Terminating`` forever;
    unique names keep that from mattering.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    name = _namespace_name(request.node.name)
    core = client.CoreV1Api(kube_api)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"octoconn.dev/test-namespace": "true"}))
    )
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


def _namespace_name(test_name: str) -> str:
    suffix = secrets.token_hex(3)
    stem = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
    stem = stem.removeprefix("test-")[: 63 - len("t--") - len(suffix)].strip("-")
    return f"t-{stem}-{suffix}" if stem else f"t-{suffix}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for cluster in _sessions:
        if isinstance(cluster, ControlPlane) and cluster.startup_seconds is not None:
            terminalreporter.write_line(
                f"envtest: control plane ready in {cluster.startup_seconds:.1f}s ({cluster.url}); "
                f"logs in {cluster.workdir}/logs"
            )
        elif isinstance(cluster, ExternalCluster):
            terminalreporter.write_line(f"envtest: external cluster {cluster.url}")
