"""The whole life of one OctopusDeployConnection: verify, create or update, repair drift, delete.

This module decides; it does no I/O of its own. Outside calls go through the small ports below (Secrets,
Octopus, Infisical, status), which ``handlers`` wires to the real clients. It imports neither kopf nor httpx,
so every decision can be exercised without a cluster.

One pass (``ConnectionReconciler.reconcile``):
1. paused? -> no remote calls, ``Synced=False/ReconcilePaused``;
2. read the API key from the Secret and verify it with Octopus (``CredentialsVerified``);
3. find the Infisical connection (by recorded id; after a create whose answer was lost, or a crash mid-create, by
   name, and then only one ``octoconn.ownership`` shows to be this resource's own);
4. create it (straight away: the name is looked up only when Infisical says it is taken), or PATCH only what
   differs: ``credentials`` only when the key or URL changed, or when someone else rewrote them (Infisical's
   ``credentialsHash`` moved) — every credentials write changes that hash. A create or update Infisical refused
   for good is remembered in status and not sent again until something changes;
5. compare what Infisical holds with what was asked (an older Infisical silently drops ``projectId``): a success
   answer is not trusted on its own;
6. return the new status, the Events to emit and, on failure, the error that decides when to retry.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from octoconn import conditions, engine, errors, ownership
from octoconn.apikeys import SecretData, api_key_from
from octoconn.conditions import (
    READY,
    TRANSIENT,
    ConditionStatus,
    Event,
    parse_time,
    rfc3339,
    set_condition,
    summarize,
    transition_events,
    utcnow,
)
from octoconn.engine import CreateGuard, Target, parse_marker
from octoconn.models import (
    ANNOTATION_ADOPT_EXISTING,
    ANNOTATION_PAUSED,
    ANNOTATION_PENDING_CREATE,
    ANNOTATION_RECONCILE_REQUESTED_AT,
    DEFAULT_CLIENT_ID_KEY,
    DEFAULT_CLIENT_SECRET_KEY,
    PLURAL,
    Condition,
    InfisicalSpec,
    OctopusDeployConnectionSpec,
    OctopusDeployConnectionStatus,
    OctopusIdentityStatus,
    PendingCreate,
    RefusedWrite,
)
from octoconn.remote import AppConnection, OctopusIdentity, normalize_instance_url
from octoconn.text import js_trim

CREDENTIALS_VERIFIED = "CredentialsVerified"
SYNCED = "Synced"
# CredentialsVerified=True with this reason: the key works but expires within the warning window. Ready stays True.
KEY_EXPIRING_SOON = "ApiKeyExpiringSoon"


# --- ports -------------------------------------------------------------------------------------------------------
class SecretReader(Protocol):
    async def read_secret(self, namespace: str, name: str) -> SecretData | None: ...


class Verifier(Protocol):
    async def verify(self, instance_url: str, api_key: str) -> OctopusIdentity: ...


class ConnectionStore(Protocol):
    async def get(self, connection_id: str) -> AppConnection | None: ...

    async def get_by_name(self, name: str, *, project_id: str | None) -> AppConnection | None: ...

    async def create(
        self, *, name: str, description: str | None, project_id: str | None, instance_url: str, api_key: str
    ) -> AppConnection: ...

    async def update(
        self,
        connection_id: str,
        *,
        name: str | None = None,
        description: Any = ...,
        credentials: tuple[str, str] | None = None,
    ) -> AppConnection: ...

    async def delete(self, connection_id: str) -> bool: ...


class StoreFactory(Protocol):
    """Returns the Infisical store for a resource: the operator's own, or a per-resource identity's."""

    def default(self) -> ConnectionStore: ...

    def for_identity(self, *, host_url: str | None, client_id: str, client_secret: str) -> ConnectionStore: ...


class StatusWriter(Protocol):
    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> object: ...

    async def patch_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None], *, plural: str
    ) -> None: ...


# --- inputs and outputs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resource:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: OctopusDeployConnectionSpec
    status: OctopusDeployConnectionStatus
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Resource:
        meta = body.get("metadata", {})
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            spec=OctopusDeployConnectionSpec.model_validate(body.get("spec") or {}),
            status=OctopusDeployConnectionStatus.model_validate(body.get("status") or {}),
            annotations=dict(meta.get("annotations") or {}),
        )

    @property
    def connection_name(self) -> str:
        return self.spec.connection_name or self.name

    @property
    def paused(self) -> bool:
        return self.annotations.get(ANNOTATION_PAUSED, "").strip().lower() == "true"

    @property
    def adopt_existing(self) -> bool:
        return self.annotations.get(ANNOTATION_ADOPT_EXISTING, "").strip().lower() == "true"

    @property
    def reconcile_requested_at(self) -> str | None:
        return self.annotations.get(ANNOTATION_RECONCILE_REQUESTED_AT)

    @property
    def pending_create(self) -> PendingCreate | None:
        """The create marker: the annotation, or ``status.pendingCreate`` as earlier versions wrote it."""
        return parse_marker(self.annotations.get(ANNOTATION_PENDING_CREATE)) or self.status.pending_create


Outcome = conditions.Outcome[OctopusDeployConnectionStatus]


# --- pure helpers ------------------------------------------------------------------------------------------------
def stored_description(description: str | None) -> str | None:
    """The description as Infisical stores it (trimmed); an empty one counts as none."""
    return (js_trim(description) or None) if description is not None else None


def ignored_by_infisical(
    remote: AppConnection, *, name: str, description: str | None, project_id: str | None, instance_url: str
) -> list[str]:
    """What Infisical did not do of what was asked, compared with what it would store (trimmed values)."""
    problems: list[str] = []
    if remote.project_id != project_id:
        if project_id and not remote.project_id:
            problems.append(
                f"it ignored projectId {project_id} and holds an organization-level connection: this Infisical server "
                "does not support project-level app connections. Upgrade Infisical, or delete this resource and "
                "create it again without spec.projectId (projectId cannot change)"
            )
        else:
            problems.append(
                f"it holds the connection in project {remote.project_id or '(none)'} instead of "
                f"{project_id or 'the organization'}"
            )
    if remote.name != js_trim(name):
        problems.append(f'it stored the name "{remote.name}" instead of "{name}"')
    wanted = stored_description(description)
    if (remote.description or None) != wanted:
        problems.append(f"it stored the description {remote.description!r} instead of {wanted!r}")
    if remote.instance_url != js_trim(instance_url):
        problems.append(f"it stored the instance URL {remote.instance_url!r} instead of {instance_url!r}")
    return problems


def new_marker(spec: OctopusDeployConnectionSpec, name: str, now: datetime) -> str:
    """The create marker's annotation value for a new resource (``octoconn.engine``)."""
    return engine.new_marker(spec.connection_name or name, spec.project_id, now)


