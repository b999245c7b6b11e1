"""Long-lived parts of a running operator, built once at start-up and shared by every resource.

One Octopus client, one Infisical client for the operator's identity (so one cached token and one write pace
for all resources), a small pool of clients for per-resource identities, the Kubernetes client, and one
reconciler per kind. One reconcile loop serves both kinds: a ``Lifecycle`` says how to read, reconcile and
finalize a resource of its kind. ``handlers`` keeps a ``Runtime`` in Kopf's memo; this module knows nothing about
Kopf.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from octoconn import errors, metrics, sync
from octoconn.apikeys import SecretData
from octoconn.conditions import Event, HasConditions, Outcome, jittered, parse_time, retry_delay, utcnow
from octoconn.infisical import InfisicalClient, KubernetesAuth, UniversalAuth
from octoconn.kube import KubeClient, KubeError
from octoconn.models import (
    ANNOTATION_RECONCILE_REQUESTED_AT,
    FINALIZER,
    OPERATOR_PREFIX,
    PLURAL,
    OctopusDeployConnectionStatus,
)
from octoconn.octopus import OctopusClient
from octoconn.pacing import WritePacer
from octoconn.reconcile import ConnectionReconciler, Resource, SecretReader, deletion_blocked
from octoconn.settings import Settings
from octoconn.sync import PeerSync, SyncReconciler, SyncResource
from octoconn.sync_models import PLURAL as SYNC_PLURAL

_MAX_TENANT_CLIENTS = 64
_MAX_DELETE_RETRY_SECONDS = 30.0
# A check that changes nothing but lastVerifiedTime/lastSyncedTime writes status only when they are older than
# this: API conventions dropped heartbeat timestamps for the write load they cause (one write per resource and
# interval), and an hour is recent enough to show that checks still happen.
STATUS_REFRESH_SECONDS = 3600.0
# How long one Octopus answer, or one read of a Secret, serves every resource that asks for the same thing.
_VERIFY_SHARE_SECONDS = 10.0
_SECRET_SHARE_SECONDS = 2.0
# How long a new resource's first pass waits for Kopf's first patch (finalizer and create marker) to show.
_FIRST_PATCH_WAIT_SECONDS = 30.0
# Routine periodic checks may hold one slot in this many (OCTOCONN_MAX_WORKERS // 4, at least one).
ROUTINE_SHARE = 4

EventSink = Callable[[Event], None]
Log = logging.Logger | logging.LoggerAdapter[Any]
FirstPatch = Callable[[], Awaitable[Mapping[str, str]]]
log = logging.getLogger(__name__)


class Status(HasConditions, Protocol):
    def to_patch(self) -> dict[str, Any]: ...


R = TypeVar("R")


class Lifecycle(Protocol, Generic[R]):
    """What the shared loop needs to know about one kind of resource."""

    plural: str
    interval: float | None  # between checks of a settled resource; None: OCTOCONN_RESYNC_INTERVAL_SECONDS

    def parse(self, body: Mapping[str, Any]) -> R: ...

    def key(self, res: R) -> tuple[str, str]: ...

    async def reconcile(self, res: R, *, fresh: bool, first_patch: FirstPatch | None) -> Outcome[Any]:
        """``fresh``: the user asked for this check. ``first_patch``: waits for Kopf's first patch of a new resource
        and returns its annotations (a kind that keeps no create marker there need not call it)."""
        ...

    def needs_write(self, res: R, outcome: Outcome[Any], now: float) -> bool:
        """Whether the pass's status is worth a write (``res.status`` is the status written last)."""
        ...

    def status_patch(self, res: R) -> dict[str, Any]: ...

    async def settled(self, res: R) -> bool: ...

    async def finalize(self, res: R) -> list[Event]: ...

    def deletion_blocked(self, res: R, error: errors.OctoconnError, now: datetime) -> tuple[Status, list[Event]]: ...

    # Metrics (docs/monitoring.md): what a pass, a status and a blocked deletion tell; forget when it is gone.
    def observe(self, res: R, outcome: Outcome[Any] | None, seconds: float) -> None: ...

    def observe_status(self, res: R) -> None: ...

    def observe_blocked(self, res: R) -> None: ...

    def forget_metrics(self, res: R) -> None: ...


