"""Each test server of the benchmark in a process of its own, driven over a pipe.

The benchmark used to host both test doubles in its own process, under one GIL with its watch, so its figures
measured the harness as much as the operator. Here each double (``tests.servers.octopus``/``infisical``) runs in a
child process started as ``python bench/servers.py octopus|infisical``; the Infisical double checks keys against
the Octopus double over HTTP between the two processes, as Infisical does. The parent keeps what the benchmark
needs from the doubles' state (issuing keys, seeding projects and secrets, the request logs it counts) through
one JSON line per command on the child's stdin and one JSON line per answer on its stdout.

``profile_start``/``profile_stop`` run cProfile inside the server's event-loop thread (cProfile follows one thread
only), for the per-create profile of a double.
"""

from __future__ import annotations

import cProfile
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Seen:
    """One request a double answered, as much of it as the benchmark counts (no header or body values)."""

    method: str
    path: str
    fault: str | None
    user_agent: str
    credentials: bool  # the JSON body has a "credentials" object (a key pushed to Infisical)
    name: str | None  # the body's "name", when a string


class ServerProcess:
    """Parent side: start a double in a child process, send it commands, read its request log incrementally."""

    def __init__(self, kind: str, log_path: Path, *args: str) -> None:
        from tests.envtest.controlplane import child_preexec

        self.kind = kind
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self.popen = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), kind, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            preexec_fn=child_preexec(os.getpid()),  # dies with the benchmark
        )
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        first = self._read()
        self.url: str = first["url"]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> dict[str, Any]:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} test server exited (rc {self.popen.poll()}); see its log")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, **params: Any) -> Any:
        with self._lock:
            assert self.popen.stdin is not None
            self.popen.stdin.write((json.dumps({"op": op, **params}) + "\n").encode())
            self.popen.stdin.flush()
            answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"{self.kind} test server, {op}: {answer['error']}")
        return answer["ok"]

    def requests(self) -> list[Seen]:
        """Every request so far (fetched from where the last call left off)."""
        new = self.call("requests", since=len(self._seen))
        self._seen.extend(Seen(*row) for row in new)
        return self._seen

    def stop(self) -> None:
        if self.popen.poll() is None:
            assert self.popen.stdin is not None
            self.popen.stdin.close()  # the child stops its server and exits at end of input
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=15)
        self._log.close()


# --- child side ----------------------------------------------------------------------------------------------------


def _seen(request: Any) -> list[Any]:
    parsed = getattr(request, "json", None)  # the Octopus double records no bodies
    body = parsed if isinstance(parsed, dict) else {}
    name = body.get("name")
    return [
        request.method,
        request.path,
        request.fault,
        request.headers.get("user-agent", ""),
        isinstance(body.get("credentials"), dict),
        name if isinstance(name, str) else None,
    ]


class _Child:
    def __init__(self, kind: str, args: list[str]) -> None:
        self.profiler: cProfile.Profile | None = None
        if kind == "octopus":
            from tests.servers.octopus import OctopusServer

            self.server: Any = OctopusServer()
        else:
            from tests.servers.infisical import InfisicalServer
            from tests.servers.infisical_syncs import SyncTiming

            self.server = InfisicalServer(allow_internal_ips=True)
            if "--fast-syncs" in args:
                self.server.state.syncs.timing = replace(SyncTiming.fast(), debounce=0.5)
        self.ops: dict[str, Callable[..., Any]] = {
            "requests": lambda since: [_seen(r) for r in self.server.state.requests[since:]],
            "profile_start": self.profile_start,
            "profile_stop": self.profile_stop,
        }
        if kind == "octopus":
            state = self.server.state
            self.ops["issue_key"] = lambda: state.issue_key(purpose="bench")
            self.ops["add_project"] = lambda name: state.projects.add_project("Spaces-1", name)
            self.ops["variables"] = lambda project_id: len(state.projects.variables(project_id))
        else:
            state = self.server.state
            self.ops["add_identity"] = lambda client_id, client_secret: state.add_universal_identity(
                client_id=client_id, client_secret=client_secret
            )
            self.ops["add_project"] = lambda: state.add_project()
            self.ops["set_secret"] = state.secrets.set_secret
            self.ops["rate_limit"] = state.faults.rate_limit
            self.ops["syncs"] = lambda: [[s["name"], s.get("syncStatus")] for s in state.syncs.all()]

    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the server's event-loop thread (cProfile profiles the thread that enables it)."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(fn())
            done.set()

        self.server._thread.loop.call_soon_threadsafe(run)
        if not done.wait(30):
            raise TimeoutError("the server's event loop did not answer in 30 s")
        return box[0]

    def profile_start(self) -> None:
        self.profiler = cProfile.Profile()
        self._in_loop(self.profiler.enable)

    def profile_stop(self, path: str) -> None:
        assert self.profiler is not None
        self._in_loop(self.profiler.disable)
        self.profiler.dump_stats(path)

    def serve(self, stdin: IO[str], stdout: IO[str]) -> None:
        with self.server:
            stdout.write(json.dumps({"url": self.server.url}) + "\n")
            stdout.flush()
            for line in stdin:
                message = json.loads(line)
                op = message.pop("op")
                try:
                    answer = {"ok": self.ops[op](**message)}
                except Exception as exc:  # the parent raises it
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                stdout.write(json.dumps(answer) + "\n")
                stdout.flush()


def main() -> int:
    kind = sys.argv[1]
    if kind not in ("octopus", "infisical"):
        raise SystemExit("usage: servers.py octopus|infisical [--fast-syncs]")
    # The test servers' loggers write to stderr (the log file); stdout carries the answers only.
    _Child(kind, sys.argv[2:]).serve(sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
