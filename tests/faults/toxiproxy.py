"""Toxiproxy, the fault tier's network faults: the real server (built from Go modules) and a small client of its API.

Each remote the operator talks to (the API server, Infisical, an Octopus instance URL) gets a proxy on a loopback
port of its own; the operator is configured with the proxy's address, the tests keep talking to the real one. A
fault is a toxic on a proxy (``timeout`` with 0 swallows every byte and never closes: a black hole; ``limit_data``
cuts a connection mid-response; ``latency`` slows each answer) or a disabled proxy (connections refused).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from tests.cluster.operator_process import free_port
from tests.envtest.binaries import ensure_toxiproxy
from tests.envtest.controlplane import child_preexec


class ToxiproxyServer:
    """``toxiproxy-server`` on a free loopback port, stopped with its process."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Toxiproxy:
        binary = ensure_toxiproxy()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(
            [str(binary), "-host", "127.0.0.1", "-port", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=child_preexec(os.getpid()),
        )
        client = Toxiproxy(self.url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"toxiproxy-server exited with {self.popen.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if client.version():
                    return client
            time.sleep(0.1)
        raise TimeoutError(f"toxiproxy-server not answering after {timeout:.0f}s; see {self.log_path}")

    def stop(self) -> None:
        popen, self.popen = self.popen, None
        if popen is not None and popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class Proxy:
    """One proxy: ``listen`` is where the operator connects, ``upstream`` the real server."""

    def __init__(self, api: Toxiproxy, name: str, listen: str, upstream: str) -> None:
        self.api = api
        self.name = name
        self.listen = listen
        self.upstream = upstream

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def toxic(
        self, kind: str, *, stream: str = "downstream", toxicity: float = 1.0, name: str | None = None, **attrs: Any
    ) -> str:
        """Add a toxic; returns its name (for :meth:`remove`)."""
        toxic_name = name or f"{kind}-{stream}"
        body = {"name": toxic_name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attrs}
        self.api.request("POST", f"/proxies/{self.name}/toxics", json=body)
        return toxic_name

    def remove(self, toxic_name: str) -> None:
        self.api.request("DELETE", f"/proxies/{self.name}/toxics/{toxic_name}")

    def toxics(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api.request("GET", f"/proxies/{self.name}/toxics").json()
        return found

    def enable(self, enabled: bool = True) -> None:
        """A disabled proxy closes its connections and refuses new ones (a server that is down)."""
        self.api.request("POST", f"/proxies/{self.name}", json={"enabled": enabled})

    @contextlib.contextmanager
    def black_hole(self) -> Iterator[None]:
        """Every byte in either direction swallowed, connections neither answered nor closed, until healed."""
        names = [self.toxic("timeout", stream=stream, timeout=0) for stream in ("upstream", "downstream")]
        try:
            yield
        finally:
            for name in names:
                self.remove(name)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        self.enable(False)
        try:
            yield
        finally:
            self.enable(True)


class Toxiproxy:
    """The HTTP API of a running toxiproxy-server."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = httpx.Client(base_url=url, timeout=10)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"toxiproxy {method} {path}: {response.status_code} {response.text}")
        return response

    def version(self) -> str:
        return self.request("GET", "/version").text

    def create(self, name: str, upstream_port: int) -> Proxy:
        """A proxy on a free loopback port in front of ``127.0.0.1:upstream_port``."""
        upstream = f"127.0.0.1:{upstream_port}"
        body = {"name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": True}
        made = self.request("POST", "/proxies", json=body).json()
        return Proxy(self, name, str(made["listen"]), upstream)

    def reset(self) -> None:
        """Every proxy enabled again and every toxic removed."""
        self.request("POST", "/reset")

    def close(self) -> None:
        self._client.close()
