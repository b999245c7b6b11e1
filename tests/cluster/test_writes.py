"""Exact write counts, read from the API server's audit log and the Infisical test server's request log.

A new resource costs two Kubernetes writes (Kopf's first patch, carrying the finalizer and the create marker, and
the first status); a periodic check that finds nothing changed writes nothing, to Kubernetes or to Infisical; and a
restart with everything Ready writes nothing either.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from octoconn.models import PLURAL
from tests.cluster.conftest import Kube, Remotes, operator_env, own_namespace
from tests.cluster.operator_process import OperatorProcess
from tests.envtest.controlplane import ClusterAccess, ControlPlaneError

pytestmark = pytest.mark.cluster

OPERATOR_AGENTS = ("kopf/", "octoconn/")


def writes_to(control_plane: ClusterAccess, namespace: str, name: str, since: int = 0) -> list[str]:
    """The operator's writes to one resource (verb and subresource), in order."""
    try:
        events = control_plane.audit_writes()
    except ControlPlaneError:
        pytest.skip("this cluster keeps no audit log")
    return [
        f"{e['verb']} {e['objectRef'].get('subresource') or 'object'}"
        for e in events[since:]
        if e.get("userAgent", "").startswith(OPERATOR_AGENTS)
        and e["objectRef"].get("resource") == PLURAL
        and e["objectRef"].get("namespace") == namespace
        and e["objectRef"].get("name") == name
    ]


def infisical_writes(remotes: Remotes, since: int) -> list[Any]:
    return [r for r in remotes.infisical.state.requests[since:] if r.method in ("POST", "PATCH", "DELETE")]


@pytest.fixture
def short_interval(
    control_plane: ClusterAccess, crd: str, remotes: Remotes, kube_api: client.ApiClient, tmp_path: Path
) -> Iterator[tuple[Kube, OperatorProcess]]:
    with own_namespace(kube_api, "writes") as name:
        env = operator_env(remotes, OCTOCONN_RESYNC_INTERVAL_SECONDS="2")
        operator = OperatorProcess(
            kubeconfig=control_plane.kubeconfig, env=env, log_path=tmp_path / "operator.log", namespaces=[name]
        )
        try:
            yield Kube(kube_api, name), operator.start()
        finally:
            operator.stop()


def test_a_new_resource_costs_two_writes_and_quiet_checks_none(
    short_interval: tuple[Kube, OperatorProcess], control_plane: ClusterAccess, remotes: Remotes
) -> None:
    kube, operator = short_interval
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("counted", {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": "octopus-key"}})
    connection_id = kube.wait_condition("counted", "Ready", "True", "Available")["status"]["id"]

    # Let periodic checks run (each reads the connection back), then count: still only the two first writes.
    def reads() -> int:
        return len([r for r in remotes.infisical.state.requests if r.method == "GET" and connection_id in r.path])

    mark = len(remotes.infisical.state.requests)
    kube.wait_status("counted", lambda _: reads() >= 3, "three periodic checks", timeout=30)
    assert writes_to(control_plane, kube.namespace, "counted") == ["patch object", "patch status"]
    assert infisical_writes(remotes, mark) == []

    # A restart with everything Ready: nothing is written until something changes.
    operator.stop()
    audit_mark, mark = len(control_plane.audit_writes()), len(remotes.infisical.state.requests)
    operator.start()
    kube.wait_status("counted", lambda _: reads() >= 6, "periodic checks after the restart", timeout=30)
    assert writes_to(control_plane, kube.namespace, "counted", since=audit_mark) == []
    assert [r.path for r in infisical_writes(remotes, mark) if "/auth/" not in r.path] == []
