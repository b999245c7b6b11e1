"""The one reconcile loop every managed resource goes through, whatever its kind.

Watch events (``Loop.observe``) keep the latest body of each resource and queue it for a pass when something it
acts on changed; a fixed number of workers (``OCTOCONN_MAX_WORKERS``) take resources from one queue
(``workqueue``) and run a pass, which queues the resource again for later: at the jittered periodic interval, after
a failure's retry delay, or when something remote is still moving. A finalizer runs through ``Loop.finalize``. A
``Lifecycle`` (``lifecycles``) says how to read, reconcile and finalize a resource of its kind. Routine periodic
checks may hold only a share of the workers. No Kopf here: the wiring hands in the watch events, the Event poster
and Kopf's pause (peering) switch.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from octoconn import errors, metrics
from octoconn.conditions import Event, HasConditions, Outcome, jittered, retry_delay, utcnow
from octoconn.creates import FirstPatch
from octoconn.models import ANNOTATION_RECONCILE_REQUESTED_AT, FINALIZER, OPERATOR_PREFIX, PLURAL
from octoconn.settings import Settings
from octoconn.stores import StatusMemory
from octoconn.workqueue import QueueClosed, WorkQueue

_MAX_DELETE_RETRY_SECONDS = 30.0
# A new resource's first pass waits for Kopf's first patch (finalizer and create marker) to show on the watch, for
# at most this long after the last first patch of its kind showed: as long as Kopf works through a backlog of new
# resources, the wait goes on; when Kopf shows nothing for this long, the pass writes the marker itself.
FIRST_PATCH_WAIT_SECONDS = 30.0
# Routine periodic checks may hold one worker in this many (OCTOCONN_MAX_WORKERS // 4, at least one).
ROUTINE_SHARE = 4
# How long a stopping operator lets passes in flight finish before it cancels them.
_STOP_TIMEOUT_SECONDS = 10.0

EventSink = Callable[[Event], None]
EventPoster = Callable[[Mapping[str, Any], Event], None]
Key = tuple[str, str, str]  # plural, namespace, name
log = logging.getLogger(__name__)


class Status(HasConditions, Protocol):
    def to_patch(self) -> dict[str, Any]: ...


class Switch(Protocol):
    """Kopf's operator-paused switch (on while another replica holds the peering)."""

    def is_on(self) -> bool: ...

    async def wait_for(self, __state: bool) -> None: ...


R = TypeVar("R")


class Lifecycle(Protocol, Generic[R]):
    """What the shared loop needs to know about one kind of resource."""

    plural: str
    interval: float | None  # between checks of a settled resource; None: OCTOCONN_RESYNC_INTERVAL_SECONDS

    def parse(self, body: Mapping[str, Any]) -> R: ...

    def key(self, res: R) -> tuple[str, str]: ...

    async def reconcile(self, res: R, *, fresh: bool, first_patch: FirstPatch | None) -> Outcome[Any]:
        """``fresh``: the user asked for this check. ``first_patch``: returns the annotations of a new resource
        once Kopf's first patch landed (a kind that keeps no create marker there need not call it)."""
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

    def forget_metrics(self, namespace: str, name: str) -> None: ...


@dataclass
class Tracked:
    """What the loop keeps of one resource between its passes."""

    body: Mapping[str, Any]  # the latest from the watch
    # What the last pass acted on (generation and the annotations users act with): tells a watch event that
    # matters from the echo of our own status write.
    seen: tuple[object, ...]
    failures: int = 0
    started: bool = False  # its first pass (or, after a restart, the check that it is settled) has run
    waiting_since: float | None = None  # Kopf's first patch has not shown yet: waited for since then


def _no_events(body: Mapping[str, Any], event: Event) -> None:
    log.info("[%s] %s %s: %s", _ref(body), event.type, event.reason, event.message)


