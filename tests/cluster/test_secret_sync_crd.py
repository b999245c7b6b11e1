"""The OctopusDeploySecretSync CRD's rules, proven by the real API server with ``kubectl apply --dry-run=server``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster.test_crd_validation import dry_run
from tests.envtest.controlplane import ClusterAccess

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crd")]


def sync(name: str = "web-prod", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "connectionRef": {"name": "octopus-prod"},
        "source": {"projectId": "6f0b2c1e-9a55-4c57-a3d7-2c2e8a1f1b90", "environment": "prod", "secretPath": "/"},
        "destination": {"space": "Spaces-1", "project": "Projects-1"},
    }
    base.update(spec)
    return {
        "apiVersion": "octoconn.dev/v1alpha1",
        "kind": "OctopusDeploySecretSync",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {k: v for k, v in base.items() if v is not None},
    }


VALID = {
    "minimal": sync(),
    "every field": sync(
        syncName="web-prod-2",
        description="Web",
        destination={
            "space": "Default",
            "project": "Web Shop",
            "scope": {
                "environments": ["Production"],
                "roles": ["web-server"],
                "machines": ["Machines-1"],
                "channels": ["Default"],
                "processes": ["Projects-1"],
                "actions": ["deploy step"],
            },
        },
        options={"keySchema": "{{environment}}/WEB_{{secretKey}}", "disableSecretDeletion": True, "autoSync": False},
        deletionPolicy="Delete",
        removeSecrets=True,
    ),
    "invalid metadata.name saved by syncName": sync(name="web.prod", syncName="web-prod"),
}

INVALID = {
    "keySchema without {{secretKey}}": (sync(options={"keySchema": "WEB_"}), "keySchema must contain {{secretKey}}"),
    "keySchema with a dot": (sync(options={"keySchema": "WEB.{{secretKey}}"}), "spec.options.keySchema"),
    "removeSecrets with Orphan": (
        sync(deletionPolicy="Orphan", removeSecrets=True),
        "removeSecrets: true needs deletionPolicy Delete",
    ),
    "environment not a slug": (
        sync(source={"projectId": "p", "environment": "Prod", "secretPath": "/"}),
        "spec.source.environment",
    ),
    "relative secretPath": (
        sync(source={"projectId": "p", "environment": "prod", "secretPath": "apps"}),
        "spec.source.secretPath",
    ),
    "missing destination": (sync(destination=None), "spec.destination: Required value"),
    "metadata.name not a sync name": (sync(name="web.prod"), "spec.syncName is required"),
    "too many scope values": (
        sync(destination={"space": "s", "project": "p", "scope": {"roles": ["r"] * 101}}),
        "spec.destination.scope.roles",
    ),
}


@pytest.mark.parametrize("case", list(VALID))
def test_valid_syncs_are_accepted(control_plane: ClusterAccess, case: str) -> None:
    accepted, stderr = dry_run(control_plane, VALID[case])
    assert accepted, stderr


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_syncs_are_rejected_with_the_rule_message(control_plane: ClusterAccess, case: str) -> None:
    obj, message = INVALID[case]
    accepted, stderr = dry_run(control_plane, obj)
    assert not accepted
    assert message in stderr


def test_source_project_is_immutable(control_plane: ClusterAccess, namespace: str) -> None:
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(sync(name="pinned", namespace=namespace)))
    moved = sync(
        name="pinned", namespace=namespace, source={"projectId": "other", "environment": "prod", "secretPath": "/"}
    )
    accepted, stderr = dry_run(control_plane, moved)
    assert not accepted
    assert "source.projectId is immutable" in stderr
    renamed = sync(
        name="pinned",
        namespace=namespace,
        source={"projectId": "6f0b2c1e-9a55-4c57-a3d7-2c2e8a1f1b90", "environment": "dev", "secretPath": "/x"},
    )
    accepted, stderr = dry_run(control_plane, renamed)
    assert accepted, stderr


def test_explain_columns_and_short_name(control_plane: ClusterAccess, namespace: str) -> None:
    out = " ".join(control_plane.kubectl("explain", "odss.spec.options.keySchema").stdout.split())
    assert "{{secretKey}}" in out
    out = " ".join(control_plane.kubectl("explain", "odss.status.conditions").stdout.split())
    assert "DestinationVerified" in out
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(sync(name="columns", namespace=namespace)))
    header = control_plane.kubectl("get", "odss", "-n", namespace).stdout.split("\n")[0].split()
    assert header[:5] == ["NAME", "READY", "REASON", "CONNECTION", "PROJECT"]
    listed = control_plane.kubectl("get", "octoconn", "-n", namespace, "-o", "name").stdout
    assert "octopusdeploysecretsync.octoconn.dev/columns" in listed  # the category lists both kinds
