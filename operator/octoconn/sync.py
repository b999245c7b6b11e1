"""The OctopusDeploySecretSync's adapter for ``octoconn.engine``: verify the destination, create or update the sync,
follow it, delete.

Like ``reconcile`` for connections, this module decides and does no I/O of its own: outside calls go through the
small ports below, which ``runtime`` wires to the real clients. It imports neither kopf nor httpx. The engine runs
the pass and owns what both kinds share; this adapter fills in its steps (engine doc: the adapter contract).

Infisical's Octopus secret sync has traps this module exists to guard against: creating or changing a sync never
calls Octopus (a wrong project shows up minutes later as a failed sync); every PATCH rewrites the whole Octopus
variable set; a failing sync stays "running" through five attempts; two syncs into one project delete each other's
variables unless their key schemas keep their names apart; and a delete with removal can fail and leave the sync.

One pass:
1. ``prepare``: the referenced OctopusDeployConnection must exist and be Ready; its Infisical connection id, its
   Infisical identity and its Octopus key are what the sync uses;
2. ``observe``, before anything is created or changed: find the sync, resolve space, project and scope values with
   the connection's key and check the key may view and edit that project's variables (``DestinationVerified``),
   and refuse a sync whose variable names could collide with an older sync's in the same Octopus project;
3. ``create`` the sync, or PATCH what differs (``update``), and nothing when nothing differs; trigger a sync for a
   new ``octoconn.dev/sync-requested-at`` value (and after a write when auto-sync is off);
4. ``record``: follow Infisical's status: ``Synced`` is True only once a sync succeeded after the operator's last
   write, and False with Octopus's own message, made readable, once Infisical's retries are over.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol

from octoconn import conditions, destination, engine, errors, ownership
from octoconn.apikeys import api_key_from
from octoconn.conditions import (
    READY,
    TRANSIENT,
    ConditionStatus,
    Event,
    parse_time,
    set_condition,
    summarize,
    utcnow,
)
from octoconn.creates import AnnotationWriter, FirstPatch
from octoconn.engine import SYNCED
from octoconn.models import (
    Condition,
    PendingCreate,
)

# The referenced OctopusDeployConnection, read as the connection's own pass reads it.
from octoconn.reconcile import Resource as Connection
from octoconn.reconcile import SecretReader, read_identity
from octoconn.remote import Named, OctopusDestination, PermissionGrant, SecretSync, normalize_instance_url
from octoconn.sync_models import (
    ANNOTATION_SYNC_REQUESTED_AT,
    PLURAL,
    OctopusDeploySecretSyncSpec,
    OctopusDeploySecretSyncStatus,
    ResolvedDestination,
    ResolvedScope,
    SyncRefusedWrite,
)

DESTINATION_VERIFIED = "DestinationVerified"

# While Infisical works (pending/running) the status is read again after these delays, the last one repeating.
POLL_DELAYS = (2.0, 3.0, 5.0, 8.0, 10.0)
_MESSAGE_LIMIT = 1024
_API_KEY_LIKE = re.compile(r"API-[A-Z0-9]{8,}")
_MISSING_PERMISSION = re.compile(r"Missing permission: (?P<name>\w+)")
# spec scope field -> (ScopeValues collection in the variable set, destinationConfig.scopeValues key)
SCOPE_KINDS = {
    "environments": "Environments",
    "roles": "Roles",
    "machines": "Machines",
    "channels": "Channels",
    "processes": "Processes",
    "actions": "Actions",
}
Outcome = conditions.Outcome[OctopusDeploySecretSyncStatus]


# --- ports -------------------------------------------------------------------------------------------------------
class ConnectionReader(Protocol):
    async def read_connection(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...


class DestinationInspector(Protocol):
    async def inspect_destination(
        self, instance_url: str, api_key: str, *, space: str, project: str
    ) -> OctopusDestination: ...


class SyncStore(Protocol):
    async def get_sync(self, sync_id: str) -> SecretSync | None: ...

    async def get_sync_by_name(self, name: str, *, project_id: str) -> SecretSync | None: ...

    async def create_sync(self, body: dict[str, Any]) -> SecretSync: ...

    async def update_sync(self, sync_id: str, body: dict[str, Any]) -> SecretSync: ...

    async def trigger_sync(self, sync_id: str) -> SecretSync | None: ...

    async def delete_sync(self, sync_id: str, *, remove_secrets: bool) -> SecretSync | None: ...

    async def list_secret_keys(self, *, project_id: str, environment: str, secret_path: str) -> list[str]: ...


class SyncStoreFactory(Protocol):
    def default(self) -> SyncStore: ...

    def for_identity(self, *, host_url: str | None, client_id: str, client_secret: str) -> SyncStore: ...


class StatusWriter(AnnotationWriter, Protocol):
    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], *, plural: str) -> object: ...


@dataclass(frozen=True)
class PeerSync:
    """Another OctopusDeploySecretSync that writes into the same Octopus project (from the operator's index)."""

    ref: str  # namespace/name
    uid: str
    created: str  # metadata.creationTimestamp
    key_schema: str | None
    environment: str
    deleting: bool = False  # its deletion has begun: it yields its destination to the syncs it held back


# --- inputs ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SyncResource(engine.ManagedResource[OctopusDeploySecretSyncStatus]):
    created: str  # metadata.creationTimestamp
    spec: OctopusDeploySecretSyncSpec
    spec_model = OctopusDeploySecretSyncSpec
    status_model = OctopusDeploySecretSyncStatus

    @classmethod
    def fields_of(cls, body: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().fields_of(body), "created": str(body.get("metadata", {}).get("creationTimestamp") or "")}

    @property
    def sync_name(self) -> str:
        return self.spec.sync_name or self.name

    @property
    def sync_request(self) -> str | None:
        value = self.annotations.get(ANNOTATION_SYNC_REQUESTED_AT, "").strip()
        return value or None


# --- pure decisions ----------------------------------------------------------------------------------------------
def destination_key(instance_url: str, space_id: str, project_id: str) -> str:
    """One Octopus project anywhere: what the conflict index is keyed on."""
    return f"{instance_url}|{space_id}|{project_id}"


def name_pattern(key_schema: str | None, environment: str) -> tuple[str, str]:
    """(prefix, suffix) every variable name of a sync has; ("", "") without a key schema: every name."""
    if not key_schema:
        return "", ""
    rendered = key_schema.replace("{{environment}}", environment)
    prefix = rendered.split("{{secretKey}}", 1)[0]
    suffix = rendered.rsplit("{{secretKey}}", 1)[-1]
    return prefix, suffix


def names_can_collide(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Whether two (prefix, suffix) patterns can produce, or claim for deletion, one same name.

    A secret key can be any text, so two patterns share a name exactly when one prefix starts the other and one
    suffix ends the other. Infisical deletes every sensitive variable matching its pattern that is not in its own
    map, so a shared name means the two syncs delete or overwrite each other's variables.
    """
    (p1, s1), (p2, s2) = a, b
    return (p1.startswith(p2) or p2.startswith(p1)) and (s1.endswith(s2) or s2.endswith(s1))


def conflicting_peer(res: SyncResource, peers: Iterable[PeerSync]) -> PeerSync | None:
    """The older sync into the same project whose names this one could collide with; the younger one yields."""
    mine = name_pattern(res.spec.key_schema, res.spec.source.environment)
    order = (res.created, res.ref)
    clashes = [
        peer
        for peer in peers
        if peer.uid != res.uid
        and not peer.deleting
        and (peer.created, peer.ref) < order
        and names_can_collide(mine, name_pattern(peer.key_schema, peer.environment))
    ]
    return min(clashes, key=lambda p: (p.created, p.ref)) if clashes else None


def resolve_scope(
    spec_scope: Mapping[str, list[str] | None], offered: Mapping[str, tuple[Named, ...]]
) -> ResolvedScope:
    """Scope names or ids -> ids, from the project's ScopeValues. Raises DestinationNotFound naming what is missing."""
    resolved: dict[str, list[str]] = {}
    for kind, collection in SCOPE_KINDS.items():
        wanted = spec_scope.get(kind)
        if not wanted:
            continue
        values = offered.get(collection, ())
        ids: list[str] = []
        for ref in wanted:
            hit = next((v for v in values if v.id == ref), None) or next(
                (v for v in values if v.name.casefold() == ref.casefold()), None
            )
            if hit is None:
                shown = ", ".join(f"{v.name} ({v.id})" for v in values[:10]) or "none"
                raise errors.DestinationNotFound(
                    f'spec.destination.scope.{kind}: "{ref}" is not one of the {collection.lower()} this project '
                    f"offers ({shown})"
                )
            if hit.id not in ids:
                ids.append(hit.id)
        resolved[kind] = ids
    return ResolvedScope.model_validate(resolved)


def _grant_reaches(grant: PermissionGrant, *, space_id: str, project_id: str, group_id: str | None) -> bool:
    """The grant applies to this project (environments aside)."""
    if grant.space_id not in (None, space_id):
        return False
    if grant.project_ids and project_id not in grant.project_ids:
        return False
    return not grant.project_group_ids or group_id in grant.project_group_ids


def missing_permissions(destination: OctopusDestination, environments: list[str]) -> list[str]:
    """Octopus permissions the key lacks to read and rewrite this project's variables with this scope.

    Infisical GETs the whole variable set and PUTs it back, so the key needs VariableView and VariableEdit on the
    project. When those are limited to some environments, they cover only variables scoped to those environments;
    variables without an environment scope (a sync without ``scope.environments``) also need the matching
    ...Unscoped permission.
    """

    def reaching(permission: str) -> list[PermissionGrant]:
        return [
            g
            for g in destination.permissions.get(permission, ())
            if _grant_reaches(
                g,
                space_id=destination.space.id,
                project_id=destination.project.id,
                group_id=destination.project_group_id,
            )
        ]

    missing = []
    for permission in ("VariableView", "VariableEdit"):
        grants = reaching(permission)
        if not grants:
            missing.append(permission)
        elif any(not g.environment_ids for g in grants):
            continue
        elif environments:
            if not any(set(environments) <= g.environment_ids for g in grants):
                missing.append(permission)
        elif not reaching(f"{permission}Unscoped"):
            missing.append(f"{permission}Unscoped")
    return missing


def normalize_path(path: str) -> str:
    """Infisical stores the secret path without one trailing slash (except the root)."""
    path = path.strip()
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def desired_body(res: SyncResource, connection_id: str, destination: ResolvedDestination) -> dict[str, Any]:
    """The complete create body for this spec; PATCH bodies are cut from it."""
    spec = res.spec
    options: dict[str, Any] = {
        "initialSyncBehavior": "overwrite-destination",  # the only behaviour Infisical allows for Octopus
        "disableSecretDeletion": spec.disable_secret_deletion,
    }
    if spec.key_schema:
        options["keySchema"] = spec.key_schema
    scope = destination.scope.model_dump(exclude_none=True) if destination.scope else {}
    return {
        "name": res.sync_name,
        "projectId": spec.source.project_id,
        "description": spec.description,
        "connectionId": connection_id,
        "environment": spec.source.environment,
        "secretPath": normalize_path(spec.source.secret_path),
        "isAutoSyncEnabled": spec.auto_sync,
        "syncOptions": options,
        "destinationConfig": {
            "spaceId": destination.space_id,
            "scope": "project",
            "projectId": destination.project_id,
            "scopeValues": {k: v for k, v in scope.items() if v},
        },
    }


def _options_of(options: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        options.get("initialSyncBehavior"),
        options.get("keySchema") or None,
        options.get("disableSecretDeletion") is True,
    )


def _destination_of(config: Mapping[str, Any]) -> tuple[Any, ...]:
    scope = config.get("scopeValues") if isinstance(config.get("scopeValues"), dict) else {}
    assert isinstance(scope, dict)
    values = tuple(sorted((k, tuple(v)) for k, v in scope.items() if isinstance(v, list) and v))
    return config.get("spaceId"), config.get("scope") or "project", config.get("projectId"), values


def plan_patch(desired: Mapping[str, Any], remote: SecretSync) -> dict[str, Any]:
    """The PATCH body that makes ``remote`` match ``desired``; empty when nothing differs.

    Every PATCH makes Infisical rewrite the Octopus variable set, so an equal field is never sent. Nested objects
    are sent whole when they differ: Infisical replaces them instead of merging.
    """
    patch: dict[str, Any] = {}
    if remote.name != desired["name"]:
        patch["name"] = desired["name"]
    if (remote.description or None) != (desired["description"] or None):
        patch["description"] = desired["description"]
    if remote.connection_id != desired["connectionId"]:
        patch["connectionId"] = desired["connectionId"]
    if remote.environment != desired["environment"] or remote.secret_path != desired["secretPath"]:
        # Infisical wants both or neither.
        patch["environment"] = desired["environment"]
        patch["secretPath"] = desired["secretPath"]
    if remote.is_auto_sync_enabled != desired["isAutoSyncEnabled"]:
        patch["isAutoSyncEnabled"] = desired["isAutoSyncEnabled"]
    if _options_of(remote.sync_options) != _options_of(desired["syncOptions"]):
        patch["syncOptions"] = desired["syncOptions"]
    if _destination_of(remote.destination_config) != _destination_of(desired["destinationConfig"]):
        patch["destinationConfig"] = desired["destinationConfig"]
    return patch


def readable_message(raw: str | None, secrets: Iterable[str] = ()) -> str:
    """Infisical's ``lastSyncMessage`` made readable: Octopus's JSON error body becomes its own words.

    Infisical stores Octopus's body JSON-encoded (``{"ErrorMessage": ..., "Errors": [...], "HelpText": ...}``), a text
    body as a quoted JSON string, or an HTTP-client message. Anything that looks like an API key is masked.
    """
    text = (raw or "").strip()
    if not text:
        return "Infisical gave no message."
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text
    if isinstance(parsed, dict):
        parts = [str(parsed[k]) for k in ("ErrorMessage", "error", "message") if isinstance(parsed.get(k), str)]
        listed = parsed.get("Errors")
        if isinstance(listed, list):
            parts += [str(e) for e in listed if isinstance(e, str | int | float)]
        text = " ".join(" ".join(parts).split()) or text
    elif isinstance(parsed, str):
        text = " ".join(parsed.split())
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    text = _API_KEY_LIKE.sub("API-***", text)
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def sync_state(
    remote: SecretSync, *, requested_at: str | None, destination: str, secrets: Iterable[str] = ()
) -> tuple[ConditionStatus, str, str]:
    """``Synced`` from Infisical's view of the sync: True only for a success after the operator's last request."""
    status = remote.sync_status
    synced_at, requested = parse_time(remote.last_synced_at), parse_time(requested_at)
    fresh = synced_at is not None and (requested is None or synced_at >= requested)
    if status == "failed":
        message = readable_message(remote.last_sync_message, secrets)
        hint = ""
        missing = _MISSING_PERMISSION.search(message)
        if missing:
            hint = f" Grant {missing['name']} on {destination} to the key's user in Octopus."
        return "False", "SyncFailed", f"Infisical's sync into {destination} failed after its retries: {message}{hint}"
    if status == "succeeded" and fresh:
        return "True", "Synced", f"Infisical synced the secrets into {destination} at {remote.last_synced_at}."
    if status in ("pending", "running") or (status == "succeeded" and not fresh):
        return "Unknown", "Syncing", f"Infisical is syncing the secrets into {destination} ({status})."
    return "Unknown", "NotSynced", f"Infisical has not synced into {destination} yet (status {status or 'none'})."


# --- the adapter -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` found: the Ready connection, the store of its Infisical identity and its Octopus key."""

    connection: Connection
    store: SyncStore
    api_key: str

    @property
    def connection_id(self) -> str:
        assert self.connection.status.id is not None  # a Ready connection has one
        return self.connection.status.id


@dataclass(kw_only=True)
class SyncObservation(engine.Observation[SecretSync]):
    desired: dict[str, Any]  # the complete create body for this spec
    adopted: Event | None = None  # the sync an unanswered create of ours made, adopted
    rerun: bool = False  # a failed run is due to be run again
    inspected: OctopusDestination | None = None  # what Octopus showed, when this pass verified the destination
    left: Event | None = None  # set by update: what a keySchema change leaves in Octopus


class SyncReconciler(engine.ManagedReconciler[SyncResource, Prepared, SyncObservation, SecretSync, SyncStore]):
    """The secret sync's adapter (``octoconn.engine`` runs the pass). Long-lived: one per operator process."""

    plural = PLURAL
    what = "secret sync"
    short = "sync"
    copied: ClassVar[Mapping[str, str]] = {
        "sync_name": "name",
        "connection_id": "connection_id",
        "sync_status": "sync_status",
        "last_synced_at": "last_synced_at",
        "remove_status": "remove_status",
    }

    def __init__(
        self,
        *,
        connections: ConnectionReader,
        secrets: SecretReader,
        octopus: DestinationInspector,
        stores: SyncStoreFactory,
        status_writer: StatusWriter,
        peers_at: Callable[[str], Iterable[PeerSync]] = lambda _: (),
        owners_of: Callable[[str], Iterable[str]] = lambda _: (),
        rerun_failed_after: timedelta = timedelta(minutes=10),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``peers_at(destination_key)``: every OctopusDeploySecretSync whose status records that destination.
        ``owners_of(sync_id)``: the ``namespace/name`` of every OctopusDeploySecretSync that records that sync.
        ``rerun_failed_after``: a run that failed is tried again (destination checked first) this long after the
        operator's last request, so a cause fixed in Octopus clears without anyone asking."""
        super().__init__(writer=status_writer, owners_of=owners_of, clock=clock)
        self._rerun_failed_after = rerun_failed_after
        self._connections = connections
        self._secrets = secrets
        self._octopus = octopus
        self._stores = stores
        self._peers_at = peers_at
        self._polls: dict[str, int] = {}  # uid -> status reads while Infisical is still working
        self._last_stores: dict[str, SyncStore] = {}  # uid -> store, for a finalizer outliving its connection

    def forget(self, uid: str) -> None:
        super().forget(uid)
        self._polls.pop(uid, None)
        self._last_stores.pop(uid, None)

    # -- prepare: the connection ----------------------------------------------------------------------------------
    async def prepare(
        self, res: SyncResource, status: OctopusDeploySecretSyncStatus, now: datetime, *, fresh: bool
    ) -> Prepared:
        ref = res.spec.connection_ref.name
        body = await self._connections.read_connection(res.namespace, ref)
        if body is None:
            raise errors.ConnectionNotFound(
                f"OctopusDeployConnection {res.namespace}/{ref} named in spec.connectionRef was not found. Create it, "
                "or fix the name; the sync starts as soon as it is Ready."
            )
        connection = Connection.from_body(body)
        ready = connection.status.condition(READY)
        if (
            ready is None
            or ready.status != "True"
            or not connection.status.id
            or connection.status.observed_generation != connection.generation
        ):
            why = f"{ready.reason}: {ready.message}" if ready is not None else "it has not been reconciled yet"
            raise errors.ConnectionNotReady(
                f"Waiting for OctopusDeployConnection {res.namespace}/{ref} to be Ready ({why})"
            )
        identity = await read_identity(self._secrets, res.namespace, connection.spec.infisical)
        store = self._stores.default() if identity is None else self._stores.for_identity(**identity)
        return Prepared(connection, store, await self._api_key(res, connection))

    async def _api_key(self, res: SyncResource, connection: Connection) -> str:
        ref, secret_ref = connection.name, connection.spec.api_key_secret_ref
        secret = await self._secrets.read_secret(res.namespace, secret_ref.name)
        try:
            if secret is None:
                raise errors.SecretNotFound(f"Secret {res.namespace}/{secret_ref.name} was not found")
            # The very reading the connection does (Infisical's trim): the key it verified is the key used here.
            return api_key_from(secret, namespace=res.namespace, name=secret_ref.name, key=secret_ref.data_key())
        except errors.OctoconnError as exc:
            raise errors.ConnectionNotReady(
                f"The API key of connection {ref} cannot be read ({exc.message.rstrip('.')}); waiting for the "
                "connection to be Ready again"
            ) from None

    def unprepared(
        self, res: SyncResource, status: OctopusDeploySecretSyncStatus, error: errors.OctoconnError, now: datetime
    ) -> engine.Synced:
        if status.condition(DESTINATION_VERIFIED) is None:
            status.conditions = set_condition(
                status.conditions,
                type_=DESTINATION_VERIFIED,
                status="Unknown",
                reason=error.reason,
                message="The destination is verified with the connection's key once the connection is Ready.",
                generation=res.generation,
                now=now,
            )
        waiting = error.retry in TRANSIENT or error.reason == "ConnectionNotReady"
        return "Unknown" if waiting else "False", error.reason, error.message

    # -- observe: the sync and its destination --------------------------------------------------------------------
    async def observe(
        self,
        res: SyncResource,
        status: OctopusDeploySecretSyncStatus,
        prepared: Prepared,
        now: datetime,
        first_patch: FirstPatch | None,
    ) -> SyncObservation:
        destination_ok = self._verified(res, status, prepared.connection)
        remote, adopted = await self._find(res, prepared, now, first_patch)
        rerun = remote is not None and self._rerun_due(remote, status, now)
        inspected = None
        if not destination_ok or remote is None or rerun:
            connection, api_key = prepared.connection, prepared.api_key
            inspected = await self._verify_destination(res, status, connection, api_key, now, prepared.store)
        else:
            self._check_conflicts(res, status)
        assert status.destination is not None  # set by the verification
        desired = desired_body(res, prepared.connection_id, status.destination)
        return SyncObservation(remote=remote, desired=desired, adopted=adopted, rerun=rerun, inspected=inspected)

    async def _find(
        self, res: SyncResource, prepared: Prepared, now: datetime, first_patch: FirstPatch | None
    ) -> tuple[SecretSync | None, Event | None]:
        """The recorded sync; or, when a create of ours may have succeeded unanswered, the one it made."""
        remote, lookup = await self.find(
            res,
            prepared.store,
            now,
            first_patch,
            lambda found, _: self._differences(res, found, prepared.connection_id),
        )
        if lookup is None or lookup.found is None or lookup.claim is None:
            return remote, None
        found, claim = lookup.found, lookup.claim
        if claim.ours:
            self._guard.answered(self.target(res), found.id, name=found.name, project_id=found.project_id, now=now)
            return found, Event("Normal", "Adopted", f"Adopted secret sync {found.name} ({found.id}): {claim.why}.")
        if lookup.sent[0] == res.sync_name:
            raise _name_taken(res, found, claim)
        return None, None

    @staticmethod
    def _differences(res: SyncResource, found: SecretSync, connection_id: str | None) -> list[str]:
        """What a sync found under this resource's name holds that this resource's create would not have sent."""
        differences = []
        if connection_id and found.connection_id != connection_id:
            differences.append(f"it uses connection {found.connection_id}, not {connection_id}")
        destination = res.status.destination
        remote_project = found.destination_config.get("projectId")
        if destination is not None and destination.project_id and remote_project != destination.project_id:
            differences.append(f"it syncs into Octopus project {remote_project}, not {destination.project_id}")
        return differences

    @staticmethod
    def _verified(res: SyncResource, status: OctopusDeploySecretSyncStatus, connection: Connection) -> bool:
        """The destination was verified for this very spec and connection: no need to ask Octopus again."""
        verified = res.status.condition(DESTINATION_VERIFIED)
        destination = status.destination
        return (
            verified is not None
            and verified.status == "True"
            and verified.observed_generation == res.generation
            and destination is not None
            and destination.instance_url == connection.status.instance_url
            and status.connection_id == connection.status.id
        )

    async def _verify_destination(
        self,
        res: SyncResource,
        status: OctopusDeploySecretSyncStatus,
        connection: Connection,
        api_key: str,
        now: datetime,
        store: SyncStore,
    ) -> OctopusDestination:
        """Check the destination and set ``DestinationVerified``; what Octopus showed (variables without values)."""
        url = connection.status.instance_url or normalize_instance_url(connection.spec.instance_url)
        dest = res.spec.destination
        found = await self._octopus.inspect_destination(url, api_key, space=dest.space, project=dest.project)
        scope_spec = dest.scope.model_dump() if dest.scope is not None else {}
        scope = resolve_scope(scope_spec, found.scope_values)
        where = f"project {found.project.name} ({found.project.id}) in space {found.space.name} ({found.space.id})"
        missing = missing_permissions(found, scope.environments or [])
        if missing:
            raise errors.OctopusPermissionMissing(
                f"The API key of connection {connection.name} (Octopus user {found.user.name}) lacks "
                f"{' and '.join(missing)} on {where}: Infisical could not read and rewrite its variables. Grant "
                f"{', '.join(missing)} to a team of that user for this project, then the sync is created."
            )
        status.destination = ResolvedDestination(
            instance_url=url,
            space_id=found.space.id,
            space_name=found.space.name,
            project_id=found.project.id,
            project_name=found.project.name,
            scope=scope if scope.model_dump(exclude_none=True) else None,
        )
        self._check_conflicts(res, status)
        reason, message = (
            "DestinationVerified",
            f"{where} exists and user {found.user.name} may view and edit its variables.",
        )
        clashes = await self._clashes(res, store, found)
        if clashes:
            reason, message = destination.CLASH_REASON, destination.clash_message(clashes, where=f"Octopus {where}")
        status.conditions = set_condition(
            status.conditions,
            type_=DESTINATION_VERIFIED,
            status="True",
            reason=reason,
            message=message,
            generation=res.generation,
            now=now,
        )
        return found

    async def _clashes(self, res: SyncResource, store: SyncStore, found: OctopusDestination) -> list[str]:
        """The names this sync will write that a non-sensitive variable of the project also has (one paced read of
        the secret names, at destination checks only). Advisory: a failed read leaves the check out, not the sync."""
        source = res.spec.source
        try:
            keys = await store.list_secret_keys(
                project_id=source.project_id,
                environment=source.environment,
                secret_path=normalize_path(source.secret_path),
            )
        except errors.OctoconnError:
            return []  # the create or update that follows meets the same cause and reports it
        written = destination.variable_names(keys, key_schema=res.spec.key_schema, environment=source.environment)
        return destination.clashing_names(found.variables, written)

    async def _left_behind(
        self,
        res: SyncResource,
        status: OctopusDeploySecretSyncStatus,
        before: SecretSync | None,
        found: OctopusDestination | None,
        api_key: str,
    ) -> Event | None:
        """After a write that changed the keySchema: the Warning naming what the old schema leaves in Octopus.
        Infisical's sync had the old schema until this write, so no later pass or restart finds it to report again."""
        old = destination.schema_change(before.sync_options.get("keySchema"), res.spec.key_schema) if before else None
        dest = status.destination
        if old is None or before is None or dest is None:
            return None
        if found is None:  # verified at an earlier pass (whose update failed): read the variables now
            try:
                found = await self._octopus.inspect_destination(
                    dest.instance_url or "", api_key, space=dest.space_id or "", project=dest.project_id or ""
                )
            except errors.OctoconnError:
                return None  # the write is done; a read that went unanswered must not fail it
        environment = res.spec.source.environment
        return destination.left_behind_event(
            found.variables,
            old=(old, before.environment or environment),
            new=(res.spec.key_schema, environment),
            where=_where(dest),
        )

    def _check_conflicts(self, res: SyncResource, status: OctopusDeploySecretSyncStatus) -> None:
        dest = status.destination
        if dest is None or not (dest.instance_url and dest.space_id and dest.project_id):
            return
        peer = conflicting_peer(res, self._peers_at(destination_key(dest.instance_url, dest.space_id, dest.project_id)))
        if peer is not None:
            mine = res.spec.key_schema or "none"
            theirs = peer.key_schema or "none"
            raise errors.ConflictingSync(
                f"OctopusDeploySecretSync {peer.ref} already syncs into {_where(dest)} (keySchema {theirs}); with "
                f"keySchema {mine} both could write or delete the same variable names, and each sync would delete "
                "the other's variables. Give the two syncs key schemas with distinct prefixes, e.g. "
                f"{res.name.upper().replace('-', '_')}_{{{{secretKey}}}}."
            )

    # -- create and update ----------------------------------------------------------------------------------------
    async def create(
        self,
        res: SyncResource,
        status: OctopusDeploySecretSyncStatus,
        prepared: Prepared,
        observed: SyncObservation,
        now: datetime,
    ) -> tuple[SecretSync, Event | None]:
        """Send the create (no name lookup first: Infisical refuses a taken name, and only then do we look)."""
        desired, store = observed.desired, prepared.store
        # A recreate (the recorded sync was deleted in Infisical) has no earlier create to recognise: as for
        # connections, the old marker proves nothing about a same-named sync made since.
        evidence = ownership.Evidence(None) if res.status.id else self._guard.carried_evidence(self.target(res))[0]
        created, claim = await self.send_create(
            res,
            status,
            store,
            now,
            lambda: self.send_once(res, status, "create", request_digest(desired), lambda: store.create_sync(desired)),
            evidence=evidence,
            differences=lambda found: self._differences(res, found, desired["connectionId"]),
        )
        if claim is not None:
            if not claim.ours:
                raise _name_taken(res, created, claim)
            self.answered(res, created.id, now)
        status.requested_at = created.updated_at or created.created_at
        if not res.spec.auto_sync:
            created = await store.trigger_sync(created.id) or created
        recreated = res.status.id is not None
        verb = f"Secret sync {res.status.id} was deleted in Infisical; recreated it as" if recreated else "Created"
        event = Event(
            "Warning" if recreated else "Normal",
            "DriftRepaired" if recreated else "Created",
            f"{verb} secret sync {created.name} ({created.id}) into {_where(status.destination)}.",
        )
        return await self._after_write(res, status, store, created, event, rerun=False)

    async def update(
        self,
        res: SyncResource,
        status: OctopusDeploySecretSyncStatus,
        prepared: Prepared,
        observed: SyncObservation,
        remote: SecretSync,
        now: datetime,
    ) -> tuple[SecretSync, Event | None]:
        """PATCH what differs, nothing when nothing differs; then the sync run a request or a failure asks for."""
        store, before = prepared.store, remote
        patch = plan_patch(observed.desired, remote)
        action: Event | None = None
        if patch:
            sync_id = remote.id
            remote = await self.send_once(
                res, status, "update", request_digest(patch), lambda: store.update_sync(sync_id, patch)
            )
            status.requested_at = remote.updated_at
            if not res.spec.auto_sync:
                remote = await store.trigger_sync(remote.id) or remote
            action = Event("Normal", "Updated", f"Updated {', '.join(sorted(patch))} of secret sync {remote.id}.")
            observed.left = await self._left_behind(res, status, before, observed.inspected, prepared.api_key)
        action = observed.adopted or action
        return await self._after_write(res, status, store, remote, action, rerun=observed.rerun and action is None)

    async def _after_write(
        self,
        res: SyncResource,
        status: OctopusDeploySecretSyncStatus,
        store: SyncStore,
        remote: SecretSync,
        action: Event | None,
        *,
        rerun: bool,
    ) -> tuple[SecretSync, Event | None]:
        if action is not None:
            status.handled_sync_request = res.sync_request  # the write itself runs a sync
        return await self._requested_sync(res, status, store, remote, rerun=rerun), action

    def refusal_holds(self, res: SyncResource, refused: SyncRefusedWrite, request: str) -> bool:
        return (refused.request, refused.sync_requested_at) == (request, res.sync_request)

    def refusal(
        self, res: SyncResource, operation: engine.Operation, request: str, error: errors.OctoconnError
    ) -> SyncRefusedWrite:
        return SyncRefusedWrite(
            operation=operation,
            request=request,
            sync_requested_at=res.sync_request,
            reason=error.reason,
            message=error.message,
        )

    def remembered(self, refused: SyncRefusedWrite) -> errors.OctoconnError:
        return errors.InfisicalRejected(f"{refused.message.rstrip('.')}. {_NOT_SENT_AGAIN}")

    def _rerun_due(self, remote: SecretSync, status: OctopusDeploySecretSyncStatus, now: datetime) -> bool:
        """A failed run is run again once its cause may have been fixed: at a check this long after our request."""
        requested = parse_time(status.requested_at)
        return remote.sync_status == "failed" and (requested is None or now - requested >= self._rerun_failed_after)

    async def _requested_sync(
        self,
        res: SyncResource,
        status: OctopusDeploySecretSyncStatus,
        store: SyncStore,
        remote: SecretSync,
        *,
        rerun: bool = False,
    ) -> SecretSync:
        """A new ``octoconn.dev/sync-requested-at`` value asks Infisical for a sync now (so does a sync that never
        ran: with auto-sync off, Infisical runs none by itself; and so does a failed run that is due again)."""
        request = res.sync_request
        never_synced = remote.sync_status is None  # auto-sync off and the sync after our write did not start
        if not (never_synced or rerun) and (request is None or request == status.handled_sync_request):
            return remote
        triggered = await store.trigger_sync(remote.id)
        if triggered is None:
            return remote  # one is running: the request stays unhandled and is tried at the next poll
        status.handled_sync_request = request
        status.requested_at = triggered.updated_at
        return triggered

    # -- the outcome ----------------------------------------------------------------------------------------------
    def failed(
        self, res: SyncResource, status: OctopusDeploySecretSyncStatus, error: errors.OctoconnError, now: datetime
    ) -> engine.Synced:
        state: ConditionStatus = "Unknown" if error.retry in TRANSIENT else "False"
        if not isinstance(error, errors.OctopusError | errors.ConflictingSync):
            return state, error.reason, error.message
        left = "The Infisical sync was left as it is." if status.id else "Nothing was created in Infisical."
        message = f"{error.message.rstrip('.')}. {left}"
        status.conditions = set_condition(
            status.conditions,
            type_=DESTINATION_VERIFIED,
            status=state,
            reason=error.reason,
            message=message,
            generation=res.generation,
            now=now,
        )
        return state, error.reason, message

    def record(
        self,
        res: SyncResource,
        status: OctopusDeploySecretSyncStatus,
        prepared: Prepared,
        observed: SyncObservation,
        remote: SecretSync,
        action: Event | None,
        now: datetime,
    ) -> engine.Verdict:
        """Infisical's view of the sync: ``Synced`` is True only for a success after the operator's last write."""
        self._last_stores[res.uid] = prepared.store
        status.refused_write = None
        secrets = (prepared.api_key,)
        where = _where(status.destination)
        state = sync_state(remote, requested_at=status.requested_at, destination=where, secrets=secrets)
        status.last_sync_message = (
            readable_message(remote.last_sync_message, secrets) if remote.last_sync_message else None
        )
        left = (observed.left,) if observed.left is not None else ()
        if state[1] == "SyncFailed":
            self._polls.pop(res.uid, None)
            return engine.Verdict(state, error=errors.SyncFailed(state[2]), events=left)
        if state[0] == "Unknown":
            polls = self._polls.get(res.uid, 0)
            self._polls[res.uid] = polls + 1
            return engine.Verdict(state, requeue_after=POLL_DELAYS[min(polls, len(POLL_DELAYS) - 1)], events=left)
        self._polls.pop(res.uid, None)
        return engine.Verdict(state, events=left)

    def events(self, res: SyncResource, status: OctopusDeploySecretSyncStatus) -> list[Event]:
        return destination.clash_events(
            res.status.condition(DESTINATION_VERIFIED), status.condition(DESTINATION_VERIFIED)
        )

    def summarize(self, res: SyncResource, status: OctopusDeploySecretSyncStatus, now: datetime) -> list[Condition]:
        return summarize(
            status.conditions or [],
            (DESTINATION_VERIFIED, SYNCED),
            ready_reason="Available",
            ready_message=f"Infisical syncs {_source(res)} into {_where(status.destination)}.",
            generation=res.generation,
            now=now,
        )

    # -- the rest of the adapter ----------------------------------------------------------------------------------
    def project_of(self, res: SyncResource) -> str | None:
        return res.spec.source.project_id

    def legacy_marker(self, res: SyncResource) -> PendingCreate | None:
        legacy = res.status.pending_create
        if legacy is None:
            return None
        return PendingCreate(name=legacy.name, project_id=res.spec.source.project_id, started_at=legacy.started_at)

    async def get(self, store: SyncStore, remote_id: str) -> SecretSync | None:
        return await store.get_sync(remote_id)

    async def lookup(self, res: SyncResource, store: SyncStore, name: str, project_id: str | None) -> SecretSync | None:
        return await store.get_sync_by_name(name, project_id=project_id or res.spec.source.project_id)

    def remote_name(self, res: SyncResource) -> str:
        return res.sync_name

    def orphan(self, res: SyncResource) -> bool:
        return res.spec.effective_deletion_policy() == "Orphan"

    async def finalizer_store(self, res: SyncResource) -> SyncStore:
        body = await self._connections.read_connection(res.namespace, res.spec.connection_ref.name)
        if body is None:
            # The connection went first (a namespace being deleted): use the identity this sync last used.
            return self._last_stores.get(res.uid) or self._stores.default()
        connection = Connection.from_body(body)
        try:
            identity = await read_identity(self._secrets, res.namespace, connection.spec.infisical)
        except errors.InfisicalCredentialsMissing:
            if res.uid in self._last_stores:
                return self._last_stores[res.uid]
            raise
        return self._stores.default() if identity is None else self._stores.for_identity(**identity)

    def deletion_differences(self, res: SyncResource, found: SecretSync, sent: tuple[str, str | None]) -> list[str]:
        return self._differences(res, found, res.status.connection_id)

    async def delete(self, res: SyncResource, store: SyncStore, remote_id: str) -> list[Event]:
        """Delete the sync; with removeSecrets, only once Octopus is cleaned: raises ``RemovingSecrets`` while
        Infisical removes the variables, or the error that blocks the deletion."""
        name = res.sync_name
        if not res.spec.remove_secrets:
            deleted = await store.delete_sync(remote_id, remove_secrets=False)
            detail = "deleted; its variables stay in Octopus" if deleted else "was already gone"
            verb = "Deleted" if deleted else "AlreadyGone"
            return [Event("Normal", verb, f"Secret sync {name} ({remote_id}) {detail}.")]
        gone = [Event("Normal", "Deleted", f"Secret sync {name} ({remote_id}) removed its variables and was deleted.")]
        remote = await store.get_sync(remote_id)
        if remote is None:
            return gone
        if remote.remove_status in ("pending", "running"):
            raise RemovingSecrets(f"Infisical is removing the variables of secret sync {name} from Octopus.")
        try:
            remaining = await store.delete_sync(remote_id, remove_secrets=True)
        except errors.InfisicalRejected as exc:
            if "in progress" in exc.message:
                raise RemovingSecrets(f"A sync of {name} is running; the removal starts when it ends.") from None
            raise
        if remaining is None:
            return gone
        if remote.remove_status == "failed":
            raise RemovalFailed(
                f"Infisical could not remove the variables from Octopus: "
                f"{readable_message(remote.last_remove_message)}. Asked again; to delete the sync and leave its "
                "variables, set spec.removeSecrets to false"
            )
        raise RemovingSecrets(f"Infisical is removing the variables of secret sync {name} from Octopus.")

    def deletion_wait(self, error: errors.OctoconnError) -> tuple[str, str]:
        if isinstance(error, RemovingSecrets):
            return "RemovingSecrets", f"{error.message} The resource goes once Infisical confirms it."
        return super().deletion_wait(error)


class RemovingSecrets(errors.OctoconnError):
    """Infisical is removing the sync's variables from Octopus; the deletion finishes when it is done."""

    reason = "RemovingSecrets"
    retry = errors.Retry.BACKOFF


class RemovalFailed(errors.OctoconnError):
    reason = "RemovalFailed"
    retry = errors.Retry.BACKOFF


def _source(res: SyncResource) -> str:
    return f"{res.spec.source.environment}:{normalize_path(res.spec.source.secret_path)}"


def _where(destination: ResolvedDestination | None) -> str:
    if destination is None:
        return "the Octopus project"
    return f"Octopus project {destination.project_name} ({destination.project_id})"


_NOT_SENT_AGAIN = (
    "This request is not sent again until the resource or its connection changes; after fixing the cause in "
    "Infisical, set the annotation octoconn.dev/sync-requested-at to a new value to retry now."
)


def request_digest(body: Mapping[str, Any]) -> str:
    """A stable fingerprint of a request body, to tell the same request from a changed one."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _name_taken(res: SyncResource, existing: SecretSync, claim: ownership.Claim) -> errors.NameConflict:
    where = f'Infisical project {existing.project_id} already has a secret sync named "{existing.name}" ({existing.id})'
    if claim.verdict == "others":
        return errors.NameConflict(
            f"{where}, and OctopusDeploySecretSync {claim.owner} manages it. Set spec.syncName to another name."
        )
    conflict = errors.NameJustTaken if claim.recheck_soon else errors.NameConflict
    return conflict(
        f"{where} that this resource did not create. Set spec.syncName to another name, or delete that sync in "
        "Infisical."
    )
