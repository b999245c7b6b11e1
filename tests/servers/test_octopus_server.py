"""Tests of the Octopus test double itself, over real sockets, against docs/remote-apis.md (section Octopus Deploy).

Later tests trust this double as the oracle for octoconn's Octopus client, so each behaviour on the reference page
has a test here (the table in tests/servers/octopus.py maps page lines to these tests).
"""

from __future__ import annotations

import asyncio
import queue
import re
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.servers.octopus import (
    INVALID_KEY_MESSAGE,
    JSON_CONTENT_TYPE,
    MISSING_KEY_MESSAGE,
    RATE_LIMIT_POLICY,
    SERVICE_ACCOUNT_ID,
    OctopusServer,
    OctopusState,
)

KEY_PATTERN = re.compile(r"^API-[A-Z0-9]{26,32}$")
REPO_ROOT = Path(__file__).resolve().parents[2]
Factory = Callable[..., OctopusServer]


class ManualClock:
    """A clock that only moves when a test says so, for expiry without waiting."""

    def __init__(self) -> None:
        self.now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def get(
    server: OctopusServer, path: str, key: str | None = None, params: dict[str, str | int] | None = None
) -> httpx.Response:
    headers = {"X-Octopus-ApiKey": key} if key is not None else {}
    return httpx.get(server.url + path, headers=headers, params=params, timeout=10)


def assert_json_error(response: httpx.Response, status: int, message: str) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == JSON_CONTENT_TYPE
    body: dict[str, object] = response.json()
    assert body["ErrorMessage"] == message
    return body


# --- Root document -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api", "/api/"])
def test_root_document_both_forms(octopus: OctopusServer, path: str) -> None:
    response = get(octopus, path)

    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_CONTENT_TYPE
    root = response.json()
    assert root["Application"] == "Octopus Deploy"
    assert root["Version"] == "2025.4.1234"
    assert root["ApiVersion"] == "3.0.0"
    assert root["IsEarlyAccessProgram"] is False
    assert root["HasLongTermSupport"] is False
    links = root["Links"]
    assert links["Self"] == "/api"
    assert links["CurrentUser"] == "/api/users/me"
    for name in ("Users", "Spaces", "SpaceHome", "Projects"):
        assert links[name].startswith("/api/")


def test_root_is_anonymous_even_with_a_bad_key(octopus: OctopusServer) -> None:
    assert get(octopus, "/api").status_code == 200
    assert get(octopus, "/api", key="API-NOTAKEYATALL0000000000000").status_code == 200


def test_installation_id_is_a_stable_uuid(octopus_factory: Factory) -> None:
    first, second = octopus_factory(), octopus_factory()

    ids = [get(first, "/api").json()["InstallationId"] for _ in range(2)]
    other = get(second, "/api").json()["InstallationId"]

    assert ids[0] == ids[1]
    assert str(uuid.UUID(ids[0])) == ids[0]
    assert other != ids[0]


def test_version_is_configurable(octopus_factory: Factory) -> None:
    server = octopus_factory(version="2024.2.9000", api_version="3.1.0")

    root = get(server, "/api").json()

    assert (root["Version"], root["ApiVersion"]) == ("2024.2.9000", "3.1.0")


def test_prefix_links_and_routes(octopus_factory: Factory) -> None:
    server = octopus_factory(prefix="/octopus")
    key = server.state.issue_key()

    assert server.url.endswith("/octopus")
    root = get(server, "/api").json()
    assert root["Links"]["Self"] == "/octopus/api"
    assert root["Links"]["CurrentUser"] == "/octopus/api/users/me"
    assert root["Links"]["Spaces"].startswith("/octopus/api/spaces")
    me = get(server, "/api/users/me", key=key).json()
    assert me["Links"]["ApiKeys"] == "/octopus/api/users/Users-1/apikeys{/id}{?skip,take}"
    spaces = get(server, "/api/spaces", key=key).json()
    assert spaces["Links"]["Self"].startswith("/octopus/api/spaces?")

    origin = server.url.removesuffix("/octopus")
    outside = httpx.get(origin + "/api/users/me", headers={"X-Octopus-ApiKey": key})
    assert_json_error(outside, 404, "The resource you requested was not found.")
    assert httpx.get(origin + "/api").status_code == 404


def test_fixture_octopus_is_plain_http_without_prefix(octopus: OctopusServer) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", octopus.url)
    assert octopus.ca_pem is None


