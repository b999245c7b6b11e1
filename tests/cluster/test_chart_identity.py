"""The operator as it runs in a cluster: installed by the Helm chart, acting only as the chart's ServiceAccount,
logging in to Infisical with Kubernetes Auth (a TokenRequest token that Infisical checks with a real TokenReview).

This proves the chart's RBAC is enough for the whole life of a connection (watch, read the Secret, write status,
post Events, mint its own token, remove the finalizer) and for Kopf peering as the chart's replicas run it (watch the
peering objects, keep alive in the release's own), not just that `can-i` answers yes.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster.conftest import Kube, Remotes, own_namespace
from tests.cluster.operator_process import OperatorProcess
from tests.envtest.binaries import ensure_helm
from tests.envtest.controlplane import ClusterAccess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "octoconn"


def helm(home: Path, *args: str) -> str:
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    proc = subprocess.run(
        [str(ensure_helm()), *args], capture_output=True, text=True, env=env, check=False, timeout=120
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def team_namespace(kube_api: client.ApiClient) -> Iterator[str]:
    # Not "t-*": the session's operator watches those; this namespace belongs to the chart-installed operator only.
    with own_namespace(kube_api, "team") as name:
        yield name


@pytest.fixture
def chart_operator(
    control_plane: ClusterAccess,
    crd: str,
    peering_crds: None,
    remotes: Remotes,
    team_namespace: str,
    kube_api: client.ApiClient,
    tmp_path: Path,
) -> Iterator[tuple[OperatorProcess, str, str]]:
    system = f"octoconn-{secrets.token_hex(3)}"
    release = f"oc-{secrets.token_hex(2)}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=system)))
    identity = remotes.infisical.state.add_kubernetes_identity(allowed_namespaces=[system])
    values = {
        "infisical": {"url": remotes.infisical.url},
        "auth": {"method": "kubernetes", "kubernetes": {"identityId": identity}},
        "watchNamespaces": [team_namespace],
        "allowHttp": True,
    }
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    helm(
        tmp_path,
        "install",
        release,
        str(CHART),
        "--namespace",
        system,
        "--kubeconfig",
        control_plane.kubeconfig,
        "--values",
        str(values_file),
        "--skip-crds",
        "--wait=false",
    )
    accounts = core.list_namespaced_service_account(system, label_selector=f"app.kubernetes.io/instance={release}")
    (account,) = [sa.metadata.name for sa in accounts.items]
    token = core.create_namespaced_service_account_token(
        account, system, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    ).status.token
    kubeconfig = control_plane.kubeconfig_for_token(token, tmp_path / "operator.kubeconfig")
    env = {
        "OCTOCONN_INFISICAL_URL": remotes.infisical.url,
        "OCTOCONN_AUTH_METHOD": "kubernetes",
        "OCTOCONN_KUBERNETES_IDENTITY_ID": identity,
        "OCTOCONN_SERVICE_ACCOUNT": f"{system}/{account}",
        "OCTOCONN_ALLOW_HTTP": "true",
        "OCTOCONN_RETRY_BACKOFF_CAP_SECONDS": "2",
        # Peered, as the chart runs its (default two) replicas: the release's KopfPeering in the watched namespace.
        "OCTOCONN_PEERING_NAME": f"{release}-octoconn",
        "POD_ID": "chart-operator",
    }
    process = OperatorProcess(
        kubeconfig=kubeconfig,
        env=env,
        log_path=tmp_path / "operator.log",
        namespaces=[team_namespace],
        standalone=False,
    ).start()
    try:
        yield process, system, account
    finally:
        process.stop()
        helm(tmp_path, "uninstall", release, "--namespace", system, "--kubeconfig", control_plane.kubeconfig)


def test_operator_runs_with_only_the_charts_rbac_and_kubernetes_auth(
    chart_operator: tuple[OperatorProcess, str, str],
    team_namespace: str,
    kube_api: client.ApiClient,
    remotes: Remotes,
) -> None:
    operator, _system, account = chart_operator
    kube = Kube(kube_api, team_namespace)
    peering = kube.custom.get_namespaced_custom_object("kopf.dev", "v1", team_namespace, "kopfpeerings", account)
    deadline = time.monotonic() + 30
    while "chart-operator" not in (peering.get("status") or {}) and time.monotonic() < deadline:
        time.sleep(0.25)
        peering = kube.custom.get_namespaced_custom_object("kopf.dev", "v1", team_namespace, "kopfpeerings", account)
    assert "chart-operator" in (peering.get("status") or {}), "the operator never kept alive in its peering object"
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("via-chart", {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": "octopus-key"}})
    try:
        obj = kube.wait_condition("via-chart", "Ready", "True", "Available")
    except AssertionError:
        raise AssertionError(f"not Ready; operator log:\n{operator.log_tail()}") from None
    assert remotes.infisical.state.connection(obj["status"]["id"]) is not None

    logins = remotes.infisical.state.requests_to("/api/v1/auth/kubernetes-auth/login", method="POST")
    assert [r.status for r in logins if r.status == 200], "the operator never logged in with Kubernetes Auth"
    assert remotes.infisical.state.token_reviews, "Infisical never reviewed the operator's ServiceAccount token"
    kube.wait_event("via-chart", "Created")  # the chart's identity may post Events

    kube.delete_odc("via-chart")
    kube.wait_gone("via-chart")  # the chart's identity may remove its finalizer
    assert remotes.infisical.state.connection(obj["status"]["id"]) is None
    assert "Forbidden" not in operator.log_text(), operator.log_tail()
