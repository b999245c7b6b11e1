"""The one reconcile loop every managed resource runs in, whatever its kind.

Each resource has a loop (``Loop.loop``): reconcile now, then again on every kick (a watch event that matters),
after a failure's retry delay, or at the jittered periodic interval; a finalizer runs through ``Loop.finalize``. A
``Lifecycle`` (``lifecycles``) says how to read, reconcile and finalize a resource of its kind. Passes share a
bounded number of worker slots, of which routine periodic checks may hold only a share. No Kopf here.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from octoconn import errors, metrics
from octoconn.conditions import Event, HasConditions, Outcome, jittered, retry_delay, utcnow
from octoconn.creates import FirstPatch
from octoconn.models import ANNOTATION_RECONCILE_REQUESTED_AT, FINALIZER, OPERATOR_PREFIX, PLURAL
from octoconn.settings import Settings
from octoconn.stores import StatusMemory

_MAX_DELETE_RETRY_SECONDS = 30.0
# How long a new resource's first pass waits for Kopf's first patch (finalizer and create marker) to show.
_FIRST_PATCH_WAIT_SECONDS = 30.0
# Routine periodic checks may hold one slot in this many (OCTOCONN_MAX_WORKERS // 4, at least one).
ROUTINE_SHARE = 4

EventSink = Callable[[Event], None]
Log = logging.Logger | logging.LoggerAdapter[Any]
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


@dataclass(kw_only=True)
class Loop:
    """The loops of every resource of every kind, and what they share (worker slots, wake-ups, status memory)."""

    settings: Settings
    statuses: StatusMemory
    kicks: dict[tuple[str, str, str], asyncio.Event] = field(default_factory=dict)
    # What each loop saw at its last pass (generation and the annotations users act with), to tell a watch event
    # that matters from the echo of our own status write. Keyed like ``kicks``: (plural, namespace, name).
    _seen: dict[tuple[str, str, str], tuple[object, ...]] = field(default_factory=dict)
    # Loops waiting for Kopf's first patch of their resource to show on the watch.
    _first_patch: dict[tuple[str, str, str], asyncio.Event] = field(default_factory=dict)
    # Bounds how many resources reconcile at once (OCTOCONN_MAX_WORKERS); created lazily inside the event loop.
    _slots: asyncio.Semaphore | None = None
    # Routine periodic checks hold at most this share of the slots (created with them): when many fall due at once
    # and wait for the Infisical read pace, the other slots stay free for new, changed and requested work.
    _routine: asyncio.Semaphore | None = None

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


async def _sleep(kick: asyncio.Event, stopping: asyncio.Future[Any], seconds: float) -> bool:
    """Wait ``seconds`` unless the loop is woken or stopped first; True when woken (something changed)."""
    woken = asyncio.ensure_future(kick.wait())
    await asyncio.wait({woken, stopping}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    woken.cancel()
    return kick.is_set()


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
