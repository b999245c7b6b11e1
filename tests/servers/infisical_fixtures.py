"""Pytest fixtures that start the Infisical test double (tests/servers/infisical.py) on a real 127.0.0.1 socket.

``infisical``: a started ``InfisicalServer`` with ``allow_internal_ips=True`` (the Octopus double listens on
127.0.0.1) and one Universal Auth identity in the default org. Its credentials are plain attributes of the server:
``infisical.client_id``, ``infisical.client_secret``, ``infisical.identity_id``; ``infisical.state`` is the state.

``infisical_factory(**kwargs)``: start more servers with any ``InfisicalServer`` argument (``state``,
``allow_internal_ips``, ``kube_api``) plus ``with_identity=True`` to get the same Universal Auth identity; all stop
at teardown.

The credential check waits like axios-retry between retries (0.2, 0.4, 0.8 s); a test that makes Octopus fail on
purpose can set ``infisical.state.validation_retry_base_delay = 0``.

Secret syncs run with Infisical's own delays (0-10 s before a job, 3 s debounce, 3-24 s between attempts); tests set
``infisical.state.syncs.timing = SyncTiming.fast()`` (tests/servers/infisical_syncs.py) to keep the same behaviour
at a fraction of the wait.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.servers.infisical import InfisicalServer


def _with_universal_identity(server: InfisicalServer) -> InfisicalServer:
    # Random per test: a client that caches tokens by client id cannot pass by accident across tests.
    server.client_id = f"octoconn-test-{secrets.token_hex(4)}"
    server.client_secret = secrets.token_hex(32)
    server.identity_id = server.state.add_universal_identity(
        client_id=server.client_id, client_secret=server.client_secret
    )
    return server


@pytest.fixture
def infisical() -> Iterator[InfisicalServer]:
    """A started double that allows internal IPs, with a Universal Auth identity (see the module docstring)."""
    server = _with_universal_identity(InfisicalServer(allow_internal_ips=True))
    with server:
        yield server


@pytest.fixture
def infisical_factory() -> Iterator[Callable[..., InfisicalServer]]:
    """``infisical_factory(allow_internal_ips=False, kube_api=..., state=..., with_identity=True)`` → started server."""
    started: list[InfisicalServer] = []

    def start(*, with_identity: bool = True, **kwargs: Any) -> InfisicalServer:
        server = InfisicalServer(**kwargs)
        if with_identity:
            _with_universal_identity(server)
        started.append(server)  # before start(), so a half-started server is still stopped
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()
