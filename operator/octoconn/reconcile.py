"""The OctopusDeployConnection's adapter for ``octoconn.engine``: verify, create or update, repair drift, delete.

This module decides; it does no I/O of its own. Outside calls go through the small ports below (Secrets,
Octopus, Infisical, status), which ``runtime`` wires to the real clients. It imports neither kopf nor httpx,
so every decision can be exercised without a cluster. The engine runs the pass and owns what both kinds share
(pausing, the status copy, the ``Ready`` finish, the create protocol, refused-write memory, the finalizer's
preamble); this adapter fills in its steps (engine doc: the adapter contract):

1. ``prepare``: read the API key from the Secret and verify it with Octopus (``CredentialsVerified``);
2. ``observe``: find the Infisical connection (by recorded id; after a create whose answer was lost, or a crash
   mid-create, by name, and then only one ``octoconn.ownership`` shows to be this resource's own);
3. ``create`` it (straight away: the name is looked up only when Infisical says it is taken), or PATCH only what
   differs (``update``): ``credentials`` only when the key or URL changed, or when someone else rewrote them
   (Infisical's ``credentialsHash`` moved) — every credentials write changes that hash. A create or update
   Infisical refused for good is remembered in status and not sent again until something changes;
4. ``record``: compare what Infisical holds with what was asked (an older Infisical silently drops ``projectId``):
   a success answer is not trusted on its own.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal, Protocol

from octoconn import conditions, creates, engine, errors, ownership
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
    utcnow,
)
from octoconn.creates import FirstPatch, parse_marker
from octoconn.models import (
    ANNOTATION_ADOPT_EXISTING,
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
from octoconn.sharing import Kept, SingleFlight
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
@dataclass(frozen=True, kw_only=True)
class Resource(engine.ManagedResource[OctopusDeployConnectionStatus]):
    spec: OctopusDeployConnectionSpec
    spec_model = OctopusDeployConnectionSpec
    status_model = OctopusDeployConnectionStatus

    @property
    def connection_name(self) -> str:
        return self.spec.connection_name or self.name

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
    return creates.new_marker(spec.connection_name or name, spec.project_id, now)


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
        self._flights: SingleFlight[str, OctopusIdentity] = SingleFlight()
        self._answers: Kept[str, OctopusIdentity | errors.OctoconnError] = Kept(ttl=ttl, clock=clock)

    async def verify(self, instance_url: str, api_key: str, *, fresh: bool = False) -> OctopusIdentity:
        digest = hashlib.sha256(f"{instance_url}\n{api_key}".encode()).hexdigest()
        kept = self._answers.get(digest)
        if kept is not None and not fresh:
            return _answer(kept[0])

        async def check() -> OctopusIdentity:
            try:
                identity = await self._verifier.verify(instance_url, api_key)
            except errors.OctoconnError as exc:
                if exc.retry not in TRANSIENT:
                    self._answers.put(digest, exc)
                raise
            self._answers.put(digest, identity)
            return identity

        return await self._flights.run(digest, check, shared_error=_shared_error)


def _shared_error(exc: BaseException) -> BaseException:
    if isinstance(exc, errors.OctoconnError):
        return copy.copy(exc)
    return errors.OctopusUnreachable(f"the shared check failed ({type(exc).__name__})")


def _answer(kept: OctopusIdentity | errors.OctoconnError) -> OctopusIdentity:
    if isinstance(kept, errors.OctoconnError):
        raise copy.copy(kept).with_traceback(None)
    return kept


# --- the adapter -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verified:
    """What ``prepare`` found: the key, verified with Octopus at the normalised URL."""

    api_key: str
    secret_version: str
    identity: OctopusIdentity
    url: str


@dataclass(kw_only=True)
class ConnectionObservation(engine.Observation[AppConnection]):
    store: ConnectionStore
    recreate: bool = False  # the recorded connection was deleted in Infisical
    pushed: bool = False  # the new key was PATCHed at once, instead of reading the connection first
    lookup: engine.Lookup[AppConnection] | None = None  # what a create of ours that went unanswered may have made


class ConnectionReconciler(
    engine.ManagedReconciler[Resource, Verified, ConnectionObservation, AppConnection, ConnectionStore]
):
    """The connection's adapter (``octoconn.engine`` runs the pass). Long-lived: one per operator process."""

    plural = PLURAL
    what = "connection"
    short = "connection"
    heartbeats = ("last_verified_time", "last_synced_time")
    copied: ClassVar[Mapping[str, str]] = {
        "version": "version",
        "credentials_hash": "credentials_hash",
        "org_id": "org_id",
        "project_id": "project_id",
        "connection_name": "name",
        "instance_url": "instance_url",
    }

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
        super().__init__(writer=status_writer, owners_of=owners_of, clock=clock)
        self._key_expiry_warning = key_expiry_warning
        self._secrets = secrets
        self._stores = stores
        # uid -> digest of the key last pushed. Process memory only: after a restart we fall back to the Secret's
        # resourceVersion, which may push identical credentials once, but never misses a rotation.
        self._pushed_keys: dict[str, str] = {}
        # uid -> the per-resource identity's store last used. Deleting a namespace deletes the identity Secret
        # together with the resource; this lets the finalizer still reach Infisical (until a restart).
        self._tenant_stores: dict[str, ConnectionStore] = {}
        self._verifications = VerificationCache(octopus, ttl=verify_ttl)

    def forget(self, uid: str) -> None:
        self._pushed_keys.pop(uid, None)
        self._tenant_stores.pop(uid, None)
        super().forget(uid)

    # -- prepare: the key ---------------------------------------------------------------------------------------
    def begin(self, res: Resource, status: OctopusDeployConnectionStatus) -> None:
        status.handled_reconcile_request = res.reconcile_requested_at

    async def prepare(
        self, res: Resource, status: OctopusDeployConnectionStatus, now: datetime, *, fresh: bool
    ) -> Verified:
        """Read the key and verify it with Octopus (``fresh``: even if another resource just did)."""
        verified = await self._verify(res, fresh=fresh)
        identity = verified.identity
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
        return verified

    def unprepared(
        self, res: Resource, status: OctopusDeployConnectionStatus, error: errors.OctoconnError, now: datetime
    ) -> engine.Synced:
        status.conditions = set_condition(
            status.conditions,
            type_=CREDENTIALS_VERIFIED,
            status="Unknown" if error.retry in TRANSIENT else "False",
            reason=error.reason,
            message=error.message,
            generation=res.generation,
            now=now,
        )
        # Infisical was not touched: Synced keeps what it said, unless a spec change is now waiting (or nothing was
        # ever synced), in which case Infisical's state is not the desired one and Synced must not say True.
        synced = status.condition(SYNCED)
        spec_changed = res.status.observed_generation not in (None, res.generation)
        if synced is None or (spec_changed and synced.status == "True"):
            return (
                "Unknown",
                "WaitingForCredentials",
                "Waiting for a verified API key before syncing; Infisical keeps what it had.",
            )
        return synced.status, synced.reason, synced.message

    async def _verify(self, res: Resource, *, fresh: bool) -> Verified:
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
        return Verified(api_key, secret.resource_version, identity, url)

    # -- observe ------------------------------------------------------------------------------------------------
    async def observe(
        self,
        res: Resource,
        status: OctopusDeployConnectionStatus,
        prepared: Verified,
        now: datetime,
        first_patch: FirstPatch | None,
    ) -> ConnectionObservation:
        if status.refused_write is not None and not _refusal_holds(res, status.refused_write, prepared.secret_version):
            status.refused_write = None  # something changed since: the request may be sent again
        store = await self._store_for(res)
        key_changed = self._key_changed(res, prepared.api_key, prepared.secret_version)
        if res.status.id and key_changed and res.status.observed_generation == res.generation:
            # A new key with the spec as last synced: PATCH it at once, its answer is the row a GET would have read
            # (one Infisical request per rotation instead of two). The one write an observe sends.
            remote = await self._push_key(res, status, store, prepared)
            return ConnectionObservation(remote=remote, store=store, recreate=remote is None, pushed=True)
        remote, lookup = await self.find(
            res, store, now, first_patch, lambda found, sent: self._differences(res, found, sent, prepared.url)
        )
        recreate = bool(res.status.id) and remote is None
        return ConnectionObservation(remote=remote, store=store, recreate=recreate, lookup=lookup)

    async def _push_key(
        self, res: Resource, status: OctopusDeployConnectionStatus, store: ConnectionStore, prepared: Verified
    ) -> AppConnection | None:
        """PATCH the new key onto the recorded connection; None when Infisical no longer has it."""
        connection_id = res.status.id or ""
        credentials = (prepared.url, prepared.api_key)
        try:
            return await self.send_once(
                res,
                status,
                "update",
                prepared.secret_version,
                lambda: store.update(connection_id, credentials=credentials),
            )
        except errors.InfisicalNotFound:
            return None

    def _differences(self, res: Resource, found: AppConnection, sent: tuple[str, str | None], url: str) -> list[str]:
        return ignored_by_infisical(
            found, name=sent[0], description=res.spec.description, project_id=sent[1], instance_url=url
        )

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

    # -- create -------------------------------------------------------------------------------------------------
    async def create(
        self,
        res: Resource,
        status: OctopusDeployConnectionStatus,
        prepared: Verified,
        observed: ConnectionObservation,
        now: datetime,
    ) -> tuple[AppConnection, Event | None]:
        """No connection is recorded: adopt the one an unanswered create of ours made, or create it."""
        name, project_id = res.connection_name, res.spec.project_id
        lookup, store = observed.lookup, observed.store
        found, claim = (lookup.found, lookup.claim) if lookup is not None else (None, None)
        sent = lookup.sent if lookup is not None else None
        if found is not None and claim is not None and (claim.ours or sent == (name, project_id)):
            # A create of ours may have succeeded without us hearing back: what it made is settled, not made again.
            return await self._settle(res, store, found, claim, prepared)
        remote, claim = await self.send_create(
            res,
            status,
            store,
            now,
            lambda: self.send_once(
                res,
                status,
                "create",
                prepared.secret_version,
                lambda: store.create(
                    name=name,
                    description=res.spec.description,
                    project_id=project_id,
                    instance_url=prepared.url,
                    api_key=prepared.api_key,
                ),
            ),
            evidence=lookup.evidence if lookup is not None else ownership.Evidence(None),
            differences=lambda found: self._differences(res, found, (name, project_id), prepared.url),
        )
        if claim is not None:
            return await self._settle(res, store, remote, claim, prepared)
        if observed.recreate:
            message = f"Connection {res.status.id} was deleted in Infisical; recreated it as {remote.id}."
            return remote, Event("Warning", "DriftRepaired", message)
        return remote, Event("Normal", "Created", f"Created Infisical connection {name} ({remote.id}).")

    async def _settle(
        self, res: Resource, store: ConnectionStore, found: AppConnection, claim: ownership.Claim, prepared: Verified
    ) -> tuple[AppConnection, Event]:
        """Adopt a connection shown to be ours; anything else is taken over only as ``_take_over`` allows."""
        if not claim.ours:
            return await self._take_over(res, store, found, prepared, recheck_soon=claim.recheck_soon)
        remote = await self._adopt(res, store, found, prepared)
        # Only now: a failed update keeps the memory as it was, and the next try claims again.
        self._guard.answered(
            self.target(res), found.id, name=found.name, project_id=found.project_id, now=self._clock()
        )
        message = f"Adopted Infisical connection {found.name} ({found.id}): {claim.why}."
        return remote, Event("Normal", "Adopted", message)

    async def _take_over(
        self,
        res: Resource,
        store: ConnectionStore,
        existing: AppConnection,
        prepared: Verified,
        *,
        recheck_soon: bool = False,
    ) -> tuple[AppConnection, Event]:
        """A connection under our name that this resource did not create: take it only when asked to."""
        name = res.connection_name
        others = sorted(set(self._owners_of(existing.id)) - {res.ref})
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
        remote = await self._adopt(res, store, existing, prepared)
        return remote, Event("Normal", "Adopted", f"Took over existing connection {name} ({remote.id}).")

    async def _adopt(
        self, res: Resource, store: ConnectionStore, remote: AppConnection, prepared: Verified
    ) -> AppConnection:
        """Make an adopted connection match, credentials included: what it holds was never recorded here."""
        plan = plan_update(
            remote=remote,
            desired_name=res.connection_name,
            desired_description=res.spec.description,
            instance_url=prepared.url,
            key_changed=True,
            recorded_hash=None,
        )
        return await _apply(store, remote.id, plan, prepared) if not plan.empty else remote

    # -- update -------------------------------------------------------------------------------------------------
    async def update(
        self,
        res: Resource,
        status: OctopusDeployConnectionStatus,
        prepared: Verified,
        observed: ConnectionObservation,
        remote: AppConnection,
        now: datetime,
    ) -> tuple[AppConnection, Event | None]:
        """PATCH only what differs: credentials only when they really changed (see the module doc)."""
        pushed = observed.pushed
        plan = plan_update(
            remote=remote,
            desired_name=res.connection_name,
            desired_description=res.spec.description,
            instance_url=prepared.url,
            key_changed=self._key_changed(res, prepared.api_key, prepared.secret_version) and not pushed,
            recorded_hash=None if pushed else res.status.credentials_hash,
        )
        if plan.empty and pushed:
            return remote, Event("Normal", "Updated", f"Updated credentials of connection {remote.id}.")
        if plan.empty:
            return remote, None
        try:
            updated = await self.send_once(
                res,
                status,
                "update",
                prepared.secret_version,
                lambda: _apply(observed.store, remote.id, plan, prepared),
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

    def refusal_holds(self, res: Resource, refused: RefusedWrite, request: str) -> bool:
        return _refusal_holds(res, refused, request)

    def refusal(
        self, res: Resource, operation: engine.Operation, request: str, error: errors.OctoconnError
    ) -> RefusedWrite:
        return _refusal(res, operation, request, error)

    def remembered(self, refused: RefusedWrite) -> errors.OctoconnError:
        return _REFUSALS.get(refused.reason, errors.InfisicalRejected)(refused.message)

    # -- the outcome --------------------------------------------------------------------------------------------
    def failed(
        self, res: Resource, status: OctopusDeployConnectionStatus, error: errors.OctoconnError, now: datetime
    ) -> engine.Synced:
        message = error.message
        if isinstance(error, errors.InfisicalAuthFailed):
            if res.spec.infisical is None or res.spec.infisical.credentials_secret_ref is None:
                # Not something the resource's owner can fix: say whose credentials these are.
                message = (
                    f"The operator's own Infisical identity was refused; its administrators must fix it. {message}"
                )
            return "False", error.reason, message
        # An outage says nothing about the connection itself, which Infisical still holds: Unknown, not False.
        state: ConditionStatus = "Unknown" if error.retry in TRANSIENT else "False"
        if status.refused_write is not None and status.refused_write.reason == error.reason:
            message = f"{message.rstrip('.')}. {_NOT_SENT_AGAIN}"
        return state, error.reason, message

    def record(
        self,
        res: Resource,
        status: OctopusDeployConnectionStatus,
        prepared: Verified,
        observed: ConnectionObservation,
        remote: AppConnection,
        action: Event | None,
        now: datetime,
    ) -> engine.Verdict:
        self._pushed_keys[res.uid] = key_digest(prepared.api_key)
        status.secret_resource_version = prepared.secret_version
        ignored = ignored_by_infisical(
            remote,
            name=res.connection_name,
            description=res.spec.description,
            project_id=res.spec.project_id,
            instance_url=prepared.url,
        )
        if ignored:
            return self._ignored(res, status, prepared, remote, action, ignored)
        status.last_synced_time = rfc3339(now)
        status.refused_write = None
        reason = action.reason if action is not None and action.reason == "DriftRepaired" else "UpToDate"
        # What was done goes into its Event; the condition says how things stand, so that the next check, which
        # finds them the same, has nothing to write.
        matches = f"Infisical connection {remote.name} ({remote.id}) matches."
        message = action.message if action is not None and reason == "DriftRepaired" else matches
        return engine.Verdict(("True", reason, message))

    @staticmethod
    def _ignored(
        res: Resource,
        status: OctopusDeployConnectionStatus,
        prepared: Verified,
        remote: AppConnection,
        action: Event | None,
        ignored: list[str],
    ) -> engine.Verdict:
        """Infisical said yes but did not do all of it (an older release drops what it does not know): the resource
        is not what was asked, so it is not Ready, and the same request is not sent again for nothing."""
        error = errors.InfisicalIgnoredRequest(
            f"Infisical answered with success but {'; '.join(ignored)}. Connection {remote.name} ({remote.id})"
        )
        if action is not None:
            operation: engine.Operation = "create" if action.reason == "Created" else "update"
            status.refused_write = _refusal(res, operation, prepared.secret_version, error)
        message = error.message
        if status.refused_write is not None:
            message = f"{message}. {_NOT_SENT_AGAIN}"
        return engine.Verdict(("False", error.reason, message), error=error)

    def summarize(self, res: Resource, status: OctopusDeployConnectionStatus, now: datetime) -> list[Condition]:
        return summarize_ready(status.conditions or [], generation=res.generation, now=now)

    def events(self, res: Resource, status: OctopusDeployConnectionStatus) -> list[Event]:
        return key_expiry_events(res.status, status, window=self._key_expiry_warning)

    def with_action(self, res: Resource, action: Event, events: list[Event]) -> list[Event]:
        # A first pass's action (Created, Adopted) already says the resource is Ready: its Available Event would be
        # one more API-server write per new connection and tell nothing new (issue 19).
        first = res.status.condition(READY) is None
        return [action, *(e for e in events if not (first and e.reason == "Available"))]

    # -- the rest of the adapter ----------------------------------------------------------------------------------
    def project_of(self, res: Resource) -> str | None:
        return res.spec.project_id

    def legacy_marker(self, res: Resource) -> PendingCreate | None:
        return res.status.pending_create

    async def get(self, store: ConnectionStore, remote_id: str) -> AppConnection | None:
        return await store.get(remote_id)

    async def lookup(
        self, res: Resource, store: ConnectionStore, name: str, project_id: str | None
    ) -> AppConnection | None:
        return await store.get_by_name(name, project_id=project_id)

    def remote_name(self, res: Resource) -> str:
        return res.connection_name

    def orphan(self, res: Resource) -> bool:
        return res.spec.effective_deletion_policy() == "Orphan"

    async def finalizer_store(self, res: Resource) -> ConnectionStore:
        try:
            return await self._store_for(res)
        except errors.InfisicalCredentialsMissing:
            if res.uid not in self._tenant_stores:
                raise
            return self._tenant_stores[res.uid]

    def deletion_differences(self, res: Resource, found: AppConnection, sent: tuple[str, str | None]) -> list[str]:
        try:
            url = normalize_instance_url(res.spec.instance_url)
        except errors.OctoconnError:
            url = res.spec.instance_url
        return self._differences(res, found, sent, url)

    async def delete(self, res: Resource, store: ConnectionStore, remote_id: str) -> list[Event]:
        deleted = await store.delete(remote_id)
        verb = "Deleted" if deleted else "AlreadyGone"
        detail = "deleted" if deleted else "was already gone"
        return [Event("Normal", verb, f"Infisical connection {res.connection_name} ({remote_id}) {detail}.")]


async def _apply(store: ConnectionStore, connection_id: str, plan: PatchPlan, prepared: Verified) -> AppConnection:
    kwargs: dict[str, Any] = {}
    if plan.name is not None:
        kwargs["name"] = plan.name
    if plan.description_changed:
        kwargs["description"] = plan.description
    if plan.push_credentials:
        kwargs["credentials"] = (prepared.url, prepared.api_key)
    return await store.update(connection_id, **kwargs)


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


def _plan_labels(plan: PatchPlan) -> list[tuple[str, bool]]:
    return [
        ("name", plan.name is not None),
        ("description", plan.description_changed),
        ("credentials", plan.push_credentials),
    ]
