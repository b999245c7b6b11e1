"""Every Prometheus metric the operator exports, and the few helpers the other modules call to move them.

The definitions live here so that docs/monitoring.md, the chart's alerting rules and the code have one place to
agree on; the clients, the pacer and the runtime call one helper per event and know nothing of label names.

No label ever carries anything secret: per-resource series are labelled with the resource's namespace and name only,
and request series with an operation name and a status class, never a URL, an id or a key.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Awaitable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Literal, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from octoconn import __version__

if TYPE_CHECKING:
    from aiohttp import web

    from octoconn.sync import SyncResource
    from octoconn.sync_models import OctopusDeploySecretSyncStatus

Service = Literal["octopus", "infisical"]
T = TypeVar("T")

# Remote calls take milliseconds to a few seconds (timeouts are 10-15 s); a reconcile is a handful of them.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
_RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Pacer waits go from nothing to minutes (a queue of hundreds of writes, or a 429's Retry-After).
_PACER_BUCKETS = (0.0, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

BUILD = Info("octoconn_build", "The running operator's version; the value is always 1.")
BUILD.info({"version": __version__, "python_version": platform.python_version()})

RECONCILES = Counter(
    "octoconn_reconciles",
    "Reconcile passes by result (success, error, paused, exception) and reason (the Ready reason, or the error's).",
    ["result", "reason"],
)
RECONCILE_DURATION = Histogram(
    "octoconn_reconcile_duration_seconds",
    "Time one reconcile pass took, remote calls and the status write included, by result.",
    ["result"],
    buckets=_RECONCILE_BUCKETS,
)
LAST_SUCCESS = Gauge(
    "octoconn_last_successful_reconcile_timestamp_seconds",
    "Unix time of the last successful reconcile pass; the time reconciling started until then, 0 before.",
)
RESOURCE_READY = Gauge(
    "octoconn_resource_ready",
    "1 when the resource's Ready condition is True, else 0.",
    ["namespace", "name"],
)
RESOURCE_PAUSED = Gauge(
    "octoconn_resource_paused",
    '1 while the resource carries octoconn.dev/paused="true", else 0.',
    ["namespace", "name"],
)
KEY_EXPIRY = Gauge(
    "octoconn_api_key_expiry_timestamp_seconds",
    "Unix time at which the resource's Octopus API key expires (absent when Octopus did not say).",
    ["namespace", "name"],
)
SYNC_READY = Gauge(
    "octoconn_secret_sync_ready",
    "1 when the OctopusDeploySecretSync's Ready condition is True, else 0.",
    ["namespace", "name"],
)
SYNC_PAUSED = Gauge(
    "octoconn_secret_sync_paused",
    '1 while the OctopusDeploySecretSync carries octoconn.dev/paused="true", else 0.',
    ["namespace", "name"],
)
SYNC_LAST_SUCCESS = Gauge(
    "octoconn_secret_sync_last_success_timestamp_seconds",
    "Unix time of the sync's last successful run in Infisical (status.lastSyncedAt; absent before the first).",
    ["namespace", "name"],
)
SYNC_FAILING = Gauge(
    "octoconn_secret_sync_failing",
    "1 while the sync fails (Ready False, not paused), labelled with the Ready reason; absent otherwise.",
    ["namespace", "name", "reason"],
)
REQUESTS = {
    "octopus": Counter(
        "octoconn_octopus_requests",
        "Requests sent to Octopus by operation and status class (2xx..5xx, or error: no answer).",
        ["operation", "status_class"],
    ),
    "infisical": Counter(
        "octoconn_infisical_requests",
        "Requests sent to Infisical by operation and status class (2xx..5xx, or error: no answer).",
        ["operation", "status_class"],
    ),
}
REQUEST_DURATION = {
    "octopus": Histogram(
        "octoconn_octopus_request_duration_seconds",
        "Latency of requests to Octopus by operation.",
        ["operation"],
        buckets=_REQUEST_BUCKETS,
    ),
    "infisical": Histogram(
        "octoconn_infisical_request_duration_seconds",
        "Latency of requests to Infisical by operation.",
        ["operation"],
        buckets=_REQUEST_BUCKETS,
    ),
}
RATE_LIMITED = Counter(
    "octoconn_rate_limited_responses",
    "HTTP 429 answers received, by service.",
    ["service"],
)
PACER_WAIT = Histogram(
    "octoconn_infisical_pacer_wait_seconds",
    "Time a call waited for the shared Infisical pace (pacer: read or write) before it was sent.",
    ["pacer"],
    buckets=_PACER_BUCKETS,
)
LOGINS = Counter(
    "octoconn_infisical_logins",
    "Infisical logins by identity (operator, or resource: a per-resource identity) and result (success, refused, "
    "error).",
    ["identity", "result"],
)
OPERATOR_IDENTITY_REFUSED = Gauge(
    "octoconn_infisical_operator_identity_refused",
    "1 while Infisical refuses the operator's own identity (login refused, or not allowed to manage connections).",
)


class _ResourceCounts(Collector):
    """``octoconn_resources{ready, reason}``: how many resources this process manages, by Ready status and reason.

    Computed from the per-resource state at scrape time, so a deleted resource leaves no stale count behind.
    """

    def __init__(self) -> None:
        self.state: dict[tuple[str, str], tuple[str, str]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "octoconn_resources",
            "Resources this operator process manages, by Ready status (True, False, Unknown) and Ready reason.",
            labels=["ready", "reason"],
        )
        counts: dict[tuple[str, str], int] = {}
        for key in list(self.state.values()):
            counts[key] = counts.get(key, 0) + 1
        for (ready, reason), count in sorted(counts.items()):
            family.add_metric([ready, reason], count)
        yield family


RESOURCES = _ResourceCounts()
REGISTRY.register(RESOURCES)


# --- helpers the other modules call ------------------------------------------------------------------------------
def status_class(status_code: int | None) -> str:
    return "error" if status_code is None else f"{status_code // 100}xx"


async def observe_request(service: Service, operation: str, call: Awaitable[T]) -> T:
    """Await one HTTP request (anything with ``status_code``), counting it, timing it and noting a 429."""
    started = time.monotonic()
    code: int | None = None
    try:
        response = await call
        code = getattr(response, "status_code", None)
        return response
    finally:
        REQUESTS[service].labels(operation, status_class(code)).inc()
        REQUEST_DURATION[service].labels(operation).observe(time.monotonic() - started)
        if code == 429:
            RATE_LIMITED.labels(service).inc()


def observe_login(identity: str, result: Literal["success", "refused", "error"]) -> None:
    LOGINS.labels(identity, result).inc()


def observe_reconcile(result: str, reason: str, seconds: float) -> None:
    RECONCILES.labels(result, reason).inc()
    RECONCILE_DURATION.labels(result).observe(seconds)
    if result == "success":
        LAST_SUCCESS.set_to_current_time()


def started_reconciling() -> None:
    """Start the last-success clock at the first reconcile, so "no success for an hour" counts from there.

    Not at process start: a standby replica that never reconciles must not export the series at all.
    """
    global _reconciling
    if not _reconciling:
        _reconciling = True
        LAST_SUCCESS.set_to_current_time()


_reconciling = False


def observe_resource(
    namespace: str, name: str, *, ready: str, reason: str, paused: bool, key_expires_at: datetime | None
) -> None:
    RESOURCES.state[(namespace, name)] = (ready, reason)
    RESOURCE_READY.labels(namespace, name).set(1 if ready == "True" else 0)
    RESOURCE_PAUSED.labels(namespace, name).set(1 if paused else 0)
    if key_expires_at is not None:
        KEY_EXPIRY.labels(namespace, name).set(key_expires_at.timestamp())
    else:
        KEY_EXPIRY.remove(namespace, name)  # a no-op when absent


def forget_resource(namespace: str, name: str) -> None:
    """Drop every per-resource series: the resource is gone (or no longer managed by this process)."""
    RESOURCES.state.pop((namespace, name), None)
    for gauge in (RESOURCE_READY, RESOURCE_PAUSED, KEY_EXPIRY):
        gauge.remove(namespace, name)


def observe_sync(res: SyncResource, status: OctopusDeploySecretSyncStatus, *, deleting: bool = False) -> None:
    """Per-sync series from a status: a pass's, or the stored one (after a restart, before the first check).

    ``deleting``: the finalizer waits (for Infisical's removal, or on a failure it keeps retrying); not Ready, and
    not counted as failing, since a removal in progress is no failure: a deletion that stays stuck shows as a sync
    that has not been Ready for a while.
    """
    from octoconn.conditions import parse_time  # here: it loads the models, which `octoconn check` does not need

    key = (res.namespace, res.name)
    ready = status.condition("Ready")
    failing = (
        ready.reason if ready is not None and ready.status == "False" and not res.paused and not deleting else None
    )
    SYNC_READY.labels(*key).set(1 if ready is not None and ready.status == "True" and not deleting else 0)
    SYNC_PAUSED.labels(*key).set(1 if res.paused else 0)
    synced_at = parse_time(status.last_synced_at)
    if synced_at is not None:
        SYNC_LAST_SUCCESS.labels(*key).set(synced_at.timestamp())
    else:
        SYNC_LAST_SUCCESS.remove(*key)  # a no-op when absent
    SYNC_FAILING.remove_by_labels({"namespace": res.namespace, "name": res.name})  # the reason may have changed
    if failing is not None:
        SYNC_FAILING.labels(*key, failing).set(1)


def forget_sync(namespace: str, name: str) -> None:
    """Drop every per-sync series: the sync is gone (or no longer managed by this process)."""
    for gauge in (SYNC_READY, SYNC_PAUSED, SYNC_LAST_SUCCESS):
        gauge.remove(namespace, name)
    SYNC_FAILING.remove_by_labels({"namespace": namespace, "name": name})


# --- the endpoint ------------------------------------------------------------------------------------------------
async def serve(host: str, port: int, path: str) -> web.AppRunner:
    """Serve the registry at ``http://host:port/path`` in the operator's event loop; the caller cleans it up."""
    from aiohttp import web

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(REGISTRY), headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get(path, metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise RuntimeError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror}): set OCTOCONN_METRICS_PORT to a free port, or "
            "to 0 to turn the metrics endpoint off"
        ) from None
    return runner
