"""The watch bodies the loop keeps carry no ``managedFields`` (issue 19: memory per resource), and the loop learns
Kopf's pause switch from the same wrapped stream."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.clients import watching
from kopf._core.reactor import queueing

from octoconn import handlers
from octoconn.handlers import without_managed_fields


async def test_watch_events_reach_kopf_without_managed_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    managed = [{"manager": "octoconn", "operation": "Update", "fieldsV1": {"f:status": {"f:id": {}}}}]
    sent: list[Any] = [
        {"type": None, "object": {"metadata": {"name": "a", "managedFields": managed}, "status": {"id": "1"}}},
        watching.Bookmark.LISTED,
        {"type": "MODIFIED", "object": {"metadata": {"name": "a", "uid": "u", "managedFields": managed}}},
        {"type": "ERROR", "object": {"kind": "Status", "code": 410}},
    ]

    async def stream(**_: Any) -> AsyncIterator[Any]:
        for event in sent:
            yield event

    monkeypatch.setattr(watching, "infinite_watch", stream)
    without_managed_fields()
    without_managed_fields()  # configure() may run again in one process (tests): wrapped once
    seen = [event async for event in queueing.watching.infinite_watch()]  # the name Kopf's watcher calls

    assert seen[1] is watching.Bookmark.LISTED
    assert seen[0]["object"] == {"metadata": {"name": "a"}, "status": {"id": "1"}}
    assert seen[2]["object"]["metadata"] == {"name": "a", "uid": "u"}
    assert seen[3] == {"type": "ERROR", "object": {"kind": "Status", "code": 410}}


async def test_the_loop_learns_kopfs_pause_switch_from_the_watch_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    kopfs_own = getattr(watching.infinite_watch, "original", watching.infinite_watch)

    async def stream(**_: Any) -> AsyncIterator[Any]:
        yield watching.Bookmark.LISTED

    monkeypatch.setattr(watching, "infinite_watch", stream)
    monkeypatch.setattr(handlers, "_operator_paused", None)
    without_managed_fields()
    switch = aiotoggles.ToggleSet(any)
    assert [e async for e in queueing.watching.infinite_watch(operator_paused=switch)] == [watching.Bookmark.LISTED]
    assert handlers._operator_paused is switch
    # Kopf's watcher hands the switch to the stream under this name: the loop's pause depends on it.
    assert "operator_paused" in inspect.signature(kopfs_own).parameters
    assert "operator_paused=operator_paused" in inspect.getsource(queueing.watcher)
