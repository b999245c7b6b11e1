"""OctopusClient.inspect_destination against the Octopus test double: what a secret sync's destination looks like
to the connection's key (spaces, projects, scope values, permissions), read without a single write."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from octoconn import errors
from octoconn.destination import clashing_names
from octoconn.octopus import OctopusClient
from octoconn.remote import Named, OctopusVariable
from octoconn.sync import missing_permissions, resolve_scope
from tests.servers.octopus import OctopusServer


@pytest.fixture
async def client() -> AsyncIterator[OctopusClient]:
    octopus_client = OctopusClient(allow_http=True, timeout=2.0)
    yield octopus_client
    await octopus_client.aclose()


@pytest.fixture
def web(octopus: OctopusServer) -> str:
    projects = octopus.state.projects
    project_id = projects.add_project("Spaces-1", "Web Shop")
    projects.add_environment("Spaces-1", "Production")
    projects.add_channel(project_id, "Beta")
    return project_id


async def test_names_and_ids_resolve_and_nothing_is_written(
    octopus: OctopusServer, client: OctopusClient, web: str
) -> None:
    key = octopus.state.issue_key()
    version = octopus.state.projects.version(web)

    by_name = await client.inspect_destination(octopus.url, key, space="default", project="Web Shop")
    by_slug = await client.inspect_destination(octopus.url, key, space="Spaces-1", project="web-shop")
    by_id = await client.inspect_destination(octopus.url, key, space="Spaces-1", project=web)

    for found in (by_name, by_slug, by_id):
        assert found.space == Named("Spaces-1", "Default")
        assert found.project == Named(web, "Web Shop")
        assert found.user.id == "Users-1"
    scope = resolve_scope({"environments": ["production"], "channels": ["Beta"]}, by_name.scope_values)
    assert scope.environments is not None
    assert scope.environments[0].startswith("Environments-")
    assert scope.channels is not None
    assert scope.channels[0].startswith("Channels-")
    assert missing_permissions(by_name, []) == []
    assert {r.method for r in octopus.state.requests} == {"GET"}
    assert octopus.state.projects.version(web) == version


async def test_unknown_space_and_project_name_what_the_key_sees(
    octopus: OctopusServer, client: OctopusClient, web: str
) -> None:
    key = octopus.state.issue_key()
    with pytest.raises(errors.DestinationNotFound) as space:
        await client.inspect_destination(octopus.url, key, space="Nope", project="Web Shop")
    assert '"Nope"' in space.value.message
    assert "Default (Spaces-1)" in space.value.message

    with pytest.raises(errors.DestinationNotFound) as project:
        await client.inspect_destination(octopus.url, key, space="Default", project="Web Shopp")
    assert '"Web Shopp"' in project.value.message
    assert f"Web Shop ({web})" in project.value.message

    with pytest.raises(errors.DestinationNotFound):
        await client.inspect_destination(octopus.url, key, space="Default", project="Projects-999")


async def test_missing_variable_view_is_named(octopus: OctopusServer, client: OctopusClient, web: str) -> None:
    key = octopus.state.issue_key(permissions={"ProjectView", "SpaceView"})
    with pytest.raises(errors.OctopusPermissionMissing) as caught:
        await client.inspect_destination(octopus.url, key, space="Default", project="Web Shop")
    assert caught.value.reason == "MissingPermission"
    assert "VariableView" in caught.value.message
    assert key not in caught.value.message


async def test_missing_variable_edit_is_seen_in_the_permission_set(
    octopus: OctopusServer, client: OctopusClient, web: str
) -> None:
    key = octopus.state.issue_key(permissions={"ProjectView", "SpaceView", "VariableView"})
    found = await client.inspect_destination(octopus.url, key, space="Default", project="Web Shop")
    assert missing_permissions(found, []) == ["VariableEdit"]

    other = octopus.state.projects.add_project("Spaces-1", "Other")
    restricted = octopus.state.issue_key()
    octopus.state.projects.restrict(restricted, "VariableEdit", projects=[other])
    found = await client.inspect_destination(octopus.url, restricted, space="Default", project="Web Shop")
    assert missing_permissions(found, []) == ["VariableEdit"]
    found = await client.inspect_destination(octopus.url, restricted, space="Default", project="Other")
    assert missing_permissions(found, []) == []


async def test_environment_limited_edit_needs_unscoped_for_unscoped_variables(
    octopus: OctopusServer, client: OctopusClient, web: str
) -> None:
    environment = octopus.state.projects.add_environment("Spaces-1", "Test")
    key = octopus.state.issue_key(
        permissions={"ProjectView", "SpaceView", "VariableView", "VariableEdit", "EnvironmentView"}
    )
    octopus.state.projects.restrict(key, "VariableEdit", environments=[environment])
    found = await client.inspect_destination(octopus.url, key, space="Default", project="Web Shop")
    assert missing_permissions(found, [environment]) == []
    assert missing_permissions(found, []) == ["VariableEditUnscoped"]


async def test_a_revoked_key_is_an_invalid_key(octopus: OctopusServer, client: OctopusClient, web: str) -> None:
    with pytest.raises(errors.InvalidApiKey):
        await client.inspect_destination(octopus.url, "API-NOTAKEY0000000000000000", space="Default", project=web)


async def test_the_variable_set_is_listed_without_values(
    octopus: OctopusServer, client: OctopusClient, web: str
) -> None:
    projects = octopus.state.projects
    projects.set_variable(web, "DB_PASS", "plain-value")
    projects.set_variable(web, "API_TOKEN", "secret-value", sensitive=True)
    found = await client.inspect_destination(octopus.url, octopus.state.issue_key(), space="Default", project=web)
    listed = {v.name: v for v in found.variables}
    assert listed["DB_PASS"] == OctopusVariable(name="DB_PASS", type="String", is_sensitive=False)
    assert listed["API_TOKEN"] == OctopusVariable(name="API_TOKEN", type="Sensitive", is_sensitive=True)
    assert "plain-value" not in repr(found)
    # The decision the operator and `octoconn check` make from it: only the non-sensitive one clashes.
    assert clashing_names(found.variables, ["API_TOKEN", "DB_PASS"]) == ["DB_PASS"]


async def test_a_key_with_a_byte_order_mark_is_trimmed_as_infisical_trims_it(
    octopus: OctopusServer, client: OctopusClient, web: str
) -> None:
    key = octopus.state.issue_key()
    found = await client.inspect_destination(octopus.url, f"\ufeff{key}\r\n", space="Default", project=web)
    assert found.project == Named(web, "Web Shop")
    assert [r.headers.get("x-octopus-apikey") for r in octopus.state.requests] == [key] * 5  # the five reads


@pytest.mark.parametrize("inside", ["\ufeff", "\u00a0", "\u00c4"], ids=["bom", "no-break-space", "umlaut"])
async def test_a_key_that_cannot_be_sent_is_refused_before_any_request(
    octopus: OctopusServer, client: OctopusClient, web: str, inside: str
) -> None:
    """Once httpx failed to encode such a key as a header and a builtin UnicodeEncodeError left the client."""
    key = octopus.state.issue_key()
    broken = key[:8] + inside + key[8:]
    with pytest.raises(errors.MalformedApiKey) as caught:
        await client.inspect_destination(octopus.url, broken, space="Default", project=web)
    assert "copy the whole key from Octopus" in caught.value.message
    assert key[8:] not in caught.value.message
    assert octopus.state.requests == []


class _CorruptGzip(BaseHTTPRequestHandler):
    """Says its body is gzip, then sends bytes that are not: what a broken proxy in front of Octopus can do."""

    def do_GET(self) -> None:
        body = b"this is not gzip"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet: pytest shows the failures that matter
        return None


@pytest.fixture
def corrupt_octopus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CorruptGzip)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_an_answer_httpx_cannot_read_becomes_an_octoconn_error(
    corrupt_octopus: str, client: OctopusClient
) -> None:
    key = "API-CORRUPTANSWER0000000000"
    with pytest.raises(errors.OctopusUnexpectedResponse) as destination:
        await client.inspect_destination(corrupt_octopus, key, space="Default", project="Web")
    with pytest.raises(errors.OctopusUnexpectedResponse) as verification:
        await client.verify(corrupt_octopus, key)
    for caught in (destination, verification):
        assert "could not be read" in caught.value.message
        assert "proxy" in caught.value.message
        assert key not in caught.value.message


async def test_the_request_layer_itself_turns_an_unsendable_key_into_an_octoconn_error(
    octopus: OctopusServer, client: OctopusClient
) -> None:
    """The public calls refuse such a key first; the one place that sends still never lets httpx's error out, so a
    future caller that skips the check gets a message, not a UnicodeEncodeError."""
    with pytest.raises(errors.MalformedApiKey) as caught:
        await client._send(octopus.url, "/api/users/me", key="API-\ufeffABCDEF0123456789")
    assert "cannot be sent to Octopus" in caught.value.message
    assert "ABCDEF0123456789" not in caught.value.message
    assert octopus.state.requests == []
