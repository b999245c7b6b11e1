"""The policies every managed kind shares, written once, and the contract a kind's adapter fulfils.

The shape is that of Crossplane's managed reconciler: one generic reconciler (``ManagedReconciler``) owns every
policy, and each kind (``reconcile`` for connections, ``sync`` for secret syncs) is an adapter that only knows its
remote object. The engine owns, the same way for both kinds:

- the pass: a copy of the status with ``observedGeneration``, the old ``status.pendingCreate`` cleared, pausing;
- the finish: ``Synced``, ``Ready`` summarised from the kind's conditions, one Event per ``Ready`` transition, and
  the action's Event first;
- the create protocol (below), the proof of ownership (``octoconn.ownership``) and refused-write memory;
- the finalizer's preamble (Orphan, paused, nothing recorded, left in place) and a deletion that is blocked;
- whether a pass's status is worth a write (``needs_write``).

**The adapter contract.** One pass calls, in this order:

1. ``prepare``: check what the remote calls need (the key, the referenced connection). Reads only. A failure ends
   the pass through ``unprepared``, which says what ``Synced`` shows while Infisical is not touched.
2. ``observe``: find the remote object and decide what it lacks. Reads only (the create marker annotation aside,
   written by the engine's ``find``), but for a write whose answer is the very row a read would return (the
   connection PATCHes a rotated key at once, through ``send_once``). Returns an ``Observation`` whose ``remote`` is
   None when nothing is found.
3. ``create`` when nothing was found, else ``update``: make the remote object match and return it with the Event
   of what was done (``update`` sends nothing and returns None for the Event when it already matches). A create
   goes through ``send_create``, a write Infisical may refuse for good through ``send_once``.
4. ``record``: judge the remote object, once the engine has copied its id and ``copied`` fields into status:
   ``Synced``, an error, a requeue, and Events that come last (what ``update`` found worth saying).

A failure in 2 or 3 ends the pass through ``failed``. On deletion the engine calls ``finalizer_store`` and, only for
an object this resource can show is its own, ``delete``; each of these raises to be retried.

The create protocol itself (the marker, when a name is looked up, what this process remembers of its creates) is
``octoconn.creates``; the engine runs it for every kind.

Decisions only: the engine's one write (the create marker annotation) goes through ``creates.AnnotationWriter``.
No kopf, no httpx.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Literal, Protocol, Self, TypeVar

from pydantic import BaseModel

from octoconn import errors, ownership
from octoconn.conditions import (
    PAUSED_REASON,
    READY,
    TRANSIENT,
    ConditionStatus,
    Event,
    Outcome,
    parse_time,
    set_condition,
    transition_events,
)
from octoconn.creates import AnnotationWriter, CreateGuard, FirstPatch, Target
from octoconn.models import (
    ANNOTATION_PAUSED,
    Condition,
    ManagedStatus,
    PendingCreate,
    Refusal,
)

# --- the generic reconciler ----------------------------------------------------------------------------------------
SYNCED = "Synced"
PAUSED_MESSAGE = (
    f'Paused by the annotation {ANNOTATION_PAUSED}="true": no calls to Octopus or Infisical. Remove it to resume.'
)
# A check that changes nothing but the kind's check times writes status only when they are older than this: API
# conventions dropped heartbeat timestamps for the write load they cause (one write per resource and interval), and
# an hour is recent enough to show that checks still happen.
STATUS_REFRESH_SECONDS = 3600.0

Synced = tuple[ConditionStatus, str, str]  # the Synced condition: status, reason, message
StatusT = TypeVar("StatusT", bound=ManagedStatus)


@dataclass(frozen=True, kw_only=True)
class ManagedResource(Generic[StatusT]):
    """What the engine reads of every managed resource; each kind adds its ``spec`` field and models."""

    namespace: str
    name: str
    uid: str
    generation: int
    status: StatusT
    annotations: Mapping[str, str] = field(default_factory=dict)

    # The kind's spec and status models, which ``from_body`` parses.
    spec_model: ClassVar[type[BaseModel]]
    status_model: ClassVar[type[ManagedStatus]]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Self:
        return cls(**cls.fields_of(body))

    @classmethod
    def fields_of(cls, body: Mapping[str, Any]) -> dict[str, Any]:
        """The dataclass's fields from an object as the API server returns it."""
        meta = body.get("metadata", {})
        return {
            "namespace": meta.get("namespace", ""),
            "name": meta.get("name", ""),
            "uid": meta.get("uid", ""),
            "generation": int(meta.get("generation") or 0),
            "annotations": dict(meta.get("annotations") or {}),
            "spec": cls.spec_model.model_validate(body.get("spec") or {}),
            "status": cls.status_model.model_validate(body.get("status") or {}),
        }

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def paused(self) -> bool:
        return self.annotations.get(ANNOTATION_PAUSED, "").strip().lower() == "true"


