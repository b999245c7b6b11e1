"""The metrics module: names and labels as documented, per-resource series removed, the endpoint served for real.

The registry is process-wide, so every assertion compares a value before and after the step under test.
"""

from __future__ import annotations

import re
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from octoconn import metrics
from octoconn.conditions import Outcome
from octoconn.lifecycles import SyncLifecycle
from octoconn.pacing import WritePacer
from octoconn.settings import Settings
from octoconn.sync import SyncReconciler, SyncResource

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "monitoring.md"
RULES = ROOT / "helm" / "octoconn" / "files" / "prometheus-rules.yaml"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeResponse:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


async def answer(code: int) -> FakeResponse:
    return FakeResponse(code)


async def fail() -> FakeResponse:
    raise OSError("connection refused")


@pytest.mark.parametrize(
    ("code", "expected"), [(200, "2xx"), (302, "3xx"), (404, "4xx"), (503, "5xx"), (None, "error")]
)
def test_status_class(code: int | None, expected: str) -> None:
    assert metrics.status_class(code) == expected


async def test_requests_are_counted_by_operation_and_status_class_and_429s_noted() -> None:
    ok = value("octoconn_infisical_requests_total", operation="get", status_class="2xx")
    limited = value("octoconn_infisical_requests_total", operation="create", status_class="4xx")
    rate_limited = value("octoconn_rate_limited_responses_total", service="infisical")
    errors = value("octoconn_octopus_requests_total", operation="root", status_class="error")
    timed = value("octoconn_octopus_request_duration_seconds_count", operation="root")

    await metrics.observe_request("infisical", "get", answer(200))
    await metrics.observe_request("infisical", "create", answer(429))
    with pytest.raises(OSError, match="connection refused"):
        await metrics.observe_request("octopus", "root", fail())

    assert value("octoconn_infisical_requests_total", operation="get", status_class="2xx") == ok + 1
    assert value("octoconn_infisical_requests_total", operation="create", status_class="4xx") == limited + 1
    assert value("octoconn_rate_limited_responses_total", service="infisical") == rate_limited + 1
    assert value("octoconn_octopus_requests_total", operation="root", status_class="error") == errors + 1
    assert value("octoconn_octopus_request_duration_seconds_count", operation="root") == timed + 1


def test_per_resource_series_are_removed_when_the_resource_is_forgotten() -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    metrics.observe_resource("team-m", "conn", ready="False", reason="InvalidApiKey", paused=False, key_expires_at=None)
    metrics.observe_resource("team-m", "other", ready="True", reason="Available", paused=True, key_expires_at=expires)
    labels = {"namespace": "team-m", "name": "other"}
    assert REGISTRY.get_sample_value("octoconn_resource_ready", labels) == 1
    assert REGISTRY.get_sample_value("octoconn_resource_paused", labels) == 1
    assert REGISTRY.get_sample_value("octoconn_api_key_expiry_timestamp_seconds", labels) == expires.timestamp()
    assert REGISTRY.get_sample_value("octoconn_resource_ready", {"namespace": "team-m", "name": "conn"}) == 0
    assert (
        REGISTRY.get_sample_value("octoconn_api_key_expiry_timestamp_seconds", {"namespace": "team-m", "name": "conn"})
        is None
    )
    before = value("octoconn_resources", ready="False", reason="InvalidApiKey")

    metrics.forget_resource("team-m", "conn")
    metrics.forget_resource("team-m", "other")
    metrics.forget_resource("team-m", "never-seen")  # a no-op, not an error

    for name in ("octoconn_resource_ready", "octoconn_resource_paused", "octoconn_api_key_expiry_timestamp_seconds"):
        assert REGISTRY.get_sample_value(name, labels) is None
        assert REGISTRY.get_sample_value(name, {"namespace": "team-m", "name": "conn"}) is None
    assert value("octoconn_resources", ready="False", reason="InvalidApiKey") == before - 1


def test_a_key_without_a_known_expiry_drops_its_expiry_series() -> None:
    labels = {"namespace": "team-m", "name": "rotated"}
    when = datetime(2031, 1, 1, tzinfo=UTC)
    metrics.observe_resource("team-m", "rotated", ready="True", reason="Available", paused=False, key_expires_at=when)
    assert REGISTRY.get_sample_value("octoconn_api_key_expiry_timestamp_seconds", labels) == when.timestamp()
    metrics.observe_resource("team-m", "rotated", ready="True", reason="Available", paused=False, key_expires_at=None)
    assert REGISTRY.get_sample_value("octoconn_api_key_expiry_timestamp_seconds", labels) is None
    metrics.forget_resource("team-m", "rotated")


