"""The engine's adapter contract with a toy kind: which step runs when, and what the engine owns for every kind.

The two real kinds are locked by the contract and cluster tiers; this file shows the engine's own promises with an
adapter that does nothing but record what it is asked, so a change to the engine's order or policies fails here
first and plainly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from octoconn import engine, errors
from octoconn.conditions import READY, Event, summarize
from octoconn.creates import FirstPatch, new_marker
from octoconn.engine import ManagedReconciler, ManagedResource, Observation, Verdict
from octoconn.models import ANNOTATION_PAUSED, ANNOTATION_PENDING_CREATE, Condition, ManagedStatus, PendingCreate
from octoconn.models import Refusal as RefusalModel
from octoconn.ownership import Evidence

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
MARKER = new_marker("w", None, NOW)


class WidgetSpec(BaseModel):
    size: int = 1
    deletion_policy: Literal["Delete", "Orphan"] | None = None


class WidgetRefusal(RefusalModel):
    size: int


class WidgetStatus(ManagedStatus):
    id: str | None = None
    size: int | None = None
    pending_create: PendingCreate | None = None
    refused_write: WidgetRefusal | None = None


@dataclass(frozen=True, kw_only=True)
class Widget(ManagedResource[WidgetStatus]):
    spec: WidgetSpec
    spec_model = WidgetSpec
    status_model = WidgetStatus


@dataclass(frozen=True)
class Remote:
    id: str
    name: str
    size: int
    created_at: str = "2026-12-03T12:00:00Z"


@dataclass
class Store:
    objects: dict[str, Remote] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    refuse: bool = False

    def add(self, remote: Remote) -> Remote:
        self.objects[remote.id] = remote
        return remote


class Annotations:
    async def patch_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None], *, plural: str
    ) -> None:
        pass


class WidgetReconciler(ManagedReconciler[Widget, Store, Observation[Remote], Remote, Store]):
    plural = "widgets"
    what = "widget"
    short = "widget"
    copied = {"size": "size"}

    def __init__(self, store: Store) -> None:
        super().__init__(writer=Annotations(), owners_of=lambda _: (), clock=lambda: NOW)
        self.store = store

    async def prepare(self, res: Widget, status: Any, now: datetime, *, fresh: bool) -> Store:
        self.store.calls.append("prepare")
        if res.spec.size < 0:
            raise errors.InfisicalUnavailable("no widgets today")
        return self.store

    def unprepared(self, res: Widget, status: Any, error: errors.OctoconnError, now: datetime) -> engine.Synced:
        return "Unknown", error.reason, error.message

    async def observe(
        self, res: Widget, status: Any, prepared: Store, now: datetime, first_patch: FirstPatch | None
    ) -> Observation[Remote]:
        self.store.calls.append("observe")
        remote, _ = await self.find(res, prepared, now, first_patch, lambda found, sent: [])
        return Observation(remote=remote)

    async def create(
        self, res: Widget, status: Any, prepared: Store, observed: Observation[Remote], now: datetime
    ) -> tuple[Remote, Event | None]:
        async def send() -> Remote:
            self.store.calls.append("create")
            if self.store.refuse:
                raise errors.InfisicalRejected("widgets that size are not made")
            return self.store.add(Remote(f"id-{len(self.store.objects)}", res.name, res.spec.size))

        created, _ = await self.send_create(
            res,
            status,
            prepared,
            now,
            lambda: self.send_once(res, status, "create", str(res.spec.size), send),
            evidence=Evidence(None),
            differences=lambda found: [],
        )
        return created, Event("Normal", "Created", f"Created widget {created.id}.")

    async def update(
        self, res: Widget, status: Any, prepared: Store, observed: Observation[Remote], remote: Remote, now: datetime
    ) -> tuple[Remote, Event | None]:
        if remote.size == res.spec.size:
            return remote, None
        self.store.calls.append("update")
        return self.store.add(Remote(remote.id, remote.name, res.spec.size)), Event("Normal", "Updated", "size")

    def failed(self, res: Widget, status: Any, error: errors.OctoconnError, now: datetime) -> engine.Synced:
        return "False", error.reason, error.message

    def record(
        self,
        res: Widget,
        status: Any,
        prepared: Store,
        observed: Observation[Remote],
        remote: Remote,
        action: Event | None,
        now: datetime,
    ) -> Verdict:
        return Verdict(("True", "UpToDate", f"widget {remote.id} matches"))

    def summarize(self, res: Widget, status: Any, now: datetime) -> list[Condition]:
        return summarize(
            status.conditions or [],
            (engine.SYNCED,),
            ready_reason="Available",
            ready_message="ok",
            generation=res.generation,
            now=now,
        )

    def project_of(self, res: Widget) -> str | None:
        return None

    def legacy_marker(self, res: Widget) -> PendingCreate | None:
        return None

    async def get(self, store: Store, remote_id: str) -> Remote | None:
        store.calls.append("get")
        return store.objects.get(remote_id)

    async def lookup(self, res: Widget, store: Store, name: str, project_id: str | None) -> Remote | None:
        store.calls.append("lookup")
        return next((o for o in store.objects.values() if o.name == name), None)

    def refusal_holds(self, res: Widget, refused: WidgetRefusal, request: str) -> bool:
        return str(refused.size) == request

    def refusal(
        self, res: Widget, operation: engine.Operation, request: str, error: errors.OctoconnError
    ) -> WidgetRefusal:
        return WidgetRefusal(operation=operation, size=int(request), reason=error.reason, message=error.message)

    def remembered(self, refused: WidgetRefusal) -> errors.OctoconnError:
        return errors.InfisicalRejected(f"{refused.message} (not sent again)")

    def remote_name(self, res: Widget) -> str:
        return res.name

    def orphan(self, res: Widget) -> bool:
        return res.spec.deletion_policy == "Orphan"

    async def finalizer_store(self, res: Widget) -> Store:
        return self.store

    def deletion_differences(self, res: Widget, found: Remote, sent: tuple[str, str | None]) -> list[str]:
        return []

    async def delete(self, res: Widget, store: Store, remote_id: str) -> list[Event]:
        store.calls.append("delete")
        store.objects.pop(remote_id, None)
        return [Event("Normal", "Deleted", remote_id)]


def widget(status: WidgetStatus | None = None, *, size: int = 1, paused: bool = False, **spec: Any) -> Widget:
    annotations = {ANNOTATION_PENDING_CREATE: MARKER}
    if paused:
        annotations[ANNOTATION_PAUSED] = "true"
    return Widget.from_body(
        {
            "metadata": {"namespace": "ns", "name": "w", "uid": "u", "generation": 2, "annotations": annotations},
            "spec": {"size": size, **spec},
            "status": (status or WidgetStatus()).model_dump(),
        }
    )


def reconciler(store: Store) -> WidgetReconciler:
    rec = WidgetReconciler(store)
    rec.remember_marker("u", MARKER)  # as the handlers do with Kopf's first patch: no earlier create can exist
    return rec


async def test_a_new_resource_is_created_without_a_lookup_and_its_action_comes_first() -> None:
    store = Store()
    outcome = await reconciler(store).reconcile(widget(size=3))
    assert store.calls == ["prepare", "observe", "create"]
    assert outcome.error is None
    assert (outcome.status.id, outcome.status.size, outcome.status.observed_generation) == ("id-0", 3, 2)
    assert [e.reason for e in outcome.events] == ["Created", "Available"]
    ready = outcome.status.condition(READY)
    assert ready is not None
    assert ready.status == "True"


async def test_a_recorded_object_that_matches_is_read_and_nothing_is_sent() -> None:
    store = Store()
    store.add(Remote("id-0", "w", 1))
    first = await reconciler(store).reconcile(widget(WidgetStatus(id="id-0")))
    store.calls.clear()
    again = await reconciler(store).reconcile(widget(first.status))
    assert store.calls == ["prepare", "observe", "get"]
    assert again.events == []
    assert not engine.needs_write(first.status, again.status, NOW.timestamp())


async def test_paused_calls_nothing_and_an_unprepared_pass_reaches_no_remote() -> None:
    store = Store()
    paused = await reconciler(store).reconcile(widget(paused=True))
    assert store.calls == []
    synced = paused.status.condition(engine.SYNCED)
    assert synced is not None
    assert (synced.status, synced.reason) == ("False", "ReconcilePaused")
    failed = await reconciler(store).reconcile(widget(size=-1))
    assert store.calls == ["prepare"]
    assert failed.error is not None
    assert failed.error.reason == "InfisicalUnavailable"


async def test_a_refused_create_is_kept_in_status_and_not_sent_again_until_the_request_changes() -> None:
    store = Store(refuse=True)
    first = await reconciler(store).reconcile(widget(size=5))
    assert first.status.refused_write is not None
    assert first.status.refused_write.size == 5
    store.calls.clear()
    again = await reconciler(store).reconcile(widget(first.status, size=5))
    assert "create" not in store.calls
    assert again.error is not None
    assert "not sent again" in again.error.message
    store.calls.clear()
    await reconciler(store).reconcile(widget(first.status, size=6))
    assert "create" in store.calls


@pytest.mark.parametrize(
    ("spec", "paused", "reason"),
    [({"deletion_policy": "Orphan"}, False, "Orphaned"), ({}, True, "ReconcilePaused")],
)
async def test_the_finalizer_preamble_deletes_nothing_for_orphan_or_paused(
    spec: dict[str, Any], paused: bool, reason: str
) -> None:
    store = Store()
    store.add(Remote("id-0", "w", 1))
    events = await reconciler(store).finalize(widget(WidgetStatus(id="id-0"), paused=paused, **spec))
    assert [e.reason for e in events] == [reason]
    assert store.objects
    assert "delete" not in store.calls


async def test_the_finalizer_deletes_what_is_recorded_and_leaves_a_same_named_stranger() -> None:
    store = Store()
    assert [e.reason for e in await reconciler(store).finalize(widget())] == ["NothingToDelete"]
    store.add(Remote("id-0", "w", 1))
    assert [e.reason for e in await reconciler(store).finalize(widget())] == ["LeftInPlace"]
    assert store.objects
    assert "delete" not in store.calls
    assert [e.reason for e in await reconciler(store).finalize(widget(WidgetStatus(id="id-0")))] == ["Deleted"]
    assert not store.objects


def test_a_blocked_deletion_shows_on_ready_with_the_kind_in_its_words() -> None:
    rec = reconciler(Store())
    status, events = rec.deletion_blocked(widget(), errors.InfisicalUnavailable("down"), NOW)
    ready = status.condition(READY)
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "DeletionBlocked")
    assert "leave the widget in Infisical" in ready.message
    assert [e.reason for e in events] == ["DeletionBlocked"]


def test_without_heartbeats_needs_write_writes_only_changes() -> None:
    before = WidgetStatus(id="a", size=1)
    assert not engine.needs_write(before, before.model_copy(), NOW.timestamp())
    assert engine.needs_write(before, before.model_copy(update={"size": 2}), NOW.timestamp())
