"""octoconn end to end on this machine: register an Octopus API key in Infisical, sync secrets, rotate, delete.

Run from a fresh clone (``make demo`` does the same)::

    uv run python hack/demo.py [--pause] [--timeout SECONDS]

Everything is local and thrown away at the end: a real etcd + kube-apiserver (built once from Go modules and
cached), the Octopus Deploy and Infisical test doubles from tests/servers/ as separate processes, and the real
operator (``python -m octoconn run``) configured for them, exactly as in a Pod. The demo applies
examples/secret.yaml and examples/connection.yaml with the test server's URL and keys filled in, waits for
``Ready=True``, shows what Infisical holds, then applies examples/secret-sync.yaml and shows a secret set in
Infisical appearing in the Octopus project, rotates the key in the Secret, deletes both resources, and checks that
Infisical no longer has the sync or the connection. It exits non-zero (with the operator's last log lines) when a
step fails, and stops every process it started, also on Ctrl-C.

Nothing secret is printed: API keys only by their Octopus-style hint (first 8 characters), never the Infisical
client secret or access tokens.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_REEXEC_FLAG = "OCTOCONN_DEMO_REEXEC"

try:
    import httpx
    import yaml
except ImportError:  # started by a Python outside the project's environment, e.g. `uv run` from another folder
    if os.environ.get(_REEXEC_FLAG) or not any(
        (Path(d) / "uv").exists() for d in os.environ.get("PATH", "").split(os.pathsep)
    ):
        sys.exit(f"run the demo in the project's environment: cd {ROOT} && uv run python hack/demo.py")
    os.environ[_REEXEC_FLAG] = "1"
    argv = ["uv", "run", "--project", str(ROOT), "python", str(Path(__file__).resolve()), *sys.argv[1:]]
    os.execvp("uv", argv)  # noqa: S606 - replaces this process with the same script in the project's environment

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the tests.* helpers are not installed; they are imported from the checkout

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import queue  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import string  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from types import FrameType  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

from tests.cluster.operator_process import OperatorProcess  # noqa: E402
from tests.envtest.binaries import KUBERNETES_VERSION, Binaries, cache_dir, ensure_binaries, expected_paths  # noqa: E402
from tests.envtest.controlplane import ControlPlane, ControlPlaneError, KubectlError, child_preexec  # noqa: E402

CRD_FILES = [
    ROOT / "crds" / f"octoconn.dev_{plural}.yaml" for plural in ("octopusdeployconnections", "octopusdeploysecretsyncs")
]
CRD_NAME = "octopusdeployconnections.octoconn.dev"
SYNC_CRD_NAME = "octopusdeploysecretsyncs.octoconn.dev"
SECRET_FILE = ROOT / "examples" / "secret.yaml"
CONNECTION_FILE = ROOT / "examples" / "connection.yaml"
SYNC_FILE = ROOT / "examples" / "secret-sync.yaml"
NAMESPACE = "default"
FIELD_MANAGER = "octoconn-demo"
CLIENT_ID = "octoconn-demo-operator"
CONNECTIONS_API = "/api/v1/app-connections/octopus-deploy"
SYNCS_API = "/api/v1/secret-syncs/octopus-deploy"
INFISICAL_PROJECT = "5d1f6c3e-2b7a-4c0e-9f18-7a3b9e2d4c61"
STEPS = 9

T = TypeVar("T")


class DemoFailure(Exception):
    """A step did not reach its goal; the message says what was expected and what was seen instead."""


# --- output ----------------------------------------------------------------------------------------------------


def say(text: str = "") -> None:
    """Print a line now. A reader that went away (a closed pipe) must not stop the demo before it cleans up."""
    with contextlib.suppress(OSError):
        print(text, flush=True)


class Output:
    """Numbered steps with elapsed times, and indented detail lines under them."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.step_started = self.started
        self.step_number = 0
        self.step_title = ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, number: int, title: str) -> None:
        self.step_number, self.step_title = number, title
        self.step_started = time.monotonic()
        say(f"\n[{self.elapsed():6.1f}s] {number}/{STEPS} {title}")

    def info(self, text: str = "") -> None:
        for line in text.splitlines() or [""]:
            say(f"          {line}".rstrip())

    def done(self, text: str) -> None:
        self.info(f"OK: {text} ({time.monotonic() - self.step_started:.1f}s)")


