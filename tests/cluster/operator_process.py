"""Run the real operator (``python -m octoconn run``) as a child process against a cluster.

The cluster tier and the demo both use it: the operator runs exactly as it does in a Pod, with its settings in
``OCTOCONN_*`` variables and its logs in a file that the leak test scans.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from tests.envtest.controlplane import child_preexec

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    def __init__(
        self,
        *,
        kubeconfig: str,
        env: dict[str, str],
        log_path: Path,
        namespaces: list[str] | None = None,
        extra_args: list[str] | None = None,
        standalone: bool = True,
        entry: list[str] | None = None,
    ) -> None:
        """``entry``: what runs instead of ``-m octoconn`` (the benchmark's profiling wrapper)."""
        self.kubeconfig = kubeconfig
        self.env = env
        self.log_path = log_path
        self.namespaces = namespaces or []
        self.extra_args = extra_args or []
        self.standalone = standalone
        self.entry = entry or ["-m", "octoconn"]
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.liveness_port = free_port()
        # Every operator of a test run gets its own metrics port, on loopback only.
        self.metrics_port = int(env.get("OCTOCONN_METRICS_PORT") or free_port())

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        scope = [arg for ns in self.namespaces for arg in ("--namespace", ns)] or ["--all-namespaces"]
        argv = [
            sys.executable,
            *self.entry,
            "run",
            *(["--standalone"] if self.standalone else []),
            "--liveness",
            f"http://127.0.0.1:{self.liveness_port}/healthz",
            *scope,
            *self.extra_args,
        ]
        env = {
            key: value for key, value in os.environ.items() if not key.startswith("OCTOCONN_") and key != "KUBECONFIG"
        }
        env["OCTOCONN_METRICS_PORT"] = str(self.metrics_port)
        env["OCTOCONN_METRICS_BIND_ADDRESS"] = "127.0.0.1"
        env.update(self.env)
        env["KUBECONFIG"] = self.kubeconfig
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=child_preexec(os.getpid()),
        )
        self._wait_alive(timeout)
        return self

    def _wait_alive(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"operator exited with {self.popen.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"operator not alive after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        popen, self.popen = self.popen, None
        code = None
        if popen is not None:
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGTERM)
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(popen.pid, signal.SIGKILL)
                    popen.wait()
            code = popen.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        """SIGKILL, as when a node is lost: no cleanup, no goodbye to peers."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        self.stop()

    def scrape(self, path: str = "/metrics") -> str:
        """The operator's metrics endpoint, as Prometheus would read it."""
        response = httpx.get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5)
        response.raise_for_status()
        return response.text

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
