"""The periodic check on its own: no watch event, no annotation, only the (short) resync interval.

The session's operator checks once an hour, so this test runs an operator of its own with a 3-second interval,
watching only a namespace that the session's operator does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster.conftest import Kube, Remotes, operator_env, own_namespace, request_reconcile
from tests.cluster.operator_process import OperatorProcess
from tests.envtest.controlplane import ClusterAccess

pytestmark = pytest.mark.cluster


@pytest.fixture
def periodic(
    control_plane: ClusterAccess, crd: str, remotes: Remotes, kube_api: client.ApiClient, tmp_path: Path
) -> Iterator[Kube]:
    with own_namespace(kube_api, "periodic") as name:
        env = operator_env(remotes, OCTOCONN_RESYNC_INTERVAL_SECONDS="3")
        with OperatorProcess(
            kubeconfig=control_plane.kubeconfig, env=env, log_path=tmp_path / "operator.log", namespaces=[name]
        ):
            yield Kube(kube_api, name)


def test_periodic_check_repairs_and_notices_without_any_trigger(periodic: Kube, remotes: Remotes) -> None:
    kube = periodic
    key = remotes.new_key()
    kube.put_secret("octopus-key", {"apiKey": key})
    kube.apply_odc("watched", {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": "octopus-key"}})
    first = kube.wait_condition("watched", "Ready", "True", "Available")["status"]["id"]

    remotes.infisical.state.delete_connection_out_of_band(first)
    recreated = kube.wait_status("watched", lambda s: s.get("id") not in (None, first), "a recreated connection", 20)
    assert remotes.infisical.state.connection(recreated["status"]["id"]) is not None

    remotes.octopus.state.revoke_key(key)
    kube.wait_condition("watched", "CredentialsVerified", "False", "InvalidApiKey", timeout=20)


@pytest.fixture
def restartable(
    control_plane: ClusterAccess, crd: str, remotes: Remotes, kube_api: client.ApiClient, tmp_path: Path
) -> Iterator[tuple[Kube, OperatorProcess]]:
    with own_namespace(kube_api, "restart") as name:
        env = operator_env(remotes, OCTOCONN_RESYNC_INTERVAL_SECONDS="3600")
        operator = OperatorProcess(
            kubeconfig=control_plane.kubeconfig, env=env, log_path=tmp_path / "operator.log", namespaces=[name]
        )
        try:
            yield Kube(kube_api, name), operator
        finally:
            operator.stop()


def test_restart_checks_changed_resources_now_and_spreads_the_rest(
    restartable: tuple[Kube, OperatorProcess], remotes: Remotes
) -> None:
    kube, operator = restartable
    operator.start()
    names = ("steady", "rotated", "requested")
    for name in names:
        kube.put_secret(f"{name}-key", {"apiKey": remotes.new_key()})
        kube.apply_odc(name, {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": f"{name}-key"}})
    steady = kube.wait_condition("steady", "Ready", "True", "Available")["status"]
    for name in names[1:]:
        kube.wait_condition(name, "Ready", "True", "Available")
    operator.stop()

    new_version = kube.put_secret("rotated-key", {"apiKey": remotes.new_key()})  # rotated while the operator is down
    request_reconcile(kube, "requested")  # a re-check asked for while the operator is down
    stamp = kube.odc("requested")["metadata"]["annotations"]["octoconn.dev/reconcile-requested-at"]  # type: ignore[index]
    before = len(remotes.infisical.state.requests)
    operator.start()
    kube.wait_status("rotated", lambda s: s.get("secretResourceVersion") == new_version, "the rotation", 20)
    kube.wait_status("requested", lambda s: s.get("handledReconcileRequest") == stamp, "the asked-for re-check", 20)
    # The unchanged resource was not re-read at start: its check is spread over the (hour-long) interval.
    reads_of_steady = [r for r in remotes.infisical.state.requests[before:] if r.path.endswith(steady["id"])]
    assert reads_of_steady == []
    assert kube.odc("steady")["status"]["lastVerifiedTime"] == steady["lastVerifiedTime"]  # type: ignore[index]
