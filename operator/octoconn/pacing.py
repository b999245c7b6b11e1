"""A write pacer shared by every resource the operator reconciles.

Infisical Cloud counts app-connection writes and logins per client IP (about 200 a minute) and answers 429 beyond
that. Each resource reconciles on its own, so only a limiter shared by all of them keeps the operator as a whole
under the limit; and one 429 means the window is full for everyone, so it has to pause every writer, not only the
one that saw it.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from octoconn import metrics


class WritePacer:
    """Token bucket (as a GCRA schedule): ``per_minute`` sustained, up to ``burst`` at once after an idle spell.

    Any 60-second window admits at most ``burst + per_minute`` acquisitions, so pick ``per_minute`` with that headroom
    below the server's limit. Waiters are served in the order they called ``acquire``: each one reserves the next
    free slot instead of polling, so a queue of hundreds of writers costs one sleep each, not a thundering herd.
    """

    def __init__(
        self,
        *,
        per_minute: int,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        name: str | None = None,
    ) -> None:
        """``name`` labels the time callers wait here in the metrics (``read`` or ``write``); None: not measured."""
        self.name = name
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        # A small default burst: a full-size burst on top of the sustained rate could double the writes that land in
        # one server-side window right after the operator starts.
        burst = max(1, per_minute // 10) if burst is None else burst
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.per_minute = per_minute
        self.burst = burst
        self._interval = 60.0 / per_minute
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._tat = -math.inf  # theoretical arrival time of the next slot
        self._paused_until = -math.inf

    async def acquire(self) -> None:
        """Wait until this caller may send one write."""
        started = self._clock()
        await self._acquire()
        if self.name is not None:
            metrics.PACER_WAIT.labels(self.name).observe(self._clock() - started)

    async def _acquire(self) -> None:
        while True:
            now = self._clock()
            tat = max(self._tat, now)
            allowed_at = tat - self._tolerance
            self._tat = tat + self._interval
            if allowed_at <= now:
                return
            await self._sleep(allowed_at - now)
            # The slot was reserved before a 429 may have paused everyone: only go if the pause is over by now,
            # otherwise queue again behind the pause (penalize moved the schedule past it).
            if self._clock() >= self._paused_until:
                return

    def penalize(self, seconds: float) -> None:
        """Pause every writer for ``seconds`` (a server's Retry-After), then resume at the sustained rate."""
        if not seconds > 0:
            return
        now = self._clock()
        until = now + seconds
        self._paused_until = max(self._paused_until, until)
        # Resume at the paced rate without a burst: the server's window was full, the first write after the pause
        # should be followed by the next one only one interval later.
        self._tat = max(self._tat, until + self._tolerance)

    @property
    def paused_for(self) -> float:
        """Seconds left of the current pause (0 when none); for logs and status messages."""
        return max(0.0, self._paused_until - self._clock())


def parse_retry_after(value: str | None, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date), or None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now()).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)
