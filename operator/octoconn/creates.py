"""The crash-safe create protocol every managed kind follows, and its memory.

Kopf's first patch of a new resource (the finalizer) also carries our create marker, the
``operator.octoconn.dev/pending-create`` annotation with the name, project and time. A create is then sent without
a name lookup: a create costs one paced write, a lookup a paced read more. The name is looked up first only when an
earlier create of this resource may have succeeded without an answer: this process sent one and never heard back,
or the marker was written by another process (which may have crashed between its create and its status write).
What is found is adopted only as ``octoconn.ownership`` allows. This process remembers each create it sent until the
resource's status records the id, so a failure after the create (the adoption's update, the status write) never
turns our own object into a stranger's.

Decisions and in-memory bookkeeping only: the one write here (setting or clearing the marker annotation) goes
through the ``AnnotationWriter`` port. No kopf, no httpx.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from octoconn import ownership
from octoconn.conditions import parse_time, rfc3339
from octoconn.models import ANNOTATION_PENDING_CREATE, PendingCreate

FirstPatch = Callable[[], Awaitable[Mapping[str, str]]]


class AnnotationWriter(Protocol):
    async def patch_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None], *, plural: str
    ) -> None: ...


@dataclass(frozen=True)
class Target:
    """What the create protocol needs to know of one resource."""

    plural: str
    namespace: str
    name: str
    uid: str
    annotations: Mapping[str, str]
    create_name: str  # the remote name a create sends now
    create_project: str | None
    legacy_marker: PendingCreate | None = None  # written into status by earlier versions

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def new_marker(name: str, project_id: str | None, now: datetime) -> str:
    """The create marker's annotation value: which object may be created from now on."""
    marker = PendingCreate(name=name, project_id=project_id, started_at=rfc3339(now))
    return json.dumps(marker.model_dump(by_alias=True, mode="json", exclude_none=True), separators=(",", ":"))


def parse_marker(value: str | None) -> PendingCreate | None:
    if not value:
        return None
    try:
        return PendingCreate.model_validate_json(value)
    except ValueError:
        return None  # hand-edited: treated as absent, so a name found in Infisical is never taken as ours


@dataclass
class _SentCreate:
    sent_at: datetime
    name: str
    project_id: str | None
    id: str | None = None  # set once Infisical answered


class CreateGuard:
    """The create protocol's memory and decisions for one kind. Long-lived: one per kind and operator process."""

    def __init__(self, writer: AnnotationWriter) -> None:
        self._writer = writer
        # uid -> the marker this process wrote: it stands for no create that is not also in _creates.
        self._own_markers: dict[str, str] = {}
        # uid -> the create this process sent whose result the resource's status does not record yet.
        self._creates: dict[str, _SentCreate] = {}

    def remember_marker(self, uid: str, marker: str) -> None:
        """This process wrote ``marker`` for the resource (with Kopf's first patch): no earlier create can exist."""
        self._own_markers[uid] = marker

    def forget(self, uid: str) -> None:
        self._creates.pop(uid, None)
        self._own_markers.pop(uid, None)

    def recorded(self, uid: str) -> None:
        """The resource's status records its object: the status is the proof from now on."""
        self._creates.pop(uid, None)

    def answered_id(self, uid: str) -> str | None:
        """The id of an object this process created for the resource, before its status recorded it."""
        sent = self._creates.get(uid)
        return sent.id if sent is not None else None

    async def marker(
        self, target: Target, now: datetime, first_patch: FirstPatch | None
    ) -> tuple[PendingCreate | None, str | None]:
        """The create marker (and its annotation value), written here if Kopf's first patch did not carry it."""
        written = target.annotations.get(ANNOTATION_PENDING_CREATE)
        if written is None and first_patch is not None:
            written = (await first_patch()).get(ANNOTATION_PENDING_CREATE)
        marker = parse_marker(written) or target.legacy_marker
        if marker is None:
            # Normally written together with the finalizer when the resource appeared; this is the fallback.
            written = new_marker(target.create_name, target.create_project, now)
            await self._write(target, written)
            self._own_markers[target.uid] = written
        return marker, written

    def evidence(
        self, target: Target, marker: PendingCreate | None, written: str | None
    ) -> tuple[ownership.Evidence, tuple[str, str | None]]:
        """What shows that a create of this resource's may have been sent, and under which name and project."""
        sent = self._creates.get(target.uid)
        if sent is not None:
            return ownership.Evidence(sent.sent_at, lost_answer=True), (sent.name, sent.project_id)
        started = parse_time(marker.started_at) if marker is not None else None
        if marker is not None and started is not None and self._own_markers.get(target.uid) != written:
            return ownership.Evidence(started), (marker.name, marker.project_id)
        return ownership.Evidence(None), (target.create_name, target.create_project)

    def carried_evidence(
        self, target: Target
    ) -> tuple[ownership.Evidence, tuple[str, str | None], PendingCreate | None]:
        """``evidence`` for the marker the resource carries now (annotation, else the legacy status field)."""
        written = target.annotations.get(ANNOTATION_PENDING_CREATE)
        marker = parse_marker(written) or target.legacy_marker
        evidence, sent = self.evidence(target, marker, written)
        return evidence, sent, marker

    def sending(self, target: Target, now: datetime) -> None:
        """Remembered before the create goes out: an answer that never comes (timeout, dropped connection, a 5xx
        after Infisical acted) leaves this behind as the proof that the object found under the name is ours."""
        self._creates.setdefault(target.uid, _SentCreate(now, target.create_name, target.create_project))

    def answered(self, target: Target, object_id: str, *, name: str, project_id: str | None, now: datetime) -> None:
        """Infisical answered the create (or the object was adopted): this id is ours until status records it."""
        sent = self._creates.get(target.uid)
        self._creates[target.uid] = _SentCreate(sent.sent_at if sent else now, name, project_id, object_id)
        self._own_markers.pop(target.uid, None)

    async def refused(self, target: Target, *, evidence: ownership.Evidence) -> None:
        """The create made nothing (a definite refusal, or the name held by an object that is not ours). Without an
        earlier create of ours, the marker is cleared too: left behind, it could let a finalizer or a restart take a
        same-named object someone else makes for ours."""
        self._creates.pop(target.uid, None)
        if evidence.sent_after is None:
            await self._write(target, None)
            self._own_markers.pop(target.uid, None)

    async def _write(self, target: Target, value: str | None) -> None:
        await self._writer.patch_annotations(
            target.namespace, target.name, {ANNOTATION_PENDING_CREATE: value}, plural=target.plural
        )
