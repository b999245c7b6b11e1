"""Smoke tests proving the test control plane is a real API server: schemas and CEL, status, RBAC, tokens, cleanup."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.envtest.binaries import KUBERNETES_VERSION
from tests.envtest.controlplane import SERVICE_ACCOUNT_ISSUER, START_TIMEOUT, ClusterAccess, ControlPlane, wait_for
from tests.envtest.fixtures import EXTERNAL_KUBECONFIG_ENV

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "envtest.octoconn.dev", "v1", "widgets"
STOP_GRACE = 30.0

WIDGET_CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {PLURAL}.{GROUP}
spec:
  group: {GROUP}
  scope: Namespaced
  names: {{plural: {PLURAL}, singular: widget, kind: Widget, listKind: WidgetList}}
  versions:
    - name: {VERSION}
      served: true
      storage: true
      subresources: {{status: {{}}}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [minReplicas, maxReplicas]
              properties:
                minReplicas: {{type: integer, minimum: 0}}
                maxReplicas: {{type: integer}}
                slug: {{type: string, maxLength: 64}}
              x-kubernetes-validations:
                - rule: self.minReplicas <= self.maxReplicas
                  message: minReplicas must not exceed maxReplicas
                - rule: "!has(self.slug) || self.slug.matches('^[a-z0-9]+(-[a-z0-9]+)*$')"
                  message: slug must be lowercase words joined by single hyphens
            status:
              type: object
              properties:
                phase: {{type: string}}
"""


def _widget(name: str, spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": name}}
    body["spec"] = spec
    if status is not None:
        body["status"] = status
    return body


@pytest.fixture(scope="module")
def widget_crd(control_plane: ClusterAccess) -> Iterator[str]:
    control_plane.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    name = f"{PLURAL}.{GROUP}"
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    api = control_plane.kubernetes_api_client()
    try:
        # Established means accepted; the REST handler can still answer 404 for a moment after that.
        objects = client.CustomObjectsApi(api)
        wait_for(lambda: objects.list_cluster_custom_object(GROUP, VERSION, PLURAL) is not None, what="CRD served")
    finally:
        api.close()
    yield name
    control_plane.kubectl("delete", "crd", name, "--wait=false", "--ignore-not-found")


def _error_message(exc: ApiException) -> str:
    return str(json.loads(exc.body or "{}").get("message", exc.body))


def test_version_is_the_built_kubernetes(control_plane: ClusterAccess, kube_api: Any) -> None:
    info = client.VersionApi(kube_api).get_code()
    assert info.major == "1"
    server = json.loads(control_plane.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert server["gitVersion"] == info.git_version
    if isinstance(control_plane, ControlPlane):
        assert info.git_version == KUBERNETES_VERSION
        assert (info.major, info.minor) == ("1", KUBERNETES_VERSION.split(".")[1])


def test_cel_rule_rejects_invalid_object_with_its_message(widget_crd: str, namespace: str, kube_api: Any) -> None:
    objects = client.CustomObjectsApi(kube_api)

    with pytest.raises(ApiException) as bad_range:
        objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _widget("inverted", {"minReplicas": 3, "maxReplicas": 1})
        )
    assert bad_range.value.status == 422
    assert "minReplicas must not exceed maxReplicas" in _error_message(bad_range.value)

    with pytest.raises(ApiException) as bad_slug:
        objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _widget("slug", {"minReplicas": 1, "maxReplicas": 1, "slug": "Not_A"})
        )
    assert bad_slug.value.status == 422
    assert "slug must be lowercase words joined by single hyphens" in _error_message(bad_slug.value)

    # The structural schema (not only CEL) is enforced too.
    with pytest.raises(ApiException) as negative:
        objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _widget("negative", {"minReplicas": -1, "maxReplicas": 1})
        )
    assert negative.value.status == 422

    created = objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _widget("fine", {"minReplicas": 1, "maxReplicas": 3, "slug": "a-b"})
    )
    assert created["spec"] == {"minReplicas": 1, "maxReplicas": 3, "slug": "a-b"}


def test_status_subresource_is_separate_from_the_main_resource(widget_crd: str, namespace: str, kube_api: Any) -> None:
    objects = client.CustomObjectsApi(kube_api)
    spec = {"minReplicas": 1, "maxReplicas": 2}

    created = objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _widget("w", spec, status={"phase": "Injected"})
    )
    assert "phase" not in (created.get("status") or {}), "status must be ignored on create"

    patched = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "w", {"status": {"phase": "Ready"}}
    )
    assert patched["status"] == {"phase": "Ready"}
    assert patched["metadata"]["generation"] == 1, "a status write must not bump the generation"

    current = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w")
    current["spec"]["maxReplicas"] = 5
    current["status"] = {"phase": "Overwritten"}
    replaced = objects.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w", current)
    assert replaced["spec"]["maxReplicas"] == 5
    assert replaced["status"] == {"phase": "Ready"}, "a main-resource write must not change status"
    assert replaced["metadata"]["generation"] == 2