# --- Sending the key -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["X-Octopus-ApiKey", "X-NuGet-ApiKey", "query"])
def test_key_transports(octopus: OctopusServer, transport: str) -> None:
    key = octopus.state.issue_key()
    if transport == "query":
        response = httpx.get(octopus.url + "/api/users/me", params={"apikey": key})
    else:
        response = httpx.get(octopus.url + "/api/users/me", headers={transport: key})

    assert response.status_code == 200
    assert response.json()["Id"] == "Users-1"


def test_bearer_authorization_is_not_an_api_key(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()

    response = httpx.get(octopus.url + "/api/users/me", headers={"Authorization": f"Bearer {key}"})

    assert_json_error(response, 401, MISSING_KEY_MESSAGE)


def test_empty_header_counts_as_no_key(octopus: OctopusServer) -> None:
    response = httpx.get(octopus.url + "/api/users/me", headers={"X-Octopus-ApiKey": ""})

    assert_json_error(response, 401, MISSING_KEY_MESSAGE)


def test_empty_header_falls_back_to_query(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()

    response = httpx.get(octopus.url + "/api/users/me", headers={"X-Octopus-ApiKey": ""}, params={"apikey": key})

    assert response.status_code == 200


def test_issued_keys_have_the_octopus_shape_and_varying_length() -> None:
    state = OctopusState()

    keys = [state.issue_key() for _ in range(60)]

    assert all(KEY_PATTERN.match(k) for k in keys)
    assert len(set(keys)) == len(keys)
    assert len({len(k) for k in keys}) > 1  # clients must not pin one length


def test_default_expiry_is_180_days() -> None:
    clock = ManualClock()
    state = OctopusState(clock=clock)

    record = state.key_record(state.issue_key())

    assert record is not None
    assert record.expires == clock.now + timedelta(days=180)


def test_key_without_expiry(octopus_factory: Factory) -> None:
    clock = ManualClock()
    server = octopus_factory(state=OctopusState(clock=clock))
    key = server.state.issue_key(expires=None)
    clock.advance(timedelta(days=3650))

    assert get(server, "/api/users/me", key=key).status_code == 200
    item = get(server, "/api/users/Users-1/apikeys", key=key).json()["Items"][0]
    assert item["Expires"] is None


# --- Users --------------------------------------------------------------------------------------------------------


def test_users_me_normal_user(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()

    response = get(octopus, "/api/users/me", key=key)

    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_CONTENT_TYPE
    me = response.json()
    assert me["Id"] == "Users-1"
    assert me["Username"] == "admin"
    assert me["EmailAddress"] == "admin@example.com"
    assert me["IsService"] is False
    assert me["IsActive"] is True
    assert me["IsRequestor"] is True
    assert me["CanPasswordBeEdited"] is True
    assert me["Identities"]
    datetime.fromisoformat(me["Created"])
    assert "ServiceAccountType" in me
    assert me["Links"]["Self"] == "/api/users/Users-1"
    assert me["Links"]["Permissions"] == "/api/users/Users-1/permissions"
    assert me["Links"]["ApiKeys"] == "/api/users/Users-1/apikeys{/id}{?skip,take}"


def test_users_me_service_account(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key(user_id=SERVICE_ACCOUNT_ID)

    me = get(octopus, "/api/users/me", key=key).json()

    assert me["Id"] == SERVICE_ACCOUNT_ID
    assert me["IsService"] is True
    assert "EmailAddress" not in me
    assert me["CanPasswordBeEdited"] is False
    assert me["ServiceAccountType"] == "Standard"


def test_added_user(octopus: OctopusServer) -> None:
    octopus.state.add_user("Users-42", "deployer", display_name="Deploy Bot", is_service=True)
    key = octopus.state.issue_key(user_id="Users-42")

    me = get(octopus, "/api/users/me", key=key).json()

    assert (me["Id"], me["Username"], me["DisplayName"], me["IsService"]) == (
        "Users-42",
        "deployer",
        "Deploy Bot",
        True,
    )
    assert me["Links"]["ApiKeys"] == "/api/users/Users-42/apikeys{/id}{?skip,take}"


# --- Errors for bad keys --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/users/me", "/api/users/Users-1/apikeys", "/api/spaces", "/api/spaces/all", "/api/Spaces-1/projects"]
)
def test_missing_key_body(octopus: OctopusServer, path: str) -> None:
    body = assert_json_error(get(octopus, path), 401, MISSING_KEY_MESSAGE)

    assert body == {"ErrorMessage": MISSING_KEY_MESSAGE}


def test_wrong_key_body(octopus: OctopusServer) -> None:
    octopus.state.issue_key()

    response = get(octopus, "/api/users/me", key="API-WRONGWRONGWRONGWRONGWRONG")

    assert_json_error(response, 401, INVALID_KEY_MESSAGE)
    assert INVALID_KEY_MESSAGE.startswith(
        "The API key you provided was not valid. Please double-check your API key and try again."
    )


def test_revoked_key_is_invalid(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    other = octopus.state.issue_key()
    assert get(octopus, "/api/users/me", key=key).status_code == 200

    octopus.state.revoke_key(key)

    assert_json_error(get(octopus, "/api/users/me", key=key), 401, INVALID_KEY_MESSAGE)
    listed = get(octopus, "/api/users/Users-1/apikeys", key=other).json()["Items"]
    assert [item["ApiKey"]["Hint"] for item in listed] == [other[:8]]


def test_expired_key_is_invalid(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()

    octopus.state.expire_key(key)

    assert_json_error(get(octopus, "/api/users/me", key=key), 401, INVALID_KEY_MESSAGE)


def test_expiry_follows_the_injected_clock(octopus_factory: Factory) -> None:
    clock = ManualClock()
    server = octopus_factory(state=OctopusState(clock=clock))
    key = server.state.issue_key(expires=clock.now + timedelta(hours=1))
    assert get(server, "/api/users/me", key=key).status_code == 200

    clock.advance(timedelta(hours=2))

    assert_json_error(get(server, "/api/users/me", key=key), 401, INVALID_KEY_MESSAGE)


# --- API keys list ---------------------------------------------------------------------------------------------------


def test_api_keys_paged_newest_first_with_hint(octopus_factory: Factory) -> None:
    clock = ManualClock()
    server = octopus_factory(state=OctopusState(clock=clock))
    keys: list[str] = []
    for _ in range(3):
        keys.append(server.state.issue_key(purpose=f"key {len(keys)}"))
        clock.advance(timedelta(minutes=1))
    newest_first = list(reversed(keys))

    page = get(server, "/api/users/Users-1/apikeys", key=keys[0], params={"skip": 1, "take": 1}).json()

    assert page["ItemType"] == "ApiKey"
    assert (page["TotalResults"], page["ItemsPerPage"], page["NumberOfPages"], page["LastPageNumber"]) == (3, 1, 3, 2)
    [item] = page["Items"]
    assert item["ApiKey"] == {"HasValue": True, "Hint": newest_first[1][:8], "NewValue": None}
    assert item["Purpose"] == "key 1"
    assert item["UserId"] == "Users-1"
    assert item["Id"].startswith("APIKeys-")
    assert datetime.fromisoformat(item["Expires"]) == datetime.fromisoformat(item["Created"]) + timedelta(days=180)
    assert page["Links"]["Page.Next"] == "/api/users/Users-1/apikeys?skip=2&take=1"

    response = get(server, "/api/users/Users-1/apikeys", key=keys[0])
    everything = response.json()
    assert [i["ApiKey"]["Hint"] for i in everything["Items"]] == [k[:8] for k in newest_first]
    assert everything["ItemsPerPage"] == 30
    assert "Page.Next" not in everything["Links"]
    assert all(k not in response.text for k in keys)  # only hints, never full keys


def test_api_key_hint_collision_and_missing_hint(octopus: OctopusServer) -> None:
    first = octopus.state.issue_key(value="API-ABCD" + "1" * 22)
    second = octopus.state.issue_key(value="API-ABCD" + "2" * 22)
    octopus.state.issue_key(hint=False)

    items = get(octopus, "/api/users/Users-1/apikeys", key=first).json()["Items"]

    assert [i["ApiKey"]["Hint"] for i in items] == [None, "API-ABCD", "API-ABCD"]
    assert get(octopus, "/api/users/me", key=second).status_code == 200


def test_api_keys_of_another_user_is_forbidden(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    octopus.state.issue_key(user_id=SERVICE_ACCOUNT_ID)

    response = get(octopus, f"/api/users/{SERVICE_ACCOUNT_ID}/apikeys", key=key)

    assert response.status_code == 403
    assert response.headers["content-type"] == JSON_CONTENT_TYPE
    assert response.json()["ErrorMessage"].startswith("You do not have permission to perform this action.")


# --- Spaces and projects ----------------------------------------------------------------------------------------------


def test_spaces_paging(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    for name in ("Platform", "Payments", "Data", "Edge"):
        octopus.state.add_space(name)

    page = get(octopus, "/api/spaces", key=key, params={"skip": 2, "take": 2}).json()

    assert page["ItemType"] == "Space"
    assert [s["Id"] for s in page["Items"]] == ["Spaces-3", "Spaces-4"]
    assert (page["TotalResults"], page["ItemsPerPage"], page["NumberOfPages"], page["LastPageNumber"]) == (5, 2, 3, 2)
    assert page["Links"]["Page.Next"] == "/api/spaces?skip=4&take=2"
    assert page["Links"]["Page.Last"] == "/api/spaces?skip=4&take=2"
    first = get(octopus, "/api/spaces", key=key).json()["Items"][0]
    assert (first["Id"], first["Name"], first["Slug"], first["IsDefault"]) == ("Spaces-1", "Default", "default", True)


def test_spaces_all_is_a_plain_array(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    octopus.state.add_space("Platform")

    spaces = get(octopus, "/api/spaces/all", key=key).json()

    assert isinstance(spaces, list)
    assert [(s["Id"], s["IsDefault"]) for s in spaces] == [("Spaces-1", True), ("Spaces-2", False)]


def test_projects_probe_allowed(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key(permissions={"ProjectView"})

    response = get(octopus, "/api/Spaces-1/projects", key=key, params={"take": 1})

    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_CONTENT_TYPE
    page = response.json()
    assert page["ItemType"] == "Project"
    assert page["ItemsPerPage"] == 1
    assert [p["SpaceId"] for p in page["Items"]] == ["Spaces-1"]


def test_projects_probe_forbidden_without_project_view(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key(permissions={"SpaceView"})

    response = get(octopus, "/api/Spaces-1/projects", key=key, params={"take": 1})

    body = assert_json_error(
        response,
        403,
        "You do not have permission to perform this action. Please contact your Octopus administrator. "
        "Missing permission: ProjectView",
    )
    assert isinstance(body["HelpText"], str)
    assert body["HelpText"]
    # The same key still authenticates: 403 is "valid key, missing permission", never "bad key".
    assert get(octopus, "/api/users/me", key=key).status_code == 200


def test_projects_of_unknown_space_is_404(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()

    assert_json_error(
        get(octopus, "/api/Spaces-99/projects", key=key), 404, "The resource you requested was not found."
    )


# --- Other errors -----------------------------------------------------------------------------------------------------


def test_unknown_route_is_json_404(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()

    assert_json_error(get(octopus, "/api/nothing/here", key=key), 404, "The resource you requested was not found.")
    assert_json_error(get(octopus, "/elsewhere"), 404, "The resource you requested was not found.")


def test_wrong_method_is_json_405(octopus: OctopusServer) -> None:
    response = httpx.post(octopus.url + "/api/users/me")

    assert response.status_code == 405
    assert response.headers["content-type"] == JSON_CONTENT_TYPE
    assert response.json()["ErrorMessage"]


def test_bad_paging_is_json_400(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()

    response = get(octopus, "/api/spaces", key=key, params={"take": "many"})

    assert response.status_code == 400
    assert response.headers["content-type"] == JSON_CONTENT_TYPE
    assert response.json()["Errors"] == ["The value 'many' is not valid for take."]
    assert get(octopus, "/api/spaces", key=key, params={"skip": "\u00b2"}).status_code == 400
    assert get(octopus, "/api/spaces", key=key, params={"skip": "-1"}).status_code == 400


# --- Faults -----------------------------------------------------------------------------------------------------------


def test_rate_limit_fault(octopus: OctopusServer) -> None:
    octopus.state.faults.rate_limit(retry_after=7)

    # No key at all: faults answer before auth, as a proxy or Octopus's limiter in front of auth would.
    limited = get(octopus, "/api/users/me")

    assert limited.status_code == 429
    assert limited.headers["content-type"] == JSON_CONTENT_TYPE
    assert limited.headers["Retry-After"] == "7"
    assert limited.headers["Octopus-RateLimit-Policy"] == RATE_LIMIT_POLICY == "l=200;rpm=600"
    assert re.fullmatch(r"r=\d+;t=\d+", limited.headers["Octopus-RateLimit"])
    assert limited.json()["ErrorMessage"]
    assert octopus.state.requests[-1].fault == "rate_limit"
    assert_json_error(get(octopus, "/api/users/me"), 401, MISSING_KEY_MESSAGE)  # times=1 by default


def test_starting_fault(octopus: OctopusServer) -> None:
    octopus.state.faults.starting(times=2)

    statuses = [get(octopus, "/api").status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    assert octopus.state.requests[0].fault == "starting"


@pytest.mark.parametrize("status", [500, 502])
def test_error_fault(octopus: OctopusServer, status: int) -> None:
    key = octopus.state.issue_key()
    octopus.state.faults.error(status)

    response = get(octopus, "/api/users/me", key=key)

    assert response.status_code == status
    assert response.headers["content-type"] == JSON_CONTENT_TYPE
    assert response.json()["ErrorMessage"]
    assert get(octopus, "/api/users/me", key=key).status_code == 200


def test_latency_fault(octopus: OctopusServer) -> None:
    octopus.state.faults.latency(0.3)

    started = time.monotonic()
    response = get(octopus, "/api")
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert octopus.state.requests[-1].delay == 0.3
    assert elapsed >= 0.25  # only a lower bound: a slow machine may take longer, never much less
    octopus.state.faults.clear()
    get(octopus, "/api")
    assert octopus.state.requests[-1].delay == 0.0


def test_latency_makes_client_timeouts_fire(octopus_factory: Factory) -> None:
    server = octopus_factory()
    server.state.faults.latency(60)

    with pytest.raises(httpx.ReadTimeout):
        httpx.get(server.url + "/api", timeout=0.2)

    assert server.state.requests[-1].delay == 60
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 30  # stop() does not wait out the injected latency


def test_drop_fault(octopus: OctopusServer) -> None:
    octopus.state.faults.drop()

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        get(octopus, "/api")

    assert octopus.state.requests[-1].fault == "drop"
    assert get(octopus, "/api").status_code == 200


def test_faults_are_consumed_in_order(octopus: OctopusServer) -> None:
    faults = octopus.state.faults
    faults.starting()
    faults.rate_limit()
    faults.error(500)

    statuses = [get(octopus, "/api").status_code for _ in range(4)]

    assert statuses == [503, 429, 500, 200]
    assert [r.fault for r in octopus.state.requests] == ["starting", "rate_limit", "error", None]


def test_fault_until_cleared(octopus: OctopusServer) -> None:
    octopus.state.faults.error(503, times=None)

    assert [get(octopus, "/api").status_code for _ in range(5)] == [503] * 5
    octopus.state.faults.clear()
    assert get(octopus, "/api").status_code == 200


def test_fault_limited_to_a_path(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    octopus.state.faults.rate_limit(path_suffix="/users/me")

    assert get(octopus, "/api").status_code == 200
    assert get(octopus, "/api/users/me", key=key).status_code == 429
    assert get(octopus, "/api/users/me", key=key).status_code == 200


def test_times_must_be_positive() -> None:
    with pytest.raises(ValueError, match="times"):
        OctopusState().faults.error(times=0)


# --- Request log ------------------------------------------------------------------------------------------------------


def test_requests_are_recorded(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()

    httpx.get(octopus.url + "/api/spaces", params={"skip": "0", "take": "5"}, headers={"X-Octopus-ApiKey": key})
    httpx.get(octopus.url + "/api")

    first, second = octopus.state.requests
    assert (first.method, first.path, first.query) == ("GET", "/api/spaces", {"skip": "0", "take": "5"})
    assert first.headers["x-octopus-apikey"] == key
    assert all(name == name.lower() for name in first.headers)
    assert second.path == "/api"
    assert octopus.state.requests_to("/spaces") == [first]
    assert key not in repr(first)  # keys never reach failure output


async def test_concurrent_requests_are_all_recorded(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    async with httpx.AsyncClient(base_url=octopus.url, headers={"X-Octopus-ApiKey": key}) as client:
        responses = await asyncio.gather(*(client.get("/api/users/me") for _ in range(25)))

    assert {r.status_code for r in responses} == {200}
    assert len(octopus.state.requests_to("/api/users/me")) == 25


# --- TLS and redirects ------------------------------------------------------------------------------------------------


def test_tls_with_ca(octopus_factory: Factory) -> None:
    server = octopus_factory(tls=True)
    assert server.ca_pem is not None
    key = server.state.issue_key()

    context = ssl.create_default_context(cadata=server.ca_pem)
    response = httpx.get(server.url + "/api/users/me", headers={"X-Octopus-ApiKey": key}, verify=context)

    assert server.url.startswith("https://127.0.0.1:")
    assert response.status_code == 200


def test_tls_without_ca_fails_verification(octopus_factory: Factory) -> None:
    server = octopus_factory(tls=True)

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(server.url + "/api")


def test_tls_with_another_servers_ca_fails(octopus_factory: Factory) -> None:
    server, other = octopus_factory(tls=True), octopus_factory(tls=True)
    assert other.ca_pem is not None

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(server.url + "/api", verify=ssl.create_default_context(cadata=other.ca_pem))


@pytest.mark.parametrize("status", [301, 302, 307])
def test_redirect_mode_not_followed(octopus_factory: Factory, status: int) -> None:
    server = octopus_factory(redirect_to="https://octopus.example.invalid/", redirect_status=status)

    response = httpx.get(server.url + "/api/users/me", params={"take": "1"}, follow_redirects=False)

    assert response.status_code == status
    assert response.headers["Location"] == "https://octopus.example.invalid/api/users/me?take=1"
    assert server.state.requests_to("/api/users/me")


def test_redirect_mode_followed_to_another_server(octopus_factory: Factory) -> None:
    target = octopus_factory(prefix="/octopus")
    key = target.state.issue_key()
    redirector = octopus_factory(redirect_to=target.url.removesuffix("/octopus"))

    response = httpx.get(
        redirector.url + "/octopus/api/users/me", headers={"X-Octopus-ApiKey": key}, follow_redirects=True
    )

    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [301]
    # httpx only strips Authorization on a cross-origin redirect: the API key header travels to the new host.
    assert target.state.requests_to("/api/users/me")[0].headers["x-octopus-apikey"] == key


# --- Standalone CLI -----------------------------------------------------------------------------------------------


class _Cli:
    """The double as a separate process, with its output read on a thread so every wait has a deadline."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.servers.octopus", *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line starting with {prefix!r} within {timeout}s; saw {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=30)


def test_cli_prints_url_and_key_and_answers() -> None:
    cli = _Cli("--port", "0")
    try:
        url = cli.wait_for("octopus test server listening on")
        key = cli.wait_for("api-key:")

        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert not url.endswith(":0")
        assert KEY_PATTERN.match(key)
        assert httpx.get(url + "/api", timeout=10).json()["Application"] == "Octopus Deploy"
        assert httpx.get(url + "/api/users/me", headers={"X-Octopus-ApiKey": key}, timeout=10).status_code == 200
    finally:
        assert cli.stop() == 0  # SIGTERM is a clean shutdown


def test_cli_seed_key_prefix_and_tls() -> None:
    seed = "API-SEEDSEEDSEEDSEEDSEEDSEEDSE"
    cli = _Cli("--port", "0", "--prefix", "/octopus", "--tls", "--seed-key", seed)
    try:
        url = cli.wait_for("octopus test server listening on")
        ca_file = cli.wait_for("ca-file:")

        assert re.fullmatch(r"https://127\.0\.0\.1:\d+/octopus", url)
        context = ssl.create_default_context(cafile=ca_file)
        response = httpx.get(url + "/api/users/me", headers={"X-Octopus-ApiKey": seed}, verify=context, timeout=10)
        assert response.status_code == 200
    finally:
        assert cli.stop() == 0
    while not cli.lines.empty():
        cli.seen.append(cli.lines.get_nowait())
    assert not [line for line in cli.seen if line.startswith("api-key:")]  # a seeded key is never printed


def test_cli_seed_key_is_repeatable() -> None:
    first, second = "API-FIRSTFIRSTFIRSTFIRSTFIRST", "API-SECONDSECONDSECONDSECOND"
    cli = _Cli("--port", "0", "--seed-key", first, "--seed-key", second)
    try:
        url = cli.wait_for("octopus test server listening on")

        for key in (first, second):  # both keys are valid at once, as during a rotation
            response = httpx.get(url + "/api/users/me", headers={"X-Octopus-ApiKey": key}, timeout=10)
            assert response.status_code == 200
            assert response.json()["Id"] == "Users-1"
        listed = httpx.get(url + "/api/users/Users-1/apikeys", headers={"X-Octopus-ApiKey": first}, timeout=10)
        assert [item["ApiKey"]["Hint"] for item in listed.json()["Items"]] == [second[:8], first[:8]]
    finally:
        assert cli.stop() == 0
    while not cli.lines.empty():
        cli.seen.append(cli.lines.get_nowait())
    assert not [line for line in cli.seen if line.startswith("api-key:")]  # seeded keys are never printed