@dataclass
class ConnectionLifecycle:
    reconciler: ConnectionReconciler
    secrets: SecretReader
    plural: str = PLURAL
    interval: float | None = None  # None: the periodic check's (OCTOCONN_RESYNC_INTERVAL_SECONDS)

    def parse(self, body: Mapping[str, Any]) -> Resource:
        return Resource.from_body(body)

    def key(self, res: Resource) -> tuple[str, str]:
        return res.namespace, res.name

    async def reconcile(self, res: Resource, *, fresh: bool, first_patch: FirstPatch | None) -> Outcome[Any]:
        return await self.reconciler.reconcile(res, fresh=fresh, first_patch=first_patch)

    def needs_write(self, res: Resource, outcome: Outcome[Any], now: float) -> bool:
        return needs_write(res.status, outcome.status, now)

    def status_patch(self, res: Resource) -> dict[str, Any]:
        return res.status.to_patch()

    async def finalize(self, res: Resource) -> list[Event]:
        return await self.reconciler.finalize(res)

    def deletion_blocked(self, res: Resource, error: errors.OctoconnError, now: datetime) -> tuple[Status, list[Event]]:
        return deletion_blocked(res, error, now)

    def observe(self, res: Resource, outcome: Outcome[Any] | None, seconds: float) -> None:
        if outcome is None:
            metrics.observe_reconcile("exception", "Unexpected", seconds)
            return
        ready = outcome.status.condition("Ready")
        if res.paused:
            result, reason = "paused", ready.reason if ready else "ReconcilePaused"
        elif outcome.error is not None:
            result, reason = "error", outcome.error.reason
        else:
            result, reason = "success", ready.reason if ready else "Available"
        metrics.observe_reconcile(result, reason, seconds)
        _observe_status(res, outcome.status)

    def observe_status(self, res: Resource) -> None:
        _observe_status(res, res.status)

    def observe_blocked(self, res: Resource) -> None:
        metrics.observe_resource(
            res.namespace, res.name, ready="False", reason="DeletionBlocked", paused=res.paused, key_expires_at=None
        )

    def forget_metrics(self, res: Resource) -> None:
        metrics.forget_resource(res.namespace, res.name)

    async def settled(self, res: Resource) -> bool:
        """Ready, reconciled at this generation, no re-check asked for since, its Secret unchanged: nothing to do."""
        status = res.status
        ready = status.condition("Ready")
        if res.paused or ready is None or ready.status != "True" or status.observed_generation != res.generation:
            return False
        if res.reconcile_requested_at != status.handled_reconcile_request:
            return False  # a re-check asked for while the operator was stopped
        if not status.id or not status.secret_resource_version:
            return False
        try:
            secret = await self.secrets.read_secret(res.namespace, res.spec.api_key_secret_ref.name)
        except KubeError:
            return False
        return secret is not None and secret.resource_version == status.secret_resource_version


@dataclass
class SyncLifecycle:
    reconciler: SyncReconciler
    plural: str = SYNC_PLURAL
    # A settled sync reads its latest run back this often: Infisical runs syncs by itself after a secret changes.
    interval: float | None = None

    def parse(self, body: Mapping[str, Any]) -> SyncResource:
        return SyncResource.from_body(body)

    def key(self, res: SyncResource) -> tuple[str, str]:
        return res.namespace, res.name

    async def reconcile(self, res: SyncResource, *, fresh: bool, first_patch: FirstPatch | None) -> Outcome[Any]:
        return await self.reconciler.reconcile(res, first_patch=first_patch)

    def needs_write(self, res: SyncResource, outcome: Outcome[Any], now: float) -> bool:
        # Nothing is written in the middle of a pass (the create marker rides in Kopf's first patch), so the status
        # the pass started from is the one stored: a pass that changes nothing writes nothing.
        return bool(outcome.status != res.status)

    def status_patch(self, res: SyncResource) -> dict[str, Any]:
        return res.status.to_patch()

    async def finalize(self, res: SyncResource) -> list[Event]:
        return await self.reconciler.finalize(res)

    def deletion_blocked(
        self, res: SyncResource, error: errors.OctoconnError, now: datetime
    ) -> tuple[Status, list[Event]]:
        return sync.deletion_blocked(res, error, now)

    # Per-sync series of their own (docs/monitoring.md); the reconcile counters describe connections.
    def observe(self, res: SyncResource, outcome: Outcome[Any] | None, seconds: float) -> None:
        metrics.observe_sync(res, outcome.status if outcome is not None else res.status)

    def observe_status(self, res: SyncResource) -> None:
        metrics.observe_sync(res, res.status)

    def observe_blocked(self, res: SyncResource) -> None:
        metrics.observe_sync(res, res.status, deleting=True)

    def forget_metrics(self, res: SyncResource) -> None:
        metrics.forget_sync(res.namespace, res.name)

    async def settled(self, res: SyncResource) -> bool:
        """Synced at this generation with no sync request pending: the periodic check will do."""
        ready = res.status.condition("Ready")
        return (
            not res.paused
            and ready is not None
            and ready.status == "True"
            and res.status.observed_generation == res.generation
            and bool(res.status.id)
            and res.sync_request == res.status.handled_sync_request
        )


