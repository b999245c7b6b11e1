"""Fault 2: Infisical hangs, fails, cuts answers off, rate-limits, or comes back from an empty backup.

A hang and a cut-off answer are Toxiproxy toxics on the operator's way to Infisical; 500s and 429s come from the
test server itself (its ``faults``), as Infisical would send them.
"""

from __future__ import annotations

import time

import pytest

import tests.servers.infisical as infisical_double
from tests.cluster.conftest import Kube, request_reconcile
from tests.faults.conftest import OperatorFactory
from tests.faults.promises import (
    CREATE_PATH,
    Fleet,
    assert_keeps_serving,
    assert_no_duplicates,
    assert_nothing_lost,
    report,
    sample_conditions,
    wait_for,
)
from tests.faults.rig import Rig

pytestmark = [pytest.mark.faults, pytest.mark.timeout(400)]

# "A minute" in the issue, halved to keep the tier near ten minutes: with OCTOCONN_INFISICAL_TIMEOUT_SECONDS=4 every
# call gives up after 4 s either way, so a longer hang only repeats the same retries.
HANG_SECONDS = 30.0
# The test server's rate-limit window (Infisical Cloud: 60 s), shortened so a storm lasts seconds.
STORM_WINDOW_SECONDS = 5
STORM_WRITES = 4  # per window, where twenty resources want one create each
# How long a third of the answers keep failing once the 30 creates and 10 rotations are asked for.
FAULT_WINDOW_SECONDS = 20.0
CUT_OFF = "cut-off"


def test_hanging_infisical(rig: Rig, kube: Kube, start_operator: OperatorFactory) -> None:
    operator = start_operator()
    pid = operator.popen.pid if operator.popen else -1
    fleet = Fleet(kube, rig)
    fleet.create_many("steady", 3)
    fleet.wait_settled()

    with sample_conditions(fleet) as sampled, rig.infisical_proxy.black_hole():
        fleet.create_many("during", 2)
        fleet.rotate("steady-0")
        time.sleep(HANG_SECONDS)
    healed = time.monotonic()
    fleet.wait_settled(timeout=120)
    report(f"Infisical hanging {HANG_SECONDS:.0f} s: every change settled {time.monotonic() - healed:.1f} s after")

    assert_no_duplicates(fleet)
    assert_nothing_lost(fleet)
    during = ["during-0", "during-1", "steady-0"]
    assert "False" not in sampled.statuses(fleet.keys), sampled.seen
    # What the hang looked like: Unknown, with the reason naming Infisical; never a green Ready for the new ones.
    assert "True" not in sampled.statuses(["during-0", "during-1"]), sampled.seen
    assert sampled.reasons(during, "Unknown") >= {"InfisicalUnavailable"}, sampled.seen
    assert_keeps_serving(fleet, operator, pid, "after-hang")


@pytest.mark.parametrize("fault", ["500", "cut-off"])
def test_failing_answers_while_30_are_created_and_10_rotated(
    rig: Rig, kube: Kube, start_operator: OperatorFactory, fault: str
) -> None:
    operator = start_operator()
    pid = operator.popen.pid if operator.popen else -1
    fleet = Fleet(kube, rig)
    rotated = fleet.create_many("rotated", 10)
    fleet.wait_settled()

    if fault == "500":
        rig.infisical.state.faults.error(500, times=None, every=3)
    else:
        # A third of the connections to Infisical closed after 300 bytes of the answer: the request was served, the
        # operator never learns how. A create among them is the lost create the create marker exists for.
        rig.infisical_proxy.toxic("limit_data", toxicity=0.33, bytes=300, name=CUT_OFF)
    started = time.monotonic()
    log_from = len(operator.log_text())
    with sample_conditions(fleet) as sampled:
        fleet.create_many("new", 30)
        for name in rotated:
            fleet.rotate(name)
        _hold(rig, fault, FAULT_WINDOW_SECONDS)
        rig.infisical.state.faults.clear()
        rig.toxiproxy.reset()
        fleet.wait_settled(timeout=180)
    failed = operator.log_text()[log_from:].count("InfisicalUnavailable")
    ours = set(fleet.names.values())
    posts = [r for r in rig.infisical.state.requests_to(CREATE_PATH, "POST") if (r.json or {}).get("name") in ours]
    served = len([r for r in posts if r.status == 200])
    report(
        f"Infisical {fault} on a third: 30 creates and 10 rotations settled in {time.monotonic() - started:.1f} s; "
        f"{failed} passes failed on it and were retried; {len(posts)} create requests, {served} answered 200"
    )
    assert failed > 0, "the fault never hit a pass"

    assert_no_duplicates(fleet)
    assert_nothing_lost(fleet)
    assert "False" not in sampled.statuses(fleet.keys), sampled.seen
    assert_keeps_serving(fleet, operator, pid, f"after-{fault}")


