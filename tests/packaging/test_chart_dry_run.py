"""The chart as the API server judges it: every values combination test_chart.py renders passes the server-side dry
run, and the Deployment's pod passes Pod Security "restricted", enforced by the API server's own admission plugin.
"""

from __future__ import annotations

import copy
import secrets
from typing import Any

import pytest
import yaml

from tests.envtest.binaries import ensure_helm, monitoring_crds
from tests.packaging.test_chart import CHART, KUBE_VERSION, RELEASE, VARIANTS, Helm

pytestmark = pytest.mark.cluster

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    # enforce applies to pods only; warn makes the API server judge the Deployment's pod template too.
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/warn-version": "latest",
}


@pytest.fixture(scope="module")
def cluster_with_crds(control_plane: Any) -> Any:
    """The CRDs the rendered objects need: the chart's own (octoconn, Kopf's peering) and prometheus-operator's."""
    files = [*sorted((CHART / "crds").glob("*.yaml")), *monitoring_crds()]
    for path in files:
        control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    return control_plane


def _create_namespace(cluster: Any, prefix: str, labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(body))
    return name


def _render(helm: Helm, namespace: str, values: dict[str, Any]) -> str:
    return helm.run(
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        *helm.values_args(values),
    ).stdout


def _dry_run(cluster: Any, manifests: str, *, check: bool = False) -> Any:
    return cluster.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=octoconn-test",
        "-f",
        "-",
        input=manifests,
        check=check,
    )


@pytest.fixture
def release_namespace(cluster_with_crds: Any) -> str:
    return _create_namespace(cluster_with_crds, "chart")


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(ensure_helm(), tmp_path_factory.mktemp("helm"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_variant_passes_the_server_side_dry_run(
    helm: Helm, cluster_with_crds: Any, release_namespace: str, variant: str
) -> None:
    values = copy.deepcopy(VARIANTS[variant])
    if "watchNamespaces" in values:  # the watched namespaces must exist for their Roles to be accepted
        values["watchNamespaces"] = [_create_namespace(cluster_with_crds, "watched") for _ in values["watchNamespaces"]]
    manifests = _render(helm, release_namespace, values)
    proc = _dry_run(cluster_with_crds, manifests)
    assert proc.returncode == 0, proc.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(manifests) if d}
    dry_run = [line for line in proc.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(dry_run) == len([d for d in yaml.safe_load_all(manifests) if d]), proc.stdout
    assert "Deployment" in kinds
    if variant == "monitoring":
        assert {"ServiceMonitor", "PrometheusRule"} <= kinds


def _deployment(manifests: str) -> dict[str, Any]:
    (deployment,) = [d for d in yaml.safe_load_all(manifests) if d and d["kind"] == "Deployment"]
    return deployment


def _pod_of(deployment: dict[str, Any], namespace: str) -> dict[str, Any]:
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pod-security-check", "namespace": namespace, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


def _judge(cluster: Any, helm: Helm, mutate: Any = None) -> tuple[Any, Any]:
    """(the Deployment's dry run, its pod's dry run) in a namespace that enforces Pod Security "restricted"."""
    namespace = _create_namespace(cluster, "restricted", RESTRICTED)
    deployment = _deployment(_render(helm, namespace, {}))
    if mutate is not None:
        mutate(deployment)
    return (
        _dry_run(cluster, yaml.safe_dump(deployment)),
        _dry_run(cluster, yaml.safe_dump(_pod_of(deployment, namespace))),
    )


def test_the_pod_passes_pod_security_restricted(helm: Helm, cluster_with_crds: Any) -> None:
    deployment, pod = _judge(cluster_with_crds, helm)
    assert deployment.returncode == 0, deployment.stderr
    assert "PodSecurity" not in deployment.stderr  # no "would violate PodSecurity" warning for the template
    assert pod.returncode == 0, pod.stderr


def test_the_check_catches_a_pod_that_would_run_as_root(helm: Helm, cluster_with_crds: Any) -> None:
    """The same check fails for a pod template that allows privilege escalation and root."""

    def weaken(deployment: dict[str, Any]) -> None:
        spec = deployment["spec"]["template"]["spec"]
        spec["securityContext"].pop("runAsNonRoot", None)
        for container in spec["containers"]:
            container["securityContext"]["allowPrivilegeEscalation"] = True
            container["securityContext"].pop("runAsNonRoot", None)

    deployment, pod = _judge(cluster_with_crds, helm, weaken)
    assert 'would violate PodSecurity "restricted:latest"' in deployment.stderr
    assert "allowPrivilegeEscalation != false" in deployment.stderr
    assert pod.returncode != 0
    assert "violates PodSecurity" in pod.stderr
