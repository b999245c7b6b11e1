"""Small helpers shared by the HTTP clients (``octopus``, ``infisical``, ``kube``): reading error bodies and keeping
secrets out of the messages built from them."""

from __future__ import annotations

import importlib.util
import select
import ssl
import sys
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

if importlib.util.find_spec("sniffio") is None:
    # httpcore imports sniffio each time it sets up a lock, and a missing module is looked for again on every try: a
    # scan of sys.path per request, 15 % of the operator's CPU in the benchmark's profile. None in sys.modules makes
    # the import fail at once, and httpcore then assumes asyncio, which is what runs here.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

# A value this short is no credential worth hiding, and replacing it would shred the message.
_MIN_SCRUBBED_LENGTH = 6


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (HTML error pages, empty bodies, arrays)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def describe(exc: BaseException) -> str:
    """``"ConnectError: ..."``: the exception's type and text, for transport failures."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every secret that occurs in ``text`` with ``***``."""
    for secret in secrets:
        secret = (secret or "").strip()
        if len(secret) >= _MIN_SCRUBBED_LENGTH:
            text = text.replace(secret, "***")
    return text


class _ReadableCheck(httpcore.AsyncNetworkStream):
    """A pooled connection's stream whose "has the server closed it?" check is one ``poll``.

    Before each request httpcore asks every idle pooled connection whether its socket is readable. Through anyio that
    lookup builds the stream's whole attribute table, calling ``getpeername`` (and, for TLS, reading the cipher and
    peer certificate helpers) each time: with 20 workers keeping about 20 connections per client, the largest single
    cost of the operator's HTTP calls in the issue-19 profile. The socket is looked up once and polled directly, as
    httpcore itself does with it.
    """

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._socket: Any = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - httpcore's
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 - httpcore's
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
    ) -> httpcore.AsyncNetworkStream:
        return _ReadableCheck(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info != "is_readable":
            return self._stream.get_extra_info(info)
        if self._socket is None:
            self._socket = self._stream.get_extra_info("socket")
        sock = self._socket
        if sock is None or sock.fileno() < 0:
            return True  # closed: "readable", so the pool drops it (httpcore's own rule)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))


class _LeanBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _ReadableCheck(await self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _ReadableCheck(await self._backend.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def lean_pool(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Give the client's connection pools the cheaper idle-connection check (``_ReadableCheck``).

    httpx builds its pools without a way to pass a network backend, so it is swapped in after construction; on an
    httpx or httpcore without these attributes the client is left as it is (``uses_lean_pool`` tells)."""
    transports = [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is not None and not isinstance(backend, _LeanBackend):
            pool._network_backend = _LeanBackend(backend)  # type: ignore[union-attr]
    return client


def uses_lean_pool(client: httpx.AsyncClient) -> bool:
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    return isinstance(getattr(pool, "_network_backend", None), _LeanBackend)
