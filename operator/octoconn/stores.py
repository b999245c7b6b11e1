"""The ports in front of the clients that keep something between passes: the Infisical client pool, the memory of
the status last written, and Secret reads shared by the resources that ask at once.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from octoconn.apikeys import SecretData
from octoconn.infisical import InfisicalClient, UniversalAuth
from octoconn.kube import KubeClient, KubeError
from octoconn.models import PLURAL
from octoconn.pacing import WritePacer
from octoconn.settings import Settings
from octoconn.sharing import Kept, SingleFlight

_MAX_TENANT_CLIENTS = 64


class SharedSecretReads:
    """The ``SecretReader`` port, with one read shared by the resources that ask for the same Secret at once.

    1000 resources sharing a Secret would otherwise read it 1000 times on a rotation. A read is reused for a couple
    of seconds at most (the key is not kept longer than that), and a watch event for the Secret drops it at once.
    """

    def __init__(self, kube: KubeClient, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._kept: Kept[tuple[str, str], SecretData | None] = Kept(ttl=ttl, clock=clock)
        self._flights: SingleFlight[tuple[str, str], SecretData | None] = SingleFlight()
        self._changes: dict[tuple[str, str], int] = {}

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        key = (namespace, name)
        kept = self._kept.get(key)
        if kept is not None:
            return kept[0]

        async def read() -> SecretData | None:
            changes = self._changes.get(key, 0)
            secret = await self._kube.read_secret(namespace, name)
            if self._changes.get(key, 0) == changes:  # a read that started before a change is not reused
                self._kept.put(key, secret)
            return secret

        def shared_error(exc: BaseException) -> BaseException:
            return exc if isinstance(exc, KubeError) else KubeError(f"reading Secret {namespace}/{name}")

        secret = await self._flights.run(key, read, shared_error=shared_error)
        if key not in self._flights:
            self._changes.pop(key, None)
        return secret

    def changed(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key in self._flights:
            self._changes[key] = self._changes.get(key, 0) + 1
        self._kept.drop(key)
        self._flights.drop(key)  # later callers read again rather than wait for a read begun before


class StorePool:
    """The ``StoreFactory`` port: the operator's Infisical client plus per-resource identity clients (LRU)."""

    def __init__(
        self, settings: Settings, default: InfisicalClient, pacer: WritePacer, read_pacer: WritePacer | None
    ) -> None:
        self._settings = settings
        self._default = default
        self._pacer = pacer
        self._read_pacer = read_pacer
        self._tenants: OrderedDict[tuple[str, str, str], InfisicalClient] = OrderedDict()
        self._retired: list[InfisicalClient] = []

    def default(self) -> InfisicalClient:
        return self._default

    def for_identity(self, *, host_url: str | None, client_id: str, client_secret: str) -> InfisicalClient:
        host = (host_url or self._settings.infisical_url).rstrip("/")
        # The secret is part of the key so a rotated client secret gets a fresh login; only a digest is kept.
        key = (host, client_id, hashlib.sha256(client_secret.encode()).hexdigest())
        found = self._tenants.get(key)
        if found is not None:
            self._tenants.move_to_end(key)
            return found
        created = InfisicalClient(
            base_url=host,
            auth=UniversalAuth(client_id=client_id, client_secret=client_secret),
            pacer=self._pacer,
            read_pacer=self._read_pacer,
            timeout=self._settings.infisical_timeout_seconds,
            identity="resource",
        )
        self._tenants[key] = created
        if len(self._tenants) > _MAX_TENANT_CLIENTS:
            _, evicted = self._tenants.popitem(last=False)
            self._retired.append(evicted)  # closed at shutdown: a reconcile may still be using it
        return created

    async def aclose(self) -> None:
        for store in [self._default, *self._tenants.values(), *self._retired]:
            await store.aclose()


class StatusMemory:
    """The ``StatusWriter`` port in front of the Kubernetes client: remembers the last status written per resource.

    The loop keeps each resource's latest body from the watch stream, which can lag behind our own writes: a pass that
    starts right after a status write may read a body from before it, and would act on that old view (adopt its own
    connection "created by an earlier try" and send the credentials again, or call its own connection or sync a
    NameConflict). The status it last wrote is the truth until the watch shows that write or a later one; ``view``
    puts it into whatever body is read meanwhile. Resource versions of one resource are comparable integers
    (KEP-5504, GA in Kubernetes 1.35), which tells an older body from a newer one; a later write by another process
    (a second operator started by mistake) is never hidden behind ours. Keyed by kind too: a connection and a secret
    sync may share a name.
    """

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube
        # (plural, namespace, name) -> (uid, resourceVersion, status as the API server stored it after our last write)
        self._written: dict[tuple[str, str, str], tuple[str, str, dict[str, Any]]] = {}

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, plural: str = PLURAL
    ) -> dict[str, Any] | None:
        stored = await self._kube.patch_status(namespace, name, status, plural=plural)
        if stored is None:
            self._written.pop((plural, namespace, name), None)
            return None
        meta = stored.get("metadata") or {}
        uid, version = str(meta.get("uid") or ""), str(meta.get("resourceVersion") or "")
        self._written[(plural, namespace, name)] = (uid, version, dict(stored.get("status") or {}))
        return stored

    async def patch_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None], *, plural: str = PLURAL
    ) -> None:
        await self._kube.patch_annotations(namespace, name, annotations, plural=plural)

    def view(self, body: Mapping[str, Any], *, plural: str = PLURAL) -> dict[str, Any]:
        """``body`` with our last written status when the watch has not delivered that write yet."""
        status = self._ahead_of(body, plural)
        return dict(body) if status is None else {**body, "status": status}

    def caught_up(self, body: Mapping[str, Any], *, plural: str = PLURAL) -> None:
        """A watch event: forget our last write once the watch shows it, so 1000 settled resources keep nothing."""
        self._ahead_of(body, plural)

    def _ahead_of(self, body: Mapping[str, Any], plural: str) -> dict[str, Any] | None:
        meta = body.get("metadata") or {}
        key = (plural, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        written = self._written.get(key)
        if written is None:
            return None
        uid, version, status = written
        if uid != meta.get("uid") or body.get("status") == status or _not_older(meta.get("resourceVersion"), version):
            # Another object of the same name, or the watch has caught up: the body is the truth again.
            del self._written[key]
            return None
        return status

    def forget(self, namespace: str, name: str, *, plural: str = PLURAL) -> None:
        self._written.pop((plural, namespace, name), None)


def _not_older(body_version: object, written_version: str) -> bool:
    """Whether a body's resourceVersion is that of our write or a later one. Versions that are not the positive
    integers Kubernetes 1.35 promises cannot be ordered: then only an equal status says the watch caught up."""
    seen = str(body_version or "")
    if not (seen.isdigit() and written_version.isdigit()) or "0" in (seen[:1], written_version[:1]):
        return False
    return int(seen) >= int(written_version)