def sync(
    name: str, ready: str | None, reason: str = "", *, paused: bool = False, last_synced_at: str | None = None
) -> SyncResource:
    """A sync in namespace team-s whose status says ``Ready=<ready>/<reason>`` (no Ready condition for None)."""
    conditions = (
        []
        if ready is None
        else [
            {
                "type": "Ready",
                "status": ready,
                "reason": reason,
                "message": "m",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ]
    )
    status: dict[str, Any] = {"conditions": conditions}
    if last_synced_at is not None:
        status["lastSyncedAt"] = last_synced_at
    return SyncResource.from_body(
        {
            "metadata": {
                "namespace": "team-s",
                "name": name,
                "uid": f"u-{name}",
                "generation": 1,
                "annotations": {"octoconn.dev/paused": "true"} if paused else {},
            },
            "spec": {
                "connectionRef": {"name": "octopus"},
                "source": {"projectId": "p", "environment": "prod", "secretPath": "/"},
                "destination": {"space": "Default", "project": "Web"},
            },
            "status": status,
        }
    )


def sync_series(name: str) -> dict[str, float]:
    """Every sample of the per-sync families for team-s/<name>, keyed by metric name (and reason for failing)."""
    found: dict[str, float] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("octoconn_secret_sync_"):
            continue
        for sample in family.samples:
            if sample.labels.get("namespace") == "team-s" and sample.labels.get("name") == name:
                reason = sample.labels.get("reason")
                found[sample.name + (f"/{reason}" if reason else "")] = sample.value
    return found


def test_sync_series_follow_its_status_and_go_when_it_is_forgotten() -> None:
    synced_at = "2026-03-04T05:06:07Z"
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC).timestamp()
    failed = sync("web", "False", "SyncFailed", last_synced_at=synced_at)
    metrics.observe_sync(failed, failed.status)
    assert sync_series("web") == {
        "octoconn_secret_sync_ready": 0,
        "octoconn_secret_sync_paused": 0,
        "octoconn_secret_sync_last_success_timestamp_seconds": when,
        "octoconn_secret_sync_failing/SyncFailed": 1,
    }
    # Another reason replaces the old one: one failing series per sync, never a stale reason left behind.
    denied = sync("web", "False", "MissingPermission", last_synced_at=synced_at)
    metrics.observe_sync(denied, denied.status)
    assert sync_series("web")["octoconn_secret_sync_failing/MissingPermission"] == 1
    assert "octoconn_secret_sync_failing/SyncFailed" not in sync_series("web")

    fixed = sync("web", "True", "Available", last_synced_at="2026-03-04T06:00:00Z")
    metrics.observe_sync(fixed, fixed.status)
    assert sync_series("web") == {
        "octoconn_secret_sync_ready": 1,
        "octoconn_secret_sync_paused": 0,
        "octoconn_secret_sync_last_success_timestamp_seconds": when + 3233,
    }

    metrics.forget_sync("team-s", "web")
    metrics.forget_sync("team-s", "never-seen")  # a no-op, not an error
    assert sync_series("web") == {}


@pytest.mark.parametrize(
    ("res", "deleting", "expected"),
    [
        # Paused: not Ready on purpose, and not failing.
        (sync("held", "False", "ReconcilePaused", paused=True), False, {"ready": 0, "paused": 1}),
        # Unknown (Infisical still syncing, a transient error): not Ready, not failing. No success yet: no time.
        (sync("busy", "Unknown", "Syncing"), False, {"ready": 0, "paused": 0}),
        (sync("new", None), False, {"ready": 0, "paused": 0}),
        # A deletion that waits is not Ready; a removal in progress is no failure.
        (sync("going", "True", "Available"), True, {"ready": 0, "paused": 0}),
    ],
    ids=["paused", "syncing", "no-status", "deleting"],
)
def test_sync_states_that_are_not_failures(res: SyncResource, deleting: bool, expected: dict[str, float]) -> None:
    metrics.observe_sync(res, res.status, deleting=deleting)
    try:
        assert sync_series(res.name) == {f"octoconn_secret_sync_{k}": v for k, v in expected.items()}
    finally:
        metrics.forget_sync(res.namespace, res.name)


