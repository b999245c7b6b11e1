"""Fault 1: the Kubernetes API server goes away (restarted, its etcd killed, black-holed) while work is in flight.

The operator reaches the API server through Toxiproxy; the test talks to it directly, so changes keep being made
while the operator cannot see them. After each fault: no duplicate, nothing lost, the same process serving, and no
condition that claimed something false while the server was away.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.cluster.conftest import Kube
from tests.faults.conftest import OperatorFactory
from tests.faults.promises import (
    CREATE_PATH,
    Fleet,
    assert_keeps_serving,
    assert_no_duplicates,
    assert_nothing_lost,
    creates_sent,
    report,
    sample_conditions,
    wait_for,
)
from tests.faults.rig import Rig

pytestmark = [pytest.mark.faults, pytest.mark.timeout(400)]

# "A minute" in the issue; Kopf's watch inactivity timeout (70 s) is longer, so the watches cannot merely time out
# during the outage: they must resume on the healed connections. FAULTS_OUTAGE_SECONDS=90 repeats issue 18's case.
BLACK_HOLE_SECONDS = float(os.environ.get("FAULTS_OUTAGE_SECONDS", "60"))
# etcd comes back in half a second after a SIGKILL; kept down this long, the API server answers errors meanwhile.
ETCD_DOWN_SECONDS = 15.0


@pytest.mark.parametrize(("component", "kill"), [("kube-apiserver", False), ("etcd", True)])
def test_restart_during_creates_and_a_pending_rotation(
    rig: Rig, kube: Kube, start_operator: OperatorFactory, component: str, kill: bool
) -> None:
    operator = start_operator()
    pid = operator.popen.pid if operator.popen else -1
    fleet = Fleet(kube, rig)
    fleet.create_many("steady", 3)
    fleet.wait_settled()

    # Creates held in Infisical while the server goes: their status writes meet the outage.
    rig.infisical.state.faults.latency(2.0, path_prefix=CREATE_PATH)
    before = creates_sent(rig)
    new = fleet.create_many("during", 5)
    fleet.rotate("steady-0")
    wait_for(lambda: creates_sent(rig) > before, "a create in flight", timeout=60)
    with sample_conditions(fleet) as sampled:
        away = rig.plane.restart(component, kill=kill, down_for=ETCD_DOWN_SECONDS if component == "etcd" else 0)
        rig.infisical.state.faults.clear()
        healed = time.monotonic()
        fleet.rotate("steady-1")  # made as soon as the server is back
        fleet.wait_settled(timeout=180)
    report(
        f"{component} {'killed' if kill else 'stopped'} and restarted: away {away:.1f} s; every change settled "
        f"{time.monotonic() - healed:.1f} s after it was back"
    )

    assert_no_duplicates(fleet)
    assert_nothing_lost(fleet)
    assert "False" not in sampled.statuses(fleet.keys), sampled.seen
    assert sampled.statuses(new) <= {"Unknown", "True"}
    probe = assert_keeps_serving(fleet, operator, pid, "after-restart")
    report(f"{component} restart: a resource created afterwards was Ready in {probe:.1f} s")


@pytest.mark.parametrize("outage", ["black-holed", "refused"])
def test_unreachable_then_healed_watches_resume(
    rig: Rig, kube: Kube, start_operator: OperatorFactory, outage: str
) -> None:
    operator = start_operator()
    pid = operator.popen.pid if operator.popen else -1
    fleet = Fleet(kube, rig)
    fleet.create_many("steady", 3)
    fleet.wait_settled()

    before = creates_sent(rig)
    with sample_conditions(fleet) as sampled:
        with rig.kube_proxy.black_hole() if outage == "black-holed" else rig.kube_proxy.down():
            # Changes the operator cannot see yet: a create, a rotation and a rename while every byte is swallowed.
            fleet.create("in-hole")
            fleet.rotate("steady-0")
            fleet.rename("steady-1", "steady-1-renamed")
            time.sleep(BLACK_HOLE_SECONDS)
            creates_in_hole = creates_sent(rig) - before
        healed = time.monotonic()
        fleet.wait_settled(timeout=180)
        caught_up = time.monotonic() - healed
        # A change made after the heal travels over the resumed watches, not a re-list at start-up.
        fleet.rotate("steady-2")
        started = time.monotonic()
        fleet.wait_settled(timeout=120)
        after = time.monotonic() - started
    report(
        f"API server {outage} {BLACK_HOLE_SECONDS:.0f} s: changes made during it settled {caught_up:.1f} s "
        f"after the heal; a change made after the heal settled in {after:.1f} s"
    )

    # Nothing was created before the operator could write its create marker: the hole held the new resource back.
    assert creates_in_hole == 0
    assert_no_duplicates(fleet)
    assert_nothing_lost(fleet)
    assert "False" not in sampled.statuses(fleet.keys), sampled.seen
    probe = assert_keeps_serving(fleet, operator, pid, "after-outage")
    report(f"API server {outage}: a resource created afterwards was Ready in {probe:.1f} s")
