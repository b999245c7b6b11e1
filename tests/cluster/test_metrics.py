"""The real operator process's /metrics while it creates a connection, meets a 429, rotates the key, restarts, has
its key refused and deletes the resource.

An operator of its own watches one namespace, so every count below is this test's alone and can be exact. Retries
and periodic checks are pushed far out (an hour), so nothing reconciles unless the test asks for it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.conftest import Kube, Remotes, operator_env, own_namespace, request_reconcile
from tests.cluster.operator_process import OperatorProcess
from tests.envtest.controlplane import ClusterAccess

pytestmark = pytest.mark.cluster


class Scrape:
    def __init__(self, text: str) -> None:
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    # Positional-only: "name" is also a label of the per-resource series.
    def value(self, metric: str, /, **labels: str) -> float:
        """The sum over every series of ``metric`` whose labels include ``labels``; 0 when there is none."""
        return sum(s.value for s in self.samples if s.name == metric and labels.items() <= s.labels.items())

    def has(self, metric: str, /, **labels: str) -> bool:
        return any(s.name == metric and labels.items() <= s.labels.items() for s in self.samples)


@pytest.fixture
def metrics_operator(
    control_plane: ClusterAccess, crd: str, remotes: Remotes, kube_api: client.ApiClient, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, Kube]]:
    with own_namespace(kube_api, "metrics") as namespace:
        kube = Kube(kube_api, namespace)
        # Before the operator starts: a Secret it sees only in its initial listing wakes nobody, so the create below
        # is exactly one reconcile (a Secret event racing the new resource would make it two).
        kube.put_secret("octopus-key", {"apiKey": remotes.new_key(expires=datetime.now(UTC) + timedelta(days=5))})
        env = operator_env(
            remotes,
            OCTOCONN_RESYNC_INTERVAL_SECONDS="3600",
            OCTOCONN_AUTH_RETRY_SECONDS="3600",
            OCTOCONN_RETRY_BACKOFF_CAP_SECONDS="2",
            OCTOCONN_INFISICAL_READS_PER_MINUTE="600",  # paced, so the read pacer's histogram moves too
        )
        process = OperatorProcess(
            kubeconfig=control_plane.kubeconfig, env=env, log_path=tmp_path / "operator.log", namespaces=[namespace]
        ).start()
        try:
            yield process, kube
        finally:
            process.stop()


def wait_for(operator: OperatorProcess, check: Callable[[Scrape], bool], what: str, timeout: float = 30) -> Scrape:
    """The status write comes a moment before the metrics move: poll the endpoint, never sleep a fixed time."""
    deadline = time.monotonic() + timeout
    scrape = Scrape(operator.scrape())
    while not check(scrape):
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never showed {what}:\n{operator.scrape()}")
        time.sleep(0.2)
        scrape = Scrape(operator.scrape())
    return scrape


def delta(before: Scrape, after: Scrape, metric: str, /, **labels: str) -> float:
    return after.value(metric, **labels) - before.value(metric, **labels)


def test_metrics_follow_create_429_rotation_refusal_and_deletion(
    metrics_operator: tuple[OperatorProcess, Kube], remotes: Remotes
) -> None:
    operator, kube = metrics_operator
    ns, name = kube.namespace, "metered"
    me = {"namespace": ns, "name": name}
    start = Scrape(operator.scrape())
    (build,) = [s for s in start.samples if s.name == "octoconn_build_info"]
    assert build.value == 1
    assert build.labels["version"]
    assert start.value("octoconn_reconciles_total") == 0
    assert start.value("octoconn_resources") == 0

    # --- create, with a key that expires in 5 days (the fixture's Secret) ----------------------------------------
    kube.apply_odc(name, {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": "octopus-key"}})
    obj = kube.wait_condition(name, "Ready", "True", "Available")
    assert kube.condition(name, "CredentialsVerified")["reason"] == "ApiKeyExpiringSoon"  # type: ignore[index]
    assert kube.wait_event(name, "ApiKeyExpiringSoon").type == "Warning"
    created = wait_for(operator, lambda s: s.value("octoconn_reconciles_total") >= 1, "the first reconcile")

    assert created.value("octoconn_reconciles_total", result="success", reason="Available") == 1
    assert created.value("octoconn_reconciles_total") == 1
    assert created.value("octoconn_reconcile_duration_seconds_count", result="success") == 1
    assert created.value("octoconn_reconcile_duration_seconds_sum", result="success") > 0
    assert created.value("octoconn_last_successful_reconcile_timestamp_seconds") > 0
    assert created.value("octoconn_resources", ready="True", reason="Available") == 1
    assert created.value("octoconn_resource_ready", **me) == 1
    assert created.value("octoconn_resource_paused", **me) == 0
    expires = datetime.fromisoformat(obj["status"]["octopus"]["keyExpiresAt"].replace("Z", "+00:00"))
    assert created.value("octoconn_api_key_expiry_timestamp_seconds", **me) == expires.timestamp()
    # One pass: the /api check, the key check, the expiry lookup; a login and a create (a new name is not looked up
    # first: only a refused create or a marker of an earlier process makes the operator look).
    for operation in ("root", "users_me", "api_keys"):
        assert created.value("octoconn_octopus_requests_total", operation=operation, status_class="2xx") == 1
        assert created.value("octoconn_octopus_request_duration_seconds_count", operation=operation) == 1
    assert created.value("octoconn_infisical_requests_total", operation="login", status_class="2xx") == 1
    assert created.value("octoconn_infisical_requests_total", operation="get_by_name") == 0
    assert created.value("octoconn_infisical_requests_total", operation="create", status_class="2xx") == 1
    assert created.value("octoconn_infisical_requests_total") == 2
    assert created.value("octoconn_infisical_request_duration_seconds_count", operation="create") == 1
    assert created.value("octoconn_infisical_logins_total", identity="operator", result="success") == 1
    assert created.value("octoconn_infisical_operator_identity_refused") == 0
    assert created.value("octoconn_infisical_pacer_wait_seconds_count", pacer="write") == 2  # login, create
    assert created.value("octoconn_infisical_pacer_wait_seconds_count", pacer="read") == 0  # no lookup by name
    assert created.value("octoconn_rate_limited_responses_total") == 0

    # --- Octopus answers one 429: an error pass, then a success after its Retry-After ------------------------------
    remotes.octopus.state.faults.rate_limit(retry_after=1, times=1, path_suffix="/api/users/me")
    request_reconcile(kube, name)
    limited = wait_for(
        operator,
        lambda s: delta(created, s, "octoconn_reconciles_total", result="success") == 1,
        "a success after the 429",
    )
    assert delta(created, limited, "octoconn_rate_limited_responses_total", service="octopus") == 1
    assert delta(created, limited, "octoconn_reconciles_total", result="error", reason="OctopusRateLimited") == 1
    assert delta(created, limited, "octoconn_octopus_requests_total", operation="users_me", status_class="4xx") == 1
    assert delta(created, limited, "octoconn_reconciles_total") == 2

    # --- rotation to a 180-day key: one credentials PATCH, and the expiry warning clears ----------------------------
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.wait_condition(name, "CredentialsVerified", "True", "ApiKeyValid")
    rotated = wait_for(
        operator,
        lambda s: delta(limited, s, "octoconn_reconciles_total", result="success") == 1,
        "the rotation's reconcile",
    )
    assert delta(limited, rotated, "octoconn_infisical_requests_total", operation="update", status_class="2xx") == 1
    assert delta(limited, rotated, "octoconn_infisical_requests_total", operation="create") == 0
    assert delta(limited, rotated, "octoconn_infisical_requests_total", operation="login") == 0  # token reused
    new_expiry = rotated.value("octoconn_api_key_expiry_timestamp_seconds", **me)
    assert new_expiry - time.time() > 170 * 86400
    assert rotated.value("octoconn_resource_ready", **me) == 1

    # --- a restart: the settled resource waits for its periodic check, but its series come from status at once ------
    operator.stop()
    operator.start()
    restarted = wait_for(operator, lambda s: s.has("octoconn_resource_ready", **me), "series read from status")
    assert restarted.value("octoconn_reconciles_total") == 0
    assert restarted.value("octoconn_resource_ready", **me) == 1
    assert restarted.value("octoconn_resources", ready="True", reason="Available") == 1
    assert restarted.value("octoconn_api_key_expiry_timestamp_seconds", **me) == new_expiry

    # --- the key is revoked in Octopus: refused, not Ready; nothing is sent to Infisical ---------------------------
    current = kube.secret("octopus-key").data["apiKey"]
    remotes.octopus.state.revoke_key(base64.b64decode(current).decode())
    request_reconcile(kube, name)
    kube.wait_condition(name, "Ready", "False", "InvalidApiKey")
    refused = wait_for(
        operator,
        lambda s: s.value("octoconn_reconciles_total", result="error", reason="InvalidApiKey") == 1,
        "the refused key",
    )
    assert delta(restarted, refused, "octoconn_octopus_requests_total", operation="users_me", status_class="4xx") == 1
    assert delta(restarted, refused, "octoconn_infisical_requests_total") == 0
    assert refused.value("octoconn_resource_ready", **me) == 0
    assert refused.value("octoconn_resources", ready="False", reason="InvalidApiKey") == 1
    assert refused.value("octoconn_resources", ready="True") == 0
    assert refused.value("octoconn_reconcile_duration_seconds_count", result="error") == 1
    assert refused.value("octoconn_reconciles_total") == 1  # since the restart: only the pass that was asked for

    # --- deletion: the connection is deleted in Infisical and the resource's series disappear ----------------------
    kube.delete_odc(name)
    kube.wait_gone(name)
    gone = wait_for(operator, lambda s: not s.has("octoconn_resource_ready", **me), "the series removed")
    for metric in ("octoconn_resource_ready", "octoconn_resource_paused", "octoconn_api_key_expiry_timestamp_seconds"):
        assert not gone.has(metric, **me), metric
    assert gone.value("octoconn_resources") == 0
    assert delta(refused, gone, "octoconn_infisical_requests_total", operation="delete", status_class="2xx") == 1