class RemoteObject(Protocol):
    """What the engine reads of a remote object (an app connection, a secret sync)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def created_at(self) -> str: ...


RemoteT = TypeVar("RemoteT", bound=RemoteObject)
ResT = TypeVar("ResT", bound=ManagedResource[Any])
PrepT = TypeVar("PrepT")  # what ``prepare`` found (a verified key, the referenced connection, a store)
StoreT = TypeVar("StoreT")  # the port to the kind's remote objects
T = TypeVar("T")
Operation = Literal["create", "update"]


@dataclass(kw_only=True)
class Observation(Generic[RemoteT]):
    """What ``observe`` found. ``remote`` None: the engine calls ``create``, else ``update``. A kind adds what its
    create and update need to know (the object found under the name, the plan...)."""

    remote: RemoteT | None


ObsT = TypeVar("ObsT", bound=Observation[Any])


@dataclass(frozen=True)
class Lookup(Generic[RemoteT]):
    """The search for an object a create of this resource's may have made without an answer."""

    evidence: ownership.Evidence  # what shows such a create was sent (``sent_after`` None: none can exist)
    sent: tuple[str, str | None]  # the name and project it was sent with
    found: RemoteT | None = None  # the object under that name, with the claim on it
    claim: ownership.Claim | None = None


@dataclass(frozen=True)
class Verdict:
    """What ``record`` makes of the remote object: ``Synced``, the error that sets the retry pace, a requeue, and
    Events that come last (after what the pass changed)."""

    synced: Synced
    error: errors.OctoconnError | None = None
    requeue_after: float | None = None
    events: tuple[Event, ...] = ()


def needs_write(before: ManagedStatus, after: ManagedStatus, now: float, *, heartbeats: tuple[str, ...] = ()) -> bool:
    """Whether a pass's status is worth a write: something changed, or the check times are due for a refresh.

    ``heartbeats``: the kind's check times (the first one decides), which a pass that finds nothing else changed
    writes only every ``STATUS_REFRESH_SECONDS``. Without them, a pass that changes nothing writes nothing."""
    unchanged = after.model_copy(update={name: getattr(before, name) for name in heartbeats})
    if unchanged != before:
        return True
    if all(getattr(after, name) == getattr(before, name) for name in heartbeats):
        return False
    last = parse_time(getattr(before, heartbeats[0]))
    return last is None or now - last.timestamp() >= STATUS_REFRESH_SECONDS


