"""Work shared between resources, and writes left out: the Octopus check cache, shared Secret reads, and which
status a pass is worth writing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from octoconn import errors
from octoconn.apikeys import SecretData
from octoconn.engine import STATUS_REFRESH_SECONDS
from octoconn.engine import needs_write as engine_needs_write
from octoconn.models import Condition, OctopusDeployConnectionStatus
from octoconn.reconcile import ConnectionReconciler, VerificationCache, rfc3339
from octoconn.remote import OctopusIdentity
from octoconn.stores import SharedSecretReads


def needs_write(before: OctopusDeployConnectionStatus, after: OctopusDeployConnectionStatus, now: float) -> bool:
    """The connection's rule: its check times are refreshed at most every STATUS_REFRESH_SECONDS."""
    return engine_needs_write(before, after, now, heartbeats=ConnectionReconciler.heartbeats)


class CountingVerifier:
    def __init__(self) -> None:
        self.calls = 0
        self.revoked: set[str] = set()
        self.gate = asyncio.Event()
        self.gate.set()

    async def verify(self, instance_url: str, api_key: str) -> OctopusIdentity:
        self.calls += 1
        await self.gate.wait()
        if api_key in self.revoked:
            raise errors.InvalidApiKey("Octopus refused the key")
        return OctopusIdentity("Users-1", "svc", None, True, None, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_checks_of_one_key_make_one_call() -> None:
    verifier = CountingVerifier()
    verifier.gate.clear()
    cache = VerificationCache(verifier, ttl=10)
    waiting = [asyncio.ensure_future(cache.verify("https://o", "API-KEY")) for _ in range(50)]
    await asyncio.sleep(0)
    verifier.gate.set()
    identities = await asyncio.gather(*waiting)
    assert verifier.calls == 1
    assert {i.user_id for i in identities} == {"Users-1"}


async def test_an_answer_is_reused_within_ttl_only_and_never_for_a_fresh_check() -> None:
    verifier, clock = CountingVerifier(), Clock()
    cache = VerificationCache(verifier, ttl=10, clock=clock)
    await cache.verify("https://o", "API-KEY")
    await cache.verify("https://o", "API-KEY")
    assert verifier.calls == 1
    await cache.verify("https://o", "API-OTHER")  # another key is another check
    assert verifier.calls == 2

    verifier.revoked.add("API-KEY")
    with pytest.raises(errors.InvalidApiKey):
        await cache.verify("https://o", "API-KEY", fresh=True)  # asked for: goes to Octopus
    assert verifier.calls == 3


async def test_a_revoked_key_is_noticed_once_the_answer_expires() -> None:
    verifier, clock = CountingVerifier(), Clock()
    cache = VerificationCache(verifier, ttl=10, clock=clock)
    await cache.verify("https://o", "API-KEY")
    verifier.revoked.add("API-KEY")
    clock.now += 10.5
    for _ in range(3):  # the refusal is shared too
        with pytest.raises(errors.InvalidApiKey):
            await cache.verify("https://o", "API-KEY")
    assert verifier.calls == 2


async def test_outages_are_not_reused() -> None:
    class Down(CountingVerifier):
        async def verify(self, instance_url: str, api_key: str) -> OctopusIdentity:
            self.calls += 1
            raise errors.OctopusUnreachable("down")

    verifier = Down()
    cache = VerificationCache(verifier, ttl=10)
    for _ in range(2):
        with pytest.raises(errors.OctopusUnreachable):
            await cache.verify("https://o", "API-KEY")
    assert verifier.calls == 2


class CountingKube:
    def __init__(self) -> None:
        self.reads = 0

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        self.reads += 1
        await asyncio.sleep(0)
        return SecretData(resource_version=str(self.reads), data={"apiKey": "API-KEY"})


async def test_secret_reads_are_shared_until_the_secret_changes() -> None:
    kube, clock = CountingKube(), Clock()
    reads = SharedSecretReads(kube, ttl=2, clock=clock)  # type: ignore[arg-type]
    results = await asyncio.gather(*(reads.read_secret("ns", "key") for _ in range(100)))
    assert kube.reads == 1
    assert {r.resource_version for r in results if r} == {"1"}
    reads.changed("ns", "key")  # a watch event: the next read goes to the API server
    assert (await reads.read_secret("ns", "key")).resource_version == "2"  # type: ignore[union-attr]
    clock.now += 2.5
    assert (await reads.read_secret("ns", "key")).resource_version == "3"  # type: ignore[union-attr]


def status(verified: datetime, reason: str = "Available") -> OctopusDeployConnectionStatus:
    return OctopusDeployConnectionStatus(
        id="c1",
        last_verified_time=rfc3339(verified),
        last_synced_time=rfc3339(verified),
        conditions=[Condition(type="Ready", status="True", reason=reason, message="m", last_transition_time="t")],
    )


def test_a_quiet_check_writes_nothing_until_the_times_are_an_hour_old() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    before = status(t0)
    later = status(datetime(2026, 1, 1, 0, 10, tzinfo=UTC))
    assert not needs_write(before, later, t0.timestamp() + 600)
    assert not needs_write(before, before, t0.timestamp() + 2 * STATUS_REFRESH_SECONDS)
    assert needs_write(before, later, t0.timestamp() + STATUS_REFRESH_SECONDS)
    # Anything else that changed is written at once.
    assert needs_write(before, status(t0, reason="InvalidApiKey"), t0.timestamp() + 1)


async def test_a_read_begun_before_a_change_is_not_reused() -> None:
    kube, clock = CountingKube(), Clock()
    reads = SharedSecretReads(kube, ttl=2, clock=clock)  # type: ignore[arg-type]
    early = asyncio.ensure_future(reads.read_secret("ns", "key"))
    await asyncio.sleep(0)  # in flight
    reads.changed("ns", "key")
    late = await reads.read_secret("ns", "key")  # does not wait for the early read
    await early
    assert late is not None
    assert late.resource_version == "2"
    assert (await reads.read_secret("ns", "key")).resource_version == "2"  # type: ignore[union-attr]
    assert kube.reads == 2
