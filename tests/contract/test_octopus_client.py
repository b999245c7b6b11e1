"""OctopusClient against the Octopus test double (tests/servers/octopus.py) on a real 127.0.0.1 socket.

Each test names the page behaviour it relies on; the double is the oracle, so no response is faked here except
the two tiny "not Octopus at all" servers at the bottom.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from octoconn import errors
from octoconn.octopus import OctopusClient
from octoconn.remote import OctopusIdentity
from tests.servers.infisical import InfisicalServer
from tests.servers.octopus import SERVICE_ACCOUNT_ID, OctopusServer
from tests.servers.runner import ServerThread

Factory = Callable[..., OctopusServer]


@pytest.fixture
async def client() -> AsyncIterator[OctopusClient]:
    # The double speaks plain http on loopback; allowing it here is what a test cluster's operator would do.
    octopus_client = OctopusClient(allow_http=True, timeout=2.0)
    yield octopus_client
    await octopus_client.aclose()


def assert_key_hidden(exc: BaseException, key: str) -> None:
    assert key not in str(exc)
    assert key not in repr(exc)
    assert key not in str(exc.args)
    assert exc.__cause__ is None or key not in repr(exc.__cause__)


def users_me_requests(server: OctopusServer) -> list[object]:
    return [r for r in server.state.requests if r.path.endswith("/api/users/me")]


# --- success ------------------------------------------------------------------------------------------------------
async def test_valid_key_of_a_person(octopus: OctopusServer, client: OctopusClient) -> None:
    expires = datetime(2031, 5, 4, 3, 2, 1, 123000, tzinfo=UTC)
    key = octopus.state.issue_key(expires=expires)

    identity = await client.verify(octopus.url, key)

    assert identity == OctopusIdentity(
        user_id="Users-1",
        username="admin",
        display_name="Octopus Admin",
        is_service=False,
        server_version=octopus.version,
        key_expires_at=expires,
    )


async def test_valid_key_of_a_service_account(octopus: OctopusServer, client: OctopusClient) -> None:
    key = octopus.state.issue_key(user_id=SERVICE_ACCOUNT_ID)

    identity = await client.verify(octopus.url, key)

    assert identity.user_id == SERVICE_ACCOUNT_ID
    assert identity.username == "octoconn"
    assert identity.is_service is True
    record = octopus.state.key_record(key)
    assert record is not None
    assert record.expires is not None
    assert identity.key_expires_at is not None
    assert abs(identity.key_expires_at - record.expires) < timedelta(milliseconds=1)


async def test_key_without_expiry(octopus: OctopusServer, client: OctopusClient) -> None:
    key = octopus.state.issue_key(expires=None)
    assert (await client.verify(octopus.url, key)).key_expires_at is None


async def test_expiry_unknown_when_hints_collide(octopus: OctopusServer, client: OctopusClient) -> None:
    key = "API-SAMEHINTAAAAAAAAAAAAAAAAAAAAAA"
    octopus.state.issue_key(value="API-SAMEHINTBBBBBBBBBBBBBBBBBBBBBB")
    octopus.state.issue_key(value=key)
    identity = await client.verify(octopus.url, key)
    assert identity.user_id == "Users-1"
    assert identity.key_expires_at is None  # two keys share the hint: we cannot tell which one is ours


async def test_expiry_unknown_for_an_old_key_without_hint(octopus: OctopusServer, client: OctopusClient) -> None:
    key = octopus.state.issue_key(hint=False)
    assert (await client.verify(octopus.url, key)).key_expires_at is None


async def test_expiry_lookup_failure_never_fails_verification(octopus: OctopusServer, client: OctopusClient) -> None:
    key = octopus.state.issue_key()
    octopus.state.faults.error(500, path_suffix="/apikeys")
    identity = await client.verify(octopus.url, key)
    assert identity.user_id == "Users-1"
    assert identity.key_expires_at is None
    assert identity.server_version == octopus.version  # read from the anonymous root, before the key was sent


async def test_key_is_not_sent_when_the_root_document_fails(octopus: OctopusServer, client: OctopusClient) -> None:
    key = octopus.state.issue_key()
    octopus.state.faults.drop(path_suffix="/api")
    with pytest.raises(errors.OctopusUnreachable):
        await client.verify(octopus.url, key)
    assert users_me_requests(octopus) == []


async def test_key_travels_only_in_the_octopus_header(octopus: OctopusServer, client: OctopusClient) -> None:
    key = octopus.state.issue_key()
    await client.verify(octopus.url, key)

    for request in octopus.state.requests:
        assert "apikey" not in {name.lower() for name in request.query}
        assert key not in request.path
        assert "x-nuget-apikey" not in request.headers
        assert "authorization" not in request.headers
    me = users_me_requests(octopus)
    assert len(me) == 1
    assert me[0].headers["x-octopus-apikey"] == key  # type: ignore[attr-defined]
    assert me[0].headers["accept"] == "application/json"  # type: ignore[attr-defined]
    # The anonymous root document is fetched without the key.
    roots = [r for r in octopus.state.requests if r.path.endswith("/api")]
    assert roots
    assert all("x-octopus-apikey" not in r.headers for r in roots)
    apikeys = [r for r in octopus.state.requests if r.path.endswith("/apikeys")]
    assert len(apikeys) == 1
    assert apikeys[0].query == {"take": "100"}


async def test_key_with_surrounding_whitespace_from_a_secret_file(
    octopus: OctopusServer, client: OctopusClient
) -> None:
    key = octopus.state.issue_key()
    assert (await client.verify(octopus.url, f"{key}\n")).user_id == "Users-1"
    assert users_me_requests(octopus)[0].headers["x-octopus-apikey"] == key  # type: ignore[attr-defined]


@pytest.mark.parametrize("suffix", ["", "/", "/api", "/api/", "/app#/Spaces-1/projects"])
async def test_pasted_url_forms(octopus: OctopusServer, client: OctopusClient, suffix: str) -> None:
    key = octopus.state.issue_key()
    assert (await client.verify(octopus.url + suffix, key)).user_id == "Users-1"
    assert [r.path for r in users_me_requests(octopus)] == ["/api/users/me"]


async def test_path_prefix(octopus_factory: Factory, client: OctopusClient) -> None:
    server = octopus_factory(prefix="/octopus")
    key = server.state.issue_key(expires=datetime(2030, 1, 1, tzinfo=UTC))

    identity = await client.verify(server.url + "/app#/Spaces-1", key)

    assert identity.user_id == "Users-1"
    assert identity.key_expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert identity.server_version == server.version
    assert {r.path for r in server.state.requests} == {
        "/octopus/api/users/me",
        "/octopus/api",
        "/octopus/api/users/Users-1/apikeys",
    }


# --- TLS and http -------------------------------------------------------------------------------------------------
async def test_tls_with_the_ca_bundle_as_pem_text(octopus_factory: Factory) -> None:
    server = octopus_factory(tls=True)
    key = server.state.issue_key()
    assert server.ca_pem is not None
    async_client = OctopusClient(ca_bundle=server.ca_pem, timeout=2.0)
    try:
        assert (await async_client.verify(server.url, key)).user_id == "Users-1"
    finally:
        await async_client.aclose()


async def test_tls_with_the_ca_bundle_as_a_file(octopus_factory: Factory, tmp_path: Path) -> None:
    server = octopus_factory(tls=True)
    key = server.state.issue_key()
    assert server.ca_pem is not None
    bundle = tmp_path / "ca.pem"
    bundle.write_text(server.ca_pem)
    async_client = OctopusClient(ca_bundle=str(bundle), timeout=2.0)
    try:
        assert (await async_client.verify(server.url, key)).server_version == server.version
    finally:
        await async_client.aclose()


async def test_tls_without_the_ca_bundle(octopus_factory: Factory) -> None:
    server = octopus_factory(tls=True)
    key = server.state.issue_key()
    async_client = OctopusClient(timeout=2.0)
    try:
        with pytest.raises(errors.OctopusTLSError) as caught:
            await async_client.verify(server.url, key)
    finally:
        await async_client.aclose()
    assert "CA bundle" in str(caught.value)
    assert "certificate" in str(caught.value)
    assert caught.value.retry is errors.Retry.SLOW
    assert server.state.requests == []  # the handshake failed before any request, so the key never left
    assert_key_hidden(caught.value, key)


async def test_tls_verification_can_be_switched_off(octopus_factory: Factory) -> None:
    server = octopus_factory(tls=True)
    key = server.state.issue_key()
    async_client = OctopusClient(verify_tls=False, timeout=2.0)
    try:
        assert (await async_client.verify(server.url, key)).user_id == "Users-1"
    finally:
        await async_client.aclose()


async def test_http_refused_unless_allowed(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    strict = OctopusClient(timeout=2.0)
    try:
        with pytest.raises(errors.InsecureInstanceUrl) as caught:
            await strict.verify(octopus.url, key)
    finally:
        await strict.aclose()
    assert "https" in str(caught.value)
    assert octopus.state.requests == []  # refused before anything was sent
    assert_key_hidden(caught.value, key)


# --- refusals -----------------------------------------------------------------------------------------------------
async def test_malformed_key_is_not_sent(octopus: OctopusServer, client: OctopusClient) -> None:
    for bad in [
        "",
        "api-abcdefghijklmnopqrstuvwxyz12",
        "API-abcdefghijklmnopqrstuvwxyz12",
        "API-",
        "TOKEN-1234",
        "API-AB CD",
    ]:
        with pytest.raises(errors.MalformedApiKey) as caught:
            await client.verify(octopus.url, bad)
        if len(bad) > len("API-"):  # the bare prefix is part of every explanation
            assert_key_hidden(caught.value, bad)
    assert octopus.state.requests == []


@pytest.mark.parametrize("how", ["wrong", "revoked", "expired"])
async def test_refused_key(octopus: OctopusServer, client: OctopusClient, how: str) -> None:
    key = octopus.state.issue_key()
    if how == "wrong":
        key = "API-" + "Z" * 30
    elif how == "revoked":
        octopus.state.revoke_key(key)
    else:
        octopus.state.expire_key(key)

    with pytest.raises(errors.InvalidApiKey) as caught:
        await client.verify(octopus.url, key)

    message = str(caught.value)
    assert "wrong, revoked or expired" in message
    assert "The API key you provided was not valid" in message  # Octopus's own ErrorMessage
    assert "Secret" in message
    assert caught.value.retry is errors.Retry.SLOW
    assert_key_hidden(caught.value, key)


async def test_permission_denied(octopus: OctopusServer, client: OctopusClient) -> None:
    key = octopus.state.issue_key()
    octopus.state.faults.error(403, path_suffix="/api/users/me")
    with pytest.raises(errors.OctopusPermissionDenied) as caught:
        await client.verify(octopus.url, key)
    assert "403" in str(caught.value)
    assert_key_hidden(caught.value, key)


async def test_rate_limited(octopus: OctopusServer, client: OctopusClient) -> None:
    key = octopus.state.issue_key()
    octopus.state.faults.rate_limit(retry_after=7)
    with pytest.raises(errors.OctopusRateLimited) as caught:
        await client.verify(octopus.url, key)
    assert caught.value.retry_after == 7
    assert caught.value.retry is errors.Retry.RATE_LIMITED
    assert_key_hidden(caught.value, key)
    assert (await client.verify(octopus.url, key)).user_id == "Users-1"  # the fault was for one request


async def test_starting(octopus: OctopusServer, client: OctopusClient) -> None:
    key = octopus.state.issue_key()
    octopus.state.faults.starting()
    with pytest.raises(errors.OctopusUnreachable) as caught:
        await client.verify(octopus.url, key)
    assert "503" in str(caught.value)
    assert "starting" in str(caught.value)
    assert caught.value.retry is errors.Retry.BACKOFF
    assert_key_hidden(caught.value, key)


@pytest.mark.parametrize("status", [500, 502])
async def test_server_error(octopus: OctopusServer, client: OctopusClient, status: int) -> None:
    key = octopus.state.issue_key()
    octopus.state.faults.error(status)
    with pytest.raises(errors.OctopusUnreachable) as caught:
        await client.verify(octopus.url, key)
    assert str(status) in str(caught.value)
    assert_key_hidden(caught.value, key)


async def test_timeout(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    octopus.state.faults.latency(1.0)
    impatient = OctopusClient(allow_http=True, timeout=0.2)
    try:
        with pytest.raises(errors.OctopusUnreachable) as caught:
            await impatient.verify(octopus.url, key)
    finally:
        await impatient.aclose()
    assert "0.2 s" in str(caught.value)
    assert_key_hidden(caught.value, key)


async def test_dropped_connection(octopus: OctopusServer, client: OctopusClient) -> None:
    key = octopus.state.issue_key()
    octopus.state.faults.drop()
    with pytest.raises(errors.OctopusUnreachable) as caught:
        await client.verify(octopus.url, key)
    assert_key_hidden(caught.value, key)


async def test_connection_refused(client: OctopusClient) -> None:
    key = "API-" + "A" * 30
    with pytest.raises(errors.OctopusUnreachable) as caught:
        await client.verify("http://127.0.0.1:1", key)
    assert "127.0.0.1:1" in str(caught.value)
    assert_key_hidden(caught.value, key)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_not_followed_and_the_target_gets_no_key(
    octopus_factory: Factory, client: OctopusClient, status: int
) -> None:
    target = octopus_factory(prefix="/real")
    key = target.state.issue_key()
    redirecting = octopus_factory(redirect_to=target.url, redirect_status=status)

    with pytest.raises(errors.OctopusRedirected) as caught:
        await client.verify(redirecting.url, key)

    message = str(caught.value)
    assert f"{target.url}/api" in message
    assert f"probably {target.url})" in message  # the instanceUrl to set
    assert "not sent" in message
    assert target.state.requests == []
    # The redirect shows on the anonymous root, so not even the redirecting server saw the key.
    assert [r.path for r in redirecting.state.requests] == ["/api"]
    assert "x-octopus-apikey" not in redirecting.state.requests[0].headers
    assert caught.value.retry is errors.Retry.WAIT_FOR_CHANGE
    assert_key_hidden(caught.value, key)


async def test_users_me_missing_behind_an_octopus_root(octopus: OctopusServer, client: OctopusClient) -> None:
    key = octopus.state.issue_key()
    octopus.state.faults.error(404, path_suffix="/api/users/me")
    with pytest.raises(errors.OctopusUnexpectedResponse) as caught:
        await client.verify(octopus.url, key)
    assert "proxy" in str(caught.value)
    assert_key_hidden(caught.value, key)


async def test_wrong_path_prefix(octopus_factory: Factory, client: OctopusClient) -> None:
    server = octopus_factory(prefix="/octopus")
    key = server.state.issue_key()
    base = server.url.removesuffix("/octopus")
    with pytest.raises(errors.NotAnOctopusServer) as caught:
        await client.verify(base, key)
    assert "instanceUrl" in str(caught.value)
    assert_key_hidden(caught.value, key)


async def test_unsupported_api_version(octopus_factory: Factory, client: OctopusClient) -> None:
    server = octopus_factory(api_version="4.0.0")
    key = server.state.issue_key()
    server.state.faults.error(404, path_suffix="/api/users/me")
    with pytest.raises(errors.NotAnOctopusServer) as caught:
        await client.verify(server.url, key)
    assert "'4.0.0'" in str(caught.value)


# --- not Octopus at all -------------------------------------------------------------------------------------------
def _serve(handler: Callable[[web.Request], object]) -> Iterator[str]:
    async def respond(request: web.Request) -> web.StreamResponse:
        return handler(request)  # type: ignore[return-value]

    def make_app() -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", respond)
        return app

    with ServerThread(make_app) as thread:
        yield f"http://127.0.0.1:{thread.port}"


@pytest.fixture
def html_404_site() -> Iterator[str]:
    yield from _serve(lambda _: web.Response(status=404, text="<html>Not Found</html>", content_type="text/html"))


@pytest.fixture
def single_page_app() -> Iterator[str]:
    # Answers 200 with the same HTML page for every path, as SPAs behind a catch-all route do.
    yield from _serve(
        lambda _: web.Response(status=200, text="<html><body>app</body></html>", content_type="text/html")
    )


@pytest.fixture
def other_json_api() -> Iterator[str]:
    yield from _serve(lambda _: web.json_response({"statusCode": 404, "message": "Route not found"}, status=404))


@pytest.mark.parametrize("site", ["html_404_site", "single_page_app", "other_json_api"])
async def test_not_an_octopus_server(request: pytest.FixtureRequest, client: OctopusClient, site: str) -> None:
    url = request.getfixturevalue(site)
    key = "API-" + "Q" * 28
    with pytest.raises(errors.NotAnOctopusServer) as caught:
        await client.verify(url, key)
    assert "not an Octopus Deploy server" in str(caught.value)
    assert caught.value.retry is errors.Retry.WAIT_FOR_CHANGE
    assert_key_hidden(caught.value, key)


async def test_a_service_that_is_not_octopus_never_receives_the_key(
    infisical: InfisicalServer, client: OctopusClient
) -> None:
    key = "API-" + "Z" * 28
    with pytest.raises(errors.NotAnOctopusServer) as caught:
        await client.verify(infisical.url, key)
    assert "the API key was not sent" in str(caught.value)
    assert infisical.state.requests, "the root document must have been asked for"
    for request in infisical.state.requests:
        assert "x-octopus-apikey" not in request.headers
        assert key not in repr(request)
