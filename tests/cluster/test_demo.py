"""The README's first command, ``uv run python hack/demo.py``, run the way a new user runs it.

The demo starts its own control plane, test servers and operator, so these tests use none of the cluster tier's
fixtures: they read what the demo prints and check that it leaves nothing running. Every process the demo starts
inherits a marker variable from it, which is how leftovers are found wherever they were reparented to. (The
marker must not start with ``OCTOCONN_``: the operator's launcher drops those variables.)
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.envtest.binaries import expected_paths

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "hack" / "demo.py"
MARKER = "DEMO_TEST_RUN_ID"
_paths = expected_paths()
WARM = all(p.exists() for p in (_paths.etcd, _paths.kube_apiserver, _paths.kubectl))
# A cold cache means the demo first builds kube-apiserver, kubectl, etcd and helm from Go modules (~10-20 min).
RUN_TIMEOUT = 300 if WARM else 2400
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
HASH = r"[0-9a-f]{64}"

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(RUN_TIMEOUT + 60)]


class DemoRun:
    """``python hack/demo.py`` from a folder that is not the checkout, with its output read on a thread."""

    def __init__(self, cwd: Path) -> None:
        self.run_id = uuid.uuid4().hex
        env = {**os.environ, MARKER: self.run_id}
        env.pop("KUBECONFIG", None)  # the demo must not depend on (or touch) the user's cluster
        self.process = subprocess.Popen(
            [sys.executable, str(DEMO)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"the demo never printed {pattern!r}; output so far:\n{self.output}")

    def finish(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the demo did not finish within {timeout:.0f}s; output:\n{self.output}") from None
        while (line := self.lines.get(timeout=10)) is not None:
            self.seen.append(line)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.seen)

    def leftovers(self) -> list[str]:
        """Command lines of live processes that carry this run's marker (zombies and this test excluded)."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if f"{MARKER}={self.run_id}".encode() not in (proc / "environ").read_bytes().split(b"\0"):
                    continue
                if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:  # gone meanwhile, or not ours to read
                continue
        return found

    def assert_nothing_left(self) -> None:
        # Children are stopped before the demo exits; allow a moment for the kernel to reap what it kills.
        deadline = time.monotonic() + 10
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"the demo left processes behind: {left}"
        workdir = re.search(r"export KUBECONFIG=(\S+)/cluster/kubeconfig", self.output)
        assert workdir, self.output
        assert not Path(workdir.group(1)).exists(), "the demo's temporary folder was not removed"


@pytest.fixture
def demo(tmp_path: Path) -> DemoRun:
    if sys.platform != "linux":
        pytest.skip("the leftover check reads /proc")
    return DemoRun(cwd=tmp_path)


def test_demo_registers_syncs_rotates_and_deletes_then_cleans_up(demo: DemoRun) -> None:
    code = demo.finish(RUN_TIMEOUT)
    out = demo.output

    assert code == 0, out
    steps = re.findall(r"^\[\s*[\d.]+s\] (\d)/9 ", out, re.MULTILINE)
    assert steps == [str(n) for n in range(1, 10)], out
    assert "Traceback" not in out
    # Step 5: Ready with an id, the same id in `kubectl get odc` and in Infisical.
    ready = re.search(rf"octopus-prod is Ready=True after [\d.]+s; connection id ({UUID})", out)
    assert ready, out
    connection_id = ready.group(1)
    assert re.search(rf"^\s+octopus-prod\s+True\s+Available\s+{connection_id}\s", out, re.MULTILINE), out
    assert f"id:              {connection_id}" in out  # as read back from Infisical
    assert "OK: status.id and status.credentialsHash match what Infisical holds" in out
    # Step 6: the secret sync is Ready, and a secret set in Infisical afterwards appears in the Octopus project.
    sync = re.search(
        rf"web-prod is Ready=True after [\d.]+s; sync id ({UUID}), Octopus project Web -> Projects-\d+", out
    )
    assert sync, out
    assert re.search(
        r"^\s+web-prod\s+True\s+Available\s+octopus-prod\s+Projects-\d+\s+succeeded\s", out, re.MULTILINE
    ), out
    assert re.search(r"WEB_GREETING appeared in Octopus after [\d.]+s: Type Sensitive", out), out
    assert "OK: a secret set in Infisical appears in the Octopus project" in out
    assert "Value None (Octopus never returns sensitive values)" in out
    # Step 7: the hash changed after the rotation.
    before = re.search(rf"credentialsHash before: ({HASH})", out)
    after = re.search(rf"credentialsHash after:  ({HASH})", out)
    assert before, out
    assert after, out
    assert before.group(1) != after.group(1)
    assert re.search(r"status\.secretResourceVersion = \d+ after", out), out
    # Step 8: both resources are gone and Infisical answers 404 for the sync and the connection.
    assert f"web-prod is gone; Infisical: GET /api/v1/secret-syncs/octopus-deploy/{sync.group(1)} -> 404" in out
    assert "octopus-prod is gone after" in out
    assert f"/{connection_id} -> 404 " in out
    assert "Demo finished in" in out
    # Nothing secret: keys only as an 8-character hint, no Infisical client secret (48 hex) or token.
    assert not re.search(r"API-[A-Z0-9]{5,}", out), out
    assert re.search(r"key API-[A-Z0-9]{4}…", out), out
    assert not re.search(r"(?<![0-9a-f])[0-9a-f]{48}(?![0-9a-f])", out), out
    assert "eyJ" not in out
    assert "Bearer " not in out
    demo.assert_nothing_left()


def test_demo_interrupted_mid_way_stops_everything(demo: DemoRun) -> None:
    if not WARM:
        pytest.skip("interrupting while the binaries build would stop a 10-minute build half-way")
    # Interrupt once the operator, both servers and the control plane are all running.
    demo.wait_for(r"operator alive after", timeout=RUN_TIMEOUT)
    demo.process.send_signal(signal.SIGINT)  # what Ctrl-C sends

    code = demo.finish(120)

    assert code == 130, demo.output
    assert "Interrupted in step 5/9" in demo.output
    assert "9/9 Cleaning up" in demo.output
    demo.assert_nothing_left()
