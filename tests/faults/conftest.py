"""Fault-tier fixtures: a control plane of its own, both test servers, Toxiproxy in front, an operator per test.

The tier restarts the API server and etcd, so it does not share the session's control plane with the cluster tier.
The operator reaches the API server, Infisical and two Octopus instance URLs through Toxiproxy; the tests reach them
directly, so they can keep making changes while the operator's side of the network is broken. Every test starts an
operator of its own in a namespace of its own (several kill or restart it), with retries shortened from their
defaults (docs/reliability.md lists which).
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from octoconn.models import GROUP, PLURAL
from octoconn.sync_models import PLURAL as SYNC_PLURAL
from tests.cluster.conftest import CLIENT_ID, CLIENT_SECRET, CRD_FILE, SYNC_CRD_FILE, Kube
from tests.cluster.operator_process import OperatorProcess
from tests.envtest.binaries import Binaries, ensure_binaries, expected_paths
from tests.envtest.controlplane import ControlPlane
from tests.faults.promises import FIGURES
from tests.faults.rig import Rig
from tests.faults.toxiproxy import ToxiproxyServer
from tests.servers.infisical import InfisicalServer
from tests.servers.infisical_syncs import SyncTiming
from tests.servers.octopus import OctopusServer, OctopusState

# Shortened from their defaults so a fault and its recovery fit in seconds; docs/reliability.md names each one.
FAULT_SETTINGS = {
    "OCTOCONN_RESYNC_INTERVAL_SECONDS": "3600",  # every pass in a test comes from a change or a retry
    "OCTOCONN_RETRY_BACKOFF_CAP_SECONDS": "4",  # default 300
    "OCTOCONN_AUTH_RETRY_SECONDS": "5",  # default 300
    "OCTOCONN_INFISICAL_TIMEOUT_SECONDS": "4",  # default 15
    "OCTOCONN_OCTOPUS_TIMEOUT_SECONDS": "4",  # default 10
    "OCTOCONN_INFISICAL_READS_PER_MINUTE": "0",  # the double has no read limit unless a test sets one
    "OCTOCONN_LOG_LEVEL": "DEBUG",
}


@pytest.fixture(scope="session")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("faults")
    with contextlib.ExitStack() as stack:
        plane = ControlPlane(root / "envtest", binaries=_control_plane_binaries()).start()
        stack.callback(plane.stop)
        plane.kubectl("apply", "--server-side", "-f", str(CRD_FILE), "-f", str(SYNC_CRD_FILE))
        for plural in (PLURAL, SYNC_PLURAL):
            plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{plural}.{GROUP}")
        server = ToxiproxyServer(root / "toxiproxy.log")
        toxiproxy = server.start()
        stack.callback(server.stop)
        stack.callback(toxiproxy.close)
        octopus = OctopusServer(state=OctopusState()).start()
        stack.callback(octopus.stop)
        infisical = InfisicalServer(allow_internal_ips=True).start()
        stack.callback(infisical.stop)
        infisical.state.syncs.timing = SyncTiming.fast()
        infisical.state.add_universal_identity(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        kube_proxy = toxiproxy.create("kube-apiserver", int(plane.url.rsplit(":", 1)[1]))
        kubeconfig = _kubeconfig_via(plane.kubeconfig, kube_proxy.url("https"), root / "operator.kubeconfig")
        yield Rig(
            plane=plane,
            toxiproxy=toxiproxy,
            kube_proxy=kube_proxy,
            infisical_proxy=toxiproxy.create("infisical", infisical.port),
            octopus_a=toxiproxy.create("octopus-a", octopus.port),
            octopus_b=toxiproxy.create("octopus-b", octopus.port),
            octopus=octopus,
            infisical=infisical,
            operator_kubeconfig=kubeconfig,
            issued_secrets=[CLIENT_SECRET],
        )


def _control_plane_binaries() -> Binaries:
    """The tier needs no helm: with the control plane's own binaries present, nothing else is built for it."""
    paths = expected_paths()
    return paths if all(p.exists() for p in (paths.kube_apiserver, paths.kubectl, paths.etcd)) else ensure_binaries()


def _kubeconfig_via(kubeconfig: str, server: str, path: Path) -> str:
    """The admin kubeconfig with the API server's address replaced by the proxy's (the certificate names 127.0.0.1)."""
    doc = yaml.safe_load(Path(kubeconfig).read_text())
    for entry in doc["clusters"]:
        entry["cluster"]["server"] = server
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return str(path)


@pytest.fixture(autouse=True)
def _heal(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test broke is mended before the next one, even when it failed half-way."""
    yield
    if "rig" in request.fixturenames:
        rig: Rig = request.getfixturevalue("rig")
        rig.toxiproxy.reset()
        rig.infisical.state.faults.clear()
        rig.octopus.state.faults.clear()


@pytest.fixture
def kube(rig: Rig, request: pytest.FixtureRequest) -> Iterator[Kube]:
    """Admin access to a namespace of this test's own, straight to the API server (never through the proxy)."""
    api = rig.plane.kubernetes_api_client()
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())[:40].strip("-")
    name = f"f-{stem}-{secrets.token_hex(3)}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield Kube(api, name)
    finally:
        with contextlib.suppress(Exception):
            client.CoreV1Api(api).delete_namespace(name)
        api.close()


OperatorFactory = Callable[..., OperatorProcess]


@pytest.fixture
def start_operator(rig: Rig, kube: Kube, tmp_path: Path) -> Iterator[OperatorFactory]:
    """Start an operator for the test's namespace, through the proxies; every one started is stopped afterwards."""
    started: list[OperatorProcess] = []

    def start(*, log_name: str = "operator.log", **overrides: str) -> OperatorProcess:
        env = {
            "OCTOCONN_INFISICAL_URL": rig.infisical_proxy.url(),
            "OCTOCONN_CLIENT_ID": CLIENT_ID,
            "OCTOCONN_CLIENT_SECRET": CLIENT_SECRET,
            "OCTOCONN_ALLOW_HTTP": "true",
            **FAULT_SETTINGS,
            **overrides,
        }
        process = OperatorProcess(
            kubeconfig=rig.operator_kubeconfig, env=env, log_path=tmp_path / log_name, namespaces=[kube.namespace]
        )
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures docs/reliability.md records, where a CI log shows them without ``-s``."""
    if FIGURES:
        terminalreporter.section("fault figures")
        for figure in FIGURES:
            terminalreporter.write_line(figure)
