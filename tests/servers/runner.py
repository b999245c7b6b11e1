"""Run an aiohttp test server on a real 127.0.0.1 socket in a background thread.

The test servers keep their state in plain Python objects. Running each one on its own event loop in a thread
lets session-scoped fixtures, synchronous tests, pytest-asyncio tests and an operator running in another thread
or process all talk to the same server without sharing an event loop.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from typing import Self

from aiohttp import web

_SHUTDOWN_SECONDS = 2.0


class ServerThread:
    """Serve ``app_factory()`` on 127.0.0.1 until ``stop()``; ``port`` is chosen by the OS unless given."""

    def __init__(
        self,
        app_factory: Callable[[], web.Application],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._app_factory = app_factory
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port: int = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def start(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        # No graceful drain on stop: a background job of one test server (a secret sync's calls into the Octopus
        # double) may still hold a request or keep-alive connection, and aiohttp would wait up to a minute for it.
        self._runner = web.AppRunner(self._app_factory(), access_log=None, shutdown_timeout=_SHUTDOWN_SECONDS)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl_context)
        await site.start()
        # With port=0 the OS picked the port; the runner knows what it bound.
        self.port = int(self._runner.addresses[0][1])

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class ThreadedServer:
    """What both test servers share: a ``ServerThread``, the port once started, and start/stop/``with``."""

    _thread: ServerThread
    _started: bool = False

    @property
    def port(self) -> int:
        if not self._started:
            raise RuntimeError("the server is not started")
        return self._thread.port

    def start(self) -> Self:
        self._thread.start()
        self._started = True
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
