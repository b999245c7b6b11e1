"""Every CRD rule, proven by the real API server with ``kubectl apply --dry-run=server`` (accepted and rejected)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.envtest.controlplane import ClusterAccess

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crd")]


def manifest(name: str = "octopus-prod", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"instanceUrl": "https://example.octopus.app", "apiKeySecretRef": {"name": "octopus-key"}}
    base.update(spec)
    return {
        "apiVersion": "octoconn.dev/v1alpha1",
        "kind": "OctopusDeployConnection",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {k: v for k, v in base.items() if v is not None},
    }


def dry_run(control_plane: ClusterAccess, obj: dict[str, Any]) -> tuple[bool, str]:
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)
    return result.returncode == 0, result.stderr


VALID = {
    "minimal": manifest(),
    "every field": manifest(
        connectionName="octopus-prod-2",
        description="Production",
        projectId="6f0b2c1e-9a55-4c57-a3d7-2c2e8a1f1b90",
        deletionPolicy="Orphan",
        apiKeySecretRef={"name": "octopus-key", "key": "token"},
        infisical={"credentialsSecretRef": {"name": "infisical-identity"}, "hostUrl": "https://eu.infisical.com"},
    ),
    "http allowed by the schema (the operator decides)": manifest(instanceUrl="http://octopus.internal:8080"),
    "path prefix": manifest(instanceUrl="https://host.example/octopus/"),
    "invalid metadata.name saved by connectionName": manifest(name="team.prod", connectionName="team-prod"),
}

INVALID = {
    "connectionName with uppercase": (
        manifest(connectionName="Bad_Name"),
        'spec.connectionName: Invalid value: "Bad_Name": must be lowercase letters and digits, with single hyphens '
        "between them (e.g. octopus-prod)",
    ),
    "connectionName too long": (manifest(connectionName="a" * 65), "spec.connectionName"),
    "connectionName with a double hyphen": (
        manifest(connectionName="a--b"),
        'spec.connectionName: Invalid value: "a--b": must be lowercase letters',
    ),
    "metadata.name fallback not a slug": (
        manifest(name="team.prod"),
        "spec.connectionName: Required value: spec.connectionName is required when metadata.name is not a valid "
        "Infisical connection name",
    ),
    "ftp instance URL": (manifest(instanceUrl="ftp://example.com"), "instanceUrl must start with https://"),
    "URL with credentials": (
        manifest(instanceUrl="https://user:pass@example.octopus.app"),
        "instanceUrl must not contain user:password@",
    ),
    "Secret name not DNS-1123": (
        manifest(apiKeySecretRef={"name": "Octopus_Key"}),
        'spec.apiKeySecretRef.name: Invalid value: "Octopus_Key": must be the name of a Secret',
    ),
    "Secret key with a slash": (
        manifest(apiKeySecretRef={"name": "octopus-key", "key": "api/key"}),
        'spec.apiKeySecretRef.key: Invalid value: "api/key": must be a key of a Secret',
    ),
    "identity Secret name not DNS-1123": (
        manifest(infisical={"credentialsSecretRef": {"name": "Team Identity"}}),
        'spec.infisical.credentialsSecretRef.name: Invalid value: "Team Identity": must be the name of a Secret',
    ),
    "hostUrl not a URL": (
        manifest(infisical={"credentialsSecretRef": {"name": "team"}, "hostUrl": "eu.infisical.com"}),
        'spec.infisical.hostUrl: Invalid value: "eu.infisical.com": must be an http(s) URL',
    ),
    "description too long": (manifest(description="x" * 256), "spec.description"),
    "unknown deletionPolicy": (manifest(deletionPolicy="Keep"), 'supported values: "Delete", "Orphan"'),
    "missing apiKeySecretRef": (manifest(apiKeySecretRef=None), "spec.apiKeySecretRef: Required value"),
    "hostUrl without credentials": (
        manifest(infisical={"hostUrl": "https://eu.infisical.com"}),
        "spec.infisical.hostUrl: Forbidden: infisical.hostUrl requires infisical.credentialsSecretRef",
    ),
}


@pytest.mark.parametrize("case", list(VALID))
def test_valid_manifests_are_accepted(control_plane: ClusterAccess, case: str) -> None:
    accepted, stderr = dry_run(control_plane, VALID[case])
    assert accepted, stderr


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_manifests_are_rejected_with_the_rule_message(control_plane: ClusterAccess, case: str) -> None:
    obj, message = INVALID[case]
    accepted, stderr = dry_run(control_plane, obj)
    assert not accepted
    assert message in " ".join(stderr.split())
    # Human messages: no raw regular expression, no rule of ours reported against "<nil>". The API server adds
    # its own "<nil>" note after a length, enum or required error (it skips CEL rules then); that one may stay.
    assert "should match" not in stderr
    own_note = "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid"
    assert "<nil>" not in stderr.replace(own_note, "")
    assert not stderr.split("is invalid: ", 1)[-1].startswith("<nil>")


def test_project_id_is_immutable(control_plane: ClusterAccess, namespace: str) -> None:
    first = manifest(name="immutable", namespace=namespace, projectId="project-a")
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(first))

    accepted, stderr = dry_run(control_plane, manifest(name="immutable", namespace=namespace, projectId="project-b"))
    assert not accepted
    assert "spec.projectId: Forbidden: projectId is immutable" in stderr
    accepted, stderr = dry_run(control_plane, manifest(name="immutable", namespace=namespace))
    assert not accepted
    assert "projectId is immutable" in stderr
    accepted, stderr = dry_run(control_plane, manifest(name="immutable", namespace=namespace, description="ok"))
    assert not accepted  # dropping projectId is still a change of projectId
    accepted, stderr = dry_run(
        control_plane, manifest(name="immutable", namespace=namespace, projectId="project-a", description="ok")
    )
    assert accepted, stderr


def test_project_id_cannot_be_added_later(control_plane: ClusterAccess, namespace: str) -> None:
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest(name="org-level", namespace=namespace)))
    accepted, stderr = dry_run(control_plane, manifest(name="org-level", namespace=namespace, projectId="p"))
    assert not accepted
    assert "projectId cannot be added after creation" in stderr


def test_kubectl_explain_describes_fields(control_plane: ClusterAccess) -> None:
    out = " ".join(control_plane.kubectl("explain", "odc.spec.apiKeySecretRef.key").stdout.split())
    assert 'When absent, "apiKey"' in out
    out = " ".join(control_plane.kubectl("explain", "odc.status.conditions").stdout.split())
    assert "CredentialsVerified" in out


def test_printer_columns_and_short_name(control_plane: ClusterAccess, namespace: str) -> None:
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest(name="columns", namespace=namespace)))
    header = control_plane.kubectl("get", "odc", "-n", namespace).stdout.splitlines()[0].split()
    assert header[:4] == ["NAME", "READY", "REASON", "CONNECTION"]
    assert "INSTANCE" in header
    assert "VERIFIED" in header
    assert control_plane.kubectl("get", "octoconn", "-n", namespace).returncode == 0  # category


def test_infisical_identity_is_immutable(control_plane: ClusterAccess, namespace: str) -> None:
    team = {"credentialsSecretRef": {"name": "team-identity"}, "hostUrl": "https://eu.infisical.com"}
    control_plane.kubectl(
        "apply", "-f", "-", input=json.dumps(manifest(name="team", namespace=namespace, infisical=team))
    )
    moved = {**team, "hostUrl": "https://us.infisical.com"}
    for changed in (moved, None, {"credentialsSecretRef": {"name": "other-identity"}}):
        accepted, stderr = dry_run(control_plane, manifest(name="team", namespace=namespace, infisical=changed))
        assert not accepted
        assert "infisical is immutable" in stderr
    accepted, stderr = dry_run(
        control_plane, manifest(name="team", namespace=namespace, infisical=team, description="x")
    )
    assert accepted, stderr

    control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest(name="org", namespace=namespace)))
    accepted, stderr = dry_run(control_plane, manifest(name="org", namespace=namespace, infisical=team))
    assert not accepted
    assert "infisical is immutable" in stderr