class ManagedReconciler(ABC, Generic[ResT, PrepT, ObsT, RemoteT, StoreT]):
    """The one reconciler: runs a pass or a finalizer for any kind, with the policies of this module's doc.

    A kind subclasses it and fills in the adapter's steps (the abstract methods). Long-lived: one per kind and
    operator process. Statuses are ``ManagedStatus`` models with ``id``, ``refused_write`` and ``pending_create``.
    """

    plural: ClassVar[str]  # the kind's resource plural
    what: ClassVar[str]  # the remote object in Events and messages: "connection", "secret sync"
    short: ClassVar[str]  # the same in "leave the ... in Infisical"
    heartbeats: ClassVar[tuple[str, ...]] = ()  # status check times refreshed at most hourly (``needs_write``)
    # status field -> attribute of the remote object: copied into status after every write or read-back
    copied: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self, *, writer: AnnotationWriter, owners_of: Callable[[str], Iterable[str]], clock: Callable[[], datetime]
    ) -> None:
        """``owners_of(remote_id)``: the ``namespace/name`` of every resource of this kind that records that id."""
        self._guard = CreateGuard(writer)
        self._owners_of = owners_of
        self._clock = clock

    def forget(self, uid: str) -> None:
        """The resource is gone, or finished with: drop what this process remembers of it."""
        self._guard.forget(uid)

    def remember_marker(self, uid: str, marker: str) -> None:
        """This process wrote ``marker`` for the resource (with Kopf's first patch): no earlier create can exist."""
        self._guard.remember_marker(uid, marker)

    # -- the pass -------------------------------------------------------------------------------------------------
    async def reconcile(self, res: ResT, *, fresh: bool = False, first_patch: FirstPatch | None = None) -> Outcome[Any]:
        """One pass. ``fresh``: the user asked for this check. ``first_patch``: waits for the resource's first patch
        (finalizer and create marker) and returns its annotations; a create waits for it, reads go on meanwhile."""
        now = self._clock()
        status = self._begin(res)
        if res.paused:
            return self.finish(res, status, now, synced=("False", PAUSED_REASON, PAUSED_MESSAGE))
        try:
            prepared = await self.prepare(res, status, now, fresh=fresh)
        except errors.OctoconnError as exc:
            return self.finish(res, status, now, synced=self.unprepared(res, status, exc, now), error=exc)
        try:
            observed = await self.observe(res, status, prepared, now, first_patch)
            if observed.remote is None:
                remote, action = await self.create(res, status, prepared, observed, now)
            else:
                remote, action = await self.update(res, status, prepared, observed, observed.remote, now)
        except errors.OctoconnError as exc:
            return self.finish(res, status, now, synced=self.failed(res, status, exc, now), error=exc)
        status.id = remote.id
        for name, attribute in self.copied.items():
            setattr(status, name, getattr(remote, attribute))
        verdict = self.record(res, status, prepared, observed, remote, action, now)
        outcome = self.finish(res, status, now, synced=verdict.synced, error=verdict.error)
        outcome.requeue_after = verdict.requeue_after
        if action is not None:
            outcome.events = self.with_action(res, action, outcome.events)
        outcome.events.extend(verdict.events)
        return outcome

    def _begin(self, res: ResT) -> Any:
        status = res.status.model_copy(deep=True)
        status.observed_generation = res.generation
        status.pending_create = None  # the marker lives in an annotation now; clear what earlier versions wrote
        if res.status.id:
            self._guard.recorded(res.uid)
        self.begin(res, status)
        return status

    def finish(
        self, res: ResT, status: Any, now: datetime, *, synced: Synced, error: errors.OctoconnError | None = None
    ) -> Outcome[Any]:
        """``Synced``, ``Ready`` summarised, and the Events of the pass (``Ready``'s transition, the kind's own)."""
        state, reason, message = synced
        status.conditions = set_condition(
            status.conditions,
            type_=SYNCED,
            status=state,
            reason=reason,
            message=message,
            generation=res.generation,
            now=now,
        )
        status.conditions = self.summarize(res, status, now)
        events = transition_events(res.status, status) + self.events(res, status)
        return Outcome(status=status, events=events, error=error)

    def needs_write(self, res: ResT, outcome: Outcome[Any], now: float) -> bool:
        """Whether the pass's status is worth a write (``res.status`` is the status written last)."""
        return needs_write(res.status, outcome.status, now, heartbeats=self.heartbeats)

    # -- steps the adapters share -----------------------------------------------------------------------------------
    async def find(
        self,
        res: ResT,
        store: StoreT,
        now: datetime,
        first_patch: FirstPatch | None,
        differences: Callable[[RemoteT, tuple[str, str | None]], list[str]],
    ) -> tuple[RemoteT | None, Lookup[RemoteT] | None]:
        """The recorded object (None: deleted in Infisical since, so created again without a lookup); else the one
        this process created before status recorded it; else, only when a create of ours may have succeeded
        unanswered, the ``Lookup`` of the name it was sent with. ``differences``: what a found object holds that
        that create did not send."""
        if res.status.id:
            return await self.get(store, res.status.id), None
        answered = self._guard.answered_id(res.uid)
        if answered is not None:
            found = await self.get(store, answered)  # ours: only the status write was missed
            if found is not None:
                return found, None
            self._guard.recorded(res.uid)  # deleted since: create it again
        target = self.target(res)
        marker, written = await self._guard.marker(target, now, first_patch)
        evidence, sent = self._guard.evidence(target, marker, written)
        if evidence.sent_after is None:
            return None, Lookup(evidence, sent)  # no create of ours can exist: create without looking first
        found = await self.lookup(res, store, *sent)
        if found is None:
            return None, Lookup(evidence, sent)
        return None, Lookup(evidence, sent, found, self.claim(res, found, evidence, differences(found, sent), now))

    def claim(
        self, res: ResT, found: RemoteT, evidence: ownership.Evidence, differences: list[str], now: datetime
    ) -> ownership.Claim:
        """Whether an object found under this resource's name is its own (``octoconn.ownership``)."""
        return ownership.claim(
            me=res.ref,
            recorders=self._owners_of(found.id),
            created_at=found.created_at,
            differences=differences,
            evidence=evidence,
            now=now,
        )

    async def send_create(
        self,
        res: ResT,
        status: Any,
        store: StoreT,
        now: datetime,
        call: Callable[[], Awaitable[RemoteT]],
        *,
        evidence: ownership.Evidence,
        differences: Callable[[RemoteT], list[str]],
    ) -> tuple[RemoteT, ownership.Claim | None]:
        """Send the create, no name lookup first: Infisical refuses a taken name, and only then do we look.

        Returns the object created (claim None), or the one holding the name with the claim on it: the caller
        adopts it or says whose it is. A definite refusal made nothing, so the create marker goes with it."""
        target = self.target(res)
        self._guard.sending(target, now)
        try:
            remote = await call()
        except errors.NameConflict:
            existing = await self.lookup(res, store, target.create_name, target.create_project)
            if existing is None:
                raise
            status.refused_write = None  # the name's holder decides now, not the create
            claim = self.claim(res, existing, evidence, differences(existing), now)
            if not claim.ours:
                await self._guard.refused(target, evidence=evidence)
            return existing, claim
        except errors.OctoconnError as exc:
            if exc.retry not in TRANSIENT:
                await self._guard.refused(target, evidence=ownership.Evidence(None))
            raise
        self.answered(res, remote.id, now)
        return remote, None

    def answered(self, res: ResT, remote_id: str, now: datetime) -> None:
        """The object is this resource's (created, or adopted): remembered until status records it."""
        target = self.target(res)
        self._guard.answered(target, remote_id, name=target.create_name, project_id=target.create_project, now=now)

    async def send_once(
        self, res: ResT, status: Any, operation: Operation, request: str, call: Callable[[], Awaitable[T]]
    ) -> T:
        """Send a create or update unless Infisical refused this very request for good (400/422) and nothing it
        depends on (``request``, and what ``refusal_holds`` compares) has changed since: the same request would
        get the same answer. The refusal is kept in ``status.refused_write``, so it survives restarts."""
        refused = status.refused_write
        if refused is not None and refused.operation == operation and self.refusal_holds(res, refused, request):
            raise self.remembered(refused)
        try:
            return await call()
        except errors.InfisicalRejected as exc:
            status.refused_write = self.refusal(res, operation, request, exc)
            raise

    # -- deletion ---------------------------------------------------------------------------------------------------
    async def finalize(self, res: ResT) -> list[Event]:
        """Delete the remote object unless the policy is Orphan, the resource is paused, or it cannot be shown to be
        this resource's own. Raises to retry (the finalizer stays)."""
        name = self.remote_name(res)
        if self.orphan(res):
            self.forget(res.uid)
            return [Event("Normal", "Orphaned", f"deletionPolicy is Orphan: Infisical {self.what} {name} was kept.")]
        if res.paused:
            self.forget(res.uid)
            return [Event("Warning", PAUSED_REASON, f"Paused: Infisical {self.what} {name} was left in place.")]
        store = await self.finalizer_store(res)
        remote_id = res.status.id or self._guard.answered_id(res.uid)
        if remote_id is None:
            found, claim = await self._claim_for_deletion(res, store)
            if found is not None and claim is not None and not claim.ours:
                self.forget(res.uid)
                return [ownership.left_in_place(self.what, found.name, found.id, claim)]
            remote_id = found.id if found is not None else None
        if remote_id is None:
            self.forget(res.uid)
            message = f"No Infisical {self.what} was ever recorded for this resource."
            return [Event("Normal", "NothingToDelete", message)]
        events = await self.delete(res, store, remote_id)
        # Only now: a failed delete is retried, and may need what is remembered (the identity's store) again.
        self.forget(res.uid)
        return events

    async def _claim_for_deletion(self, res: ResT, store: StoreT) -> tuple[RemoteT | None, ownership.Claim | None]:
        """Nothing recorded: the object a create of ours may have made, and whether it is provably ours."""
        evidence, sent, marker = self._guard.carried_evidence(self.target(res))
        if evidence.sent_after is None and marker is None:
            return None, None
        try:
            found = await self.lookup(res, store, *sent)
        except errors.NameConflict:
            return None, None  # another app's object holds the name: the interrupted create made nothing
        if found is None:
            return None, None
        return found, self.claim(res, found, evidence, self.deletion_differences(res, found, sent), self._clock())

    def deletion_blocked(self, res: ResT, error: errors.OctoconnError, now: datetime) -> tuple[Any, list[Event]]:
        """Status and Event while a finalizer cannot finish (its finalizer stays): shown on ``Ready``."""
        reason, message = self.deletion_wait(error)
        status = res.status.model_copy(deep=True)
        status.conditions = set_condition(
            status.conditions,
            type_=READY,
            status="False",
            reason=reason,
            message=message,
            generation=res.generation,
            now=now,
        )
        return status, transition_events(res.status, status)

    def deletion_wait(self, error: errors.OctoconnError) -> tuple[str, str]:
        """``Ready``'s reason and message while a deletion waits for ``error`` to clear."""
        return "DeletionBlocked", (
            f"Deleting the Infisical {self.what} failed ({error.reason}): {error.message}. The operator keeps "
            f"trying; to finish the deletion and leave the {self.short} in Infisical, set spec.deletionPolicy to "
            "Orphan."
        )

    # -- the adapter: what a kind fills in --------------------------------------------------------------------------
    def begin(self, res: ResT, status: Any) -> None:
        """Kind-specific fields of a pass's fresh status copy (the engine has set ``observedGeneration``)."""

    @abstractmethod
    async def prepare(self, res: ResT, status: Any, now: datetime, *, fresh: bool) -> PrepT:
        """Check what the remote calls need; reads only. Raises ``OctoconnError`` to end the pass (``unprepared``)."""

    @abstractmethod
    def unprepared(self, res: ResT, status: Any, error: errors.OctoconnError, now: datetime) -> Synced:
        """``Synced`` when ``prepare`` failed: Infisical was not touched. May set the kind's own condition."""

    @abstractmethod
    async def observe(
        self, res: ResT, status: Any, prepared: PrepT, now: datetime, first_patch: FirstPatch | None
    ) -> ObsT:
        """Find the remote object (``find``) and decide what it lacks; reads only."""

    @abstractmethod
    async def create(
        self, res: ResT, status: Any, prepared: PrepT, observed: ObsT, now: datetime
    ) -> tuple[RemoteT, Event | None]:
        """Nothing was found: create the object (``send_create``), or adopt the one a lost create made."""

    @abstractmethod
    async def update(
        self, res: ResT, status: Any, prepared: PrepT, observed: ObsT, remote: RemoteT, now: datetime
    ) -> tuple[RemoteT, Event | None]:
        """Make ``remote``, the object found, match; send nothing (Event None) when it already does."""

    @abstractmethod
    def failed(self, res: ResT, status: Any, error: errors.OctoconnError, now: datetime) -> Synced:
        """``Synced`` when ``observe``, ``create`` or ``update`` failed."""

    @abstractmethod
    def record(
        self,
        res: ResT,
        status: Any,
        prepared: PrepT,
        observed: ObsT,
        remote: RemoteT,
        action: Event | None,
        now: datetime,
    ) -> Verdict:
        """Judge the remote object (``copied`` is in status already) and record what else it says. ``observed`` is
        the observation ``create`` or ``update`` worked from, with whatever they added to it."""

    @abstractmethod
    def summarize(self, res: ResT, status: Any, now: datetime) -> list[Condition]:
        """The conditions with ``Ready`` summarised from the kind's own and ``Synced``."""

    def events(self, res: ResT, status: Any) -> list[Event]:
        """Events the kind adds to a pass besides ``Ready``'s transition."""
        return []

    def with_action(self, res: ResT, action: Event, events: list[Event]) -> list[Event]:
        """The pass's Events with what was done first, before what it changed (a kind may leave out an Event the
        action already tells)."""
        return [action, *events]

    def target(self, res: ResT) -> Target:
        """What the create protocol needs to know of the resource."""
        return Target(
            plural=self.plural,
            namespace=res.namespace,
            name=res.name,
            uid=res.uid,
            annotations=res.annotations,
            create_name=self.remote_name(res),
            create_project=self.project_of(res),
            legacy_marker=self.legacy_marker(res),
        )

    @abstractmethod
    def project_of(self, res: ResT) -> str | None:
        """The Infisical project a create sends."""

    @abstractmethod
    def legacy_marker(self, res: ResT) -> PendingCreate | None:
        """The create marker earlier versions wrote into status, read once (the engine clears it)."""

    @abstractmethod
    async def get(self, store: StoreT, remote_id: str) -> RemoteT | None:
        """The remote object by id; None when Infisical no longer has it."""

    @abstractmethod
    async def lookup(self, res: ResT, store: StoreT, name: str, project_id: str | None) -> RemoteT | None:
        """The remote object by name; None when there is none."""

    @abstractmethod
    def refusal_holds(self, res: ResT, refused: Any, request: str) -> bool:
        """Whether a kept refusal still stands: nothing it was refused at has changed."""

    @abstractmethod
    def refusal(self, res: ResT, operation: Operation, request: str, error: errors.OctoconnError) -> Refusal:
        """The refusal to keep in status."""

    @abstractmethod
    def remembered(self, refused: Any) -> errors.OctoconnError:
        """The error a kept refusal stands for, raised instead of sending the request again."""

    @abstractmethod
    def remote_name(self, res: ResT) -> str:
        """The remote object's name, as a create sends it."""

    @abstractmethod
    def orphan(self, res: ResT) -> bool:
        """``deletionPolicy: Orphan``: the finalizer leaves the remote object."""

    @abstractmethod
    async def finalizer_store(self, res: ResT) -> StoreT:
        """The store a finalizer deletes through (it may outlive the identity's Secret)."""

    @abstractmethod
    def deletion_differences(self, res: ResT, found: RemoteT, sent: tuple[str, str | None]) -> list[str]:
        """``differences`` for an object a finalizer found under the name a lost create was sent with."""

    @abstractmethod
    async def delete(self, res: ResT, store: StoreT, remote_id: str) -> list[Event]:
        """Delete the object this resource shows is its own; raises to be retried (the finalizer stays)."""
