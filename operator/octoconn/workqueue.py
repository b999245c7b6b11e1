"""The resources waiting for a pass, in the shape of controller-runtime's workqueue, on asyncio.

- A key is queued at most once: adding a queued key again changes nothing, except that a routine check becomes
  urgent work.
- A key is never handed to two workers at once: added while a worker has it, it is handed out again when that
  worker is done with it.
- ``add_after`` holds a key back until its time (the periodic check, a retry delay); an ``add`` now supersedes it.
- Routine keys (a periodic check that nothing asked for) are handed out only when no urgent key waits, and only
  while fewer than ``routine_limit`` of them are being worked on, so that checks waiting for a remote's pace leave
  the other workers to new, changed and requested work.

One queue and a fixed number of workers replace a task per resource: 1000 resources are 1000 dictionary entries
and at most 1000 timer handles, not 1000 sleeping coroutines (docs/scale.md). No Kopf and no I/O here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class QueueClosed(Exception):
    """``get`` on a queue that hands out no more work (the operator is stopping)."""


class WorkQueue(Generic[K]):
    def __init__(self, *, routine_limit: int) -> None:
        self.routine_limit = max(1, routine_limit)
        self._urgent: deque[K] = deque()
        self._routine: deque[K] = deque()
        # Whether each queued key is routine. The lanes may hold stale entries (a routine key moved to the urgent
        # lane, a key forgotten); an entry counts only while it agrees with this map.
        self._queued: dict[K, bool] = {}
        self._active: dict[K, bool] = {}  # keys a worker has now -> routine
        self._again: dict[K, bool] = {}  # added while a worker had it -> routine
        self._later: dict[K, tuple[float, asyncio.TimerHandle, bool]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._idle: dict[K, asyncio.Event] = {}
        self._closed = False

    def __len__(self) -> int:
        """Keys waiting for a worker now (not those held back until later)."""
        return len(self._queued)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def active(self) -> int:
        return len(self._active)

    def add(self, key: K, *, routine: bool = False) -> None:
        entry = self._later.pop(key, None)
        if entry is not None:
            entry[1].cancel()
        self._put(key, routine)

    def add_after(self, key: K, delay: float, *, routine: bool = False) -> None:
        """Queue ``key`` in ``delay`` seconds, unless it is queued before (an earlier time already set wins)."""
        if delay <= 0:
            self.add(key, routine=routine)
            return
        if key in self._queued or key in self._again:
            return  # it runs soon anyway, and that pass sets its own next time
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        entry = self._later.get(key)
        if entry is not None:
            if entry[0] <= due:
                return
            entry[1].cancel()
        self._later[key] = (due, loop.call_at(due, self._due, key), routine)

    def forget(self, key: K) -> None:
        """Drop every queued and later hand-out of ``key``; a worker that has it now finishes."""
        self._queued.pop(key, None)
        self._again.pop(key, None)
        entry = self._later.pop(key, None)
        if entry is not None:
            entry[1].cancel()

    def clear(self) -> None:
        for key in [*self._queued, *self._again, *self._later]:
            self.forget(key)

    def close(self) -> None:
        """Hand out nothing more: every ``get``, waiting or not, raises ``QueueClosed``."""
        self._closed = True
        self.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> tuple[K, bool]:
        """The next key and whether its pass is routine. Call ``done`` with the key when its work is finished."""
        while True:
            if self._closed:
                raise QueueClosed
            picked = self._pick()
            if picked is not None:
                return picked
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # this worker was woken for a key and is leaving: let another take it
                raise

    def done(self, key: K) -> None:
        routine = self._active.pop(key, False)
        idle = self._idle.pop(key, None)
        if idle is not None:
            idle.set()
        again = self._again.pop(key, None)
        if again is not None:
            self.add(key, routine=again)
        if routine:
            self._wake()  # a routine slot is free again

    async def until_idle(self, key: K) -> None:
        """Return once no worker has ``key``."""
        if key in self._active:
            await self._idle.setdefault(key, asyncio.Event()).wait()

    def _due(self, key: K) -> None:
        entry = self._later.pop(key, None)
        if entry is not None:
            self._put(key, entry[2])

    def _put(self, key: K, routine: bool) -> None:
        if key in self._active:
            self._again[key] = self._again.get(key, True) and routine
            return
        queued = self._queued.get(key)
        if queued is None:
            self._queued[key] = routine
            (self._routine if routine else self._urgent).append(key)
        elif queued and not routine:
            self._queued[key] = False
            self._urgent.append(key)
        else:
            return
        self._wake()

    def _pick(self) -> tuple[K, bool] | None:
        while self._urgent:
            key = self._urgent.popleft()
            if self._queued.get(key) is False:
                return self._start(key, False)
        if sum(self._active.values()) >= self.routine_limit:
            return None
        while self._routine:
            key = self._routine.popleft()
            if self._queued.get(key) is True:
                return self._start(key, True)
        return None

    def _start(self, key: K, routine: bool) -> tuple[K, bool]:
        del self._queued[key]
        self._active[key] = routine
        return key, routine

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