def test_the_sync_lifecycle_hooks_move_the_sync_series() -> None:
    """The hooks the shared loop calls: the stored status at start, each pass's, a blocked deletion, the end."""
    kind = SyncLifecycle(reconciler=cast(SyncReconciler, None))  # the hooks never call the reconciler
    stored = sync("hooked", "True", "Available", last_synced_at="2026-01-01T00:00:00Z")
    kind.observe_status(stored)
    assert sync_series("hooked")["octoconn_secret_sync_ready"] == 1

    after = sync("hooked", "False", "SyncFailed").status
    kind.observe(stored, Outcome(status=after), 0.5)
    assert sync_series("hooked")["octoconn_secret_sync_failing/SyncFailed"] == 1
    kind.observe(stored, None, 0.5)  # a pass that raised: what the stored status says
    assert sync_series("hooked")["octoconn_secret_sync_ready"] == 1
    assert "octoconn_secret_sync_failing/SyncFailed" not in sync_series("hooked")

    kind.observe_blocked(stored)
    assert sync_series("hooked")["octoconn_secret_sync_ready"] == 0
    kind.forget_metrics(stored.namespace, stored.name)
    assert sync_series("hooked") == {}


async def test_pacer_wait_is_observed_only_for_named_pacers() -> None:
    now = [100.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    count = value("octoconn_infisical_pacer_wait_seconds_count", pacer="write")
    total = value("octoconn_infisical_pacer_wait_seconds_sum", pacer="write")
    pacer = WritePacer(per_minute=60, burst=1, clock=lambda: now[0], sleep=sleep, name="write")
    await pacer.acquire()  # free
    await pacer.acquire()  # waits one interval: 1 s at 60 a minute
    await WritePacer(per_minute=60, clock=lambda: now[0], sleep=sleep).acquire()  # unnamed: not measured
    assert value("octoconn_infisical_pacer_wait_seconds_count", pacer="write") == count + 2
    assert value("octoconn_infisical_pacer_wait_seconds_sum", pacer="write") == pytest.approx(total + 1.0)


def test_reconcile_results_and_the_last_success_clock() -> None:
    before = value("octoconn_reconciles_total", result="error", reason="InvalidApiKey")
    metrics.observe_reconcile("error", "InvalidApiKey", 0.2)
    assert value("octoconn_reconciles_total", result="error", reason="InvalidApiKey") == before + 1
    metrics.started_reconciling()
    started = value("octoconn_last_successful_reconcile_timestamp_seconds")
    assert started > 0
    metrics.observe_reconcile("success", "Available", 0.1)
    assert value("octoconn_last_successful_reconcile_timestamp_seconds") >= started


async def test_endpoint_serves_the_registry_at_the_configured_path_only() -> None:
    port = free_port()
    runner = await metrics.serve("127.0.0.1", port, "/custom-metrics")
    try:
        async with httpx.AsyncClient() as client:
            found = await client.get(f"http://127.0.0.1:{port}/custom-metrics")
            missing = await client.get(f"http://127.0.0.1:{port}/metrics")
            openmetrics = await client.get(
                f"http://127.0.0.1:{port}/custom-metrics", headers={"Accept": "application/openmetrics-text"}
            )
    finally:
        await runner.cleanup()
    assert found.status_code == 200
    assert found.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(found.text)}
    (build,) = families["octoconn_build_info"].samples  # the text format shows an Info as a gauge
    assert build.name == "octoconn_build_info"
    assert build.value == 1
    assert "version" in build.labels
    assert missing.status_code == 404
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")


async def test_endpoint_on_a_taken_port_says_which_setting_to_change() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="OCTOCONN_METRICS_PORT"):
            await metrics.serve("127.0.0.1", port, "/metrics")


def test_metrics_path_setting_must_be_a_path() -> None:
    with pytest.raises(ValueError, match="OCTOCONN_METRICS_PATH"):
        Settings(metrics_path="metrics")
    assert Settings().metrics_port == 8081
    assert Settings().metrics_path == "/metrics"


def exposed_names() -> set[str]:
    """Every octoconn_* family as a scrape shows it (counters end in _total, the build info in _info)."""
    suffix = {"counter": "_total", "info": "_info"}
    return {f.name + suffix.get(f.type, "") for f in REGISTRY.collect() if f.name.startswith("octoconn_")}


def test_every_metric_is_documented() -> None:
    documented = set(re.findall(r"`(octoconn_[a-z_]+)`", DOCS.read_text()))
    assert exposed_names() - documented == set(), "metrics missing from docs/monitoring.md"
    assert len(exposed_names()) >= 15


def test_the_alerts_use_only_metrics_that_exist() -> None:
    used = set(re.findall(r"\b(octoconn_[a-z_]+)", RULES.read_text()))
    histogram_parts = ("_bucket", "_sum", "_count")
    unknown = {n for n in used if n not in exposed_names() and not n.endswith(histogram_parts)}
    assert used
    assert unknown == set()
