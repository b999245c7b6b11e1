"""What both resources share about status: conditions, the Events their transitions raise, times and retry pace.

``reconcile`` (connections) and ``sync`` (secret syncs) decide different things but report them the same way: a
``metav1.Condition`` list with ``Ready`` first, ``lastTransitionTime`` that moves only when a status flips, one Event
when ``Ready`` changes, and one retry policy per error class. Keeping these here keeps the two resources alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, Literal, Protocol, TypeVar

from octoconn import errors
from octoconn.models import Condition

READY = "Ready"
# kstatus (what Flux's `wait` and `healthChecks` read) takes Ready=False for "still in progress" and waits for its
# timeout; Stalled=True makes it report Failed at once, with the message. Present only while True, as kstatus expects.
STALLED = "Stalled"
PAUSED_REASON = "ReconcilePaused"

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


class HasConditions(Protocol):
    def condition(self, type_: str) -> Condition | None: ...


StatusT = TypeVar("StatusT")


@dataclass
class Outcome(Generic[StatusT]):
    """One reconcile pass: the status to write, the Events to emit, the error that sets the retry pace, and
    ``requeue_after`` when all is well but something remote is still moving (a sync running in Infisical)."""

    status: StatusT
    events: list[Event] = field(default_factory=list)
    error: errors.OctoconnError | None = None
    requeue_after: float | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def set_condition(
    conditions: list[Condition] | None,
    *,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[Condition]:
    """Upsert a condition; ``lastTransitionTime`` moves only when ``status`` flips (API conventions).

    The list is kept in a stable order, ``Ready`` first, so a status patch that changes nothing is a no-op.
    """
    current = [c for c in conditions or [] if c.type != type_]
    previous = next((c for c in conditions or [] if c.type == type_), None)
    moved = previous is None or previous.status != status
    current.append(
        Condition(
            type=type_,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=rfc3339(now) if moved or previous is None else previous.last_transition_time,
            observed_generation=generation,
        )
    )
    return sorted(current, key=lambda c: (c.type != READY, c.type))


def summarize(
    conditions: list[Condition],
    parts: tuple[str, ...],
    *,
    ready_reason: str,
    ready_message: str,
    generation: int,
    now: datetime,
) -> list[Condition]:
    """Ready is True only when every condition in ``parts`` is; otherwise it carries the first cause.

    A False cause (not a pause) also sets ``Stalled``, so that kstatus (Flux) reports Failed rather than waiting.
    """
    by_type = {c.type: c for c in conditions}
    found = [by_type.get(part) for part in parts]
    if all(c is not None and c.status == "True" for c in found):
        ready = set_condition(
            conditions,
            type_=READY,
            status="True",
            reason=ready_reason,
            message=ready_message,
            generation=generation,
            now=now,
        )
        return _without_stalled(ready)
    cause = next((c for c in found if c is not None and c.status != "True"), None)
    failed = cause is not None and cause.status == "False"
    conditions = set_condition(
        conditions,
        type_=READY,
        status="False" if failed else "Unknown",
        reason=cause.reason if cause else "Reconciling",
        message=cause.message if cause else "The first reconcile has not finished yet.",
        generation=generation,
        now=now,
    )
    # Ready=False waits for a change (a Secret, the spec, a permission in Octopus); Unknown is retried by itself.
    # A paused resource is not failing: it waits for the annotation to go.
    paused = any(c is not None and c.reason == PAUSED_REASON for c in found)
    if not failed or paused or cause is None:
        return _without_stalled(conditions)
    return set_condition(
        conditions,
        type_=STALLED,
        status="True",
        reason=cause.reason,
        message=cause.message,
        generation=generation,
        now=now,
    )


def _without_stalled(conditions: list[Condition]) -> list[Condition]:
    return [c for c in conditions if c.type != STALLED]


def transition_events(before: HasConditions, after: HasConditions) -> list[Event]:
    """An Event whenever Ready changes status or reason, so `kubectl describe` tells the story.

    Ready carries the cause of the first failing condition, so one Event per change says it all; an Event per
    condition would repeat the same message two or three times. Actions (Created, Updated, DriftRepaired...)
    get their own Events from the reconcilers.
    """
    old, new = before.condition(READY), after.condition(READY)
    if new is None or (old is not None and (old.status, old.reason) == (new.status, new.reason)):
        return []
    healthy = new.status == "True" or (new.status == "Unknown" and new.reason in PROGRESS_REASONS)
    return [Event("Normal" if healthy else "Warning", new.reason, new.message)]


# Ready=Unknown with one of these reasons is work going as it should (a sync Infisical is running, a first pass),
# so its Event is Normal: alerting on Warning Events must see only real problems.
PROGRESS_REASONS = frozenset({"Reconciling", "Syncing", "NotSynced", "RemovingSecrets"})


def jittered(seconds: float, fraction: float = 0.1) -> float:
    return seconds * (1 + random.uniform(-fraction, fraction))  # noqa: S311 - jitter, not security


def retry_delay(
    error: errors.OctoconnError,
    *,
    attempt: int,
    backoff_cap: float,
    auth_retry: float,
    wait_for_change: float,
) -> float:
    """Seconds to wait before the next try of a failed reconcile (``attempt`` counts from 1)."""
    match error.retry:
        case errors.Retry.RATE_LIMITED:
            return max(error.retry_after or 1.0, 1.0) + random.uniform(0, 1)  # noqa: S311
        case errors.Retry.SLOW:
            return jittered(auth_retry)
        case errors.Retry.WAIT_FOR_CHANGE:
            # A spec or Secret change wakes the resource at once; this is only the safety net.
            return jittered(wait_for_change)
        case _:
            ceiling = min(backoff_cap, 5.0 * 2 ** min(attempt - 1, 16))
            return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - "equal jitter" backoff


TRANSIENT = (errors.Retry.BACKOFF, errors.Retry.RATE_LIMITED)