def test_429_storm_costs_a_handful_of_requests(
    rig: Rig, kube: Kube, start_operator: OperatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = start_operator()
    pid = operator.popen.pid if operator.popen else -1
    fleet = Fleet(kube, rig)
    monkeypatch.setattr(infisical_double, "RATE_LIMIT_WINDOW_SECONDS", STORM_WINDOW_SECONDS)
    first = len(rig.infisical.state.requests)
    rig.infisical.state.faults.rate_limit(writes_per_minute=STORM_WRITES)
    started = time.monotonic()
    with sample_conditions(fleet) as sampled:
        fleet.create_many("storm", 20)
        fleet.wait_settled(timeout=300)
    seconds = time.monotonic() - started
    during = rig.infisical.state.requests[first:]
    limited = [r for r in during if r.fault == "rate_limit"]
    windows = seconds / STORM_WINDOW_SECONDS
    report(
        f"429 storm ({STORM_WRITES} writes per {STORM_WINDOW_SECONDS} s window): 20 creates settled in {seconds:.1f} s "
        f"({windows:.0f} windows) with {len(during)} requests, {len(limited)} of them answered 429"
    )
    rig.infisical.state.faults.clear()

    assert_no_duplicates(fleet)
    assert_nothing_lost(fleet)
    # A 429 pauses every writer until Retry-After: a window costs at most the writes already in flight, not one
    # 429 per resource and retry.
    assert len(limited) <= 2 * windows + 5, f"{len(limited)} 429s over {windows:.0f} windows"
    assert "False" not in sampled.statuses(fleet.keys), sampled.seen
    assert_keeps_serving(fleet, operator, pid, "after-storm")


def test_restored_from_an_empty_backup_everything_is_recreated(
    rig: Rig, kube: Kube, start_operator: OperatorFactory
) -> None:
    resync = 10.0
    operator = start_operator(OCTOCONN_RESYNC_INTERVAL_SECONDS=str(resync))
    pid = operator.popen.pid if operator.popen else -1
    fleet = Fleet(kube, rig)
    fleet.create_many("restored", 10)
    fleet.wait_settled()
    old_ids = {o["status"]["id"] for o in fleet.objects().values()}

    for row in rig.infisical.state.connections():
        if row["id"] in old_ids:
            rig.infisical.state.delete_connection_out_of_band(row["id"])
    lost = time.monotonic()
    wait_for(lambda: {o["status"]["id"] for o in fleet.objects().values()}.isdisjoint(old_ids), "all recreated", 120)
    fleet.wait_settled()
    report(
        f"Infisical restored empty: all 10 connections recreated {time.monotonic() - lost:.1f} s later with "
        f"OCTOCONN_RESYNC_INTERVAL_SECONDS={resync:g} (found by the periodic check; at the default 600 s: up to 660 s)"
    )
    assert_no_duplicates(fleet)
    assert_nothing_lost(fleet)

    # A re-check asked for is the fast way: it does not wait for the periodic one.
    victim = fleet.objects()["restored-0"]["status"]["id"]
    rig.infisical.state.delete_connection_out_of_band(victim)
    asked = time.monotonic()
    request_reconcile(kube, "restored-0")
    wait_for(lambda: fleet.objects()["restored-0"]["status"]["id"] != victim, "restored-0 recreated", 60)
    report(f"a reconcile-requested-at recreated a lost connection in {time.monotonic() - asked:.1f} s")
    assert_no_duplicates(fleet)
    assert_keeps_serving(fleet, operator, pid, "after-restore")


def _hold(rig: Rig, fault: str, seconds: float) -> None:
    """Keep the fault on for ``seconds``. Toxiproxy draws once per connection whether a toxic applies to it, and the
    operator keeps its few connections alive, so one draw could spare them all (it did in one CI run): the cut-off
    toxic is put in again every 2 s, and each open connection draws its one-in-three again."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(2.0, left))
        if fault == "cut-off" and time.monotonic() < deadline:
            rig.infisical_proxy.remove(CUT_OFF)
            rig.infisical_proxy.toxic("limit_data", toxicity=0.33, bytes=300, name=CUT_OFF)
