"""Kopf wiring, and nothing else: every decision lives in ``octoconn.reconcile`` and ``octoconn.sync``.

- one event handler per kind hands every watch event of an OctopusDeployConnection or OctopusDeploySecretSync to
  the shared loop (``loop``), whose workers run the passes (create, resume, periodic check, retries, following a
  running sync); Kopf runs no daemon, so it keeps no task and no body per resource;
- spec/annotation changes, changes of a referenced Secret, and changes of a sync's connection queue a pass at once;
- a delete handler per kind, behind our own finalizer, honours ``deletionPolicy``.

Kubernetes writes are kept to two per new connection: Kopf's first patch (the finalizer, which the delete handler
needs, and our create marker, added by ``watch_connections`` to the same patch) and the status the first pass
writes. Kopf's diff-base annotation is not written at all (``NoDiffBase``): there are no create/update handlers
that would need it.

Secrets are watched with an *event* handler only: Kopf create/update handlers on Secrets would copy the Secret
(API key included) into an annotation on the user's Secret.

Every event handler and index function is ``async def`` although none of them awaits: Kopf runs a plain ``def``
handler in its thread pool (a thread hop, a copied context and a shielded future per handler and event), and these
run on every watch event of every resource. On the loop they also call the runtime (asyncio events) from its own
thread, as they must.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, cast

import kopf
from kopf._cogs.clients import watching as kopf_watching

from octoconn.conditions import Event, utcnow
from octoconn.creates import new_marker as new_sync_marker
from octoconn.kube import KubeClient, login  # noqa: F401 - login registers Kopf's login handler
from octoconn.loop import EventSink, Lifecycle, R, Switch
from octoconn.models import ANNOTATION_PENDING_CREATE, FINALIZER, GROUP, OPERATOR_PREFIX, PLURAL, VERSION
from octoconn.reconcile import Resource, new_marker
from octoconn.runtime import Runtime
from octoconn.settings import load_settings
from octoconn.sync import PeerSync, SyncResource, destination_key
from octoconn.sync_models import PLURAL as SYNC_PLURAL

# Kopf's progress annotations (written only while a deletion is retried) live on a sub-domain, apart from the
# annotations users set (octoconn.dev/paused, octoconn.dev/reconcile-requested-at).
STORAGE_PREFIX = OPERATOR_PREFIX
ODC = (GROUP, VERSION, PLURAL)
API_ERROR_BACKOFFS = (1.0, 1.0, 2.0, 3.0, *([5.0] * 10))
ODSS = (GROUP, VERSION, SYNC_PLURAL)


# Kopf's operator-paused switch, the one every watch stream of this operator is given (``without_managed_fields``).
_operator_paused: Switch | None = None


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf stores each object's last handled spec in an annotation as soon as any change handler exists (our delete
    handler counts): a second write for every new object, only to detect spec changes. ``watch_connections`` and
    ``watch_syncs`` do that from the watch events instead (``Runtime.observe``), so every object looks unchanged to
    Kopf and nothing is stored. The storage is operator-wide: Kopf's on.update handlers would never fire, for any
    kind, so there are none."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    config = load_settings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase()
    # Our Events are posted on condition transitions (reconcile.transition_events). Kopf would also turn every
    # INFO log line of an object ("reconciled", "handler succeeded") into an Event; keep only its errors, such as
    # a finalizer that cannot finish.
    settings.posting.level = logging.ERROR
    settings.watching.server_timeout = 300
    without_managed_fields()
    # Kopf retries a failed API call (watches included) after 1, 1, 2, 3, 5, 8, 13 and 21 s by default: an outage
    # of a minute or more ends in one of the long sleeps, and changes made meanwhile waited up to 21 s more after
    # the API server was back (19 s measured after 90 s; docs/reliability.md). Same total, no step over 5 s.
    settings.networking.error_backoffs = API_ERROR_BACKOFFS
    settings.peering.lifetime = config.peering_lifetime_seconds  # unused with --standalone
    memo.runtime = Runtime.build(config, KubeClient())
    memo.runtime.post_event = _post
    await memo.runtime.serve_metrics()
    logger.info("octoconn configured: infisical=%s auth=%s", config.infisical_url, config.auth_method)


def without_managed_fields() -> None:
    """Drop ``metadata.managedFields`` from every watch event before Kopf sees it, and note Kopf's pause switch.

    The loop keeps the last body of each resource; the API server's record of which manager set which field is about
    half of a connection's body once status is written, and nothing here or in Kopf reads it (issue 19: 1000
    connections' bodies held about 24 KiB each). Kopf has no setting for this, so its watch stream (pinned with Kopf
    in the lock file) is wrapped once. Kopf hands every stream its operator-paused switch (on while another replica
    holds the peering); the loop follows it, as Kopf's own daemons would (``Loop.follow_pause``)."""
    original = kopf_watching.infinite_watch
    if getattr(original, "lean", False):
        return

    async def infinite_watch(**kwargs: Any) -> AsyncIterator[Any]:
        global _operator_paused
        if kwargs.get("operator_paused") is not None:
            _operator_paused = kwargs["operator_paused"]
        async for event in original(**kwargs):
            if isinstance(event, dict):
                meta = (event.get("object") or {}).get("metadata")
                if isinstance(meta, dict):
                    meta.pop("managedFields", None)  # type: ignore[typeddict-item]
            yield event

    infinite_watch.lean = True  # type: ignore[attr-defined]
    infinite_watch.original = original  # type: ignore[attr-defined]
    kopf_watching.infinite_watch = infinite_watch


