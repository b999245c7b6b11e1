"""The work queue's promises (``octoconn.workqueue``): one entry per key, never two workers on one key, later work
superseded by work now, and routine checks kept to their share of the workers."""

from __future__ import annotations

import asyncio

import pytest

from octoconn.workqueue import QueueClosed, WorkQueue


async def nothing_ready(queue: WorkQueue[str]) -> bool:
    try:
        await asyncio.wait_for(queue.get(), 0.05)
    except TimeoutError:
        return True
    return False


async def test_a_key_added_twice_is_handed_out_once() -> None:
    queue: WorkQueue[str] = WorkQueue(routine_limit=1)
    queue.add("a")
    queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert await queue.get() == ("a", False)
    assert await queue.get() == ("b", False)
    assert await nothing_ready(queue)


async def test_a_key_added_while_a_worker_has_it_comes_back_after_done_not_before() -> None:
    queue: WorkQueue[str] = WorkQueue(routine_limit=1)
    queue.add("a")
    key, _ = await queue.get()
    queue.add(key)
    queue.add(key)
    assert await nothing_ready(queue)  # not to a second worker while the first has it
    queue.done(key)
    assert await queue.get() == ("a", False)
    queue.done("a")
    assert await nothing_ready(queue)  # once, however often it was added meanwhile


async def test_work_now_supersedes_work_later_and_the_earlier_of_two_later_times_wins() -> None:
    queue: WorkQueue[str] = WorkQueue(routine_limit=1)
    queue.add_after("a", 30)
    assert await nothing_ready(queue)
    queue.add("a")
    assert await queue.get() == ("a", False)
    queue.done("a")
    assert await nothing_ready(queue)  # the 30 s hand-out is gone, not merely late

    queue.add_after("b", 30)
    queue.add_after("b", 0.01)
    queue.add_after("b", 60)
    assert await asyncio.wait_for(queue.get(), 1) == ("b", False)


async def test_routine_keys_wait_behind_urgent_ones_and_hold_at_most_their_share() -> None:
    queue: WorkQueue[str] = WorkQueue(routine_limit=1)
    for key in ("r1", "r2"):
        queue.add(key, routine=True)
    queue.add("u")
    assert await queue.get() == ("u", False)  # urgent first, though added last
    assert await queue.get() == ("r1", True)
    assert await nothing_ready(queue)  # r2 waits: one routine pass at a time
    queue.add("r2")  # something changed: no longer routine
    assert await queue.get() == ("r2", False)
    queue.add("r3", routine=True)
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    queue.done("r1")  # the routine share is free again
    assert await asyncio.wait_for(waiting, 1) == ("r3", True)


async def test_forget_drops_queued_and_later_work_and_until_idle_waits_for_the_worker() -> None:
    queue: WorkQueue[str] = WorkQueue(routine_limit=1)
    queue.add("a")
    queue.add_after("b", 0.01)
    queue.forget("a")
    queue.forget("b")
    assert await nothing_ready(queue)

    queue.add("c")
    await queue.get()
    queue.add("c")  # to come back after done...
    queue.forget("c")  # ...unless forgotten meanwhile
    idle = asyncio.ensure_future(queue.until_idle("c"))
    await asyncio.sleep(0.01)
    assert not idle.done()
    queue.done("c")
    await asyncio.wait_for(idle, 1)
    assert await nothing_ready(queue)


async def test_a_closed_queue_releases_its_waiting_workers() -> None:
    queue: WorkQueue[str] = WorkQueue(routine_limit=1)
    waiting = [asyncio.ensure_future(queue.get()) for _ in range(3)]
    await asyncio.sleep(0.01)
    queue.add_after("a", 0.01)
    queue.close()
    for worker in waiting:
        with pytest.raises(QueueClosed):
            await asyncio.wait_for(worker, 1)
    with pytest.raises(QueueClosed):
        await queue.get()


async def test_a_woken_worker_that_is_cancelled_passes_the_key_on() -> None:
    queue: WorkQueue[str] = WorkQueue(routine_limit=1)
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0.01)
    queue.add("a")  # wakes the first waiter...
    first.cancel()  # ...which leaves before it runs
    assert await asyncio.wait_for(second, 1) == ("a", False)
