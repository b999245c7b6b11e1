"""Faults 4 and 5: the operator process itself. SIGKILLed ten times in the middle of work; started twice by mistake.

Kills land a random 1-4 s into each life, while the creates, renames and rotations made just before are in flight
(the Infisical test server holds each create for half a second, so some are cut between Infisical's answer and the
status write: the create marker has to carry them over).
"""

from __future__ import annotations

import random
import time

import pytest

from tests.cluster.conftest import Kube
from tests.cluster.operator_process import OperatorProcess
from tests.faults.conftest import OperatorFactory
from tests.faults.promises import (
    CREATE_PATH,
    Fleet,
    assert_keeps_serving,
    assert_no_duplicates,
    assert_nothing_lost,
    report,
    wait_for,
)
from tests.faults.rig import Rig

pytestmark = [pytest.mark.faults, pytest.mark.timeout(400)]

KILLS = 10


def _no_leftover_names(fleet: Fleet, retired: set[str]) -> None:
    """A rename moves the connection: the old name is not left behind as a second connection."""
    left = sorted(c["name"] for c in fleet.rig.infisical.state.connections() if c["name"] in retired)
    assert left == [], f"old names still in Infisical: {left}"


def test_sigkilled_ten_times_during_creates_renames_and_rotations(
    rig: Rig, kube: Kube, start_operator: OperatorFactory
) -> None:
    fleet = Fleet(kube, rig)
    retired: set[str] = set()
    rng = random.Random(18)
    rig.infisical.state.faults.latency(0.5, path_prefix=CREATE_PATH)
    for life in range(KILLS):
        operator = start_operator(log_name=f"operator-{life}.log")
        fleet.create_many(f"life{life}", 2)
        if life > 0:
            old = fleet.names[f"life{life - 1}-0"]
            fleet.rename(f"life{life - 1}-0", f"renamed{life}")
            retired.add(old)
            fleet.rotate(f"life{life - 1}-1")
        time.sleep(rng.uniform(1.0, 4.0))
        operator.kill()
    rig.infisical.state.faults.clear()

    operator = start_operator(log_name="operator-last.log")
    pid = operator.popen.pid if operator.popen else -1
    settled = fleet.wait_settled(timeout=180)
    report(f"SIGKILLed {KILLS} times: {len(fleet.keys)} resources settled {settled:.1f} s after the last start")

    assert_no_duplicates(fleet)
    assert_nothing_lost(fleet)
    _no_leftover_names(fleet, retired)
    assert_keeps_serving(fleet, operator, pid, "after-kills")


def _two_operators(start_operator: OperatorFactory) -> tuple[OperatorProcess, OperatorProcess]:
    return start_operator(log_name="operator-a.log"), start_operator(log_name="operator-b.log")


def test_two_standalone_operators_make_no_duplicate(rig: Rig, kube: Kube, start_operator: OperatorFactory) -> None:
    _two_operators(start_operator)
    fleet = Fleet(kube, rig)
    fleet.create_many("twice", 20)
    # Both see every new resource at once; the create marker must let only one connection be made for each.
    wait_for(lambda: all(rig.connections_named(n) for n in fleet.names.values()), "every connection", timeout=120)
    time.sleep(5)  # the slower operator's retries, if any, come within its backoff cap (4 s)
    assert_no_duplicates(fleet)
    report("two --standalone operators on one namespace: 20 creates, 0 duplicates")


class NameConflictSeen(AssertionError):
    """A resource stuck in NameConflict against its own connection, told apart from a duplicate or a lost change:
    the race where one process's create is refused before its watch shows the other's status write."""


def test_two_standalone_operators_every_resource_ends_ready(
    rig: Rig, kube: Kube, start_operator: OperatorFactory
) -> None:
    first, second = _two_operators(start_operator)
    fleet = Fleet(kube, rig)
    fleet.create_many("twice", 20)
    for i in range(0, 20, 4):
        fleet.rotate(f"twice-{i}")
    started = time.monotonic()
    try:
        fleet.wait_settled(timeout=45)  # long enough: with one operator, 20 resources settle in a few seconds
    except AssertionError as exc:
        assert_no_duplicates(fleet)
        if "NameConflict" in str(exc):
            raise NameConflictSeen(str(exc)[:1500]) from None
        raise
    report(f"two --standalone operators: 20 resources settled in {time.monotonic() - started:.1f} s")
    assert_no_duplicates(fleet)
    assert_nothing_lost(fleet)
    pid = first.popen.pid if first.popen else -1
    assert_keeps_serving(fleet, first, pid, "after-two")
    assert second.popen is not None
    assert second.popen.poll() is None
