"""InfisicalClient against the Infisical test double (tests/servers/infisical.py) on a real 127.0.0.1 socket.

The double calls the Octopus double for its own credential check, as real Infisical calls Octopus, so these tests
also prove that what octoconn sends as ``instanceUrl`` is what Infisical can check.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from octoconn import errors, metrics
from octoconn.infisical import InfisicalClient, KubernetesAuth, UniversalAuth
from octoconn.pacing import WritePacer
from octoconn.remote import AppConnection
from tests.servers.infisical import InfisicalServer
from tests.servers.octopus import OctopusServer

CONNECTIONS = "/api/v1/app-connections/octopus-deploy"
UA_LOGIN = "/api/v1/auth/universal-auth/login"

ClientFactory = Callable[..., InfisicalClient]


@pytest.fixture
async def make_client(infisical: InfisicalServer) -> AsyncIterator[ClientFactory]:
    """Clients logged in as the fixture's identity unless ``auth`` says otherwise; all closed at teardown."""
    made: list[InfisicalClient] = []

    def make(**kwargs: Any) -> InfisicalClient:
        assert infisical.client_id is not None
        assert infisical.client_secret is not None
        kwargs.setdefault("base_url", infisical.url)
        kwargs.setdefault("auth", UniversalAuth(client_id=infisical.client_id, client_secret=infisical.client_secret))
        kwargs.setdefault("timeout", 5.0)
        client = InfisicalClient(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture
def client(make_client: ClientFactory) -> InfisicalClient:
    return make_client()


def logins(infisical: InfisicalServer) -> int:
    return len(infisical.state.requests_to(UA_LOGIN, "POST"))


def octopus_checks(octopus: OctopusServer) -> int:
    return len([r for r in octopus.state.requests if r.path.endswith("/api/users/me")])


async def create(
    client: InfisicalClient, octopus: OctopusServer, name: str = "prod-octopus", **kwargs: Any
) -> AppConnection:
    kwargs.setdefault("description", "Production Octopus")
    kwargs.setdefault("project_id", None)
    kwargs.setdefault("api_key", octopus.state.issue_key())
    return await client.create(name=name, instance_url=octopus.url, **kwargs)


def assert_hidden(exc: BaseException, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in str(exc)
        assert secret not in repr(exc)


# --- the life of a connection -------------------------------------------------------------------------------------
async def test_create_get_update_delete(
    infisical: InfisicalServer, octopus: OctopusServer, client: InfisicalClient
) -> None:
    key = octopus.state.issue_key()
    created = await client.create(
        name="prod-octopus", description="Production Octopus", project_id=None, instance_url=octopus.url, api_key=key
    )
    assert created.name == "prod-octopus"
    assert created.description == "Production Octopus"
    assert created.version == 1
    assert created.project_id is None
    assert created.instance_url == octopus.url
    assert len(created.credentials_hash) == 64
    assert created.org_id
    stored = infisical.state.connection(created.id)
    assert stored is not None
    assert stored["_credentials"] == {"instanceUrl": octopus.url, "apiKey": key}

    assert await client.get(created.id) == created
    assert await client.get_by_name("prod-octopus", project_id=None) == created

    checks_before = octopus_checks(octopus)
    described = await client.update(created.id, description="Moved to the new cluster")
    assert described.description == "Moved to the new cluster"
    assert described.credentials_hash == created.credentials_hash
    assert octopus_checks(octopus) == checks_before  # no credentials sent, so Infisical did not call Octopus
    patch = infisical.state.requests_to(f"{CONNECTIONS}/{created.id}", "PATCH")[-1]
    assert patch.json == {"description": "Moved to the new cluster"}  # only the field given

    new_key = octopus.state.issue_key()
    rotated = await client.update(created.id, credentials=(octopus.url, new_key))
    assert rotated.credentials_hash != created.credentials_hash
    assert rotated.description == "Moved to the new cluster"
    assert octopus_checks(octopus) == checks_before + 1
    stored = infisical.state.connection(created.id)
    assert stored is not None
    assert stored["_credentials"]["apiKey"] == new_key

    renamed = await client.update(created.id, name="prod-octopus-2", description=None)
    assert renamed.name == "prod-octopus-2"
    assert renamed.description is None
    assert renamed.credentials_hash == rotated.credentials_hash

    assert await client.delete(created.id) is True
    assert await client.delete(created.id) is False
    assert await client.get(created.id) is None
    assert await client.get_by_name("prod-octopus-2", project_id=None) is None
    assert infisical.state.connections() == []


async def test_project_connection(infisical: InfisicalServer, octopus: OctopusServer, client: InfisicalClient) -> None:
    project_id = infisical.state.add_project()
    in_project = await create(client, octopus, project_id=project_id, description=None)
    assert in_project.project_id == project_id
    assert in_project.description is None
    org_level = await create(client, octopus)  # the same name is free at org level

    assert await client.get_by_name("prod-octopus", project_id=project_id) == in_project
    assert await client.get_by_name("prod-octopus", project_id=None) == org_level
    lookups = infisical.state.requests_to(f"{CONNECTIONS}/connection-name/prod-octopus", "GET")
    assert lookups[0].query == {"projectId": project_id}
    assert lookups[1].query == {}


async def test_drift_is_visible(infisical: InfisicalServer, octopus: OctopusServer, client: InfisicalClient) -> None:
    created = await create(client, octopus)
    infisical.state.rewrite_credentials_out_of_band(created.id)
    rewritten = await client.get(created.id)
    assert rewritten is not None
    assert rewritten.credentials_hash != created.credentials_hash
    infisical.state.delete_connection_out_of_band(created.id)
    assert await client.get(created.id) is None
    with pytest.raises(errors.InfisicalNotFound) as caught:
        await client.update(created.id, description="gone")
    assert "Could not find App Connection" in str(caught.value)
    assert "reqId req-" in str(caught.value)


# --- Infisical says no --------------------------------------------------------------------------------------------
async def test_duplicate_name(octopus: OctopusServer, client: InfisicalClient) -> None:
    await create(client, octopus)
    with pytest.raises(errors.NameConflict) as caught:
        await create(client, octopus)
    assert '"prod-octopus"' in str(caught.value)
    assert caught.value.reason == "NameConflict"
    assert caught.value.status_code == 400
    assert "reqId req-" in str(caught.value)


async def test_bad_name_renders_the_422_issues(octopus: OctopusServer, client: InfisicalClient) -> None:
    with pytest.raises(errors.InfisicalRejected) as caught:
        await create(client, octopus, name="Bad Name")
    assert type(caught.value) is errors.InfisicalRejected
    assert caught.value.status_code == 422
    assert "name: name field can only contain lowercase letters, numbers, and hyphens" in str(caught.value)
    assert caught.value.retry is errors.Retry.WAIT_FOR_CHANGE


async def test_several_422_issues(octopus: OctopusServer, client: InfisicalClient) -> None:
    with pytest.raises(errors.InfisicalRejected) as caught:
        await client.create(name="Bad_Name", description=None, project_id=None, instance_url="not a url", api_key=" ")
    message = str(caught.value)
    assert "name: " in message
    assert "credentials.instanceUrl: " in message
    assert "credentials.apiKey: API key required" in message
    assert message.count("; ") >= 2


async def test_wrong_octopus_key_is_refused_by_infisical(octopus: OctopusServer, client: InfisicalClient) -> None:
    wrong = "API-" + "W" * 30
    with pytest.raises(errors.InfisicalRejected) as caught:
        await create(client, octopus, api_key=wrong)
    assert "Failed to validate Octopus Deploy credentials: Request failed with status code 401" in str(caught.value)
    assert_hidden(caught.value, wrong)


async def test_wrong_octopus_key_on_update_leaves_the_connection(
    infisical: InfisicalServer, octopus: OctopusServer, client: InfisicalClient
) -> None:
    created = await create(client, octopus)
    wrong = "API-" + "W" * 30
    with pytest.raises(errors.InfisicalRejected) as caught:
        await client.update(created.id, credentials=(octopus.url, wrong))
    assert_hidden(caught.value, wrong)
    assert await client.get(created.id) == created


async def test_non_uuid_id_is_rejected_not_missing(client: InfisicalClient) -> None:
    with pytest.raises(errors.InfisicalRejected) as caught:
        await client.get("not-a-uuid")
    assert caught.value.status_code == 422
    assert "Invalid uuid" in str(caught.value)


async def test_an_id_cannot_walk_to_another_route(infisical: InfisicalServer, client: InfisicalClient) -> None:
    with pytest.raises(errors.InfisicalError) as caught:
        await client.delete("../../../auth/token/renew")
    assert not isinstance(caught.value, errors.InfisicalNotFound)  # "no such route" must not read as "already gone"
    assert infisical.state.requests_to("/api/v1/auth/token/renew") == []


async def test_missing_route_is_not_a_missing_connection(
    infisical: InfisicalServer, make_client: ClientFactory
) -> None:
    client = make_client(base_url=infisical.url + "/v2")  # a wrong base path: every route is unknown
    with pytest.raises(errors.InfisicalUnavailable) as caught:
        await client.get("6f1c7a0e-1111-4222-8333-944445555666")
    assert "no such API route" in str(caught.value)


# --- auth ---------------------------------------------------------------------------------------------------------
async def test_token_is_cached_across_calls(
    infisical: InfisicalServer, octopus: OctopusServer, client: InfisicalClient
) -> None:
    created = await create(client, octopus)
    await client.get(created.id)
    await client.get_by_name(created.name, project_id=None)
    await client.update(created.id, description="x")
    await client.delete(created.id)
    assert logins(infisical) == 1
    fingerprints = {r.token_fingerprint for r in infisical.state.requests if r.path.startswith(CONNECTIONS)}
    assert len(fingerprints) == 1


async def test_concurrent_callers_share_one_login(
    infisical: InfisicalServer, octopus: OctopusServer, client: InfisicalClient
) -> None:
    seeded = InfisicalClient(
        base_url=infisical.url,
        auth=UniversalAuth(client_id=infisical.client_id or "", client_secret=infisical.client_secret or ""),
    )
    try:
        created = await create(seeded, octopus)
    finally:
        await seeded.aclose()
    before = logins(infisical)
    infisical.state.faults.latency(0.2, path_prefix=UA_LOGIN)  # keep the login in flight while the others arrive

    results = await asyncio.gather(*(client.get(created.id) for _ in range(20)))

    assert all(result == created for result in results)
    assert logins(infisical) - before == 1


@pytest.mark.parametrize("mode", ["ttl-check", "jwt-exp"])
async def test_expired_token_means_a_transparent_login(
    infisical: InfisicalServer, octopus: OctopusServer, client: InfisicalClient, mode: str
) -> None:
    infisical.state.expired_token_mode = mode  # type: ignore[assignment]
    created = await create(client, octopus)
    assert logins(infisical) == 1
    infisical.state.expire_tokens()

    assert await client.get(created.id) == created

    assert logins(infisical) == 2
    gets = infisical.state.requests_to(f"{CONNECTIONS}/{created.id}", "GET")
    assert [r.status for r in gets] == [401 if mode == "ttl-check" else 403, 200]


async def test_login_again_before_the_token_expires(
    infisical: InfisicalServer, octopus: OctopusServer, make_client: ClientFactory
) -> None:
    now = [0.0]
    client = make_client(clock=lambda: now[0])
    created = await create(client, octopus)
    now[0] += 0.69 * 7200  # the double's default TTL is 7200 s
    await client.get(created.id)
    assert logins(infisical) == 1
    now[0] += 0.02 * 7200
    await client.get(created.id)
    assert logins(infisical) == 2
    assert all(r.status == 200 for r in infisical.state.requests)  # never sent an expired token


async def test_wrong_client_secret(infisical: InfisicalServer, make_client: ClientFactory) -> None:
    secret = "definitely-not-the-secret-" + "x" * 20
    client = make_client(auth=UniversalAuth(client_id=infisical.client_id or "", client_secret=secret))
    with pytest.raises(errors.InfisicalAuthFailed) as caught:
        await client.get("6f1c7a0e-1111-4222-8333-944445555666")
    message = str(caught.value)
    assert "Invalid credentials" in message
    assert str(infisical.client_id) in message
    assert "reqId req-" in message
    assert caught.value.status_code == 401
    assert caught.value.retry is errors.Retry.SLOW
    assert_hidden(caught.value, secret)
    assert secret not in repr(client)


async def test_refused_login_is_not_hammered(infisical: InfisicalServer, make_client: ClientFactory) -> None:
    # Three failed logins lock the identity out for 5 minutes, even for the right secret: many resources
    # reconciling at once must not spend them all.
    client = make_client(auth=UniversalAuth(client_id=infisical.client_id or "", client_secret="wrong"))
    outcomes = await asyncio.gather(
        *(client.get("6f1c7a0e-1111-4222-8333-944445555666") for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(outcome, errors.InfisicalAuthFailed) for outcome in outcomes)
    with pytest.raises(errors.InfisicalAuthFailed):
        await client.get("6f1c7a0e-1111-4222-8333-944445555666")
    assert logins(infisical) == 1


async def test_refused_login_is_tried_again_after_a_minute(
    infisical: InfisicalServer, make_client: ClientFactory
) -> None:
    now = [0.0]
    client = make_client(
        auth=UniversalAuth(client_id=infisical.client_id or "", client_secret="wrong"), clock=lambda: now[0]
    )
    for _ in range(2):
        with pytest.raises(errors.InfisicalAuthFailed):
            await client.get("6f1c7a0e-1111-4222-8333-944445555666")
    assert logins(infisical) == 1
    now[0] += 61
    with pytest.raises(errors.InfisicalAuthFailed):
        await client.get("6f1c7a0e-1111-4222-8333-944445555666")
    assert logins(infisical) == 2


async def test_kubernetes_auth_refused(infisical: InfisicalServer, make_client: ClientFactory) -> None:
    identity_id = infisical.state.add_kubernetes_identity(allowed_namespaces=["octoconn-system"])
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJl"
    minted: list[str] = []

    async def mint() -> str:
        minted.append(jwt)
        return jwt

    client = make_client(auth=KubernetesAuth(identity_id=identity_id, token_source=mint))
    with pytest.raises(errors.InfisicalAuthFailed) as caught:
        await client.get("6f1c7a0e-1111-4222-8333-944445555666")
    assert identity_id in str(caught.value)
    assert_hidden(caught.value, jwt)
    assert minted == [jwt]
    login = infisical.state.requests_to("/api/v1/auth/kubernetes-auth/login", "POST")
    assert len(login) == 1
    assert login[0].json == {"identityId": identity_id, "jwt": "***"}


async def test_kubernetes_token_source_failure(make_client: ClientFactory) -> None:
    async def broken() -> str:
        raise PermissionError("serviceaccounts/token is forbidden")

    client = make_client(auth=KubernetesAuth(identity_id="identity-1", token_source=broken))
    with pytest.raises(errors.InfisicalAuthFailed) as caught:
        await client.get("6f1c7a0e-1111-4222-8333-944445555666")
    assert "ServiceAccount token" in str(caught.value)


# --- limits and failures ------------------------------------------------------------------------------------------
async def test_write_rate_limit_pauses_every_writer(
    infisical: InfisicalServer, octopus: OctopusServer, make_client: ClientFactory
) -> None:
    pacer = WritePacer(per_minute=6000, burst=100)
    client = make_client(pacer=pacer)
    infisical.state.faults.rate_limit(writes_per_minute=2)  # the login and one create
    await create(client, octopus, name="first")

    with pytest.raises(errors.InfisicalRateLimited) as caught:
        await create(client, octopus, name="second")

    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 60
    assert caught.value.status_code == 429
    assert caught.value.retry is errors.Retry.RATE_LIMITED
    assert pacer.paused_for > 0  # every writer now waits, not only this one


async def test_read_rate_limit(infisical: InfisicalServer, octopus: OctopusServer, make_client: ClientFactory) -> None:
    pacer = WritePacer(per_minute=6000, burst=100)
    client = make_client(pacer=pacer)
    created = await create(client, octopus)
    infisical.state.faults.rate_limit(reads_per_minute=1)
    await client.get(created.id)
    with pytest.raises(errors.InfisicalRateLimited) as caught:
        await client.get(created.id)
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 60
    assert pacer.paused_for == 0  # a full read window says nothing about writes


async def test_reads_go_through_the_read_pacer_and_a_read_429_pauses_readers(
    infisical: InfisicalServer, octopus: OctopusServer, make_client: ClientFactory
) -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:  # the pacer's sleep: recorded, not slept
        waits.append(seconds)

    writes = WritePacer(per_minute=6000, burst=100)
    reads = WritePacer(per_minute=60, burst=1, sleep=record)
    client = make_client(pacer=writes, read_pacer=reads)
    created = await create(client, octopus)
    for _ in range(3):
        await client.get(created.id)
    # One read a second and the sleeps are not real: the second read waits ~1 s, the third ~2 s.
    assert len(waits) == 2
    assert 0.5 < waits[0] <= 1.0 < waits[1] <= 2.0

    infisical.state.faults.rate_limit(reads_per_minute=1)
    await client.get(created.id)
    with pytest.raises(errors.InfisicalRateLimited):
        await client.get(created.id)
    assert reads.paused_for > 0
    assert writes.paused_for == 0


async def test_writes_and_logins_go_through_the_pacer(octopus: OctopusServer, make_client: ClientFactory) -> None:
    class CountingPacer(WritePacer):
        acquired = 0

        async def acquire(self) -> None:
            self.acquired += 1
            await super().acquire()

    pacer = CountingPacer(per_minute=6000, burst=100)
    client = make_client(pacer=pacer)
    created = await create(client, octopus)  # login + POST
    await client.get(created.id)  # a read: not paced
    await client.update(created.id, description="x")
    await client.delete(created.id)
    assert pacer.acquired == 4


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors(
    infisical: InfisicalServer, octopus: OctopusServer, client: InfisicalClient, status: int
) -> None:
    created = await create(client, octopus)
    infisical.state.faults.error(status, path_prefix=CONNECTIONS)
    with pytest.raises(errors.InfisicalUnavailable) as caught:
        await client.get(created.id)
    assert caught.value.status_code == status
    assert caught.value.retry is errors.Retry.BACKOFF
    assert "reqId req-" in str(caught.value)


async def test_login_server_error(infisical: InfisicalServer, client: InfisicalClient) -> None:
    infisical.state.faults.error(500, path_prefix=UA_LOGIN)
    with pytest.raises(errors.InfisicalUnavailable):
        await client.get("6f1c7a0e-1111-4222-8333-944445555666")
    assert await client.get("6f1c7a0e-1111-4222-8333-944445555666") is None  # a 5xx is not remembered like a 401


async def test_dropped_connection(infisical: InfisicalServer, octopus: OctopusServer, client: InfisicalClient) -> None:
    created = await create(client, octopus)
    infisical.state.faults.drop(path_prefix=CONNECTIONS)
    with pytest.raises(errors.InfisicalUnavailable) as caught:
        await client.get(created.id)
    assert infisical.url in str(caught.value)
    assert await client.get(created.id) == created


async def test_timeout(infisical: InfisicalServer, octopus: OctopusServer, make_client: ClientFactory) -> None:
    created = await create(make_client(), octopus)  # the create at the default timeout: a loaded machine is slow
    client = make_client(timeout=0.2)
    infisical.state.faults.latency(1.0, path_prefix=CONNECTIONS)
    with pytest.raises(errors.InfisicalUnavailable) as caught:
        await client.get(created.id)
    assert "0.2 s" in str(caught.value)


async def test_unreachable(make_client: ClientFactory) -> None:
    client = make_client(base_url="http://127.0.0.1:1")
    with pytest.raises(errors.InfisicalUnavailable):
        await client.get("6f1c7a0e-1111-4222-8333-944445555666")


async def test_api_suffix_on_the_base_url_is_tolerated(infisical: InfisicalServer, make_client: ClientFactory) -> None:
    client = make_client(base_url=infisical.url + "/api/")
    assert await client.get("6f1c7a0e-1111-4222-8333-944445555666") is None


# --- the wire -----------------------------------------------------------------------------------------------------
async def test_no_content_type_on_bodyless_requests(
    infisical: InfisicalServer, octopus: OctopusServer, client: InfisicalClient
) -> None:
    created = await create(client, octopus)
    await client.get(created.id)
    await client.get_by_name(created.name, project_id=None)
    await client.update(created.id, description="x")
    assert await client.delete(created.id) is True

    for request in infisical.state.requests:
        if request.method in ("GET", "DELETE"):
            assert "content-type" not in request.headers, request
        else:
            assert request.headers["content-type"] == "application/json", request
        assert request.headers["accept"] == "application/json"
        if request.path.startswith(CONNECTIONS):
            assert request.headers["authorization"] == "Bearer ***"
    assert all(r.status in (200, 404) for r in infisical.state.requests)


async def test_secrets_travel_only_in_bodies_and_the_bearer_header(
    infisical: InfisicalServer, octopus: OctopusServer, client: InfisicalClient
) -> None:
    key = octopus.state.issue_key()
    await create(client, octopus, api_key=key)
    login, post = infisical.state.requests[0], infisical.state.requests[1]
    assert login.json == {"clientId": infisical.client_id, "clientSecret": "***"}
    assert "authorization" not in login.headers
    assert post.json == {
        "name": "prod-octopus",
        "method": "api-key",
        "credentials": {"instanceUrl": octopus.url, "apiKey": "***"},
        "description": "Production Octopus",
    }
    for request in infisical.state.requests:
        assert key not in str(request.query)
        assert key not in request.path
    assert str(infisical.client_secret) not in repr(client)


async def test_refusals_of_the_operator_identity_show_in_the_metrics(
    infisical: InfisicalServer, make_client: ClientFactory
) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    refused = sample("octoconn_infisical_logins_total", identity="operator", result="refused")
    tenant_refused = sample("octoconn_infisical_logins_total", identity="resource", result="refused")
    ok = sample("octoconn_infisical_logins_total", identity="operator", result="success")
    wrong = UniversalAuth(client_id=infisical.client_id or "", client_secret="wrong")

    # A per-resource identity's refusal is counted but says nothing about the operator's own identity.
    metrics.OPERATOR_IDENTITY_REFUSED.set(0)
    with pytest.raises(errors.InfisicalAuthFailed):
        await make_client(auth=wrong, identity="resource").get("6f1c7a0e-1111-4222-8333-944445555666")
    assert sample("octoconn_infisical_logins_total", identity="resource", result="refused") == tenant_refused + 1
    assert sample("octoconn_infisical_operator_identity_refused") == 0

    with pytest.raises(errors.InfisicalAuthFailed):
        await make_client(auth=wrong).get("6f1c7a0e-1111-4222-8333-944445555666")
    assert sample("octoconn_infisical_logins_total", identity="operator", result="refused") == refused + 1
    assert sample("octoconn_infisical_operator_identity_refused") == 1

    # Fixed (a restart with the right secret): the first accepted call clears it.
    assert await make_client().get("6f1c7a0e-1111-4222-8333-944445555666") is None
    assert sample("octoconn_infisical_logins_total", identity="operator", result="success") == ok + 1
    assert sample("octoconn_infisical_operator_identity_refused") == 0