class SharedSecretReads:
    """The ``SecretReader`` port, with one read shared by the resources that ask for the same Secret at once.

    1000 resources sharing a Secret would otherwise read it 1000 times on a rotation. A read is reused for a couple
    of seconds at most (the key is not kept longer than that), and a watch event for the Secret drops it at once.
    """

    def __init__(self, kube: KubeClient, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._ttl = ttl
        self._clock = clock
        self._kept: dict[tuple[str, str], tuple[float, SecretData | None]] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[SecretData | None]] = {}
        self._changes: dict[tuple[str, str], int] = {}

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        key = (namespace, name)
        now = self._clock()
        for old, (until, _) in list(self._kept.items()):  # kept in time order: expired ones are at the front
            if until > now:
                break
            del self._kept[old]
        kept = self._kept.get(key)
        if kept is not None:
            return kept[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[SecretData | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        changes = self._changes.get(key, 0)
        try:
            secret = await self._kube.read_secret(namespace, name)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, KubeError) else KubeError(f"reading Secret {namespace}/{name}"))
            future.exception()
            raise
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
        if self._changes.get(key, 0) == changes:  # a read that started before a change is not reused
            self._kept[key] = (self._clock() + self._ttl, secret)
        if key not in self._inflight:
            self._changes.pop(key, None)
        future.set_result(secret)
        return secret

    def changed(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key in self._inflight:
            self._changes[key] = self._changes.get(key, 0) + 1
        self._kept.pop(key, None)
        self._inflight.pop(key, None)  # later callers read again rather than wait for a read begun before


class StorePool:
    """The ``StoreFactory`` port: the operator's Infisical client plus per-resource identity clients (LRU)."""

    def __init__(
        self, settings: Settings, default: InfisicalClient, pacer: WritePacer, read_pacer: WritePacer | None
    ) -> None:
        self._settings = settings
        self._default = default
        self._pacer = pacer
        self._read_pacer = read_pacer
        self._tenants: OrderedDict[tuple[str, str, str], InfisicalClient] = OrderedDict()
        self._retired: list[InfisicalClient] = []

    def default(self) -> InfisicalClient:
        return self._default

    def for_identity(self, *, host_url: str | None, client_id: str, client_secret: str) -> InfisicalClient:
        host = (host_url or self._settings.infisical_url).rstrip("/")
        # The secret is part of the key so a rotated client secret gets a fresh login; only a digest is kept.
        key = (host, client_id, hashlib.sha256(client_secret.encode()).hexdigest())
        found = self._tenants.get(key)
        if found is not None:
            self._tenants.move_to_end(key)
            return found
        created = InfisicalClient(
            base_url=host,
            auth=UniversalAuth(client_id=client_id, client_secret=client_secret),
            pacer=self._pacer,
            read_pacer=self._read_pacer,
            timeout=self._settings.infisical_timeout_seconds,
            identity="resource",
        )
        self._tenants[key] = created
        if len(self._tenants) > _MAX_TENANT_CLIENTS:
            _, evicted = self._tenants.popitem(last=False)
            self._retired.append(evicted)  # closed at shutdown: a reconcile may still be using it
        return created

    async def aclose(self) -> None:
        for store in [self._default, *self._tenants.values(), *self._retired]:
            await store.aclose()


class StatusMemory:
    """The ``StatusWriter`` port in front of the Kubernetes client: remembers the last status written per resource.

    Kopf refreshes a daemon's ``body`` from the watch stream, which can lag behind our own writes: a pass that
    starts right after a status write may read a body from before it, and would act on that old view (adopt its own
    connection "created by an earlier try" and send the credentials again, or call its own connection or sync a
    NameConflict). The status it last wrote is the truth until the watch shows that write or a later one; ``view``
    puts it into whatever body is read meanwhile. Resource versions of one resource are comparable integers
    (KEP-5504, GA in Kubernetes 1.35), which tells an older body from a newer one; a later write by another process
    (a second operator started by mistake) is never hidden behind ours. Keyed by kind too: a connection and a secret
    sync may share a name.
    """

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube
        # (plural, namespace, name) -> (uid, resourceVersion, status as the API server stored it after our last write)
        self._written: dict[tuple[str, str, str], tuple[str, str, dict[str, Any]]] = {}

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, plural: str = PLURAL
    ) -> dict[str, Any] | None:
        stored = await self._kube.patch_status(namespace, name, status, plural=plural)
        if stored is None:
            self._written.pop((plural, namespace, name), None)
            return None
        meta = stored.get("metadata") or {}
        uid, version = str(meta.get("uid") or ""), str(meta.get("resourceVersion") or "")
        self._written[(plural, namespace, name)] = (uid, version, dict(stored.get("status") or {}))
        return stored

    async def patch_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None], *, plural: str = PLURAL
    ) -> None:
        await self._kube.patch_annotations(namespace, name, annotations, plural=plural)

    def view(self, body: Mapping[str, Any], *, plural: str = PLURAL) -> dict[str, Any]:
        """``body`` with our last written status when the watch has not delivered that write yet."""
        meta = body.get("metadata") or {}
        key = (plural, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        written = self._written.get(key)
        if written is None:
            return dict(body)
        uid, version, status = written
        if uid != meta.get("uid") or body.get("status") == status or _not_older(meta.get("resourceVersion"), version):
            # Another object of the same name, or the watch has caught up: the body is the truth again.
            del self._written[key]
            return dict(body)
        return {**body, "status": status}

    def forget(self, namespace: str, name: str, *, plural: str = PLURAL) -> None:
        self._written.pop((plural, namespace, name), None)


def _not_older(body_version: object, written_version: str) -> bool:
    """Whether a body's resourceVersion is that of our write or a later one. Versions that are not the positive
    integers Kubernetes 1.35 promises cannot be ordered: then only an equal status says the watch caught up."""
    seen = str(body_version or "")
    if not (seen.isdigit() and written_version.isdigit()) or "0" in (seen[:1], written_version[:1]):
        return False
    return int(seen) >= int(written_version)


@dataclass
class Runtime:
    settings: Settings
    kube: KubeClient
    octopus: OctopusClient
    stores: StorePool
    reconciler: ConnectionReconciler
    sync_reconciler: SyncReconciler
    statuses: StatusMemory
    secrets: SharedSecretReads
    kicks: dict[tuple[str, str, str], asyncio.Event] = field(default_factory=dict)
    # What each loop saw at its last pass (generation and the annotations users act with), to tell a watch event
    # that matters from the echo of our own status write. Keyed like ``kicks``: (plural, namespace, name).
    _seen: dict[tuple[str, str, str], tuple[object, ...]] = field(default_factory=dict)
    # Loops waiting for Kopf's first patch of their resource to show on the watch.
    _first_patch: dict[tuple[str, str, str], asyncio.Event] = field(default_factory=dict)
    # connection id -> "namespace/name" of the resources recording it; Kopf's live index, set by the handlers.
    connection_owners: Mapping[str, Iterable[str]] = field(default_factory=dict)
    # destination key -> the secret syncs whose status records it; Kopf's live index, set by the handlers.
    sync_peers: Mapping[str, Iterable[PeerSync]] = field(default_factory=dict)
    # secret sync id -> "namespace/name" of the syncs recording it; Kopf's live index, set by the handlers.
    sync_owners: Mapping[str, Iterable[str]] = field(default_factory=dict)
    # Bounds how many resources reconcile at once (OCTOCONN_MAX_WORKERS); created lazily inside the event loop.
    _slots: asyncio.Semaphore | None = None
    # Routine periodic checks hold at most this share of the slots (created with them): when many fall due at once
    # and wait for the Infisical read pace, the other slots stay free for new, changed and requested work.
    _routine: asyncio.Semaphore | None = None
    _metrics_server: Any = None  # aiohttp's AppRunner, while /metrics is served

    @classmethod
    def build(cls, settings: Settings, kube: KubeClient) -> Runtime:
        pacer = WritePacer(per_minute=settings.infisical_writes_per_minute, name="write")
        reads = settings.infisical_reads_per_minute
        read_pacer = WritePacer(per_minute=reads, name="read") if reads > 0 else None
        octopus = OctopusClient(
            timeout=settings.octopus_timeout_seconds,
            allow_http=settings.allow_http,
            ca_bundle=str(settings.octopus_ca_bundle) if settings.octopus_ca_bundle else None,
            verify_tls=not settings.octopus_insecure_skip_verify,
        )
        default = InfisicalClient(
            base_url=settings.infisical_url,
            auth=_operator_auth(settings, kube),
            pacer=pacer,
            read_pacer=read_pacer,
            timeout=settings.infisical_timeout_seconds,
        )
        stores = StorePool(settings, default, pacer, read_pacer)
        statuses = StatusMemory(kube)
        secrets = SharedSecretReads(kube, ttl=_SECRET_SHARE_SECONDS)
        runtime: Runtime
        reconciler = ConnectionReconciler(
            secrets=secrets,
            octopus=octopus,
            stores=stores,
            status_writer=statuses,
            owners_of=lambda connection_id: runtime.connection_owners.get(connection_id, ()),
            key_expiry_warning=timedelta(days=settings.key_expiry_warning_days),
            # Shorter than the periodic interval, so each resource's next check asks Octopus again.
            verify_ttl=min(_VERIFY_SHARE_SECONDS, settings.resync_interval_seconds / 2),
        )
        sync_reconciler = SyncReconciler(
            connections=kube,
            secrets=kube,
            octopus=octopus,
            stores=stores,
            status_writer=statuses,
            peers_at=lambda key: runtime.sync_peers.get(key, ()),
            owners_of=lambda sync_id: runtime.sync_owners.get(sync_id, ()),
            rerun_failed_after=timedelta(seconds=settings.resync_interval_seconds),
        )
        runtime = cls(
            settings=settings,
            kube=kube,
            octopus=octopus,
            stores=stores,
            reconciler=reconciler,
            sync_reconciler=sync_reconciler,
            statuses=statuses,
            secrets=secrets,
        )
        return runtime

    async def serve_metrics(self) -> None:
        s = self.settings
        if s.metrics_port:
            self._metrics_server = await metrics.serve(s.metrics_bind_address, s.metrics_port, s.metrics_path)

    @property
    def connections(self) -> ConnectionLifecycle:
        return ConnectionLifecycle(self.reconciler, self.secrets)

    @property
    def syncs(self) -> SyncLifecycle:
        return SyncLifecycle(self.sync_reconciler, interval=self.settings.sync_check_interval_seconds)

    def kick(self, namespace: str, name: str, *, plural: str = PLURAL) -> None:
        """Wake the resource's loop now (spec, annotation, Secret or connection change); a loop not started yet
        reads it all anyway."""
        kick = self.kicks.get((plural, namespace, name))
        if kick is not None:
            kick.set()

    def observe(self, body: Mapping[str, Any], *, plural: str = PLURAL) -> None:
        """A watch event for a resource: wake its loop if something it acts on changed (not our own status write)."""
        meta = body.get("metadata") or {}
        key = (plural, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        waiting = self._first_patch.get(key)
        if waiting is not None and _first_patch_landed(meta):
            waiting.set()
        seen = self._seen.get(key)
        if seen is not None and seen != _fingerprint(body):
            self.kick(key[1], key[2], plural=plural)

    def secret_changed(self, namespace: str, name: str) -> None:
        self.secrets.changed(namespace, name)

    async def run_once(
        self,
        kind: Lifecycle[R],
        res: R,
        emit: EventSink,
        *,
        fresh: bool = False,
        first_patch: FirstPatch | None = None,
    ) -> Outcome[Any]:
        """One reconcile pass: decide, write status, emit Events. Never raises for domain errors.

        ``fresh``: the user asked for this check, so the status shows it even when nothing changed.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.max_workers)
        namespace, name = kind.key(res)
        slots = self._slots
        waiting_for = first_patch

        async def first_patch_without_a_slot() -> Mapping[str, str]:
            # Waiting for Kopf is not work: let another resource use the slot meanwhile.
            assert waiting_for is not None
            slots.release()
            try:
                return await waiting_for()
            finally:
                await slots.acquire()

        async with slots:
            metrics.started_reconciling()
            started = time.monotonic()
            try:
                outcome = await kind.reconcile(
                    res, fresh=fresh, first_patch=first_patch_without_a_slot if first_patch is not None else None
                )
                # res's status is what we wrote last (StatusMemory), even when the watch has not shown it yet.
                if fresh or kind.needs_write(res, outcome, utcnow().timestamp()):
                    patch = outcome.status.to_patch()
                    if log.isEnabledFor(logging.DEBUG):
                        old = kind.status_patch(res)
                        changed = sorted(k for k in patch if patch[k] != old.get(k))
                        log.debug("[%s/%s/%s] status write: %s", kind.plural, namespace, name, changed)
                    await self.statuses.patch_status(namespace, name, patch, plural=kind.plural)
            except Exception:
                kind.observe(res, None, time.monotonic() - started)
                raise
            kind.observe(res, outcome, time.monotonic() - started)
        for event in outcome.events:
            emit(event)
        return outcome

    async def finalize(
        self, kind: Lifecycle[R], res: R, emit: EventSink, *, attempt: int
    ) -> tuple[errors.OctoconnError, float] | None:
        """Run the finalizer; None when done, else what holds it up (shown where users look) and when to retry."""
        try:
            events = await kind.finalize(res)
        except errors.OctoconnError as exc:
            return exc, await self.report_deletion_blocked(kind, res, exc, emit, attempt=attempt)
        self.statuses.forget(*kind.key(res), plural=kind.plural)
        kind.forget_metrics(res)
        for event in events:
            emit(event)
        return None

    async def report_deletion_blocked(
        self, kind: Lifecycle[R], res: R, error: errors.OctoconnError, emit: EventSink, *, attempt: int
    ) -> float:
        """Show a stuck deletion where users look (Ready, Events); return when to try again."""
        status, events = kind.deletion_blocked(res, error, utcnow())
        namespace, name = kind.key(res)
        await self.statuses.patch_status(namespace, name, status.to_patch(), plural=kind.plural)
        kind.observe_blocked(res)
        for event in events:
            emit(event)
        s = self.settings
        delay = retry_delay(
            error,
            attempt=attempt,
            backoff_cap=s.retry_backoff_cap_seconds,
            auth_retry=s.auth_retry_seconds,
            wait_for_change=s.auth_retry_seconds,
        )
        # Kopf does not re-run a delayed handler early, so a switch to deletionPolicy: Orphan is only seen at the
        # next try: keep that wait short.
        return min(delay, _MAX_DELETE_RETRY_SECONDS)

    async def loop(
        self,
        kind: Lifecycle[R],
        body_reader: Callable[[], dict[str, Any]],
        emit: EventSink,
        logger: Log,
        stopped: Callable[[], Awaitable[object]],
    ) -> None:
        """Reconcile now, then again on every kick, after a failure's retry delay, or at the jittered interval.

        Returns when ``stopped()`` resolves (the resource is being deleted, or the operator is exiting), so Kopf
        never has to cancel the loop in the middle of a call.
        """
        first = kind.parse(self.statuses.view(body_reader(), plural=kind.plural))
        key = (kind.plural, *kind.key(first))
        kick = self.kicks.setdefault(key, asyncio.Event())
        self._seen[key] = _fingerprint(body_reader())
        stopping = asyncio.ensure_future(stopped())

        async def first_patch() -> Mapping[str, str]:
            return await self._await_first_patch(key, body_reader, stopping)

        failures = 0
        routine = False  # a periodic check with nothing changed: it waits behind new, changed and requested work
        # What status says until the first check: after a restart, a settled resource may wait minutes for it.
        kind.observe_status(first)
        try:
            if await kind.settled(first):
                # After a restart, a resource that was fine and has not changed since waits for its periodic
                # check instead of all of them checking at once: that burst would fill the Infisical read pace and
                # delay real changes (rotations, edits) for minutes. Any change still wakes it at once.
                initial = random.uniform(0, kind.interval or self.settings.resync_interval_seconds)  # noqa: S311
                logger.debug("unchanged since the last check; first check in %.0fs unless woken", initial)
                routine = not await _sleep(kick, stopping, initial)
            while not stopping.done():
                lane = await self._routine_turn(kick, stopping) if routine else None
                try:
                    kick.clear()
                    body = body_reader()
                    fingerprint = _fingerprint(body)
                    # A new reconcile-requested-at value is a re-check the user asked for.
                    fresh = fingerprint[-1] != self._seen[key][-1]
                    self._seen[key] = fingerprint
                    res = kind.parse(self.statuses.view(body, plural=kind.plural))
                    outcome = await self._guarded(kind, res, emit, logger, fresh=fresh, first_patch=first_patch)
                finally:
                    if lane is not None:
                        lane.release()
                delay = self._next_delay(outcome, failures + 1, kind.interval)
                failures = failures + 1 if outcome is None or outcome.error is not None else 0
                logger.debug("next reconcile in %.0fs unless woken", delay)
                woken = await _sleep(kick, stopping, delay)
                routine = not woken and failures == 0 and outcome is not None and outcome.requeue_after is None
        finally:
            stopping.cancel()
            self.kicks.pop(key, None)
            self._seen.pop(key, None)
            kind.forget_metrics(first)  # deleted, or no longer ours: a deletion still blocked reports itself

    async def _routine_turn(self, kick: asyncio.Event, stopping: asyncio.Future[Any]) -> asyncio.Semaphore | None:
        """Wait for a routine check's share of the worker slots and return it (to release after the pass).

        None when the resource is woken first (a change, a requested re-check): its pass is no longer routine and
        goes ahead at once, with the body read after the wake-up."""
        if self._routine is None:
            self._routine = asyncio.Semaphore(max(1, self.settings.max_workers // ROUTINE_SHARE))
        lane = self._routine
        turn = asyncio.ensure_future(lane.acquire())
        woken = asyncio.ensure_future(kick.wait())
        try:
            await asyncio.wait({turn, woken, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            if not turn.done():
                turn.cancel()  # Semaphore.acquire gives back a slot granted in the same instant
        if not turn.done() or turn.cancelled():
            return None
        if kick.is_set() or stopping.done():
            lane.release()
            return None
        return lane

    async def _await_first_patch(
        self, key: tuple[str, str, str], body_reader: Callable[[], dict[str, Any]], stopping: asyncio.Future[Any]
    ) -> Mapping[str, str]:
        """Let Kopf's first patch of a new resource land (finalizer, create marker) before anything is created.

        Returns on the first of: the patch showing on the watch, the loop being stopped, the timeout; waiting for
        all of them would hold every new resource for the full timeout."""
        if not _first_patch_landed(body_reader().get("metadata") or {}):
            landed = self._first_patch.setdefault(key, asyncio.Event())
            waiting = asyncio.ensure_future(landed.wait())
            try:
                await asyncio.wait(
                    {waiting, stopping}, timeout=_FIRST_PATCH_WAIT_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiting.cancel()
                self._first_patch.pop(key, None)
        return dict((body_reader().get("metadata") or {}).get("annotations") or {})

    async def _guarded(
        self,
        kind: Lifecycle[R],
        res: R,
        emit: EventSink,
        logger: Log,
        *,
        fresh: bool,
        first_patch: FirstPatch,
    ) -> Outcome[Any] | None:
        try:
            outcome = await self.run_once(kind, res, emit, fresh=fresh, first_patch=first_patch)
        except Exception as exc:  # a bug or a Kubernetes API failure must not kill the resource's loop
            logger.error("reconcile failed unexpectedly: %s: %s", type(exc).__name__, exc)
            return None
        if outcome.error is not None:
            logger.warning("%s: %s", outcome.error.reason, outcome.error.message)
        else:
            actions = "; ".join(e.message for e in outcome.events if e.reason not in ("Available",))
            logger.info("reconciled: %s%s", _ready_summary(outcome), f" ({actions})" if actions else "")
        return outcome

    def _next_delay(self, outcome: Outcome[Any] | None, attempt: int, interval: float | None = None) -> float:
        s = self.settings
        if outcome is None:
            error: errors.OctoconnError = errors.OctoconnError("unexpected failure")
        elif outcome.error is not None:
            error = outcome.error
        elif outcome.requeue_after is not None:
            return outcome.requeue_after  # something remote is still moving (a sync running in Infisical)
        else:
            return jittered(interval or s.resync_interval_seconds)
        return retry_delay(
            error,
            attempt=attempt,
            backoff_cap=s.retry_backoff_cap_seconds,
            auth_retry=s.auth_retry_seconds,
            wait_for_change=s.resync_interval_seconds,
        )

    async def aclose(self) -> None:
        if self._metrics_server is not None:
            await self._metrics_server.cleanup()
        await self.octopus.aclose()
        await self.stores.aclose()
        await self.kube.aclose()


async def _sleep(kick: asyncio.Event, stopping: asyncio.Future[Any], seconds: float) -> bool:
    """Wait ``seconds`` unless the loop is woken or stopped first; True when woken (something changed)."""
    woken = asyncio.ensure_future(kick.wait())
    await asyncio.wait({woken, stopping}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    woken.cancel()
    return kick.is_set()


def needs_write(before: OctopusDeployConnectionStatus, after: OctopusDeployConnectionStatus, now: float) -> bool:
    """Whether a pass's status is worth a write: something changed, or the check times are due for a refresh."""
    unchanged = after.model_copy(
        update={"last_verified_time": before.last_verified_time, "last_synced_time": before.last_synced_time}
    )
    if unchanged != before:
        return True
    if after.last_verified_time == before.last_verified_time and after.last_synced_time == before.last_synced_time:
        return False
    verified = parse_time(before.last_verified_time)
    return verified is None or now - verified.timestamp() >= STATUS_REFRESH_SECONDS


def _first_patch_landed(meta: Mapping[str, Any]) -> bool:
    return FINALIZER in (meta.get("finalizers") or []) or bool(meta.get("deletionTimestamp"))


def _fingerprint(body: Mapping[str, Any]) -> tuple[object, ...]:
    """What a pass acts on besides status: generation (spec) and the annotations users set. Last: the re-check.

    Every annotation but the operator's own bookkeeping (create marker, Kopf's progress) counts, as it did for Kopf's
    update handlers: touching any annotation is a way to ask for a pass now."""
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    users = tuple(sorted((k, v) for k, v in annotations.items() if not k.startswith(f"{OPERATOR_PREFIX}/")))
    return (
        meta.get("generation"),
        meta.get("deletionTimestamp") is not None,
        users,
        annotations.get(ANNOTATION_RECONCILE_REQUESTED_AT),
    )


def _observe_status(res: Resource, status: OctopusDeployConnectionStatus) -> None:
    ready = status.condition("Ready")
    metrics.observe_resource(
        res.namespace,
        res.name,
        ready=ready.status if ready else "Unknown",
        reason=ready.reason if ready else "Reconciling",
        paused=res.paused,
        key_expires_at=parse_time(status.octopus.key_expires_at) if status.octopus else None,
    )


def _ready_summary(outcome: Outcome[Any]) -> str:
    ready = outcome.status.condition("Ready")
    return f"Ready={ready.status} ({ready.reason})" if ready else "no Ready condition"


def _operator_auth(settings: Settings, kube: KubeClient) -> UniversalAuth | KubernetesAuth:
    if settings.auth_method == "kubernetes":
        namespace, name = settings.service_account_ref()
        assert settings.kubernetes_identity_id is not None

        async def token_source() -> str:
            try:
                return await kube.service_account_token(
                    namespace, name, audience=settings.token_audience, ttl_seconds=settings.token_ttl_seconds
                )
            except KubeError as exc:  # its message names the call and the HTTP status, never a token
                raise errors.InfisicalAuthFailed(
                    f"{exc}. Check OCTOCONN_SERVICE_ACCOUNT={namespace}/{name}: the ServiceAccount must exist and the "
                    "operator must be allowed to create its tokens (serviceaccounts/token)"
                ) from None

        return KubernetesAuth(identity_id=settings.kubernetes_identity_id, token_source=token_source)
    client_id, client_secret = settings.universal_credentials()
    return UniversalAuth(client_id=client_id, client_secret=client_secret)
