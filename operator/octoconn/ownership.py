"""Whether a remote object found by name is this resource's own: the one rule every adopt, overwrite and delete obeys.

Infisical keeps no label we could stamp on a connection or a sync, so ownership has to be shown from what the
operator knows. An object is this resource's own when this resource records its id, or when all of these hold:

1. no other resource records it (the owners index): that resource's status is the better proof;
2. this resource may have sent a create whose answer never came: this process remembers sending it (a timeout, a
   dropped connection, a 5xx after Infisical acted), or the resource carries a create marker that another process
   wrote (an earlier process or replica that may have crashed between the create and the status write);
3. Infisical created the object no earlier than that create can have been sent, less ``CREATE_SKEW`` for the
   difference between the operator's clock and Infisical's;
4. the object holds what that create sent (name, project, instance URL, description...).

Anything else is not proven, and the operator does not act on it: a reconcile reports ``NameConflict`` (take-over only
with ``octoconn.dev/adopt-existing``, and never of another resource's object), and a finalizer deletes nothing, removes
its finalizer and says in a Warning Event which object it left. Losing someone's connection is worse than leaving one.

Decisions only: no I/O, no kopf, no httpx.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from octoconn.conditions import Event, parse_time, rfc3339

# What a crash needs: the marker is written before the create is sent, so Infisical creates the object after the
# marker's time. The margin covers clock skew between the operator's nodes and Infisical only (NTP keeps both within
# a second or two); a wider one would let a same-named object made by hand just before the resource be taken.
CREATE_SKEW = timedelta(seconds=10)

# An unproven object this young may be a create of this very resource by another operator process (two started
# by mistake) whose status write has not reached this one yet: worth a second look soon, never adopted meanwhile.
RECHECK_WITHIN = timedelta(seconds=60)

Verdict = Literal["ours", "others", "unproven"]


@dataclass(frozen=True)
class Claim:
    verdict: Verdict
    why: str  # for a message or an Event: says which proof held or failed
    owner: str | None = None  # with "others": the namespace/name of the resource that records the object
    recheck_soon: bool = False  # with "unproven": the object is new enough that a record of it may be on its way

    @property
    def ours(self) -> bool:
        return self.verdict == "ours"


@dataclass(frozen=True)
class Evidence:
    """What this resource can show about a create of its own.

    ``sent_after``: the earliest moment a create of this resource's can have been sent (the time this process sent
    one whose answer was lost, or an earlier process's create marker), None when no such create can exist.
    ``lost_answer``: the evidence is this process's own memory of an unanswered create (for the Event's words).
    """

    sent_after: datetime | None
    lost_answer: bool = False


def claim(
    *,
    me: str,
    recorders: Iterable[str],
    created_at: str | None,
    differences: Sequence[str],
    evidence: Evidence,
    now: datetime,
) -> Claim:
    """Judge an object found under this resource's name. ``me`` and ``recorders`` are ``namespace/name`` refs;
    ``differences`` lists what the object holds that this resource's create would not have sent."""
    recorded = set(recorders)
    if me in recorded:
        return Claim("ours", "this resource's status records it")
    if recorded:
        owner = sorted(recorded)[0]
        return Claim("others", f"it is recorded by {owner}", owner)
    created = parse_time(created_at)
    young = created is not None and now - RECHECK_WITHIN <= created <= now + CREATE_SKEW
    if evidence.sent_after is None:
        return Claim("unproven", "this resource never sent a create that could have made it", recheck_soon=young)
    earliest = evidence.sent_after - CREATE_SKEW
    if created is None or created < earliest or created > now + CREATE_SKEW:
        return Claim(
            "unproven",
            f"Infisical created it at {created_at or 'an unknown time'}, before this resource's create could have "
            f"been sent ({rfc3339(evidence.sent_after)})",
            recheck_soon=young,
        )
    if differences:
        return Claim("unproven", f"it does not hold what this resource's create sent: {'; '.join(differences)}")
    if evidence.lost_answer:
        return Claim("ours", "this resource's create reached Infisical but its answer was lost")
    return Claim("ours", "an earlier try created it just after writing this resource's create marker")


def left_in_place(what: str, name: str, object_id: str, claim: Claim) -> Event:
    """The Warning a finalizer posts when it deletes nothing because it cannot show the object is its own."""
    return Event(
        "Warning",
        "LeftInPlace",
        f"Infisical {what} {name} ({object_id}) was left in place: {claim.why}, so this resource cannot show that it "
        "created it. Delete it in Infisical if nobody uses it.",
    )
