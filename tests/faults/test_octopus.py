"""Fault 3: one Octopus instance URL is slow or down; resources of the other instance keep flowing meanwhile.

Both instance URLs are Toxiproxy proxies in front of the same Octopus test server, so the fault is on the way to
one URL only (as for two Octopus servers); the Infisical test server checks keys through the same proxies.
"""

from __future__ import annotations

import time

import pytest

from tests.cluster.conftest import Kube
from tests.faults.conftest import OperatorFactory
from tests.faults.promises import (
    Fleet,
    assert_keeps_serving,
    assert_no_duplicates,
    assert_nothing_lost,
    report,
    sample_conditions,
)
from tests.faults.rig import Rig

pytestmark = [pytest.mark.faults, pytest.mark.timeout(400)]

SLOW_MS = 3000  # below OCTOCONN_OCTOPUS_TIMEOUT_SECONDS=4: answers arrive, seconds late


@pytest.mark.parametrize("fault", ["slow", "down"])
def test_one_octopus_instance_faulty_the_other_flows(
    rig: Rig, kube: Kube, start_operator: OperatorFactory, fault: str
) -> None:
    operator = start_operator()
    pid = operator.popen.pid if operator.popen else -1
    fleet = Fleet(kube, rig)
    if fault == "slow":
        rig.octopus_b.toxic("latency", latency=SLOW_MS)
    else:
        rig.octopus_b.enable(False)
    started = time.monotonic()
    with sample_conditions(fleet) as sampled:
        broken = fleet.create_many("on-b", 10, url=rig.octopus_b.url())
        healthy = fleet.create_many("on-a", 10, url=rig.octopus_a.url())
        flowed = fleet.wait_settled(timeout=120, names=healthy)
        objects = fleet.objects()
        b_ready_while_down = [n for n in broken if fleet.settled(objects[n])]
    rig.toxiproxy.reset()
    fleet.wait_settled(timeout=120)
    report(
        f"Octopus instance {fault}: the 10 resources of the healthy instance settled in {flowed:.1f} s; all 20 "
        f"{time.monotonic() - started:.1f} s after the start"
    )

    if fault == "down":
        assert b_ready_while_down == []
        # Unreachable is a passing state, not a verdict on the key: never False.
        assert "False" not in sampled.statuses(broken), sampled.seen
        assert sampled.reasons(broken, "Unknown") & {"OctopusUnreachable", "InfisicalUnavailable"}, sampled.seen
    assert "False" not in sampled.statuses(healthy), sampled.seen
    assert_no_duplicates(fleet)
    assert_nothing_lost(fleet)
    assert_keeps_serving(fleet, operator, pid, f"after-octopus-{fault}")
