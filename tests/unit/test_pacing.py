"""The shared write pacer, driven by a fake clock: no test here sleeps for real."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from octoconn.pacing import WritePacer, parse_retry_after


class FakeTime:
    """A clock that only moves when somebody sleeps; sleepers wake in deadline order, like real timers."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._deadlines: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        deadline = self.now + seconds
        self._deadlines.append(deadline)
        # Let every other task run (and register its own deadline) until ours is the earliest.
        while True:
            await asyncio.sleep(0)
            if min(self._deadlines) == deadline:
                break
        self._deadlines.remove(deadline)
        self.now = max(self.now, deadline)


def make_time() -> FakeTime:
    return FakeTime()


def pacer(fake: FakeTime, **kwargs: int) -> WritePacer:
    return WritePacer(clock=fake.clock, sleep=fake.sleep, **kwargs)


async def test_burst_passes_without_waiting() -> None:
    fake = make_time()
    writes = pacer(fake, per_minute=60, burst=5)
    for _ in range(5):
        await writes.acquire()
    assert fake.sleeps == []
    assert fake.now == 1000.0


async def test_sustained_rate_after_the_burst() -> None:
    fake = make_time()
    writes = pacer(fake, per_minute=60, burst=2)
    stamps = []
    for _ in range(6):
        await writes.acquire()
        stamps.append(fake.now - 1000.0)
    assert stamps == [0.0, 0.0, 1.0, 2.0, 3.0, 4.0]


async def test_tokens_refill_while_idle_up_to_the_burst() -> None:
    fake = make_time()
    writes = pacer(fake, per_minute=60, burst=3)
    for _ in range(3):
        await writes.acquire()
    fake.now += 60  # a long idle spell refills to the burst, not beyond
    for _ in range(3):
        await writes.acquire()
    assert fake.sleeps == []
    await writes.acquire()
    assert fake.sleeps == [pytest.approx(1.0)]


async def test_default_burst_is_a_tenth_of_the_rate() -> None:
    writes = WritePacer(per_minute=200)
    assert writes.burst == 20
    assert WritePacer(per_minute=5).burst == 1


async def test_any_minute_admits_at_most_burst_plus_rate() -> None:
    fake = make_time()
    writes = pacer(fake, per_minute=120, burst=10)
    stamps: list[float] = []

    async def writer() -> None:
        await writes.acquire()
        stamps.append(fake.now)

    await asyncio.gather(*(writer() for _ in range(400)))
    stamps.sort()
    worst = max(sum(1 for s in stamps if start <= s < start + 60) for start in stamps)
    assert worst <= 10 + 120


async def test_concurrent_waiters_are_served_in_order_one_slot_each() -> None:
    fake = make_time()
    writes = pacer(fake, per_minute=60, burst=1)
    order: list[int] = []

    async def writer(number: int) -> None:
        await writes.acquire()
        order.append(number)

    await asyncio.gather(*(writer(n) for n in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert fake.now - 1000.0 == pytest.approx(4.0)
    assert len(fake.sleeps) == 4  # one sleep per waiter, no polling


async def test_penalize_pauses_every_writer_then_resumes_at_the_rate() -> None:
    fake = make_time()
    writes = pacer(fake, per_minute=60, burst=5)
    await writes.acquire()
    writes.penalize(30)
    assert writes.paused_for == pytest.approx(30)
    stamps: list[float] = []

    async def writer() -> None:
        await writes.acquire()
        stamps.append(fake.now - 1000.0)

    await asyncio.gather(*(writer() for _ in range(3)))
    # Nobody before the pause ends, and no burst right after it: the server's window was full.
    assert sorted(stamps) == [pytest.approx(30.0), pytest.approx(31.0), pytest.approx(32.0)]
    assert writes.paused_for == 0


async def test_penalize_reaches_writers_that_were_already_waiting() -> None:
    fake = make_time()
    writes = pacer(fake, per_minute=60, burst=1)
    stamps: dict[int, float] = {}

    async def writer(number: int) -> None:
        await writes.acquire()
        stamps[number] = fake.now - 1000.0

    tasks = [asyncio.create_task(writer(n)) for n in range(4)]
    await asyncio.sleep(0)  # all four have reserved slots at 0, 1, 2, 3
    writes.penalize(10)
    await asyncio.gather(*tasks)
    assert stamps[0] == 0.0  # went before the 429
    assert all(stamps[n] >= 10.0 for n in (1, 2, 3))
    assert sorted(stamps[n] for n in (1, 2, 3)) == [pytest.approx(10.0), pytest.approx(11.0), pytest.approx(12.0)]


async def test_penalize_never_shortens_a_pause() -> None:
    fake = make_time()
    writes = pacer(fake, per_minute=60, burst=1)
    writes.penalize(30)
    writes.penalize(5)
    writes.penalize(0)
    writes.penalize(-3)
    assert writes.paused_for == pytest.approx(30)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"per_minute": 0}, "per_minute"), ({"per_minute": 10, "burst": 0}, "burst")]
)
def test_rejects_nonsense(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WritePacer(**kwargs)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("2", 2.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=lambda: now) == expected
