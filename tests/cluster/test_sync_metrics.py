"""The real operator process's per-sync series while a secret sync becomes Ready, survives a restart, fails in
Octopus, is paused and is deleted.

An operator of its own watches one namespace, so every series below is this test's alone. Periodic checks are an hour
away: after the restart, the settled sync is not checked, and its series can only have come from its status.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from octoconn.conditions import parse_time
from tests.cluster.conftest import Kube, Remotes, operator_env, own_namespace
from tests.cluster.operator_process import OperatorProcess
from tests.cluster.test_metrics import wait_for
from tests.cluster.test_secret_sync import make_world, ready
from tests.envtest.controlplane import ClusterAccess

pytestmark = pytest.mark.cluster

SERIES = (
    "octoconn_secret_sync_ready",
    "octoconn_secret_sync_paused",
    "octoconn_secret_sync_last_success_timestamp_seconds",
    "octoconn_secret_sync_failing",
)


@pytest.fixture
def sync_metrics_operator(
    control_plane: ClusterAccess, crd: str, remotes: Remotes, kube_api: client.ApiClient, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, Kube]]:
    with own_namespace(kube_api, "sync-metrics") as namespace:
        env = operator_env(
            remotes,
            OCTOCONN_RESYNC_INTERVAL_SECONDS="3600",
            OCTOCONN_RETRY_BACKOFF_CAP_SECONDS="2",
        )
        process = OperatorProcess(
            kubeconfig=control_plane.kubeconfig, env=env, log_path=tmp_path / "operator.log", namespaces=[namespace]
        ).start()
        try:
            yield process, Kube(kube_api, namespace)
        finally:
            process.stop()


def synced_at(obj: dict[str, object]) -> float:
    status = obj["status"]
    assert isinstance(status, dict)
    when = parse_time(status["lastSyncedAt"])
    assert when is not None
    return when.timestamp()


def test_sync_series_follow_ready_restart_failure_pause_and_deletion(
    sync_metrics_operator: tuple[OperatorProcess, Kube], remotes: Remotes
) -> None:
    operator, kube = sync_metrics_operator
    world = make_world(kube, remotes)
    me = {"namespace": kube.namespace, "name": "metered"}

    # --- Ready --------------------------------------------------------------------------------------------------------
    world.syncs.apply("metered", world.spec(options={"keySchema": "METERED_{{secretKey}}"}))
    success = synced_at(ready(world.syncs, "metered"))
    fine = wait_for(operator, lambda s: s.value("octoconn_secret_sync_ready", **me) == 1, "the sync Ready")
    assert fine.value("octoconn_secret_sync_paused", **me) == 0
    assert fine.value("octoconn_secret_sync_last_success_timestamp_seconds", **me) == success
    assert not fine.has("octoconn_secret_sync_failing", **me)
    # The connection's series stay the connection's: the sync is not counted among them.
    assert not fine.has("octoconn_resource_ready", **me)
    assert fine.value("octoconn_resources") == 1

    # --- a restart: the settled sync is not checked, its series come from its status ----------------------------------
    operator.stop()
    since = len(remotes.infisical.state.requests)
    operator.start()
    restarted = wait_for(operator, lambda s: s.has("octoconn_secret_sync_ready", **me), "series read from status")
    assert restarted.value("octoconn_secret_sync_ready", **me) == 1
    assert restarted.value("octoconn_secret_sync_last_success_timestamp_seconds", **me) == success
    assert world.infisical_requests_of("metered", since=since) == []  # no pass ran: status alone said so

    # --- Infisical's run into Octopus fails: failing{reason="SyncFailed"}, the last success kept ----------------------
    remotes.octopus.state.projects.restrict(world.key, "VariableEdit", projects=["Projects-999999"])
    world.syncs.patch("metered", {"metadata": {"annotations": {"octoconn.dev/sync-requested-at": "after-restart"}}})
    world.syncs.wait_condition("metered", "Ready", "False", "SyncFailed", timeout=90)
    failed = wait_for(
        operator, lambda s: s.value("octoconn_secret_sync_failing", **me, reason="SyncFailed") == 1, "the failure"
    )
    assert failed.value("octoconn_secret_sync_ready", **me) == 0
    assert failed.value("octoconn_secret_sync_failing", **me) == 1  # one reason at a time
    assert failed.value("octoconn_secret_sync_last_success_timestamp_seconds", **me) == success

    # --- paused: not Ready on purpose, no longer failing --------------------------------------------------------------
    world.syncs.patch("metered", {"metadata": {"annotations": {"octoconn.dev/paused": "true"}}})
    world.syncs.wait_condition("metered", "Ready", "False", "ReconcilePaused")
    paused = wait_for(operator, lambda s: s.value("octoconn_secret_sync_paused", **me) == 1, "the pause")
    assert paused.value("octoconn_secret_sync_ready", **me) == 0
    assert not paused.has("octoconn_secret_sync_failing", **me)

    # --- deleted (paused: the Infisical sync is left in place): every per-sync series goes ----------------------------
    world.syncs.delete("metered")
    world.syncs.wait_gone("metered")
    gone = wait_for(operator, lambda s: not s.has("octoconn_secret_sync_paused", **me), "the series removed")
    for metric in SERIES:
        assert not gone.has(metric, **me), metric
    assert gone.value("octoconn_resources") == 1  # the connection is still there
