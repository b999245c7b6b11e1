"""The cheaper idle-connection check (``httputil.lean_pool``): installed in every client, and still noticing a
connection the server closed, so a dead keep-alive connection is never used for the next request."""

from __future__ import annotations

import asyncio

import httpx
import kopf
import pytest

from octoconn import httputil
from octoconn.infisical import InfisicalClient, UniversalAuth
from octoconn.kube import _http_client
from octoconn.octopus import OctopusClient

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


async def test_every_client_uses_the_lean_pool() -> None:
    # Private httpx attributes make this work: an httpx or httpcore upgrade that moves them fails here, not silently.
    octopus = OctopusClient(allow_http=True)
    infisical = InfisicalClient(base_url="http://127.0.0.1:1", auth=UniversalAuth(client_id="a", client_secret="b"))
    kube = _http_client(kopf.ConnectionInfo(server="http://127.0.0.1:1"))
    try:
        assert httputil.uses_lean_pool(octopus._http)
        assert httputil.uses_lean_pool(infisical._http)
        assert httputil.uses_lean_pool(kube)
    finally:
        await octopus.aclose()
        await infisical.aclose()
        await kube.aclose()


@pytest.mark.parametrize("lean", [True, False])
async def test_a_connection_closed_by_the_server_is_not_reused(lean: bool) -> None:
    """The server answers once, then closes the kept-alive connection: the next request must open a new one."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(RESPONSE)
        await writer.drain()
        writer.close()  # keep-alive promised, connection closed anyway

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
    if lean:
        httputil.lean_pool(client)
    try:
        for _ in range(3):
            response = await client.get("/")
            assert response.text == "ok"
            await asyncio.sleep(0.05)  # the server's close reaches this side before the next request
        assert connections == 3
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_kept_alive_connections_are_reused() -> None:
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(3):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = httputil.lean_pool(httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}"))
    try:
        for _ in range(3):
            assert (await client.get("/")).text == "ok"
        assert connections == 1
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
