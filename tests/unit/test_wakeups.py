"""Which watch events queue a pass, now that Kopf keeps no diff base: ``Loop.observe`` for both kinds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest

from octoconn import loop as loop_module
from octoconn.conditions import Event, Outcome
from octoconn.creates import FirstPatch
from octoconn.loop import Loop
from octoconn.models import ANNOTATION_PENDING_CREATE, PLURAL
from octoconn.stores import StatusMemory
from octoconn.sync_models import PLURAL as SYNC_PLURAL


@dataclass
class Passes:
    """A kind whose passes are counted; it writes no status, so no Kubernetes client is needed."""

    plural: str
    interval: float | None = None
    bodies: list[Mapping[str, Any]] = field(default_factory=list)
    ran: asyncio.Event = field(default_factory=asyncio.Event)

    def parse(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        return body

    def key(self, res: Mapping[str, Any]) -> tuple[str, str]:
        return res["metadata"]["namespace"], res["metadata"]["name"]

    async def reconcile(self, res: Mapping[str, Any], *, fresh: bool, first_patch: FirstPatch | None) -> Outcome[Any]:
        self.bodies.append(res)
        self.ran.set()
        return Outcome(status=SimpleNamespace(condition=lambda _: None, to_patch=lambda: {"seen": fresh}))

    def needs_write(self, res: Mapping[str, Any], outcome: Outcome[Any], now: float) -> bool:
        return False

    def status_patch(self, res: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    async def settled(self, res: Mapping[str, Any]) -> bool:
        return False

    async def finalize(self, res: Mapping[str, Any]) -> list[Event]:
        return []

    def deletion_blocked(self, res: Mapping[str, Any], error: Any, now: datetime) -> Any:
        raise AssertionError("not deleted here")

    def observe(self, res: Mapping[str, Any], outcome: Outcome[Any] | None, seconds: float) -> None:
        return None

    def observe_status(self, res: Mapping[str, Any]) -> None:
        return None

    def observe_blocked(self, res: Mapping[str, Any]) -> None:
        return None

    def forget_metrics(self, namespace: str, name: str) -> None:
        return None


def body(generation: int, annotations: dict[str, str] | None = None, status: dict[str, Any] | None = None) -> Any:
    meta = {"namespace": "ns", "name": "same", "uid": "u", "generation": generation, "annotations": annotations or {}}
    return {"metadata": meta, "status": status or {}}


class StatusLog:
    def __init__(self) -> None:
        self.patches: list[tuple[str, Mapping[str, Any]]] = []

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, plural: str
    ) -> dict[str, Any] | None:
        self.patches.append((plural, status))
        return None


def runtime(kube: StatusLog) -> Loop:
    settings = SimpleNamespace(max_workers=4, resync_interval_seconds=3600, retry_backoff_cap_seconds=60)
    return Loop(settings=settings, statuses=StatusMemory(kube))  # type: ignore[arg-type]


async def next_pass(kind: Passes) -> bool:
    """Whether a pass runs within a second (``ran`` is cleared before the change is observed)."""
    try:
        await asyncio.wait_for(kind.ran.wait(), 1)
    except TimeoutError:
        return False
    finally:
        kind.ran.clear()
    return True


async def test_a_sync_wakes_on_its_spec_or_an_annotation_but_not_on_its_status_or_a_connection() -> None:
    kube = StatusLog()
    rt = runtime(kube)
    syncs, connections = Passes(SYNC_PLURAL), Passes(PLURAL)
    rt.serve(syncs)
    rt.serve(connections)
    try:
        rt.observe(body(1), plural=SYNC_PLURAL)
        rt.observe(body(1))
        assert await next_pass(syncs)  # the first passes
        assert await next_pass(connections)

        rt.observe(body(1, status={"id": "written by the operator"}), plural=SYNC_PLURAL)
        assert not await next_pass(syncs)  # the echo of a status write

        rt.observe(body(1, annotations={ANNOTATION_PENDING_CREATE: "bookkeeping"}), plural=SYNC_PLURAL)
        assert not await next_pass(syncs)

        rt.observe(body(2), plural=SYNC_PLURAL)
        assert await next_pass(syncs)
        assert syncs.bodies[-1]["metadata"]["generation"] == 2
        assert len(connections.bodies) == 1  # a connection of the same name was not woken

        rt.observe(body(2, annotations={"example.com/touched": "yes"}), plural=SYNC_PLURAL)
        assert await next_pass(syncs)

        rt.observe(body(1, annotations={"octoconn.dev/reconcile-requested-at": "now"}))
        assert await next_pass(connections)
        assert len(syncs.bodies) == 3
        # A re-check the user asked for is written even though the kind found nothing worth a write.
        assert kube.patches == [(PLURAL, {"seen": True})]
    finally:
        await rt.stop()


@dataclass
class Held(Passes):
    """Routine checks (a resource's later passes that nobody asked for) wait at ``gate``, as they would for the
    Infisical read pace; first passes and requested ones do not."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    passes: dict[str, int] = field(default_factory=dict)
    inside: set[str] = field(default_factory=set)

    async def reconcile(self, res: Mapping[str, Any], *, fresh: bool, first_patch: FirstPatch | None) -> Outcome[Any]:
        name = res["metadata"]["name"]
        self.passes[name] = self.passes.get(name, 0) + 1
        self.inside.add(name)
        try:
            if self.passes[name] > 1 and not fresh:
                await self.gate.wait()
            return await super().reconcile(res, fresh=fresh, first_patch=first_patch)
        finally:
            self.inside.discard(name)


def named(name: str, annotations: dict[str, str] | None = None) -> Any:
    meta = {"namespace": "ns", "name": name, "uid": name, "generation": 1, "annotations": annotations or {}}
    return {"metadata": meta, "status": {}}


async def until(predicate: Any, seconds: float = 2.0) -> bool:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_routine_checks_leave_slots_for_new_resources_and_requested_checks() -> None:
    rt = runtime(StatusLog())
    rt.settings.resync_interval_seconds = 0.02  # type: ignore[misc] - periodic checks fall due at once
    kind = Held(PLURAL)
    rt.serve(kind)
    olds = [f"old-{i}" for i in range(8)]
    try:
        for name in olds:
            rt.observe(named(name))
        assert await until(lambda: len(kind.bodies) == 8)  # every first pass
        await asyncio.sleep(0.1)  # the periodic checks fall due and queue for the gate

        rt.observe(named("new"))
        assert await until(lambda: kind.passes.get("new") == 1 and "new" not in kind.inside)
        # Routine checks hold at most a quarter of the 4 workers: one at the gate, the others queued for it.
        assert len(kind.inside) == 1

        waiting = next(name for name in olds if name not in kind.inside)
        rt.observe(named(waiting, {"octoconn.dev/reconcile-requested-at": "now"}))
        assert await until(lambda: kind.bodies[-1]["metadata"]["name"] == waiting)
    finally:
        kind.gate.set()
        await rt.stop()


def landed(name: str) -> Any:
    new = named(name)
    new["metadata"]["finalizers"] = ["octoconn.dev/finalizer"]
    return new


async def test_a_new_resource_waits_for_kopfs_first_patch_as_long_as_kopf_shows_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loop_module, "FIRST_PATCH_WAIT_SECONDS", 0.3)
    rt = runtime(StatusLog())
    kind = Passes(PLURAL)
    rt.serve(kind)
    ran_at: dict[str, float] = {}
    reconcile = kind.reconcile

    async def timed(res: Mapping[str, Any], *, fresh: bool, first_patch: FirstPatch | None) -> Outcome[Any]:
        ran_at[res["metadata"]["name"]] = time.monotonic()
        return await reconcile(res, fresh=fresh, first_patch=first_patch)

    kind.reconcile = timed  # type: ignore[method-assign]
    try:
        rt.observe(named("stuck"), new=True)  # Kopf never shows its first patch
        rt.observe(named("quick"), new=True)
        await asyncio.sleep(0.2)
        assert ran_at == {}  # neither runs before its first patch shows
        rt.observe(landed("quick"))
        landed_at = time.monotonic()
        assert await until(lambda: "quick" in ran_at)  # at once once it shows
        assert await until(lambda: "stuck" in ran_at, seconds=5)  # and the other in the end, without it
        # Kopf showed progress (quick's patch) after stuck had waited 0.2 s: stuck's wait ran on from there.
        assert ran_at["stuck"] - landed_at >= 0.3
    finally:
        await rt.stop()


