"""The composition of a running operator: every long-lived part, built once at start-up and shared by every resource.

One Octopus client, one Infisical client for the operator's identity (so one cached token and one write pace
for all resources), a small pool of clients for per-resource identities, the Kubernetes client, and one
reconciler per kind, wired to the one loop (``loop``) that serves both kinds. ``handlers`` keeps a ``Runtime`` in
Kopf's memo; this module knows nothing about Kopf.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from octoconn import errors, metrics
from octoconn.infisical import InfisicalClient, KubernetesAuth, UniversalAuth
from octoconn.kube import KubeClient, KubeError
from octoconn.lifecycles import ConnectionLifecycle, SyncLifecycle
from octoconn.loop import Loop
from octoconn.octopus import OctopusClient
from octoconn.pacing import WritePacer
from octoconn.reconcile import ConnectionReconciler
from octoconn.settings import Settings
from octoconn.stores import SharedSecretReads, StatusMemory, StorePool
from octoconn.sync import PeerSync, SyncReconciler

# How long one Octopus answer, or one read of a Secret, serves every resource that asks for the same thing.
_VERIFY_SHARE_SECONDS = 10.0
_SECRET_SHARE_SECONDS = 2.0


@dataclass(kw_only=True)
class Runtime(Loop):
    kube: KubeClient
    octopus: OctopusClient
    stores: StorePool
    reconciler: ConnectionReconciler
    sync_reconciler: SyncReconciler
    secrets: SharedSecretReads
    # connection id -> "namespace/name" of the resources recording it; Kopf's live index, set by the handlers.
    connection_owners: Mapping[str, Iterable[str]] = field(default_factory=dict)
    # destination key -> the secret syncs whose status records it; Kopf's live index, set by the handlers.
    sync_peers: Mapping[str, Iterable[PeerSync]] = field(default_factory=dict)
    # secret sync id -> "namespace/name" of the syncs recording it; Kopf's live index, set by the handlers.
    sync_owners: Mapping[str, Iterable[str]] = field(default_factory=dict)
    _metrics_server: Any = None  # aiohttp's AppRunner, while /metrics is served
    connections: ConnectionLifecycle = field(init=False)
    syncs: SyncLifecycle = field(init=False)

    @classmethod
    def build(cls, settings: Settings, kube: KubeClient) -> Runtime:
        pacer = WritePacer(per_minute=settings.infisical_writes_per_minute, name="write")
        reads = settings.infisical_reads_per_minute
        read_pacer = WritePacer(per_minute=reads, name="read") if reads > 0 else None
        octopus = OctopusClient(
            timeout=settings.octopus_timeout_seconds,
            allow_http=settings.allow_http,
            ca_bundle=str(settings.octopus_ca_bundle) if settings.octopus_ca_bundle else None,
            verify_tls=not settings.octopus_insecure_skip_verify,
        )
        default = InfisicalClient(
            base_url=settings.infisical_url,
            auth=_operator_auth(settings, kube),
            pacer=pacer,
            read_pacer=read_pacer,
            timeout=settings.infisical_timeout_seconds,
        )
        stores = StorePool(settings, default, pacer, read_pacer)
        statuses = StatusMemory(kube)
        secrets = SharedSecretReads(kube, ttl=_SECRET_SHARE_SECONDS)
        runtime: Runtime
        reconciler = ConnectionReconciler(
            secrets=secrets,
            octopus=octopus,
            stores=stores,
            status_writer=statuses,
            owners_of=lambda connection_id: runtime.connection_owners.get(connection_id, ()),
            key_expiry_warning=timedelta(days=settings.key_expiry_warning_days),
            # Shorter than the periodic interval, so each resource's next check asks Octopus again.
            verify_ttl=min(_VERIFY_SHARE_SECONDS, settings.resync_interval_seconds / 2),
        )
        sync_reconciler = SyncReconciler(
            connections=kube,
            secrets=kube,
            octopus=octopus,
            stores=stores,
            status_writer=statuses,
            peers_at=lambda key: runtime.sync_peers.get(key, ()),
            owners_of=lambda sync_id: runtime.sync_owners.get(sync_id, ()),
            rerun_failed_after=timedelta(seconds=settings.resync_interval_seconds),
        )
        runtime = cls(
            settings=settings,
            kube=kube,
            octopus=octopus,
            stores=stores,
            reconciler=reconciler,
            sync_reconciler=sync_reconciler,
            statuses=statuses,
            secrets=secrets,
        )
        return runtime

    async def serve_metrics(self) -> None:
        s = self.settings
        if s.metrics_port:
            self._metrics_server = await metrics.serve(s.metrics_bind_address, s.metrics_port, s.metrics_path)

    def __post_init__(self) -> None:
        self.connections = ConnectionLifecycle(self.reconciler, self.secrets)
        self.syncs = SyncLifecycle(self.sync_reconciler, interval=self.settings.sync_check_interval_seconds)
        self.serve(self.connections)
        self.serve(self.syncs)

    def secret_changed(self, namespace: str, name: str) -> None:
        self.secrets.changed(namespace, name)

    async def aclose(self) -> None:
        await self.stop()
        if self._metrics_server is not None:
            await self._metrics_server.cleanup()
        await self.octopus.aclose()
        await self.stores.aclose()
        await self.kube.aclose()


def _operator_auth(settings: Settings, kube: KubeClient) -> UniversalAuth | KubernetesAuth:
    if settings.auth_method == "kubernetes":
        namespace, name = settings.service_account_ref()
        assert settings.kubernetes_identity_id is not None

        async def token_source() -> str:
            try:
                return await kube.service_account_token(
                    namespace, name, audience=settings.token_audience, ttl_seconds=settings.token_ttl_seconds
                )
            except KubeError as exc:  # its message names the call and the HTTP status, never a token
                raise errors.InfisicalAuthFailed(
                    f"{exc}. Check OCTOCONN_SERVICE_ACCOUNT={namespace}/{name}: the ServiceAccount must exist and the "
                    "operator must be allowed to create its tokens (serviceaccounts/token)"
                ) from None

        return KubernetesAuth(identity_id=settings.kubernetes_identity_id, token_source=token_source)
    client_id, client_secret = settings.universal_credentials()
    return UniversalAuth(client_id=client_id, client_secret=client_secret)