@dataclass(kw_only=True)
class Loop:
    """Every resource of every kind, the queue of those due for a pass, and the workers that run the passes."""

    settings: Settings
    statuses: StatusMemory
    post_event: EventPoster = _no_events
    kinds: dict[str, Lifecycle[Any]] = field(default_factory=dict)
    tracked: dict[Key, Tracked] = field(default_factory=dict)
    _queue: WorkQueue[Key] | None = None
    _workers: list[asyncio.Task[None]] = field(default_factory=list)
    _paused: Switch | None = None
    _pause_watch: asyncio.Task[None] | None = None
    # When a first patch last showed, per kind: a backlog in Kopf extends the wait of the others (see above).
    _landed_at: dict[str, float] = field(default_factory=dict)

    @property
    def queue(self) -> WorkQueue[Key]:
        if self._queue is None:
            self._queue = WorkQueue(routine_limit=self.settings.max_workers // ROUTINE_SHARE)
        return self._queue

    def serve(self, kind: Lifecycle[Any]) -> None:
        self.kinds[kind.plural] = kind

    def kick(self, namespace: str, name: str, *, plural: str = PLURAL) -> None:
        """A pass now (a Secret or a connection changed), for a resource the loop knows and is not deleting."""
        tracked = self.tracked.get((plural, namespace, name))
        if tracked is not None and tracked.waiting_since is None and not _deleting(tracked.body):
            self.queue.add((plural, namespace, name))

    def observe(self, body: Mapping[str, Any], *, plural: str = PLURAL, new: bool = False) -> None:
        """A watch event: keep the body; queue a pass if something the resource's passes act on changed.

        ``new``: Kopf's first patch of this resource (finalizer and create marker) is on its way; its first pass
        waits until the watch shows it. The echo of our own status write queues nothing."""
        if self._standing_by:
            return  # another replica reconciles; Kopf lists everything again when this one resumes
        self._start_workers()
        meta = body.get("metadata") or {}
        key = (plural, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        self.statuses.caught_up(body, plural=plural)
        tracked = self.tracked.get(key)
        if tracked is None:
            if _deleting(body):
                return  # its finalizer runs (or ran) through Kopf's delete handler; no pass is due
            tracked = self.tracked[key] = Tracked(body=body, seen=_fingerprint(body))
            if new and not _first_patch_landed(meta):
                tracked.waiting_since = time.monotonic()
                self.queue.add_after(key, FIRST_PATCH_WAIT_SECONDS)
            else:
                self.queue.add(key)
            return
        tracked.body = body
        if _deleting(body):
            self.queue.forget(key)  # the finalizer takes over; a pass in flight finishes first
        elif tracked.waiting_since is not None:
            if _first_patch_landed(meta):
                tracked.waiting_since = None
                self._landed_at[plural] = time.monotonic()
                self.queue.add(key)
        elif tracked.seen != _fingerprint(body):
            self.queue.add(key)

    def gone(self, namespace: str, name: str, *, plural: str = PLURAL) -> None:
        """Keep nothing of the resource: it was deleted, its finalizer ran, or another replica took it over."""
        key = (plural, namespace, name)
        self.tracked.pop(key, None)
        self.queue.forget(key)
        self.statuses.forget(namespace, name, plural=plural)
        kind = self.kinds.get(plural)
        if kind is not None:
            kind.forget_metrics(namespace, name)

    @property
    def _standing_by(self) -> bool:
        return self._paused is not None and self._paused.is_on()

    def follow_pause(self, switch: Switch) -> None:
        """Kopf's operator-paused switch: while another replica holds the peering, this one runs no pass."""
        if self._paused is switch:
            return
        self._paused = switch
        if self._pause_watch is not None:
            self._pause_watch.cancel()
        self._pause_watch = asyncio.get_running_loop().create_task(self._follow(switch), name="octoconn pause")

    async def _follow(self, switch: Switch) -> None:
        while True:
            await switch.wait_for(True)
            # Kopf disconnects the watches and lists every resource again when it resumes, as it stops and starts
            # daemons: forget them all (the passes in flight finish), so nothing runs on a body from before.
            log.info("paused: another replica holds the peering; %d resources left to it", len(self.tracked))
            self.queue.clear()
            for plural, namespace, name in list(self.tracked):
                self.gone(namespace, name, plural=plural)
            await switch.wait_for(False)

    async def stop(self) -> None:
        """Hand out no more work; let the passes in flight finish (for at most 10 s), then cancel the workers."""
        if self._pause_watch is not None:
            self._pause_watch.cancel()
        self.queue.close()
        workers, self._workers = self._workers, []
        if workers:
            _, late = await asyncio.wait(workers, timeout=_STOP_TIMEOUT_SECONDS)
            for worker in late:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def _start_workers(self) -> None:
        # Started by the first watch event, inside Kopf's context (its Event posting lives in a context variable).
        if not self._workers and not self.queue.closed:
            loop = asyncio.get_running_loop()
            self._workers = [
                loop.create_task(self._work(), name=f"octoconn worker {i}") for i in range(self.settings.max_workers)
            ]

    async def _work(self) -> None:
        queue = self.queue
        while True:
            try:
                key, _ = await queue.get()
            except QueueClosed:
                return
            try:
                await self._process(key)
            except Exception as exc:  # a bug must not cost a worker; the resource is tried again later
                log.exception("[%s/%s] pass failed unexpectedly: %s", key[1], key[2], type(exc).__name__)
                queue.add_after(key, self.settings.retry_backoff_cap_seconds)
            finally:
                queue.done(key)

    async def _process(self, key: Key) -> None:
        tracked = self.tracked.get(key)
        kind = self.kinds.get(key[0])
        if tracked is None or kind is None or _deleting(tracked.body) or self._standing_by:
            return
        if tracked.waiting_since is not None and not self._waited_enough(key, tracked):
            return
        if not tracked.started:
            tracked.started = True
            if await self._wait_if_settled(kind, key, tracked):
                return
        outcome = await self._pass(kind, key, tracked)
        delay = self._next_delay(outcome, tracked.failures + 1, kind.interval)
        tracked.failures = tracked.failures + 1 if outcome is None or outcome.error is not None else 0
        log.debug("[%s/%s] next reconcile in %.0fs unless woken", key[1], key[2], delay)
        again_routine = tracked.failures == 0 and outcome is not None and outcome.requeue_after is None
        self.queue.add_after(key, delay, routine=again_routine)

    def _waited_enough(self, key: Key, tracked: Tracked) -> bool:
        """Whether a new resource whose first patch has not shown has waited long enough: re-queued if not."""
        assert tracked.waiting_since is not None
        since = max(tracked.waiting_since, self._landed_at.get(key[0], 0.0))
        left = since + FIRST_PATCH_WAIT_SECONDS - time.monotonic()
        if left > 0:
            self.queue.add_after(key, left)
            return False
        tracked.waiting_since = None
        log.warning(
            "[%s/%s] Kopf's first patch did not show within %.0fs; writing the create marker",
            key[1],
            key[2],
            FIRST_PATCH_WAIT_SECONDS,
        )
        return True

    async def _wait_if_settled(self, kind: Lifecycle[Any], key: Key, tracked: Tracked) -> bool:
        """After a restart, a resource that was fine and has not changed since waits for its periodic check
        instead of all of them checking at once: that burst would fill the Infisical read pace and delay real
        changes (rotations, edits) for minutes. Any change still queues it at once."""
        first = kind.parse(self.statuses.view(tracked.body, plural=kind.plural))
        kind.observe_status(first)  # what status says until the first check
        if not await kind.settled(first):
            return False
        initial = random.uniform(0, kind.interval or self.settings.resync_interval_seconds)  # noqa: S311
        log.debug("[%s/%s] unchanged since the last check; first check in %.0fs unless woken", key[1], key[2], initial)
        self.queue.add_after(key, initial, routine=True)
        return True

    async def _pass(self, kind: Lifecycle[Any], key: Key, tracked: Tracked) -> Outcome[Any] | None:
        body = tracked.body
        fingerprint = _fingerprint(body)
        fresh = fingerprint[-1] != tracked.seen[-1]  # a new reconcile-requested-at value: the user asked
        tracked.seen = fingerprint

        async def first_patch() -> Mapping[str, str]:
            return dict((tracked.body.get("metadata") or {}).get("annotations") or {})

        def emit(event: Event) -> None:
            self.post_event(tracked.body, event)

        ref = f"{key[1]}/{key[2]}"
        try:
            res = kind.parse(self.statuses.view(body, plural=kind.plural))
            outcome = await self.run_once(kind, res, emit, fresh=fresh, first_patch=first_patch)
        except Exception as exc:  # a bug or a Kubernetes API failure must not stop the resource's passes
            log.error("[%s] reconcile failed unexpectedly: %s: %s", ref, type(exc).__name__, exc)
            emit(Event("Warning", "ReconcileFailed", f"reconcile failed unexpectedly: {type(exc).__name__}: {exc}"))
            return None
        if outcome.error is not None:
            log.warning("[%s] %s: %s", ref, outcome.error.reason, outcome.error.message)
        else:
            actions = "; ".join(e.message for e in outcome.events if e.reason not in ("Available",))
            log.info("[%s] reconciled: %s%s", ref, _ready_summary(outcome), f" ({actions})" if actions else "")
        return outcome

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
        namespace, name = kind.key(res)
        metrics.started_reconciling()
        started = time.monotonic()
        try:
            outcome = await kind.reconcile(res, fresh=fresh, first_patch=first_patch)
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
        """Run the finalizer; None when done, else what holds it up (shown where users look) and when to retry.

        A pass of the resource still in flight finishes first: the two never run at once."""
        namespace, name = kind.key(res)
        key = (kind.plural, namespace, name)
        self.queue.forget(key)
        await self.queue.until_idle(key)
        try:
            events = await kind.finalize(res)
        except errors.OctoconnError as exc:
            return exc, await self.report_deletion_blocked(kind, res, exc, emit, attempt=attempt)
        # Its last watch events (the finalizer gone, then DELETED) need nothing: a missed DELETED leaves nothing kept.
        self.gone(namespace, name, plural=kind.plural)
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


def _ref(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _deleting(body: Mapping[str, Any]) -> bool:
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


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


def _ready_summary(outcome: Outcome[Any]) -> str:
    ready = outcome.status.condition("Ready")
    return f"Ready={ready.status} ({ready.reason})" if ready else "no Ready condition"
