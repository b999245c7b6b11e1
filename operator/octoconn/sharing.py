"""Work shared by the resources that ask for the same thing at once: one call in flight per key, and its answer
kept for a short while.

1000 resources sharing one Secret, or one API key at one Octopus URL, would otherwise each send the same call when
it changes. The Octopus verification cache (``reconcile.VerificationCache``) and the Secret reads
(``stores.SharedSecretReads``) are built from these two pieces. Plain asyncio: no clients, no kopf.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """At most one call in flight per key: callers that ask meanwhile wait for its answer."""

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._inflight

    async def run(
        self, key: K, call: Callable[[], Awaitable[V]], *, shared_error: Callable[[BaseException], BaseException]
    ) -> V:
        """``call()``, or the answer of the one in flight for ``key``. When it fails, its caller gets the exception
        itself and every waiter ``shared_error(exception)`` (a copy, or one that names no internals)."""
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await call()
        except BaseException as exc:
            future.set_exception(shared_error(exc))
            future.exception()  # retrieved: no "never retrieved" warning when nobody else was waiting
            raise
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
        future.set_result(value)
        return value

    def drop(self, key: K) -> None:
        """Later callers call again rather than wait for the call in flight (begun before a change)."""
        self._inflight.pop(key, None)


class Kept(Generic[K, V]):
    """Answers kept for ``ttl`` seconds. They are kept in time order with one ttl, so the expired ones are at the
    front. A ttl of zero keeps nothing."""

    def __init__(self, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._kept: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> tuple[V] | None:
        """``(answer,)`` while it is kept (an answer may itself be None), else None."""
        now = self._clock()
        for old, (until, _) in list(self._kept.items()):
            if until > now:
                break
            del self._kept[old]
        kept = self._kept.get(key)
        return (kept[1],) if kept is not None else None

    def put(self, key: K, value: V) -> None:
        if self._ttl > 0:
            self._kept[key] = (self._clock() + self._ttl, value)

    def drop(self, key: K) -> None:
        self._kept.pop(key, None)
