"""``Stalled`` (read by kstatus, hence Flux) follows Ready: True while Ready is False for a cause that waits for a
change, absent otherwise (Ready True or Unknown, or the resource paused)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from octoconn.conditions import STALLED, set_condition, summarize
from octoconn.models import Condition

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _summary(
    verified: tuple[str, str], synced: tuple[str, str], before: list[Condition] | None = None
) -> list[Condition]:
    out = set_condition(
        before, type_="A", status=verified[0], reason=verified[1], message=f"a {verified[1]}", generation=1, now=T0
    )  # type: ignore[arg-type]
    out = set_condition(
        out, type_="B", status=synced[0], reason=synced[1], message=f"b {synced[1]}", generation=1, now=T0
    )  # type: ignore[arg-type]
    return summarize(out, ("A", "B"), ready_reason="Available", ready_message="ok", generation=1, now=T0)


def _stalled(conditions: list[Condition]) -> Condition | None:
    return next((c for c in conditions if c.type == STALLED), None)


def test_a_failure_that_waits_for_a_change_is_stalled_with_readys_words() -> None:
    out = _summary(("False", "SecretNotFound"), ("True", "Synced"))
    stalled = _stalled(out)
    assert stalled is not None
    assert (stalled.status, stalled.reason, stalled.message) == ("True", "SecretNotFound", "a SecretNotFound")


@pytest.mark.parametrize(
    ("verified", "synced"),
    [
        (("True", "ApiKeyValid"), ("True", "Synced")),  # Ready True
        (("Unknown", "OctopusUnreachable"), ("True", "Synced")),  # retried by itself
        (("True", "ApiKeyValid"), ("False", "ReconcilePaused")),  # paused
        (("False", "SecretNotFound"), ("False", "ReconcilePaused")),  # paused while failing
    ],
)
def test_no_stalled_otherwise(verified: tuple[str, str], synced: tuple[str, str]) -> None:
    assert _stalled(_summary(verified, synced)) is None


def test_stalled_goes_when_the_cause_is_fixed() -> None:
    failing = _summary(("False", "SecretNotFound"), ("True", "Synced"))
    assert _stalled(failing) is not None
    fixed = _summary(("True", "ApiKeyValid"), ("True", "Synced"), before=failing)
    assert _stalled(fixed) is None
    assert [c.type for c in fixed] == ["Ready", "A", "B"]