@kopf.on.cleanup()
async def close_clients(memo: Any, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.aclose()


@kopf.on.event(*ODC, id="watch-connections")
async def watch_connections(type: str | None, body: kopf.Body, patch: kopf.Patch, memo: Any, **kwargs: Any) -> None:
    runtime: Runtime = memo.runtime
    runtime.connection_owners = kwargs["by_connection"]  # the same live index for every resource
    if _follow(runtime, type, body, PLURAL):
        return
    new = _new(body)
    if new:
        # Kopf adds the finalizer in this very cycle: the create marker rides in the same patch.
        res = Resource.from_body(body)
        marker = new_marker(res.spec, res.name, utcnow())
        runtime.reconciler.remember_marker(res.uid, marker)
        # As a transformation, not a merge patch: Kopf sends those together with its finalizer in one JSON patch,
        # whereas a merge patch goes out first, as a request of its own, and makes the finalizer patch conflict.
        patch.fns.append(functools.partial(_set_annotation, ANNOTATION_PENDING_CREATE, marker))
    runtime.observe(dict(body), new=new)


@kopf.index(*ODC, id="by_secret")
async def by_secret(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str | None, str], str]:
    refs = {spec.get("apiKeySecretRef", {}).get("name")}
    refs.add(((spec.get("infisical") or {}).get("credentialsSecretRef") or {}).get("name"))
    return {(namespace, ref): name for ref in refs if ref}


@kopf.index(*ODC, id="by_connection")
async def by_connection(namespace: str | None, name: str, status: kopf.Status, **_: Any) -> dict[str, str] | None:
    connection_id = status.get("id")
    return {connection_id: f"{namespace}/{name}"} if connection_id else None


def _referenced(type: str | None, namespace: str | None, name: str, **kwargs: Any) -> bool:
    # The initial listing (type None) is skipped: each resource compares its Secret's version when its loop starts.
    return type is not None and (namespace, name) in kwargs["by_secret"]


# A filter, not an early return: Kopf logs every handler it invokes ("is invoked" at DEBUG, "succeeded" at INFO),
# so a Secret that no resource references must not reach the handler at all to leave no trace in the log.
@kopf.on.event("", "v1", "secrets", id="wake-on-secret", when=_referenced)
async def wake_on_secret(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    index: kopf.Index[tuple[str | None, str], str] = kwargs["by_secret"]
    memo.runtime.secret_changed(namespace or "", name)
    for odc in index.get((namespace, name), []):
        memo.runtime.kick(namespace or "", odc)


@kopf.on.delete(*ODC, id="finalize")
async def finalize(body: kopf.Body, memo: Any, retry: int, **_: Any) -> None:
    await _finalize(memo.runtime, memo.runtime.connections, body, retry)


# --- OctopusDeploySecretSync ------------------------------------------------------------------------------------
@kopf.on.event(*ODSS, id="watch-syncs")
async def watch_syncs(type: str | None, body: kopf.Body, patch: kopf.Patch, memo: Any, **kwargs: Any) -> None:
    runtime: Runtime = memo.runtime
    runtime.sync_peers = kwargs["sync_destinations"]  # the same live indexes for every sync
    runtime.sync_owners = kwargs["syncs_by_id"]
    if _follow(runtime, type, body, SYNC_PLURAL):
        return
    new = _new(body)
    if new:  # as for connections: the create marker rides in Kopf's finalizer patch of a new sync
        res = SyncResource.from_body(body)
        marker = new_sync_marker(res.sync_name, res.spec.source.project_id, utcnow())
        runtime.sync_reconciler.remember_marker(res.uid, marker)
        patch.fns.append(functools.partial(_set_annotation, ANNOTATION_PENDING_CREATE, marker))
    # Kopf's update handlers never fire without a diff base (NoDiffBase): syncs wake from the watch events.
    runtime.observe(dict(body), plural=SYNC_PLURAL, new=new)


@kopf.index(*ODSS, id="syncs_by_connection")
async def syncs_by_connection(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str | None, str], str]:
    ref = (spec.get("connectionRef") or {}).get("name")
    return {(namespace, ref): name} if ref else {}


