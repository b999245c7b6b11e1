"""Clients for the contract tier's reconciler tests: the real clients, pointed at the test servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from octoconn.infisical import InfisicalClient, UniversalAuth
from octoconn.octopus import OctopusClient
from tests.servers.infisical import InfisicalServer


@pytest.fixture
async def infisical_client(infisical: InfisicalServer) -> AsyncIterator[InfisicalClient]:
    client = InfisicalClient(
        base_url=infisical.url,
        auth=UniversalAuth(client_id=infisical.client_id, client_secret=infisical.client_secret),  # type: ignore[attr-defined]
    )
    yield client
    await client.aclose()


@pytest.fixture
async def octopus_client() -> AsyncIterator[OctopusClient]:
    client = OctopusClient(allow_http=True)
    yield client
    await client.aclose()