def key_hint(key: str) -> str:
    """How Octopus itself shows a key it no longer reveals: the first 8 characters."""
    return key[:8] + "…"


def new_octopus_key() -> str:
    """A fresh key in Octopus's own shape (API- and 26-32 upper-case letters and digits), for the test server."""
    alphabet = string.ascii_uppercase + string.digits
    return "API-" + "".join(secrets.choice(alphabet) for _ in range(26 + secrets.randbelow(7)))


def wait_until(check: Callable[[], T | None], timeout: float, what: str, last: Callable[[], str]) -> T:
    """Poll ``check`` until it returns something; on timeout raise DemoFailure with ``last()`` as the evidence."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise DemoFailure(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last()}")
        time.sleep(0.3)


# --- child processes -------------------------------------------------------------------------------------------


class ServerProcess:
    """A test server started as ``python -m <module>``; its output is kept in a log file and scanned for lines."""

    def __init__(self, name: str, module: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._lines: queue.Queue[str] = queue.Queue()
        self._log = open(log_path, "w")  # noqa: SIM115 - closed by stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a terminal's Ctrl-C reaches the demo only; the demo stops its children
            preexec_fn=child_preexec(os.getpid()),  # and the kernel kills them if the demo itself is killed
        )
        threading.Thread(target=self._pump, name=f"{name}-output", daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._log.write(line)
            self._log.flush()
            self._lines.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float) -> str:
        """Return the rest of the first output line that starts with ``prefix``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.popen.poll() is not None:
                    break
                continue
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()
        raise DemoFailure(f"the {self.name} did not print {prefix!r} within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()


# --- Infisical, seen from outside -------------------------------------------------------------------------------


class InfisicalReader:
    """Reads the connection back from Infisical over HTTP, logged in as the operator's own machine identity."""

    def __init__(self, url: str, client_id: str, client_secret: str) -> None:
        self._client = httpx.Client(base_url=url, timeout=10)
        login = self._client.post(
            "/api/v1/auth/universal-auth/login", json={"clientId": client_id, "clientSecret": client_secret}
        )
        if login.status_code != 200:
            raise DemoFailure(f"cannot log in to Infisical as {client_id}: HTTP {login.status_code} {login.text}")
        self._client.headers["Authorization"] = f"Bearer {login.json()['accessToken']}"

    def get(self, connection_id: str) -> httpx.Response:
        return self._client.get(f"{CONNECTIONS_API}/{connection_id}")

    def get_sync(self, sync_id: str) -> httpx.Response:
        return self._client.get(f"{SYNCS_API}/{sync_id}")

    def set_secret(self, environment: str, path: str, key: str, value: str) -> None:
        """What a person does in the Infisical UI: create the folders, then save the secret."""
        parent = "/"
        for name in [part for part in path.split("/") if part]:
            folders = self._client.get(
                "/api/v1/folders", params={"workspaceId": INFISICAL_PROJECT, "environment": environment, "path": parent}
            )
            if name not in [f.get("name") for f in folders.json().get("folders", [])]:
                body = {"workspaceId": INFISICAL_PROJECT, "environment": environment, "name": name, "path": parent}
                self._expect(self._client.post("/api/v1/folders", json=body), f"create folder {parent}{name}")
            parent = f"{parent.rstrip('/')}/{name}"
        body = {"workspaceId": INFISICAL_PROJECT, "environment": environment, "secretPath": path, "secretValue": value}
        self._expect(self._client.post(f"/api/v3/secrets/raw/{key}", json=body), f"set secret {key}")

    @staticmethod
    def _expect(response: httpx.Response, what: str) -> None:
        if response.status_code != 200:
            raise DemoFailure(f"Infisical refused to {what}: HTTP {response.status_code} {response.text}")

    def close(self) -> None:
        self._client.close()


class OctopusReader:
    """Reads the Octopus project's variables as the key's owner would; Octopus never returns sensitive values."""

    def __init__(self, url: str, key: str) -> None:
        self._client = httpx.Client(base_url=url, timeout=10, headers={"X-Octopus-ApiKey": key})

    def variables(self, project_id: str) -> list[dict[str, Any]]:
        response = self._client.get(f"/api/Spaces-1/projects/{project_id}/variables")
        if response.status_code != 200:
            raise DemoFailure(f"Octopus answered HTTP {response.status_code} for the variables of {project_id}")
        variables: list[dict[str, Any]] = response.json()["Variables"]
        return variables

    def close(self) -> None:
        self._client.close()


# --- the demo --------------------------------------------------------------------------------------------------


class Demo:
    def __init__(self, timeout: float, pause: bool) -> None:
        self.timeout = timeout
        self.pause = pause
        self.out = Output()
        self.workdir = Path(tempfile.mkdtemp(prefix="octoconn-demo-"))
        self.plane: ControlPlane | None = None
        self.servers: list[ServerProcess] = []
        self.operator: OperatorProcess | None = None
        self.infisical: InfisicalReader | None = None
        self.octopus: OctopusReader | None = None
        self.name = "octopus-prod"
        self.sync_name = "web-prod"
        self.octopus_project = ""

    # -- helpers

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.plane is not None
        try:
            return self.plane.kubectl(*args, input=input, check=check, timeout=60)
        except KubectlError as exc:
            # Never echo the command's input: it may be a Secret.
            raise DemoFailure(f"kubectl {' '.join(args)} failed: {exc.stderr.strip() or exc.stdout.strip()}") from None

    def odc(self) -> dict[str, Any] | None:
        proc = self.kubectl("get", "odc", self.name, "-n", NAMESPACE, "-o", "json", "--ignore-not-found")
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def odss(self) -> dict[str, Any] | None:
        proc = self.kubectl("get", "odss", self.sync_name, "-n", NAMESPACE, "-o", "json", "--ignore-not-found")
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def describe_status(self, read: Callable[[], dict[str, Any] | None] | None = None) -> str:
        obj = (read or self.odc)()
        if obj is None:
            return "the resource does not exist"
        status = obj.get("status") or {}
        conditions = [
            f"{c.get('type')}={c.get('status')} ({c.get('reason')}: {c.get('message')})"
            for c in status.get("conditions") or []
        ]
        return "; ".join(conditions) or f"no conditions yet (status: {status or 'empty'})"

    def ready_status(
        self,
        predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
        read: Callable[[], dict[str, Any] | None] | None = None,
    ) -> dict[str, Any] | None:
        """The status once Ready=True for the current generation and ``predicate`` holds, else None."""
        obj = (read or self.odc)()
        if obj is None:
            return None
        status: dict[str, Any] = obj.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        current = status.get("observedGeneration") == obj["metadata"].get("generation")
        if ready and ready.get("status") == "True" and current and status.get("id") and predicate(status):
            return status
        return None

    def apply_secret(self, key: str) -> str:
        """Apply examples/secret.yaml with ``key`` as its apiKey; return the Secret's new resourceVersion."""
        doc = yaml.safe_load(SECRET_FILE.read_text())
        doc["stringData"]["apiKey"] = key
        # Server-side apply: a client-side `kubectl apply` would copy the key into the last-applied annotation.
        proc = self.kubectl(
            "apply",
            "--server-side",
            f"--field-manager={FIELD_MANAGER}",
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.metadata.resourceVersion}",
            "-f",
            "-",
            input=yaml.safe_dump(doc),
        )
        return proc.stdout.strip()

    def show_infisical(self, connection_id: str) -> dict[str, Any]:
        assert self.infisical is not None
        response = self.infisical.get(connection_id)
        if response.status_code != 200:
            raise DemoFailure(
                f"Infisical answered {response.status_code} for connection {connection_id}: {response.text}"
            )
        row: dict[str, Any] = response.json()["appConnection"]
        self.out.info(f"Infisical holds (GET {CONNECTIONS_API}/{connection_id}, as the operator's identity):")
        self.out.info(f"  name:            {row['name']}")
        self.out.info(f"  id:              {row['id']}")
        self.out.info(f"  version:         {row['version']}")
        self.out.info(f"  credentialsHash: {row['credentialsHash']}")
        self.out.info(f"  instanceUrl:     {row['credentials']['instanceUrl']}")
        self.out.info(f"  description:     {row.get('description')}")
        self.out.info("  apiKey:          (write-only: Infisical never returns it)")
        return row

    # -- the steps

    def run(self) -> None:
        binaries = self.step_binaries()
        self.step_control_plane(binaries)
        octopus_url, keys, infisical_url, client_secret = self.step_servers()
        self.step_apply(octopus_url, keys[0])
        status = self.step_operator(infisical_url, client_secret)
        self.octopus = OctopusReader(octopus_url, keys[0])
        sync_status = self.step_sync()
        self.step_rotate(keys[1], status)
        if self.pause:
            self.out.info("")
            self.out.info("Paused: look around with the KUBECONFIG above, then press Enter to delete the resources.")
            with contextlib.suppress(EOFError):  # no terminal (stdin closed): carry on
                input()
        self.step_delete(status["id"], sync_status["id"])

    def step_binaries(self) -> Binaries:
        self.out.step(1, "Kubernetes binaries (etcd, kube-apiserver, kubectl)")
        paths = expected_paths()
        needed = (paths.etcd, paths.kube_apiserver, paths.kubectl)
        if all(p.exists() for p in needed):
            self.out.info(f"found in {cache_dir()} (built earlier from Go modules)")
        else:
            self.out.info(f"building kube-apiserver {KUBERNETES_VERSION}, kubectl and etcd from Go modules")
            self.out.info(f"(first run only, about 7 min on two idle cores; cached in {cache_dir()}; progress below)")
            try:
                paths = ensure_binaries()
            except RuntimeError as exc:  # no Go toolchain, or a build failed: say so without a traceback
                raise DemoFailure(f"{exc}\n(`make setup` installs what the build needs)") from None
        self.out.done(f"Kubernetes {KUBERNETES_VERSION}")
        return paths

    def step_control_plane(self, binaries: Binaries) -> None:
        self.out.step(2, "Starting a local control plane (etcd + kube-apiserver; no nodes, nothing else)")
        self.plane = ControlPlane(self.workdir / "cluster", binaries=binaries)
        try:
            self.plane.start()
        except ControlPlaneError as exc:
            raise DemoFailure(str(exc)) from None
        self.out.info(f"API server at {self.plane.url}; to look around while the demo runs, in another terminal:")
        self.out.info(f"  export KUBECONFIG={self.plane.kubeconfig}")
        self.out.info(f'  export PATH="{binaries.kubectl.parent}:$PATH"   # the kubectl built above')
        self.out.info("  kubectl get odc -A -w")
        self.out.done("control plane ready")

    def step_servers(self) -> tuple[str, list[str], str, str]:
        self.out.step(3, "Starting the Octopus Deploy and Infisical test servers (tests/servers/)")
        keys = [new_octopus_key(), new_octopus_key()]  # the first for the Secret, the second for the rotation
        octopus = ServerProcess(
            "Octopus test server",
            "tests.servers.octopus",
            [
                *("--port", "0", "--seed-key", keys[0], "--seed-key", keys[1]),
                *("--seed-project", "Web", "--seed-environment", "Production"),
            ],
            self.workdir / "octopus.log",
        )
        self.servers.append(octopus)
        client_secret = secrets.token_hex(24)
        infisical = ServerProcess(
            "Infisical test server",
            "tests.servers.infisical",
            [
                *("--port", "0", "--allow-internal-ips", "--client-id", CLIENT_ID, "--client-secret", client_secret),
                *("--project-id", INFISICAL_PROJECT),
            ],
            self.workdir / "infisical.log",
        )
        self.servers.append(infisical)
        octopus_url = octopus.wait_for("octopus test server listening on", self.timeout)
        self.octopus_project = octopus.wait_for("seeded:", self.timeout).split()[0]
        infisical_url = infisical.wait_for("infisical test server listening on", self.timeout)
        self.out.info(f"Octopus Deploy:  {octopus_url}  (two valid API keys for user admin: {key_hint(keys[0])} and")
        self.out.info(f"                 {key_hint(keys[1])}, the second one for the rotation)")
        self.out.info(f"Infisical:       {infisical_url}  (machine identity {CLIENT_ID}, Universal Auth;")
        self.out.info("                 loopback instance URLs allowed, like ALLOW_INTERNAL_IP_CONNECTIONS=true)")
        self.out.info(
            f"                 Infisical project {INFISICAL_PROJECT}; Octopus project Web ({self.octopus_project})"
        )
        self.infisical = InfisicalReader(infisical_url, CLIENT_ID, client_secret)
        self.out.done("both servers answer")
        return octopus_url, keys, infisical_url, client_secret

    def step_apply(self, octopus_url: str, key: str) -> None:
        self.out.step(4, "Applying the CRD and the examples")
        self.kubectl("apply", "--server-side", *(arg for f in CRD_FILES for arg in ("-f", str(f))))
        for crd in (CRD_NAME, SYNC_CRD_NAME):
            self.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")
        self.out.info(f"CRDs {CRD_NAME} and {SYNC_CRD_NAME} established (kubectl get odc,odss works now)")
        self.apply_secret(key)
        self.out.info(
            f"Secret octopus-api-key created (key {key_hint(key)}) from {SECRET_FILE.relative_to(ROOT)}, "
            "placeholder replaced"
        )
        doc = yaml.safe_load(CONNECTION_FILE.read_text())
        self.name = doc["metadata"]["name"]
        doc["spec"]["instanceUrl"] = octopus_url
        manifest = yaml.safe_dump(doc)
        self.kubectl(
            "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-n", NAMESPACE, "-f", "-", input=manifest
        )
        self.out.info(
            f"OctopusDeployConnection {self.name} created from {CONNECTION_FILE.relative_to(ROOT)}, "
            f"instanceUrl: {octopus_url}"
        )
        self.out.done("resources applied; no operator is running yet")

    def step_operator(self, infisical_url: str, client_secret: str) -> dict[str, Any]:
        self.out.step(5, "Starting the operator (python -m octoconn run) and waiting for Ready")
        assert self.plane is not None
        env = {
            "OCTOCONN_INFISICAL_URL": infisical_url,
            "OCTOCONN_CLIENT_ID": CLIENT_ID,
            "OCTOCONN_CLIENT_SECRET": client_secret,
            "OCTOCONN_ALLOW_HTTP": "true",  # the Octopus test server speaks plain http on 127.0.0.1
            "OCTOCONN_RETRY_BACKOFF_CAP_SECONDS": "5",
            "OCTOCONN_AUTH_RETRY_SECONDS": "10",
        }
        self.operator = OperatorProcess(
            kubeconfig=self.plane.kubeconfig, env=env, log_path=self.workdir / "operator.log"
        )
        started = time.monotonic()
        try:
            self.operator.start(timeout=self.timeout)
        except (RuntimeError, TimeoutError) as exc:  # the message carries the operator's log tail
            raise DemoFailure(str(exc)) from None
        assert self.operator.popen is not None
        self.out.info(
            f"operator alive after {time.monotonic() - started:.1f}s (pid {self.operator.popen.pid}), "
            f"log: {self.operator.log_path}"
        )
        self.out.info("settings: OCTOCONN_INFISICAL_URL, OCTOCONN_CLIENT_ID/_SECRET, OCTOCONN_ALLOW_HTTP=true")
        waited = time.monotonic()
        status = wait_until(self.ready_status, self.timeout, f"{self.name} to become Ready", self.describe_status)
        self.out.info(f"{self.name} is Ready=True after {time.monotonic() - waited:.1f}s; connection id {status['id']}")
        self.out.info("")
        self.out.info(f"$ kubectl get odc -n {NAMESPACE}")
        self.out.info(self.kubectl("get", "odc", "-n", NAMESPACE).stdout.rstrip())
        self.out.info("")
        self.out.info(f"$ kubectl get odc -n {NAMESPACE} -o wide")
        self.out.info(self.kubectl("get", "odc", "-n", NAMESPACE, "-o", "wide").stdout.rstrip())
        self.out.info("")
        octopus = status.get("octopus") or {}
        self.out.info("status (written by the operator; nothing secret in it):")
        self.out.info(f"  id:                    {status['id']}")
        self.out.info(f"  version:               {status.get('version')}")
        self.out.info(f"  credentialsHash:       {status.get('credentialsHash')}")
        self.out.info(f"  connectionName:        {status.get('connectionName')}")
        self.out.info(f"  octopus user:          {octopus.get('username')} ({octopus.get('userId')})")
        self.out.info(f"  secretResourceVersion: {status.get('secretResourceVersion')}")
        self.out.info("")
        row = self.show_infisical(status["id"])
        if row["credentialsHash"] != status.get("credentialsHash"):
            raise DemoFailure(
                f"status.credentialsHash {status.get('credentialsHash')} differs from Infisical's "
                f"{row['credentialsHash']}"
            )
        self.out.done("status.id and status.credentialsHash match what Infisical holds")
        return status

    def sensitive_names(self) -> dict[str, dict[str, Any]]:
        assert self.octopus is not None
        return {v["Name"]: v for v in self.octopus.variables(self.octopus_project) if v.get("IsSensitive")}

    def step_sync(self) -> dict[str, Any]:
        self.out.step(6, "Syncing secrets from Infisical into the Octopus project (OctopusDeploySecretSync)")
        assert self.infisical is not None
        doc = yaml.safe_load(SYNC_FILE.read_text())
        self.sync_name = doc["metadata"]["name"]
        source = doc["spec"]["source"]
        source["projectId"] = INFISICAL_PROJECT
        self.infisical.set_secret(source["environment"], source["secretPath"], "DB_PASS", secrets.token_urlsafe(12))
        self.out.info(f"Infisical: secret DB_PASS saved in {source['environment']}:{source['secretPath']}")
        self.kubectl(
            "apply",
            "--server-side",
            f"--field-manager={FIELD_MANAGER}",
            "-n",
            NAMESPACE,
            "-f",
            "-",
            input=yaml.safe_dump(doc),
        )
        self.out.info(
            f"OctopusDeploySecretSync {self.sync_name} created from {SYNC_FILE.relative_to(ROOT)}, "
            f"source.projectId: {INFISICAL_PROJECT}"
        )
        waited = time.monotonic()
        status = wait_until(
            lambda: self.ready_status(read=self.odss),
            self.timeout,
            f"{self.sync_name} to become Ready (Infisical waits up to 10 s before a sync, as upstream does)",
            lambda: self.describe_status(self.odss),
        )
        destination = status.get("destination") or {}
        self.out.info(
            f"{self.sync_name} is Ready=True after {time.monotonic() - waited:.1f}s; sync id {status['id']}, "
            f"Octopus project {destination.get('projectName')} -> {destination.get('projectId')}"
        )
        self.out.info("")
        self.out.info(f"$ kubectl get odss -n {NAMESPACE}")
        self.out.info(self.kubectl("get", "odss", "-n", NAMESPACE).stdout.rstrip())
        self.out.info("")
        variables = self.sensitive_names()
        self.out.info(f"Octopus project {self.octopus_project} now has the sensitive variables {sorted(variables)}")
        if "WEB_DB_PASS" not in variables:
            raise DemoFailure(f"Octopus has no WEB_DB_PASS after the sync; sensitive variables: {sorted(variables)}")

        self.infisical.set_secret(source["environment"], source["secretPath"], "GREETING", "hello from Infisical")
        changed = time.monotonic()
        self.out.info(f"Infisical: secret GREETING saved in {source['environment']}:{source['secretPath']}")
        found = wait_until(
            lambda: self.sensitive_names().get("WEB_GREETING"),
            self.timeout,
            "WEB_GREETING in the Octopus project (Infisical's auto-sync)",
            lambda: f"sensitive variables {sorted(self.sensitive_names())}",
        )
        scope = found.get("Scope") or {}
        self.out.info(
            f"WEB_GREETING appeared in Octopus after {time.monotonic() - changed:.1f}s: Type {found.get('Type')}, "
            f"scope {scope}, Value {found.get('Value')} (Octopus never returns sensitive values)"
        )
        self.out.done("a secret set in Infisical appears in the Octopus project")
        return status

    def step_rotate(self, new_key: str, before: dict[str, Any]) -> None:
        self.out.step(7, "Rotating the key: the Secret gets the second key")
        version = self.apply_secret(new_key)
        changed = time.monotonic()
        self.out.info(f"Secret octopus-api-key updated (key {key_hint(new_key)}), resourceVersion {version}")
        status = wait_until(
            lambda: self.ready_status(lambda s: s.get("secretResourceVersion") == version),
            self.timeout,
            f"status.secretResourceVersion to become {version}",
            self.describe_status,
        )
        self.out.info(f"status.secretResourceVersion = {version} after {time.monotonic() - changed:.1f}s")
        self.out.info(f"credentialsHash before: {before.get('credentialsHash')}")
        self.out.info(f"credentialsHash after:  {status.get('credentialsHash')}")
        if status.get("credentialsHash") == before.get("credentialsHash"):
            raise DemoFailure("the credentialsHash did not change after the rotation")
        octopus = status.get("octopus") or {}
        self.out.info(f"verified with Octopus as user {octopus.get('username')} ({octopus.get('userId')})")
        self.out.info("")
        row = self.show_infisical(status["id"])
        if row["credentialsHash"] != status.get("credentialsHash") or row["id"] != before["id"]:
            raise DemoFailure("Infisical does not hold the rotated credentials under the same connection id")
        self.out.done("credentialsHash changed; same connection id, now with the new key")

    def step_delete(self, connection_id: str, sync_id: str) -> None:
        self.out.step(8, f"Deleting {self.sync_name}, then {self.name} (deletionPolicy: Delete)")
        # The sync first: Infisical refuses to delete a connection that a sync still uses.
        self.kubectl("delete", "odss", self.sync_name, "-n", NAMESPACE, "--wait=false")
        wait_until(
            lambda: True if self.odss() is None else None,
            self.timeout,
            f"{self.sync_name} to disappear",
            lambda: self.describe_status(self.odss),
        )
        assert self.infisical is not None
        response = self.infisical.get_sync(sync_id)
        self.out.info(f"{self.sync_name} is gone; Infisical: GET {SYNCS_API}/{sync_id} -> {response.status_code}")
        if response.status_code != 404:
            raise DemoFailure(f"Infisical still has sync {sync_id} (HTTP {response.status_code})")
        self.kubectl("delete", "odc", self.name, "-n", NAMESPACE, "--wait=false")
        deleted = time.monotonic()
        wait_until(
            lambda: True if self.odc() is None else None,
            self.timeout,
            f"{self.name} to disappear (the operator's finalizer)",
            lambda: (
                f"finalizers {((self.odc() or {}).get('metadata') or {}).get('finalizers')}; {self.describe_status()}"
            ),
        )
        self.out.info(f"{self.name} is gone after {time.monotonic() - deleted:.1f}s (the finalizer ran)")
        assert self.infisical is not None
        response = self.infisical.get(connection_id)
        try:
            message = response.json().get("message")
        except ValueError:
            message = response.text
        self.out.info(f"Infisical: GET {CONNECTIONS_API}/{connection_id} -> {response.status_code} {message}")
        if response.status_code != 404:
            raise DemoFailure(f"Infisical still has connection {connection_id} (HTTP {response.status_code})")
        self.out.done("the sync and the connection were deleted in Infisical")

    def cleanup(self) -> None:
        """Stop everything this demo started, newest first; safe to call at any point, also twice."""
        stopped: list[str] = []
        if self.infisical is not None:
            self.infisical.close()
            self.infisical = None
        if self.octopus is not None:
            self.octopus.close()
            self.octopus = None
        if self.operator is not None:
            with contextlib.suppress(Exception):
                self.operator.stop()
            self.operator = None
            stopped.append("operator")
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        if self.servers:
            stopped.append("test servers")
        self.servers = []
        if self.plane is not None:
            with contextlib.suppress(Exception):
                self.plane.stop()
            self.plane = None
            stopped.append("kube-apiserver and etcd")
        shutil.rmtree(self.workdir, ignore_errors=True)
        stopped.append(f"removed {self.workdir}")
        self.out.info("stopped " + ", ".join(stopped))

    def operator_log_tail(self) -> str:
        return self.operator.log_tail(40) if self.operator is not None else ""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM/SIGHUP clean up like Ctrl-C: the finally block stops every child


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/demo.py", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each wait may take (default 60)")
    parser.add_argument("--pause", action="store_true", help="wait for Enter before deleting, to look around")
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # Ctrl-C raises KeyboardInterrupt even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)

    demo = Demo(timeout=args.timeout, pause=args.pause)
    say("octoconn demo: an Octopus Deploy API key in a Kubernetes Secret becomes an Infisical App Connection,")
    say("a secret sync writes Infisical secrets into an Octopus project, then the key is rotated and both resources")
    say("deleted. Everything runs locally and is removed at the end.")
    code = 1
    failure: str | None = None
    try:
        demo.run()
        code = 0
    except KeyboardInterrupt:
        code = 130
        say(f"\nInterrupted in step {demo.out.step_number}/{STEPS} ({demo.out.step_title}).")
    except DemoFailure as exc:
        failure = str(exc)
    except Exception:  # a bug or an environment problem: the traceback is the useful part
        failure = traceback.format_exc().rstrip()
    finally:
        if failure is not None:
            say(f"\nFAILED in step {demo.out.step_number}/{STEPS} ({demo.out.step_title}): {failure}")
            tail = demo.operator_log_tail()
            if tail:
                say("\nlast lines of the operator log:")
                say(tail)
        # A second Ctrl-C (or SIGTERM) must not cut the cleanup short and leave processes behind. Only SIGKILL can,
        # and then the kernel kills the children (PR_SET_PDEATHSIG).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        demo.out.step(9, "Cleaning up")
        demo.cleanup()
        demo.out.done("nothing left running")
    if code == 0:
        say(f"\nDemo finished in {demo.out.elapsed():.1f}s. Next: docs/install.md installs octoconn in a real cluster.")
    return code


if __name__ == "__main__":
    sys.exit(main())
