"""The operator image, run the way a cluster runs it: uid 65532, read-only root file system, no capabilities, no
privilege escalation, credentials and kubeconfig mounted read-only, /tmp a small tmpfs (the chart's emptyDir).

The image is built here with ``hack/image.sh`` (podman, no daemon; its layer cache makes this a few seconds once
``make image`` has run), so the test always runs the code under test. A machine that cannot build the image fails
this test with the reason; it is not skipped. The container shares the host network, which is how it reaches the
loopback control plane and test servers, exactly like the operator process the other cluster tests run.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.conftest import CLIENT_ID, CLIENT_SECRET, Kube, Remotes, operator_env, own_namespace
from tests.cluster.operator_process import free_port
from tests.envtest.controlplane import ClusterAccess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("OCTOCONN_TEST_IMAGE", "localhost/octoconn:dev")
UID = 65532


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(ROOT / "hack" / "podman" / "containers.conf")}


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


@pytest.fixture(scope="session")
def operator_image() -> str:
    """Build (or re-use the layers of) the image from the working tree; fail, never skip, when that is impossible."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed, so the operator image cannot be built: run hack/setup.sh")
    try:
        proc = subprocess.run(
            ["bash", str(ROOT / "hack" / "image.sh"), "build"],
            env={**podman_env(), "IMAGE": IMAGE},
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("building the operator image took more than 20 minutes")
    if proc.returncode != 0:
        pytest.fail(
            f"the operator image cannot be built (hack/image.sh exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    return IMAGE


class Container:
    """One operator container; ``stop`` removes it (and, with it, its logs), so ``logs`` is read before."""

    def __init__(self, name: str, liveness_port: int, metrics_port: int) -> None:
        self.name = name
        self.liveness_port = liveness_port
        self.metrics_port = metrics_port

    def wait_alive(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = podman("inspect", "--format", "{{.State.Status}}", self.name, check=False).stdout.strip()
            if state not in ("running", "created", "configured", ""):
                raise AssertionError(f"operator container is {state}:\n{self.logs()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.5)
        raise AssertionError(f"operator container not alive after {timeout:.0f}s:\n{self.logs()[-4000:]}")

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def proc_status(self) -> dict[str, str]:
        """/proc/<pid>/status of the operator process itself, as the kernel sees it."""
        pid = podman("inspect", "--format", "{{.State.Pid}}", self.name).stdout.strip()
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}

    def stop(self) -> None:
        podman("rm", "--force", "--time", "10", self.name, check=False)


@pytest.fixture
def containerised(
    operator_image: str,
    control_plane: ClusterAccess,
    crd: str,
    remotes: Remotes,
    kube_api: client.ApiClient,
    tmp_path: Path,
) -> Iterator[tuple[Kube, Container]]:
    with own_namespace(kube_api, "image") as namespace:
        mounts = tmp_path / "mounts"
        mounts.mkdir(mode=0o755)
        # What the chart mounts: a self-contained kubeconfig (the Pod's would be its ServiceAccount) and the Universal
        # Auth credentials as files, all readable by the image's user only through these read-only mounts.
        kubeconfig = mounts / "kubeconfig"
        kubeconfig.write_text(control_plane.kubectl("config", "view", "--raw", "--flatten", "--minify").stdout)
        (mounts / "clientId").write_text(CLIENT_ID)
        (mounts / "clientSecret").write_text(CLIENT_SECRET)
        for path in mounts.iterdir():
            path.chmod(0o644)
        env = operator_env(remotes)
        del env["OCTOCONN_CLIENT_ID"], env["OCTOCONN_CLIENT_SECRET"]
        env |= {
            "OCTOCONN_CLIENT_ID_FILE": "/etc/octoconn/universal-auth/clientId",
            "OCTOCONN_CLIENT_SECRET_FILE": "/etc/octoconn/universal-auth/clientSecret",
            "OCTOCONN_RETRY_BACKOFF_CAP_SECONDS": "2",
            "KUBECONFIG": "/etc/octoconn/kubeconfig",
        }
        container = Container(f"octoconn-test-{namespace}", free_port(), free_port())
        # Host network: a port of its own, on loopback, like the liveness endpoint.
        env |= {"OCTOCONN_METRICS_PORT": str(container.metrics_port), "OCTOCONN_METRICS_BIND_ADDRESS": "127.0.0.1"}
        args = [
            # --timeout: should pytest itself be killed, the container still stops on its own.
            "run", "--detach", "--name", container.name, "--timeout", "900",
            "--user", f"{UID}:{UID}",
            "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=16m,mode=1777",
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--network", "host",
            "--volume", f"{kubeconfig}:/etc/octoconn/kubeconfig:ro",
            "--volume", f"{mounts / 'clientId'}:/etc/octoconn/universal-auth/clientId:ro",
            "--volume", f"{mounts / 'clientSecret'}:/etc/octoconn/universal-auth/clientSecret:ro",
            *[arg for name, value in env.items() for arg in ("--env", f"{name}={value}")],
            operator_image,
            # The chart's arguments, with the test's namespace and a free liveness port (host network).
            "run", "--standalone", "--liveness", f"http://127.0.0.1:{container.liveness_port}/healthz",
            "--namespace", namespace,
        ]  # fmt: skip
        try:
            podman(*args)
            container.wait_alive()
            yield Kube(kube_api, namespace), container
        finally:
            container.stop()


def test_image_runs_hardened_and_reconciles_create_rotation_and_delete(
    containerised: tuple[Kube, Container], remotes: Remotes
) -> None:
    kube, container = containerised
    status = container.proc_status()
    assert status["Uid"].split() == [str(UID)] * 4
    assert status["Gid"].split() == [str(UID)] * 4
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    # The root file system is read-only for the operator's user too, and nothing needs it to be writable.
    touch = podman("exec", container.name, "python3", "-c", "open('/app/probe', 'w')", check=False)
    assert touch.returncode != 0
    assert "Read-only file system" in touch.stderr

    first_key = remotes.new_key()
    kube.put_secret("octopus-key", {"apiKey": first_key})
    kube.apply_odc("from-image", {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": "octopus-key"}})
    ready = kube.wait_condition("from-image", "Ready", "True", "Available", timeout=60)["status"]
    row = remotes.infisical.state.connection(ready["id"])
    assert row is not None
    assert row["_credentials"]["apiKey"] == first_key
    # The image serves the operator's metrics (prometheus-client is installed in it); they follow the status write.
    me = {"namespace": kube.namespace, "name": "from-image"}
    deadline, ready_series = time.monotonic() + 10, []
    while ready_series != [1] and time.monotonic() < deadline:
        time.sleep(0.2)
        scraped = httpx.get(f"http://127.0.0.1:{container.metrics_port}/metrics", timeout=5).text
        samples = [s for f in text_string_to_metric_families(scraped) for s in f.samples]
        ready_series = [s.value for s in samples if s.name == "octoconn_resource_ready" and s.labels == me]
    assert ready_series == [1]

    second_key = remotes.new_key()
    version = kube.put_secret("octopus-key", {"apiKey": second_key})
    kube.wait_status("from-image", lambda s: s.get("secretResourceVersion") == version, "the rotation", timeout=30)
    row = remotes.infisical.state.connection(ready["id"])
    assert row is not None
    assert row["_credentials"]["apiKey"] == second_key

    kube.delete_odc("from-image")
    kube.wait_gone("from-image", timeout=30)
    assert remotes.infisical.state.connection(ready["id"]) is None
    assert remotes.connection_named("from-image") is None

    logs = container.logs()
    assert "Read-only file system" not in logs
    leaked = [
        secret[:6] + "..."
        for secret in [*remotes.issued_secrets, *remotes.infisical.state.issued_access_tokens()]
        if secret in logs or base64.b64encode(secret.encode()).decode() in logs
    ]
    assert leaked == []