def key_digest(api_key: str) -> str:
    """In-memory fingerprint of a key, to tell a real rotation from an unrelated Secret edit. Never stored."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def summarize_ready(conditions: list[Condition], *, generation: int, now: datetime) -> list[Condition]:
    """Ready is True only when the key is verified and Infisical holds it; otherwise it carries the first cause."""
    return summarize(
        conditions,
        (CREDENTIALS_VERIFIED, SYNCED),
        ready_reason="Available",
        ready_message="The API key is valid and registered in Infisical.",
        generation=generation,
        now=now,
    )


def key_expiry_message(identity: OctopusIdentity, secret: str, *, now: datetime, window: timedelta) -> str | None:
    """The warning for a key that expires within ``window`` (a zero window turns it off), or None."""
    expires = identity.key_expires_at
    if expires is None or window <= timedelta(0) or expires - now > window:
        return None
    days = int((expires - now).total_seconds() // 86400)
    left = f"in {days} day{'s' if days != 1 else ''}" if days >= 1 else "in less than a day"
    return (
        f"Octopus accepted the key of {identity.username} ({identity.user_id}), but it expires at {rfc3339(expires)} "
        f"({left}). Create a new API key in Octopus and put it in Secret {secret}."
    )


def key_expiry_events(
    before: OctopusDeployConnectionStatus, after: OctopusDeployConnectionStatus, *, window: timedelta
) -> list[Event]:
    """One Warning per expiring key, not one per pass nor one per outage in between.

    The previous status says whether this key was already warned about: it was, if the last verification saw the
    same expiry already inside the window. A rotation to another short-lived key gets its own Warning.
    """
    new = after.condition(CREDENTIALS_VERIFIED)
    if new is None or new.reason != KEY_EXPIRING_SOON:
        return []
    previous = parse_time(before.octopus.key_expires_at) if before.octopus else None
    current = parse_time(after.octopus.key_expires_at) if after.octopus else None
    verified = parse_time(before.last_verified_time)
    if previous is not None and previous == current and verified is not None and previous - verified <= window:
        return []
    return [Event("Warning", KEY_EXPIRING_SOON, new.message)]


def deletion_blocked(
    res: Resource, error: errors.OctoconnError, now: datetime
) -> tuple[OctopusDeployConnectionStatus, list[Event]]:
    """Status and Event for a deletion that cannot remove the Infisical connection yet (the finalizer stays)."""
    message = (
        f"Deleting the Infisical connection failed ({error.reason}): {error.message}. The operator keeps trying; "
        "to finish the deletion and leave the connection in Infisical, set spec.deletionPolicy to Orphan."
    )
    status = res.status.model_copy(deep=True)
    status.conditions = set_condition(
        status.conditions,
        type_=READY,
        status="False",
        reason="DeletionBlocked",
        message=message,
        generation=res.generation,
        now=now,
    )
    return status, transition_events(res.status, status)


@dataclass(frozen=True)
class PatchPlan:
    name: str | None = None
    description_changed: bool = False
    description: str | None = None
    push_credentials: bool = False
    drift_repaired: bool = False

    @property
    def empty(self) -> bool:
        return self.name is None and not self.description_changed and not self.push_credentials


def plan_update(
    *,
    remote: AppConnection,
    desired_name: str,
    desired_description: str | None,
    instance_url: str,
    key_changed: bool,
    recorded_hash: str | None,
) -> PatchPlan:
    """What to PATCH on an existing connection. Credentials only when they really changed (see module doc)."""
    drift = recorded_hash is not None and remote.credentials_hash != recorded_hash
    return PatchPlan(
        name=desired_name if remote.name != desired_name else None,
        # Compared with what Infisical would store, or a description with surrounding spaces is sent at every check.
        description_changed=(remote.description or None) != stored_description(desired_description),
        description=desired_description,
        push_credentials=key_changed or drift or remote.instance_url != instance_url,
        drift_repaired=drift,
    )


async def read_identity(secrets: SecretReader, namespace: str, spec: InfisicalSpec | None) -> dict[str, Any] | None:
    """The per-resource Infisical identity (``host_url``, ``client_id``, ``client_secret``), or None for the
    operator's own. Secret syncs use their connection's, so both resources pick their Infisical store the same way."""
    if spec is None or spec.credentials_secret_ref is None:
        return None
    ref = spec.credentials_secret_ref
    secret = await secrets.read_secret(namespace, ref.name)
    if secret is None:
        raise errors.InfisicalCredentialsMissing(
            f"Secret {namespace}/{ref.name} named in spec.infisical.credentialsSecretRef was not found."
        )
    id_key = ref.client_id_key or DEFAULT_CLIENT_ID_KEY
    secret_key = ref.client_secret_key or DEFAULT_CLIENT_SECRET_KEY
    client_id, client_secret = js_trim(secret.data.get(id_key, "")), js_trim(secret.data.get(secret_key, ""))
    if not client_id or not client_secret:
        raise errors.InfisicalCredentialsMissing(
            f'Secret {namespace}/{ref.name} needs non-empty "{id_key}" and "{secret_key}" keys.'
        )
    return {"host_url": spec.host_url, "client_id": client_id, "client_secret": client_secret}


class VerificationCache:
    """One Octopus check shared by every resource that uses the same key at the same URL.

    A Secret shared by many resources is common: when it rotates, each of them would send the same three calls to
    Octopus. Callers that ask while a check is in flight wait for it, and its answer (an identity, or a definite
    refusal such as a revoked key) is reused for ``ttl`` seconds. Entries are keyed by a digest of URL and key: the
    key itself is never kept. Outages are not reused. ``fresh=True`` skips a reused answer (a re-check the user
    asked for), so a revoked key is noticed at once then, and at the latest ``ttl`` seconds after the revocation
    by every other check.
    """

    def __init__(self, verifier: Verifier, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._verifier = verifier
        self._ttl = ttl
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[OctopusIdentity]] = {}
        self._answers: dict[str, tuple[float, OctopusIdentity | errors.OctoconnError]] = {}

    async def verify(self, instance_url: str, api_key: str, *, fresh: bool = False) -> OctopusIdentity:
        digest = hashlib.sha256(f"{instance_url}\n{api_key}".encode()).hexdigest()
        now = self._clock()
        self._expire(now)
        kept = self._answers.get(digest)
        if kept is not None and not fresh:
            return _answer(kept[1])
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[OctopusIdentity] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            identity = await self._verifier.verify(instance_url, api_key)
        except errors.OctoconnError as exc:
            if self._ttl > 0 and exc.retry not in _TRANSIENT:
                self._answers[digest] = (self._clock() + self._ttl, exc)
            future.set_exception(copy.copy(exc))
            future.exception()  # retrieved: no "never retrieved" warning when nobody else was waiting
            raise
        except BaseException as exc:
            future.set_exception(errors.OctopusUnreachable(f"the shared check failed ({type(exc).__name__})"))
            future.exception()
            raise
        finally:
            self._inflight.pop(digest, None)
        if self._ttl > 0:
            self._answers[digest] = (self._clock() + self._ttl, identity)
        future.set_result(identity)
        return identity

    def _expire(self, now: float) -> None:
        # Entries are added in time order with one ttl, so the expired ones are at the front.
        for digest, (until, _) in list(self._answers.items()):
            if until > now:
                break
            del self._answers[digest]


def _answer(kept: OctopusIdentity | errors.OctoconnError) -> OctopusIdentity:
    if isinstance(kept, errors.OctoconnError):
        raise copy.copy(kept).with_traceback(None)
    return kept


# --- the reconciler ----------------------------------------------------------------------------------------------
class ConnectionReconciler:
    """Runs one reconcile or finalize pass for a resource. Long-lived: one per operator process."""

    def __init__(
        self,
        *,
        secrets: SecretReader,
        octopus: Verifier,
        stores: StoreFactory,
        status_writer: StatusWriter,
        owners_of: Callable[[str], Iterable[str]] = lambda _: (),
        clock: Callable[[], datetime] = utcnow,
        key_expiry_warning: timedelta = timedelta(days=14),
        verify_ttl: float = 0.0,
    ) -> None:
        """``owners_of(connection_id)``: the ``namespace/name`` of every resource that records that connection.

        ``key_expiry_warning``: a key expiring within it gives ``CredentialsVerified=True/ApiKeyExpiringSoon``.
        """
        self._key_expiry_warning = key_expiry_warning
        self._owners_of = owners_of
        self._secrets = secrets
        self._octopus = octopus
        self._stores = stores
        self._status_writer = status_writer
        self._clock = clock
        # uid -> digest of the key last pushed. Process memory only: after a restart we fall back to the Secret's
        # resourceVersion, which may push identical credentials once, but never misses a rotation.
        self._pushed_keys: dict[str, str] = {}
        # uid -> the per-resource identity's store last used. Deleting a namespace deletes the identity Secret
        # together with the resource; this lets the finalizer still reach Infisical (until a restart).
        self._tenant_stores: dict[str, ConnectionStore] = {}
        self._guard = CreateGuard(status_writer)
        self._verifications = VerificationCache(octopus, ttl=verify_ttl)

    def forget(self, uid: str) -> None:
        self._pushed_keys.pop(uid, None)
        self._tenant_stores.pop(uid, None)
        self._guard.forget(uid)

    def remember_marker(self, uid: str, marker: str) -> None:
        """This process wrote ``marker`` for the resource (with Kopf's first patch): no earlier create can exist."""
        self._guard.remember_marker(uid, marker)

    async def reconcile(
        self,
        res: Resource,
        *,
        fresh: bool = False,
        first_patch: Callable[[], Awaitable[Mapping[str, str]]] | None = None,
    ) -> Outcome:
        """One pass. ``fresh``: verify the key with Octopus even if another resource just did (a re-check asked for).
        ``first_patch``: waits for the resource's first patch (finalizer and create marker), returns its annotations;
        a create waits for it, so the key is read and verified meanwhile."""
        now = self._clock()
        status = res.status.model_copy(deep=True)
        status.observed_generation = res.generation
        status.handled_reconcile_request = res.reconcile_requested_at
        status.pending_create = None  # the marker lives in an annotation now; clear what earlier versions wrote
        if res.status.id:
            self._guard.recorded(res.uid)
        if res.paused:
            return self._finish(res, status, now, synced=("False", "ReconcilePaused", _PAUSED_MESSAGE))

        try:
            api_key, secret_version, identity, url = await self._verify(res, fresh=fresh)
        except errors.OctoconnError as exc:
            status.conditions = set_condition(
                status.conditions,
                type_=CREDENTIALS_VERIFIED,
                status="Unknown" if exc.retry in _TRANSIENT else "False",
                reason=exc.reason,
                message=exc.message,
                generation=res.generation,
                now=now,
            )
            # Infisical was not touched: Synced keeps what it said, unless a spec change is now waiting (or nothing
            # was ever synced), in which case Infisical's state is not the desired one and Synced must not say True.
            synced = status.condition(SYNCED)
            spec_changed = res.status.observed_generation not in (None, res.generation)
            if synced is None or (spec_changed and synced.status == "True"):
                synced_state: tuple[ConditionStatus, str, str] = (
                    "Unknown",
                    "WaitingForCredentials",
                    "Waiting for a verified API key before syncing; Infisical keeps what it had.",
                )
            else:
                synced_state = (synced.status, synced.reason, synced.message)
            return self._finish(res, status, now, synced=synced_state, error=exc)

        status.octopus = OctopusIdentityStatus(
            user_id=identity.user_id,
            username=identity.username,
            is_service=identity.is_service,
            server_version=identity.server_version,
            key_expires_at=rfc3339(identity.key_expires_at) if identity.key_expires_at else None,
        )
        status.last_verified_time = rfc3339(now)
        secret_name = f"{res.namespace}/{res.spec.api_key_secret_ref.name}"
        expiring = key_expiry_message(identity, secret_name, now=now, window=self._key_expiry_warning)
        status.conditions = set_condition(
            status.conditions,
            type_=CREDENTIALS_VERIFIED,
            status="True",
            reason=KEY_EXPIRING_SOON if expiring else "ApiKeyValid",
            message=expiring or f"Octopus accepted the key of {identity.username} ({identity.user_id}).",
            generation=res.generation,
            now=now,
        )

        if status.refused_write is not None and not _refusal_holds(res, status.refused_write, secret_version):
            status.refused_write = None  # something changed since: the request may be sent again
        try:
            store = await self._store_for(res)
            remote, action = await self._sync(res, status, store, api_key, secret_version, url, now, first_patch)
        except errors.InfisicalAuthFailed as exc:
            message = exc.message
            if res.spec.infisical is None or res.spec.infisical.credentials_secret_ref is None:
                # Not something the resource's owner can fix: say whose credentials these are.
                message = (
                    f"The operator's own Infisical identity was refused; its administrators must fix it. {message}"
                )
            return self._finish(res, status, now, synced=("False", exc.reason, message), error=exc)
        except errors.OctoconnError as exc:
            transient = exc.retry in _TRANSIENT
            # An outage says nothing about the connection itself, which Infisical still holds: Unknown, not False.
            state: ConditionStatus = "Unknown" if transient else "False"
            message = exc.message
            if status.refused_write is not None and status.refused_write.reason == exc.reason:
                message = f"{message.rstrip('.')}. {_NOT_SENT_AGAIN}"
            return self._finish(res, status, now, synced=(state, exc.reason, message), error=exc)

        self._pushed_keys[res.uid] = key_digest(api_key)
        status.id = remote.id
        status.version = remote.version
        status.credentials_hash = remote.credentials_hash
        status.org_id = remote.org_id
        status.project_id = remote.project_id
        status.connection_name = remote.name
        status.instance_url = remote.instance_url
        status.secret_resource_version = secret_version
        status.pending_create = None
        ignored = ignored_by_infisical(
            remote,
            name=res.connection_name,
            description=res.spec.description,
            project_id=res.spec.project_id,
            instance_url=url,
        )
        if ignored:
            # Infisical said yes but did not do all of it (an older release drops what it does not know): the
            # resource is not what was asked, so it is not Ready, and the same request is not sent again for nothing.
            error = errors.InfisicalIgnoredRequest(
                f"Infisical answered with success but {'; '.join(ignored)}. Connection {remote.name} ({remote.id})"
            )
            if action is not None:
                status.refused_write = _refusal(
                    res, "create" if action.reason == "Created" else "update", secret_version, error
                )
            message = error.message
            if status.refused_write is not None:
                message = f"{message}. {_NOT_SENT_AGAIN}"
            outcome = self._finish(res, status, now, synced=("False", error.reason, message), error=error)
            if action is not None:
                outcome.events.insert(0, action)
            return outcome
        status.last_synced_time = rfc3339(now)
        status.refused_write = None
        reason = action.reason if action is not None and action.reason == "DriftRepaired" else "UpToDate"
        # What was done goes into its Event; the condition says how things stand, so that the next check, which
        # finds them the same, has nothing to write.
        matches = f"Infisical connection {remote.name} ({remote.id}) matches."
        message = action.message if action is not None and reason == "DriftRepaired" else matches
        outcome = self._finish(res, status, now, synced=("True", reason, message))
        if action is not None:
            # A first pass's action (Created, Adopted) already says the resource is Ready: its Available Event would
            # be one more API-server write per new connection and tell nothing new (issue 19).
            first = res.status.condition(READY) is None
            outcome.events = [action, *(e for e in outcome.events if not (first and e.reason == "Available"))]
        return outcome

    async def finalize(self, res: Resource) -> list[Event]:
        """Remove the Infisical connection unless the policy is Orphan. Raises to retry (finalizer stays)."""
        name = res.connection_name
        if res.spec.effective_deletion_policy() == "Orphan":
            self.forget(res.uid)
            return [Event("Normal", "Orphaned", f"deletionPolicy is Orphan: Infisical connection {name} was kept.")]
        if res.paused:
            self.forget(res.uid)
            return [Event("Warning", "ReconcilePaused", f"Paused: Infisical connection {name} was left in place.")]
        try:
            store = await self._store_for(res)
        except errors.InfisicalCredentialsMissing:
            if res.uid not in self._tenant_stores:
                raise
            store = self._tenant_stores[res.uid]
        connection_id = res.status.id or self._guard.answered_id(res.uid)
        if connection_id is None:
            found, claim = await self._claim_for_deletion(res, store)
            if found is None or claim is None:
                self.forget(res.uid)
                return [
                    Event("Normal", "NothingToDelete", "No Infisical connection was ever recorded for this resource.")
                ]
            if not claim.ours:
                self.forget(res.uid)
                return [ownership.left_in_place("connection", found.name, found.id, claim)]
            connection_id = found.id
        deleted = await store.delete(connection_id)
        # Only now: a failed delete is retried, and may need the remembered identity store again.
        self.forget(res.uid)
        verb = "Deleted" if deleted else "AlreadyGone"
        detail = "deleted" if deleted else "was already gone"
        return [Event("Normal", verb, f"Infisical connection {name} ({connection_id}) {detail}.")]

    # -- steps ----------------------------------------------------------------------------------------------------
    async def _verify(self, res: Resource, *, fresh: bool) -> tuple[str, str, OctopusIdentity, str]:
        url = normalize_instance_url(res.spec.instance_url)
        ref = res.spec.api_key_secret_ref
        secret = await self._secrets.read_secret(res.namespace, ref.name)
        if secret is None:
            then = (
                f"Infisical connection {res.status.id} is kept as it is until the Secret is back"
                if res.status.id
                else "the connection is created as soon as it appears"
            )
            raise errors.SecretNotFound(
                f"Secret {res.namespace}/{ref.name} was not found. Create it with the Octopus API key under "
                f'"{ref.data_key()}"; {then}.'
            )
        api_key = api_key_from(secret, namespace=res.namespace, name=ref.name, key=ref.data_key())
        try:
            identity = await self._verifications.verify(url, api_key, fresh=fresh)
        except errors.MalformedApiKey as exc:
            raise errors.MalformedApiKey(
                f'Secret {res.namespace}/{ref.name}, key "{ref.data_key()}": {exc.message}'
            ) from None
        return api_key, secret.resource_version, identity, url

    async def _store_for(self, res: Resource) -> ConnectionStore:
        identity = await read_identity(self._secrets, res.namespace, res.spec.infisical)
        if identity is None:
            return self._stores.default()
        store = self._stores.for_identity(**identity)
        self._tenant_stores[res.uid] = store
        return store

    def _key_changed(self, res: Resource, api_key: str, secret_version: str) -> bool:
        known = self._pushed_keys.get(res.uid)
        if known is None:
            return res.status.secret_resource_version != secret_version
        return known != key_digest(api_key)

    async def _sync(
        self,
        res: Resource,
        status: OctopusDeployConnectionStatus,
        store: ConnectionStore,
        api_key: str,
        secret_version: str,
        url: str,
        now: datetime,
        first_patch: Callable[[], Awaitable[Mapping[str, str]]] | None = None,
    ) -> tuple[AppConnection, Event | None]:
        name, description = res.connection_name, res.spec.description
        remote: AppConnection | None = None
        recreate = pushed = False
        key_changed = self._key_changed(res, api_key, secret_version)
        if res.status.id and key_changed and res.status.observed_generation == res.generation:
            # A new key with the spec as last synced: PATCH it at once, its answer is the row a GET would have read.
            remote, pushed = await self._push_key(res, status, store, api_key, secret_version, url), True
            recreate = remote is None
        elif res.status.id:
            remote = await store.get(res.status.id)
            recreate = remote is None

        answered = None if recreate else self._guard.answered_id(res.uid)
        if remote is None and answered is not None:
            remote = await store.get(answered)  # ours: only the status write was missed
            if remote is None:
                self._guard.recorded(res.uid)  # deleted since: create it again
        if remote is None:
            return await self._create(res, status, store, api_key, secret_version, url, now, first_patch, recreate)

        plan = plan_update(
            remote=remote,
            desired_name=name,
            desired_description=description,
            instance_url=url,
            key_changed=key_changed and not pushed,
            recorded_hash=None if pushed else res.status.credentials_hash,
        )
        if plan.empty and pushed:
            return remote, Event("Normal", "Updated", f"Updated credentials of connection {remote.id}.")
        if plan.empty:
            return remote, None
        try:
            updated = await self._write(
                res, status, "update", secret_version, lambda: self._apply(store, remote.id, plan, url, api_key)
            )
        except errors.NameConflict as exc:
            if plan.name is None:
                raise
            # The adopt annotation does not apply here: a rename never takes over another connection.
            raise errors.NameConflict(
                f'Cannot rename Infisical connection {remote.id} from "{remote.name}" to "{plan.name}": {exc.message}',
                status_code=exc.status_code,
            ) from None
        if plan.drift_repaired:
            message = "credentialsHash was changed outside the cluster; pushed the Secret's key again."
            return updated, Event("Warning", "DriftRepaired", message)
        changed = [label for label, on in _plan_labels(plan) if on or (pushed and label == "credentials")]
        return updated, Event("Normal", "Updated", f"Updated {', '.join(changed)} of connection {updated.id}.")

    async def _push_key(
        self,
        res: Resource,
        status: OctopusDeployConnectionStatus,
        store: ConnectionStore,
        api_key: str,
        version: str,
        url: str,
    ) -> AppConnection | None:
        """PATCH the new key onto the recorded connection; None when Infisical no longer has it."""
        connection_id = res.status.id or ""
        try:
            return await self._write(
                res, status, "update", version, lambda: store.update(connection_id, credentials=(url, api_key))
            )
        except errors.InfisicalNotFound:
            return None

    async def _create(
        self,
        res: Resource,
        status: OctopusDeployConnectionStatus,
        store: ConnectionStore,
        api_key: str,
        secret_version: str,
        url: str,
        now: datetime,
        first_patch: Callable[[], Awaitable[Mapping[str, str]]] | None,
        recreate: bool,
    ) -> tuple[AppConnection, Event]:
        """No connection is recorded: adopt the one an unanswered create of ours made, or create it."""
        name, project_id = res.connection_name, res.spec.project_id
        evidence, sent = ownership.Evidence(None), (name, project_id)
        if not recreate:
            target = _target(res)
            marker, written = await self._guard.marker(target, now, first_patch)
            evidence, sent = self._guard.evidence(target, marker, written)
        if evidence.sent_after is not None:
            # A create of ours may have succeeded without us hearing back: look before creating again.
            found = await store.get_by_name(sent[0], project_id=sent[1])
            if found is not None:
                claim = self._claim(res, found, evidence, sent, url, now)
                if claim.ours or sent == (name, project_id):
                    return await self._settle(res, store, found, claim, api_key, url)
        # No name lookup otherwise: a create costs one paced write, a lookup one paced read more. Infisical refuses
        # a taken name, and only then is it worth looking at who holds it.
        try:
            remote = await self._send_create(res, status, store, api_key, secret_version, url, now)
        except errors.NameConflict:
            existing = await store.get_by_name(name, project_id=project_id)
            if existing is None:
                raise
            status.refused_write = None  # the name's holder decides now, not the create
            claim = self._claim(res, existing, evidence, (name, project_id), url, now)
            if not claim.ours:
                await self._guard.refused(_target(res), evidence=evidence)
            return await self._settle(res, store, existing, claim, api_key, url)
        if recreate:
            message = f"Connection {res.status.id} was deleted in Infisical; recreated it as {remote.id}."
            return remote, Event("Warning", "DriftRepaired", message)
        return remote, Event("Normal", "Created", f"Created Infisical connection {name} ({remote.id}).")

    def _claim(
        self,
        res: Resource,
        found: AppConnection,
        evidence: ownership.Evidence,
        sent: tuple[str, str | None],
        url: str,
        now: datetime,
    ) -> ownership.Claim:
        differences = ignored_by_infisical(
            found, name=sent[0], description=res.spec.description, project_id=sent[1], instance_url=url
        )
        return ownership.claim(
            me=_ref(res),
            recorders=self._owners_of(found.id),
            created_at=found.created_at,
            differences=differences,
            evidence=evidence,
            now=now,
        )

    async def _settle(
        self,
        res: Resource,
        store: ConnectionStore,
        found: AppConnection,
        claim: ownership.Claim,
        api_key: str,
        url: str,
    ) -> tuple[AppConnection, Event]:
        """Adopt a connection shown to be ours; anything else is taken over only as ``_take_over`` allows."""
        if not claim.ours:
            return await self._take_over(res, store, found, api_key, url, recheck_soon=claim.recheck_soon)
        remote = await self._update(res, store, found, api_key, url, key_changed=True)
        # Only now: a failed update keeps the memory as it was, and the next try claims again.
        self._guard.answered(_target(res), found.id, name=found.name, project_id=found.project_id, now=self._clock())
        message = f"Adopted Infisical connection {found.name} ({found.id}): {claim.why}."
        return remote, Event("Normal", "Adopted", message)

    async def _send_create(
        self,
        res: Resource,
        status: OctopusDeployConnectionStatus,
        store: ConnectionStore,
        api_key: str,
        secret_version: str,
        url: str,
        now: datetime,
    ) -> AppConnection:
        name, project_id = res.connection_name, res.spec.project_id
        target = _target(res)
        self._guard.sending(target, now)
        try:
            remote = await self._write(
                res,
                status,
                "create",
                secret_version,
                lambda: store.create(
                    name=name,
                    description=res.spec.description,
                    project_id=project_id,
                    instance_url=url,
                    api_key=api_key,
                ),
            )
        except errors.NameConflict:
            raise  # the caller looks at who holds the name
        except errors.OctoconnError as exc:
            if exc.retry not in _TRANSIENT:
                await self._guard.refused(target, evidence=ownership.Evidence(None))  # a definite refusal made nothing
            raise
        self._guard.answered(target, remote.id, name=name, project_id=project_id, now=now)
        return remote

    async def _claim_for_deletion(
        self, res: Resource, store: ConnectionStore
    ) -> tuple[AppConnection | None, ownership.Claim | None]:
        """Nothing recorded: the connection a create of ours may have made, and whether it is provably ours."""
        evidence, sent, marker = self._guard.carried_evidence(_target(res))
        if evidence.sent_after is None and marker is None:
            return None, None
        try:
            found = await store.get_by_name(sent[0], project_id=sent[1])
        except errors.NameConflict:
            return None, None  # another app's connection holds the name: the interrupted create made nothing
        if found is None:
            return None, None
        try:
            url = normalize_instance_url(res.spec.instance_url)
        except errors.OctoconnError:
            url = res.spec.instance_url
        return found, self._claim(res, found, evidence, sent, url, self._clock())

    async def _write(
        self,
        res: Resource,
        status: OctopusDeployConnectionStatus,
        operation: Literal["create", "update"],
        secret_version: str,
        call: Callable[[], Awaitable[AppConnection]],
    ) -> AppConnection:
        """Send a create or update, unless Infisical already refused it for good and nothing has changed since."""
        refused = status.refused_write
        if refused is not None and refused.operation == operation and _refusal_holds(res, refused, secret_version):
            raise _remembered(refused)
        try:
            return await call()
        except errors.InfisicalRejected as exc:  # 400/422: sending the same again would get the same answer
            status.refused_write = _refusal(res, operation, secret_version, exc)
            raise

    async def _take_over(
        self,
        res: Resource,
        store: ConnectionStore,
        existing: AppConnection,
        api_key: str,
        url: str,
        *,
        recheck_soon: bool = False,
    ) -> tuple[AppConnection, Event]:
        """A connection under our name that this resource did not create: take it only when asked to."""
        name = res.connection_name
        others = sorted(set(self._owners_of(existing.id)) - {f"{res.namespace}/{res.name}"})
        if others:
            # Never take over another resource's connection, whatever the annotation says: two resources
            # would overwrite each other's key, and deleting either would delete the other's connection.
            raise errors.NameConflict(
                f'Infisical connection "{name}" ({existing.id}) is managed by OctopusDeployConnection '
                f"{others[0]}. Choose another spec.connectionName."
            )
        if not res.adopt_existing:
            conflict = errors.NameJustTaken if recheck_soon else errors.NameConflict
            raise conflict(
                f'Infisical already has a connection named "{name}" ({existing.id}) that this resource did '
                f"not create. Choose another spec.connectionName, or annotate the resource with "
                f'{ANNOTATION_ADOPT_EXISTING}="true" to take it over.'
            )
        remote = await self._update(res, store, existing, api_key, url, key_changed=True)
        return remote, Event("Normal", "Adopted", f"Took over existing connection {name} ({remote.id}).")

    async def _update(
        self, res: Resource, store: ConnectionStore, remote: AppConnection, api_key: str, url: str, *, key_changed: bool
    ) -> AppConnection:
        plan = plan_update(
            remote=remote,
            desired_name=res.connection_name,
            desired_description=res.spec.description,
            instance_url=url,
            key_changed=key_changed,
            recorded_hash=None,
        )
        return await self._apply(store, remote.id, plan, url, api_key) if not plan.empty else remote

    @staticmethod
    async def _apply(
        store: ConnectionStore, connection_id: str, plan: PatchPlan, url: str, api_key: str
    ) -> AppConnection:
        kwargs: dict[str, Any] = {}
        if plan.name is not None:
            kwargs["name"] = plan.name
        if plan.description_changed:
            kwargs["description"] = plan.description
        if plan.push_credentials:
            kwargs["credentials"] = (url, api_key)
        return await store.update(connection_id, **kwargs)

    def _finish(
        self,
        res: Resource,
        status: OctopusDeployConnectionStatus,
        now: datetime,
        *,
        synced: tuple[ConditionStatus, str, str],
        error: errors.OctoconnError | None = None,
    ) -> Outcome:
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
        status.conditions = summarize_ready(status.conditions, generation=res.generation, now=now)
        expiry = key_expiry_events(res.status, status, window=self._key_expiry_warning)
        events = transition_events(res.status, status) + expiry
        return Outcome(status=status, events=events, error=error)


_TRANSIENT = TRANSIENT
_NOT_SENT_AGAIN = (
    "This request is not sent again until the resource or its Secret changes; after fixing the cause in Infisical, "
    "set the annotation octoconn.dev/reconcile-requested-at to a new value to retry now."
)
_REFUSALS: dict[str, type[errors.InfisicalError]] = {
    errors.NameConflict.reason: errors.NameConflict,
    errors.InfisicalIgnoredRequest.reason: errors.InfisicalIgnoredRequest,
}


def _refusal(
    res: Resource, operation: Literal["create", "update"], secret_version: str, error: errors.OctoconnError
) -> RefusedWrite:
    return RefusedWrite(
        operation=operation,
        generation=res.generation,
        secret_resource_version=secret_version,
        reconcile_requested_at=res.reconcile_requested_at,
        reason=error.reason,
        message=error.message,
    )


def _refusal_holds(res: Resource, refused: RefusedWrite, secret_version: str) -> bool:
    return (refused.generation, refused.secret_resource_version, refused.reconcile_requested_at) == (
        res.generation,
        secret_version,
        res.reconcile_requested_at,
    )


def _remembered(refused: RefusedWrite) -> errors.InfisicalError:
    return _REFUSALS.get(refused.reason, errors.InfisicalRejected)(refused.message)


_PAUSED_MESSAGE = (
    'Paused by the annotation octoconn.dev/paused="true": no calls to Octopus or Infisical. Remove it to resume.'
)


def _target(res: Resource) -> Target:
    return Target(
        plural=PLURAL,
        namespace=res.namespace,
        name=res.name,
        uid=res.uid,
        annotations=res.annotations,
        create_name=res.connection_name,
        create_project=res.spec.project_id,
        legacy_marker=res.status.pending_create,
    )


def _ref(res: Resource) -> str:
    return f"{res.namespace}/{res.name}"


def _plan_labels(plan: PatchPlan) -> list[tuple[str, bool]]:
    return [
        ("name", plan.name is not None),
        ("description", plan.description_changed),
        ("credentials", plan.push_credentials),
    ]