@kopf.index(*ODSS, id="sync_destinations")
async def sync_destinations(
    namespace: str | None, name: str, uid: str | None, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, PeerSync] | None:
    dest = status.get("destination") or {}
    if not (dest.get("instanceUrl") and dest.get("spaceId") and dest.get("projectId")):
        return None
    peer = PeerSync(
        ref=f"{namespace}/{name}",
        uid=uid or "",
        created=str(meta.get("creationTimestamp") or ""),
        key_schema=(spec.get("options") or {}).get("keySchema"),
        environment=(spec.get("source") or {}).get("environment") or "",
        deleting=bool(meta.get("deletionTimestamp")),
    )
    return {destination_key(dest["instanceUrl"], dest["spaceId"], dest["projectId"]): peer}


@kopf.index(*ODSS, id="syncs_by_id")
async def syncs_by_id(namespace: str | None, name: str, status: kopf.Status, **_: Any) -> dict[str, str] | None:
    sync_id = status.get("id")
    return {sync_id: f"{namespace}/{name}"} if sync_id else None


def _used_by_a_sync(type: str | None, namespace: str | None, name: str, **kwargs: Any) -> bool:
    # As for Secrets: a connection no sync uses must not reach the handler (and Kopf's log) at all.
    return type is not None and (namespace, name) in kwargs["syncs_by_connection"]


@kopf.on.event(*ODC, id="wake-syncs", when=_used_by_a_sync)
async def wake_syncs(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    index: kopf.Index[tuple[str | None, str], str] = kwargs["syncs_by_connection"]
    for sync in index.get((namespace, name), []):
        memo.runtime.kick(namespace or "", sync, plural=SYNC_PLURAL)


@kopf.on.delete(*ODSS, id="finalize")
async def finalize_sync(body: kopf.Body, memo: Any, retry: int, **kwargs: Any) -> None:
    await _finalize(memo.runtime, memo.runtime.syncs, body, retry)
    # A sync held back (ConflictingSync) for sharing this destination may go ahead now: wake it, do not let it wait
    # for its periodic check.
    dest = (body.get("status") or {}).get("destination") or {}
    if dest.get("instanceUrl") and dest.get("spaceId") and dest.get("projectId"):
        index: kopf.Index[str, PeerSync] = kwargs["sync_destinations"]
        for peer in index.get(destination_key(dest["instanceUrl"], dest["spaceId"], dest["projectId"]), []):
            if peer.uid != body.get("metadata", {}).get("uid"):
                namespace, name = peer.ref.split("/", 1)
                memo.runtime.kick(namespace, name, plural=SYNC_PLURAL)


async def _finalize(runtime: Runtime, kind: Lifecycle[R], body: kopf.Body, retry: int) -> None:
    res = kind.parse(runtime.statuses.view(body, plural=kind.plural))
    blocked = await runtime.finalize(kind, res, _emitter(body), attempt=retry + 1)
    if blocked is not None:
        error, delay = blocked
        raise kopf.TemporaryError(f"{error.reason}: {error.message}", delay=delay)


def _follow(runtime: Runtime, type: str | None, body: kopf.Body, plural: str) -> bool:
    """Keep the loop in step with Kopf: its pause switch (peering), and resources gone for good. True: gone."""
    if _operator_paused is not None:
        runtime.follow_pause(_operator_paused)
    if type != "DELETED":
        return False
    meta = body.get("metadata") or {}
    runtime.gone(str(meta.get("namespace") or ""), str(meta.get("name") or ""), plural=plural)
    return True


def _new(body: kopf.Body) -> bool:
    """A resource Kopf has not put its finalizer on yet, with nothing recorded and no create marker."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    seen = FINALIZER in (meta.get("finalizers") or []) or meta.get("deletionTimestamp") or status.get("id")
    return not seen and ANNOTATION_PENDING_CREATE not in (meta.get("annotations") or {})


def _set_annotation(key: str, value: str, body: dict[str, Any]) -> None:
    body.setdefault("metadata", {}).setdefault("annotations", {})[key] = value


def _post(body: Mapping[str, Any], event: Event) -> None:
    kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message)


def _emitter(body: kopf.Body) -> EventSink:
    return functools.partial(_post, body)
