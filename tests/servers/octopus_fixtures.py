"""Pytest fixtures that start the Octopus test double (tests/servers/octopus.py) on a real 127.0.0.1 socket."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.servers.octopus import OctopusServer


@pytest.fixture
def octopus() -> Iterator[OctopusServer]:
    """A started plain-HTTP double without a path prefix; ``octopus.state.issue_key()`` gives a working key."""
    with OctopusServer() as server:
        yield server


@pytest.fixture
def octopus_factory() -> Iterator[Callable[..., OctopusServer]]:
    """Start doubles with any ``OctopusServer`` arguments (prefix, tls, redirect_to, ...); all stop at teardown."""
    started: list[OctopusServer] = []

    def start(**kwargs: Any) -> OctopusServer:
        server = OctopusServer(**kwargs)
        started.append(server)  # before start(), so a half-started server is still stopped
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()
