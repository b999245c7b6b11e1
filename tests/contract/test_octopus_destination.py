"""OctopusClient.inspect_destination against the Octopus test double: what a secret sync's destination looks like
to the connection's key (spaces, projects, scope values, permissions), read without a single write."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from octoconn import errors
from octoconn.octopus import OctopusClient
from octoconn.remote import Named
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