def _service_account_token(kube_api: Any, namespace: str, name: str) -> str:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(expiration_seconds=600))
    response = core.create_namespaced_service_account_token(name, namespace, request)
    return str(response.status.token)


def test_rbac_denies_an_unbound_service_account_until_a_role_binding_exists(
    control_plane: ClusterAccess, namespace: str, kube_api: Any, tmp_path: Path
) -> None:
    token = _service_account_token(kube_api, namespace, "reader")
    kubeconfig = control_plane.kubeconfig_for_token(token, tmp_path / "reader.kubeconfig")
    username = f"system:serviceaccount:{namespace}:reader"
    sa_api = config.new_client_from_config(config_file=kubeconfig)
    try:
        # Authentication works: the server knows who is asking ...
        review = client.AuthenticationV1Api(sa_api).create_self_subject_review(client.V1SelfSubjectReview())
        assert review.status.user_info.username == username

        # ... and authorization says no.
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(sa_api).list_namespaced_secret(namespace)
        assert denied.value.status == 403
        assert username in _error_message(denied.value)

        rbac = client.RbacAuthorizationV1Api(kube_api)
        rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="secret-reader"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["get", "list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="secret-reader"),
                role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="secret-reader"),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
            ),
        )
        # The authorizer reads RBAC objects from an informer cache, so the grant lands a moment later.
        secrets = wait_for(
            lambda: client.CoreV1Api(sa_api).list_namespaced_secret(namespace), what="RBAC grant to take effect"
        )
        assert secrets.items == []
        # Only what the role grants: writing is still forbidden.
        with pytest.raises(ApiException) as still_denied:
            client.CoreV1Api(sa_api).create_namespaced_secret(
                namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="nope"))
            )
        assert still_denied.value.status == 403
    finally:
        sa_api.close()


def test_token_request_yields_a_token_that_token_review_accepts(
    control_plane: ClusterAccess, namespace: str, kube_api: Any
) -> None:
    token = _service_account_token(kube_api, namespace, "robot")
    auth = client.AuthenticationV1Api(kube_api)

    review = auth.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token)))
    assert review.status.authenticated is True
    assert review.status.user.username == f"system:serviceaccount:{namespace}:robot"
    assert f"system:serviceaccounts:{namespace}" in review.status.user.groups

    if isinstance(control_plane, ControlPlane):
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["iss"] == SERVICE_ACCOUNT_ISSUER
        assert review.status.audiences == [SERVICE_ACCOUNT_ISSUER]

    garbage = auth.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token="not-a-token")))
    assert not garbage.status.authenticated
    assert garbage.status.user is None or not garbage.status.user.username


# --- no process outlives its parent -----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while ``pid`` runs. A zombie counts as gone: it holds no port or file, only a table entry until reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _pids_mentioning(text: str) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and _alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def _read_lines(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relies on /proc and PR_SET_PDEATHSIG")
@pytest.mark.skipif(bool(os.environ.get(EXTERNAL_KUBECONFIG_ENV)), reason="tests the local control plane only")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_no_process_outlives_python_m_tests_envtest(tmp_path: Path, sig: signal.Signals) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.envtest", "--dir", str(state)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    output: list[str] = []
    children: set[int] = set()
    try:
        kubeconfig = None
        deadline = time.monotonic() + START_TIMEOUT + 30
        while kubeconfig is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                pytest.fail("python -m tests.envtest printed no KUBECONFIG line:\n" + "".join(output))
            try:
                line = lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            output.append(line)
            if line.startswith("KUBECONFIG="):
                kubeconfig = line.split("=", 1)[1].strip()
            elif line.startswith("pids:"):
                children = {int(part.split()[-1]) for part in line.split(":", 1)[1].split(",")}

        assert len(children) == 2, output
        assert _pids_mentioning(str(state)) - {proc.pid} == children, "etcd and kube-apiserver should be all it runs"
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        assert cfg["clusters"][0]["cluster"]["server"].startswith("https://127.0.0.1:")

        proc.send_signal(sig)
        proc.wait(timeout=STOP_GRACE)
        wait_for(
            lambda: not any(_alive(pid) for pid in children),
            timeout=10,
            what=f"etcd and kube-apiserver to die after {sig.name} of their parent",
        )
        assert not _pids_mentioning(str(state))
        if sig == signal.SIGTERM:
            assert proc.returncode == 0, "".join(output)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # Never leak into the rest of the session, even when the assertion above failed.
        for pid in _pids_mentioning(str(state)):
            os.kill(pid, signal.SIGKILL)