class Switch:
    """Kopf's operator-paused switch, as the loop uses it."""

    def __init__(self) -> None:
        self.on = False
        self.changed = asyncio.Condition()

    def is_on(self) -> bool:
        return self.on

    async def wait_for(self, state: bool) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.on == state)

    async def turn(self, state: bool) -> None:
        async with self.changed:
            self.on = state
            self.changed.notify_all()


async def test_while_another_replica_holds_the_peering_no_pass_runs_and_everything_is_listed_again() -> None:
    rt = runtime(StatusLog())
    kind = Passes(PLURAL)
    rt.serve(kind)
    switch = Switch()
    try:
        rt.follow_pause(switch)
        rt.observe(named("a"))
        assert await next_pass(kind)
        await switch.turn(True)
        assert await until(lambda: not rt.tracked)  # left to the other replica
        rt.observe(named("a", {"example.com/touched": "yes"}))  # an event that sneaks in while pausing
        rt.kick("ns", "a")
        assert not await next_pass(kind)
        await switch.turn(False)
        rt.observe(named("a", {"example.com/touched": "yes"}))  # Kopf's listing after the pause
        assert await next_pass(kind)
        assert len(kind.bodies) == 2
    finally:
        await rt.stop()


async def test_a_finalized_resource_leaves_nothing_behind_even_without_its_deleted_event() -> None:
    rt = runtime(StatusLog())
    kind = Passes(PLURAL)
    rt.serve(kind)
    try:
        rt.observe(named("a"))
        assert await next_pass(kind)
        deleting = named("a")
        deleting["metadata"]["deletionTimestamp"] = "2026-12-07T00:00:00Z"
        rt.observe(deleting)
        assert not await next_pass(kind)  # no pass of a resource being deleted
        assert await rt.finalize(kind, deleting, lambda _: None, attempt=1) is None
        assert (PLURAL, "ns", "a") not in rt.tracked
        rt.observe(deleting)  # the event of Kopf's finalizer removal; the DELETED after it is lost
        assert rt.tracked == {}
        assert not await next_pass(kind)
    finally:
        await rt.stop()
