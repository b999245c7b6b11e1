"""What the shared loop (``loop``) needs to know of each kind: how to parse, reconcile, finalize and observe it.

Each is a thin ``Lifecycle`` over the kind's engine adapter (``reconcile``, ``sync``) and its metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from octoconn import errors, metrics
from octoconn.conditions import Event, Outcome, parse_time
from octoconn.creates import FirstPatch
from octoconn.kube import KubeError
from octoconn.loop import Status
from octoconn.models import PLURAL, OctopusDeployConnectionStatus
from octoconn.reconcile import ConnectionReconciler, Resource, SecretReader
from octoconn.sync import SyncReconciler, SyncResource
from octoconn.sync_models import PLURAL as SYNC_PLURAL


@dataclass
class ConnectionLifecycle:
    reconciler: ConnectionReconciler
    secrets: SecretReader
    plural: str = PLURAL
    interval: float | None = None  # None: the periodic check's (OCTOCONN_RESYNC_INTERVAL_SECONDS)

    def parse(self, body: Mapping[str, Any]) -> Resource:
        return Resource.from_body(body)

    def key(self, res: Resource) -> tuple[str, str]:
        return res.namespace, res.name

    async def reconcile(self, res: Resource, *, fresh: bool, first_patch: FirstPatch | None) -> Outcome[Any]:
        return await self.reconciler.reconcile(res, fresh=fresh, first_patch=first_patch)

    def needs_write(self, res: Resource, outcome: Outcome[Any], now: float) -> bool:
        return self.reconciler.needs_write(res, outcome, now)

    def status_patch(self, res: Resource) -> dict[str, Any]:
        return res.status.to_patch()

    async def finalize(self, res: Resource) -> list[Event]:
        return await self.reconciler.finalize(res)

    def deletion_blocked(self, res: Resource, error: errors.OctoconnError, now: datetime) -> tuple[Status, list[Event]]:
        status, events = self.reconciler.deletion_blocked(res, error, now)
        return status, events

    def observe(self, res: Resource, outcome: Outcome[Any] | None, seconds: float) -> None:
        if outcome is None:
            metrics.observe_reconcile("exception", "Unexpected", seconds)
            return
        ready = outcome.status.condition("Ready")
        if res.paused:
            result, reason = "paused", ready.reason if ready else "ReconcilePaused"
        elif outcome.error is not None:
            result, reason = "error", outcome.error.reason
        else:
            result, reason = "success", ready.reason if ready else "Available"
        metrics.observe_reconcile(result, reason, seconds)
        _observe_status(res, outcome.status)

    def observe_status(self, res: Resource) -> None:
        _observe_status(res, res.status)

    def observe_blocked(self, res: Resource) -> None:
        metrics.observe_resource(
            res.namespace, res.name, ready="False", reason="DeletionBlocked", paused=res.paused, key_expires_at=None
        )

    def forget_metrics(self, namespace: str, name: str) -> None:
        metrics.forget_resource(namespace, name)

    async def settled(self, res: Resource) -> bool:
        """Ready, reconciled at this generation, no re-check asked for since, its Secret unchanged: nothing to do."""
        status = res.status
        ready = status.condition("Ready")
        if res.paused or ready is None or ready.status != "True" or status.observed_generation != res.generation:
            return False
        if res.reconcile_requested_at != status.handled_reconcile_request:
            return False  # a re-check asked for while the operator was stopped
        if not status.id or not status.secret_resource_version:
            return False
        try:
            secret = await self.secrets.read_secret(res.namespace, res.spec.api_key_secret_ref.name)
        except KubeError:
            return False
        return secret is not None and secret.resource_version == status.secret_resource_version


@dataclass
class SyncLifecycle:
    reconciler: SyncReconciler
    plural: str = SYNC_PLURAL
    # A settled sync reads its latest run back this often: Infisical runs syncs by itself after a secret changes.
    interval: float | None = None

    def parse(self, body: Mapping[str, Any]) -> SyncResource:
        return SyncResource.from_body(body)

    def key(self, res: SyncResource) -> tuple[str, str]:
        return res.namespace, res.name

    async def reconcile(self, res: SyncResource, *, fresh: bool, first_patch: FirstPatch | None) -> Outcome[Any]:
        return await self.reconciler.reconcile(res, first_patch=first_patch)

    def needs_write(self, res: SyncResource, outcome: Outcome[Any], now: float) -> bool:
        # Nothing is written in the middle of a pass (the create marker rides in Kopf's first patch), so the status
        # the pass started from is the one stored: a pass that changes nothing writes nothing.
        return self.reconciler.needs_write(res, outcome, now)

    def status_patch(self, res: SyncResource) -> dict[str, Any]:
        return res.status.to_patch()

    async def finalize(self, res: SyncResource) -> list[Event]:
        return await self.reconciler.finalize(res)

    def deletion_blocked(
        self, res: SyncResource, error: errors.OctoconnError, now: datetime
    ) -> tuple[Status, list[Event]]:
        status, events = self.reconciler.deletion_blocked(res, error, now)
        return status, events

    # Per-sync series of their own (docs/monitoring.md); the reconcile counters describe connections.
    def observe(self, res: SyncResource, outcome: Outcome[Any] | None, seconds: float) -> None:
        metrics.observe_sync(res, outcome.status if outcome is not None else res.status)

    def observe_status(self, res: SyncResource) -> None:
        metrics.observe_sync(res, res.status)

    def observe_blocked(self, res: SyncResource) -> None:
        metrics.observe_sync(res, res.status, deleting=True)

    def forget_metrics(self, namespace: str, name: str) -> None:
        metrics.forget_sync(namespace, name)

    async def settled(self, res: SyncResource) -> bool:
        """Synced at this generation with no sync request pending: the periodic check will do."""
        ready = res.status.condition("Ready")
        return (
            not res.paused
            and ready is not None
            and ready.status == "True"
            and res.status.observed_generation == res.generation
            and bool(res.status.id)
            and res.sync_request == res.status.handled_sync_request
        )


def _observe_status(res: Resource, status: OctopusDeployConnectionStatus) -> None:
    ready = status.condition("Ready")
    metrics.observe_resource(
        res.namespace,
        res.name,
        ready=ready.status if ready else "Unknown",
        reason=ready.reason if ready else "Reconciling",
        paused=res.paused,
        key_expires_at=parse_time(status.octopus.key_expires_at) if status.octopus else None,
    )
