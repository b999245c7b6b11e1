"""The ownership rule as a plain decision: which proof holds, which fails, and in which order they are asked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from octoconn.ownership import CREATE_SKEW, Evidence, claim

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SENT = NOW - timedelta(minutes=1)
MARKER = Evidence(SENT)
NO_CREATE = Evidence(None)


def judge(
    *,
    recorders: tuple[str, ...] = (),
    created: datetime | None = SENT + timedelta(seconds=1),
    differences: tuple[str, ...] = (),
    evidence: Evidence = MARKER,
) -> tuple[str, str]:
    result = claim(
        me="team-b/b",
        recorders=recorders,
        created_at=created.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if created else None,
        differences=differences,
        evidence=evidence,
        now=NOW,
    )
    return result.verdict, result.why


def test_an_object_created_just_after_our_create_and_holding_what_it_sent_is_ours() -> None:
    assert judge()[0] == "ours"
    verdict, why = judge(evidence=Evidence(SENT, lost_answer=True))
    assert verdict == "ours"
    assert "answer was lost" in why


def test_our_own_record_is_proof_whatever_else_is_said() -> None:
    assert judge(recorders=("team-b/b",), created=None, evidence=Evidence(None))[0] == "ours"


def test_another_resources_record_wins_over_every_time_window() -> None:
    verdict, why = judge(recorders=("team-a/a",))
    assert verdict == "others"
    assert "team-a/a" in why


def test_without_a_create_of_ours_nothing_is_ours() -> None:
    verdict, why = judge(evidence=Evidence(None))
    assert verdict == "unproven"
    assert "never sent a create" in why


@pytest.mark.parametrize(
    ("created", "verdict"),
    [
        (SENT - CREATE_SKEW - timedelta(seconds=1), "unproven"),  # made by hand just before the resource
        (SENT - CREATE_SKEW + timedelta(seconds=1), "ours"),  # clock skew between the operator and Infisical
        (NOW + CREATE_SKEW + timedelta(seconds=1), "unproven"),  # a time Infisical cannot have written
        (None, "unproven"),
    ],
)
def test_the_time_window_is_the_skew_and_no_wider(created: datetime | None, verdict: str) -> None:
    assert judge(created=created)[0] == verdict


def test_an_object_that_does_not_hold_what_our_create_sent_is_not_ours() -> None:
    verdict, why = judge(differences=("it stored the instance URL 'https://other' instead of 'https://mine'",))
    assert verdict == "unproven"
    assert "https://other" in why


def test_an_unproven_object_younger_than_a_minute_is_looked_at_again_soon_and_an_older_one_is_not() -> None:
    def recheck(created: datetime, evidence: Evidence = NO_CREATE) -> bool:
        result = claim(
            me="team-b/b",
            recorders=(),
            created_at=created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            differences=(),
            evidence=evidence,
            now=NOW,
        )
        assert result.verdict == "unproven"
        return result.recheck_soon

    # Another operator process's create for this resource, its status write not seen yet: never adopted, but the
    # NameConflict is retried soon (a record may be on its way) instead of waiting for a change.
    assert recheck(NOW - timedelta(seconds=2))
    assert recheck(NOW - timedelta(seconds=2), evidence=Evidence(NOW + timedelta(minutes=5)))
    assert not recheck(NOW - timedelta(minutes=5))  # an old object: nobody's record is on its way
