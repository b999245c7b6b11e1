"""Packaging: the Helm chart lints, renders what the operator needs and nothing more, and its RBAC holds up in a real
API server when the operator's own ServiceAccount is put to the test.

The render tests run ``helm template`` (no cluster needed); the ``cluster`` tests ``helm install`` the chart into the
session's kube-apiserver. No kubelet runs there, so the operator pod never starts: those tests are about what the
chart grants, acting as the chart's ServiceAccount through a TokenRequest token.
"""

from __future__ import annotations

import base64
import filecmp
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from octoconn.settings import Settings
from tests.envtest.binaries import ensure_helm, expected_paths

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "octoconn"
DEPLOY = ROOT / "deploy"
RELEASE = "octoconn"
RELEASE_NAMESPACE = "octoconn-system"
SECRET_WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}
READ_VERBS = {"get", "list", "watch"}
# The chart's minimum, pinned so renders do not depend on which Kubernetes version a helm build assumes (ours is
# stamped with helm's client-go version, as official builds are). Nothing rendered depends on it.
KUBE_VERSION = "1.29.0"


# --- helm plumbing -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    path = expected_paths().helm
    if not path.exists():
        # Same builder as the control plane: a warm cache returns at once, a cold one builds from Go modules.
        path = ensure_helm()
    return Helm(path, tmp_path_factory.mktemp("helm"))


class Helm:
    """The helm binary with its config/cache/data homes in a temporary folder, so tests never touch ~/.config."""

    def __init__(self, path: Path, home: Path) -> None:
        self.path = path
        self.home = home
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self._values_files = 0

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.path), *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        if check and proc.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def values_file(self, values: dict[str, Any]) -> str:
        # A file rather than --set: lists and nested maps go through exactly as a user's values.yaml would.
        self._values_files += 1
        path = self.home / f"values-{self._values_files}.yaml"
        path.write_text(yaml.safe_dump(values))
        return str(path)

    def values_args(self, values: dict[str, Any] | None) -> list[str]:
        return ["--values", self.values_file(values)] if values else []

    def template(self, values: dict[str, Any] | None = None, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            RELEASE_NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            *self.values_args(values),
            check=check,
        )

    def render(self, values: dict[str, Any] | None = None) -> Manifests:
        return Manifests([d for d in yaml.safe_load_all(self.template(values).stdout) if d])


class Manifests:
    """Rendered objects, looked up by kind (and name/namespace)."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        found = [
            d
            for d in self.of_kind(kind)
            if (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)
        ]
        assert len(found) == 1, f"expected one {kind} {name or ''} in {namespace or 'any namespace'}, got {found}"
        return found[0]

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.pod_spec["containers"]
        return container

    @property
    def env(self) -> dict[str, str]:
        return {e["name"]: e.get("value") for e in self.container["env"]}

    def volume(self, name: str) -> dict[str, Any] | None:
        return next((v for v in self.pod_spec.get("volumes", []) if v["name"] == name), None)

    def rules(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(role object, rule) for every rule of every Role and ClusterRole."""
        return [(r, rule) for r in self.of_kind("Role") + self.of_kind("ClusterRole") for rule in r["rules"]]


# Values that switch on every optional branch of the templates, so lint and the RBAC checks see all of them.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "universal-inline": {"auth": {"universal": {"clientId": "id-1", "clientSecret": "secret-1"}}},
    "universal-existing": {"auth": {"universal": {"existingSecret": "my-creds"}}},
    "kubernetes": {"auth": {"method": "kubernetes", "kubernetes": {"identityId": "ident", "authDelegator": True}}},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"], "octopus": {"caBundle": {"configMapName": "ca"}}},
    "monitoring": {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}},
}


# --- lint and schema -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_strict_passes(helm: Helm, variant: str) -> None:
    helm.run("lint", "--strict", str(CHART), *helm.values_args(VARIANTS[variant]))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"auth": {"method": "foo"}}, ["/auth/method", "universal", "kubernetes"]),
        ({"maxWorkers": 0}, ["/maxWorkers"]),
        ({"infisicalWritesPerMinute": "lots"}, ["/infisicalWritesPerMinute"]),
        ({"watchNamespaces": ["Team_A"]}, ["/watchNamespaces/0"]),
        ({"logFormat": "xml"}, ["/logFormat"]),
        ({"allowHttp": "yes"}, ["/allowHttp"]),
        ({"infisical": {"url": "app.infisical.com"}}, ["/infisical/url"]),
        # A typo must not deploy quietly with the default it meant to override.
        ({"watchNamespace": ["team-a"]}, ["watchNamespace"]),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_schema_rejects_bad_values(helm: Helm, values: dict[str, Any], expected: list[str]) -> None:
    for command in (
        ["lint", "--strict", str(CHART)],
        ["template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION],
    ):
        proc = helm.run(*command, *helm.values_args(values), check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output
        assert "schema" in output, output
        for fragment in expected:
            assert fragment in output, output


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"auth": {"method": "kubernetes"}}, "auth.method=kubernetes needs auth.kubernetes.identityId"),
        (
            {"auth": {"universal": {"existingSecret": "creds", "clientId": "a", "clientSecret": "b"}}},
            "either auth.universal.existingSecret or auth.universal.clientId/clientSecret",
        ),
        ({"auth": {"universal": {"clientId": "a"}}}, "must be set together"),
    ],
)
def test_contradictory_values_fail_with_a_message(helm: Helm, values: dict[str, Any], expected: str) -> None:
    proc = helm.template(values, check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr


# --- rendered Deployment -------------------------------------------------------------------------------------


def test_deployment_runs_two_peered_replicas(helm: Helm) -> None:
    m = helm.render()
    deployment = m.one("Deployment", "octoconn", RELEASE_NAMESPACE)
    # Kopf peering lets one replica reconcile while the other stands by, so a rollout may overlap them.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1},
    }
    assert m.container["command"] == ["octoconn"]
    assert m.container["args"] == ["run", "--liveness", "http://0.0.0.0:8080/healthz", "--all-namespaces"]
    assert m.env["OCTOCONN_PEERING_NAME"] == "octoconn"
    assert m.env["OCTOCONN_PEERING_LIFETIME_SECONDS"] == "20"
    assert "OCTOCONN_PEERING_PRIORITY" not in m.env  # each pod draws its own
    pod_id = next(e for e in m.container["env"] if e["name"] == "POD_ID")
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert m.container["image"] == f"ghcr.io/octoconn/octoconn:{_chart()['appVersion']}"
    probe = m.container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in m.container["ports"]
    assert probe["port"] == "health"
    assert m.pod_spec["serviceAccountName"] == "octoconn"
    assert m.pod_spec["automountServiceAccountToken"] is True
    assert m.container["resources"]["requests"]
    assert m.container["resources"]["limits"]


def test_one_replica_runs_standalone_without_peering(helm: Helm) -> None:
    m = helm.render({"replicaCount": 1})
    deployment = m.one("Deployment", "octoconn", RELEASE_NAMESPACE)
    # Peering is off, so a second pod would reconcile everything twice; Recreate keeps it at one even on upgrade.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert m.container["args"] == [
        "run",
        "--standalone",
        "--liveness",
        "http://0.0.0.0:8080/healthz",
        "--all-namespaces",
    ]
    assert not {"OCTOCONN_PEERING_NAME", "OCTOCONN_PEERING_LIFETIME_SECONDS", "POD_ID"} & set(m.env)
    assert not [d for d in m.docs if d["kind"] in ("KopfPeering", "ClusterKopfPeering", "PodDisruptionBudget")]
    assert not [rule for _, rule in m.rules() if "kopf.dev" in rule["apiGroups"]]
    assert "affinity" not in m.pod_spec
    assert "topologySpreadConstraints" not in m.pod_spec


def test_env_maps_from_values(helm: Helm) -> None:
    m = helm.render(
        {
            "infisical": {"url": "https://infisical.example.com"},
            "watchNamespaces": ["team-a", "team-b"],
            "resyncIntervalSeconds": 90,
            "maxWorkers": 7,
            "infisicalWritesPerMinute": 30,
            "infisicalReadsPerMinute": 0,
            "allowHttp": True,
            "octopus": {"insecureSkipVerify": True, "caBundle": {"configMapName": "octopus-ca", "key": "bundle.pem"}},
            "logFormat": "json",
            "logLevel": "DEBUG",
            "extraEnv": [{"name": "OCTOCONN_OCTOPUS_TIMEOUT_SECONDS", "value": "3"}],
            "peering": {"lifetimeSeconds": 45},
        }
    )
    assert m.env == {
        "OCTOCONN_INFISICAL_URL": "https://infisical.example.com",
        "OCTOCONN_AUTH_METHOD": "universal",
        "OCTOCONN_CLIENT_ID_FILE": "/etc/octoconn/universal-auth/clientId",
        "OCTOCONN_CLIENT_SECRET_FILE": "/etc/octoconn/universal-auth/clientSecret",
        "OCTOCONN_NAMESPACES": "team-a,team-b",
        "OCTOCONN_RESYNC_INTERVAL_SECONDS": "90",
        "OCTOCONN_MAX_WORKERS": "7",
        "OCTOCONN_INFISICAL_WRITES_PER_MINUTE": "30",
        "OCTOCONN_INFISICAL_READS_PER_MINUTE": "0",
        "OCTOCONN_ALLOW_HTTP": "true",
        "OCTOCONN_OCTOPUS_CA_BUNDLE": "/etc/octoconn/octopus-ca/ca.crt",
        "OCTOCONN_OCTOPUS_INSECURE_SKIP_VERIFY": "true",
        "OCTOCONN_PEERING_NAME": "octoconn",
        "OCTOCONN_PEERING_LIFETIME_SECONDS": "45",
        "POD_ID": None,  # from the pod's name (fieldRef)
        "OCTOCONN_KEY_EXPIRY_WARNING_DAYS": "14",
        "OCTOCONN_METRICS_PORT": "8081",
        "OCTOCONN_METRICS_PATH": "/metrics",
        "OCTOCONN_LOG_FORMAT": "json",
        "OCTOCONN_LOG_LEVEL": "DEBUG",
        "OCTOCONN_OCTOPUS_TIMEOUT_SECONDS": "3",
    }
    assert m.container["args"][-4:] == ["--namespace", "team-a", "--namespace", "team-b"]
    assert m.volume("octopus-ca") == {
        "name": "octopus-ca",
        "configMap": {"name": "octopus-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]},
    }
    assert {"name": "octopus-ca", "mountPath": "/etc/octoconn/octopus-ca", "readOnly": True} in m.container[
        "volumeMounts"
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_env_names_and_values_are_valid_settings(helm: Helm, variant: str) -> None:
    """Every OCTOCONN_* variable the chart sets is a real setting, and the operator accepts the whole set."""
    env = helm.render(VARIANTS[variant]).env
    env.pop("POD_ID", None)  # Kopf's own variable: the replica's name in the peering object
    fields = {f"OCTOCONN_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    # The operator reads the same variables at start-up; a value it would reject must not get past the chart.
    Settings(**{name.removeprefix("OCTOCONN_").lower(): value for name, value in env.items()})


def test_chart_defaults_match_operator_defaults(helm: Helm) -> None:
    env = helm.render().env
    names = (
        "infisical_url",
        "resync_interval_seconds",
        "max_workers",
        "infisical_writes_per_minute",
        "infisical_reads_per_minute",
        "peering_name",
        "peering_lifetime_seconds",
        "metrics_port",
        "metrics_path",
        "key_expiry_warning_days",
    )
    for name in names:
        default = Settings.model_fields[name].default
        value = env[f"OCTOCONN_{name.upper()}"]
        assert type(default)(value) == default, f"chart default {value!r} != operator default {default!r} for {name}"


def test_universal_auth_reads_credentials_from_mounted_secret_files(helm: Helm) -> None:
    m = helm.render()
    assert m.volume("universal-auth") == {
        "name": "universal-auth",
        "secret": {
            "secretName": "octoconn-universal-auth",
            "defaultMode": 0o440,
            "items": [{"key": "clientId", "path": "clientId"}, {"key": "clientSecret", "path": "clientSecret"}],
        },
    }
    mount = {"name": "universal-auth", "mountPath": "/etc/octoconn/universal-auth", "readOnly": True}
    assert mount in m.container["volumeMounts"]
    # Nothing secret in the environment: it would show in `kubectl describe` and in every child process.
    assert "OCTOCONN_CLIENT_ID" not in m.env
    assert "OCTOCONN_CLIENT_SECRET" not in m.env
    # No credentials given: the chart expects the Secret under its name rather than creating an empty one.
    assert m.of_kind("Secret") == []


def test_universal_auth_secret_created_from_values(helm: Helm) -> None:
    m = helm.render(VARIANTS["universal-inline"])
    secret = m.one("Secret", "octoconn-universal-auth", RELEASE_NAMESPACE)
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"clientId": "id-1", "clientSecret": "secret-1"}
    assert m.volume("universal-auth")["secret"]["secretName"] == "octoconn-universal-auth"


def test_universal_auth_existing_secret_with_own_keys(helm: Helm) -> None:
    m = helm.render(
        {
            "auth": {
                "universal": {"existingSecret": "synced", "existingSecretKeys": {"clientId": "id", "clientSecret": "s"}}
            }
        }
    )
    assert m.of_kind("Secret") == []
    volume = m.volume("universal-auth")["secret"]
    assert volume["secretName"] == "synced"
    assert volume["items"] == [{"key": "id", "path": "clientId"}, {"key": "s", "path": "clientSecret"}]


def test_kubernetes_auth_uses_own_service_account(helm: Helm) -> None:
    m = helm.render(
        {"auth": {"method": "kubernetes", "kubernetes": {"identityId": "ident-1", "audience": "infisical"}}}
    )
    env = m.env
    assert env["OCTOCONN_AUTH_METHOD"] == "kubernetes"
    assert env["OCTOCONN_KUBERNETES_IDENTITY_ID"] == "ident-1"
    assert env["OCTOCONN_SERVICE_ACCOUNT"] == f"{RELEASE_NAMESPACE}/octoconn"
    assert env["OCTOCONN_TOKEN_AUDIENCE"] == "infisical"
    assert "OCTOCONN_CLIENT_ID_FILE" not in env
    assert m.volume("universal-auth") is None
    token_role = m.one("Role", "octoconn-token", RELEASE_NAMESPACE)
    assert token_role["rules"] == [
        {"apiGroups": [""], "resources": ["serviceaccounts/token"], "resourceNames": ["octoconn"], "verbs": ["create"]}
    ]
    # Off unless asked for: system:auth-delegator lets the SA create TokenReviews cluster-wide.
    assert not [b for b in m.of_kind("ClusterRoleBinding") if b["roleRef"]["name"] == "system:auth-delegator"]


def test_service_account_token_only_with_kubernetes_auth(helm: Helm) -> None:
    for variant in ("defaults", "universal-existing", "namespaced"):
        m = helm.render(VARIANTS[variant])
        assert not [rule for _, rule in m.rules() if "serviceaccounts/token" in rule["resources"]], variant


def test_pod_security_is_hardened(helm: Helm) -> None:
    m = helm.render()
    pod = m.pod_spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 65532  # the image's user: see Dockerfile
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    container = m.container["securityContext"]
    assert container["runAsNonRoot"] is True
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in container


def test_every_object_has_standard_labels(helm: Helm) -> None:
    chart = _chart()
    for doc in helm.render(VARIANTS["kubernetes"] | VARIANTS["namespaced"]).docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "octoconn", doc["kind"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == chart["appVersion"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == f"octoconn-{chart['version']}"


# --- RBAC ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_never_writes_secrets_and_has_no_wildcards(helm: Helm, variant: str) -> None:
    m = helm.render(VARIANTS[variant])
    assert m.rules()
    for role, rule in m.rules():
        where = f"{role['kind']} {role['metadata']['name']}: {rule}"
        for field in ("verbs", "resources", "apiGroups"):
            assert "*" not in rule[field], where
        if "secrets" in rule["resources"]:
            assert set(rule["verbs"]) <= READ_VERBS, where
            assert not set(rule["verbs"]) & SECRET_WRITE_VERBS, where


def test_all_namespaces_uses_cluster_role(helm: Helm) -> None:
    m = helm.render()
    cluster_role = m.one("ClusterRole", "octoconn")
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]} in cluster_role["rules"]
    assert {
        "apiGroups": ["octoconn.dev"],
        "resources": ["octopusdeployconnections/status", "octopusdeploysecretsyncs/status"],
        "verbs": ["get", "patch", "update"],
    } in cluster_role["rules"]
    assert m.of_kind("Role") == []
    binding = m.one("ClusterRoleBinding", "octoconn")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "octoconn", "namespace": RELEASE_NAMESPACE}]
    # Peering has a role of its own (see test_peering_objects_and_rbac_follow_watch_namespaces).
    assert not [rule for rule in cluster_role["rules"] if "kopf.dev" in rule["apiGroups"]]


def test_watch_namespaces_get_roles_instead_of_cluster_wide_secrets(helm: Helm) -> None:
    m = helm.render({"watchNamespaces": ["team-a", "team-b"]})
    cluster_role = m.one("ClusterRole", "octoconn")
    # Only what cannot be namespaced stays cluster-wide.
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "namespaces",
        "customresourcedefinitions",
    }
    for namespace in ("team-a", "team-b"):
        role = m.one("Role", "octoconn", namespace)
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        assert {
            "secrets",
            "octopusdeployconnections",
            "octopusdeployconnections/status",
            "octopusdeploysecretsyncs",
            "octopusdeploysecretsyncs/status",
            "events",
        } <= resources
        binding = m.one("RoleBinding", "octoconn", namespace)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "octoconn"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "octoconn", "namespace": RELEASE_NAMESPACE}]
    assert len([r for r in m.of_kind("Role") if r["metadata"]["name"] == "octoconn"]) == 2


# --- replicas, peering, disruption, sharding ------------------------------------------------------------------


def test_peering_objects_and_rbac_follow_watch_namespaces(helm: Helm) -> None:
    everywhere = helm.render()
    (peering,) = everywhere.of_kind("ClusterKopfPeering")
    assert peering["metadata"]["name"] == "octoconn"
    assert everywhere.of_kind("KopfPeering") == []
    role = everywhere.one("ClusterRole", "octoconn-peering")
    # Kopf lists and watches every peering object, but may patch only the release's own.
    assert role["rules"] == [
        {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings"],
            "resourceNames": ["octoconn"],
            "verbs": ["get", "patch"],
        },
    ]
    binding = everywhere.one("ClusterRoleBinding", "octoconn-peering")
    assert binding["roleRef"]["name"] == "octoconn-peering"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "octoconn", "namespace": RELEASE_NAMESPACE}]

    listed = helm.render({"watchNamespaces": ["team-a", "team-b"]})
    assert listed.of_kind("ClusterKopfPeering") == []
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in listed.of_kind("KopfPeering")} == {
        ("team-a", "octoconn"),
        ("team-b", "octoconn"),
    }
    assert not [r for r in listed.of_kind("ClusterRole") if r["metadata"]["name"] == "octoconn-peering"]
    for namespace in ("team-a", "team-b"):
        rules = listed.one("Role", "octoconn-peering", namespace)["rules"]
        assert {"resources": ["kopfpeerings"], "resourceNames": ["octoconn"]}.items() <= rules[1].items()
        assert listed.one("RoleBinding", "octoconn-peering", namespace)["roleRef"]["name"] == "octoconn-peering"


def test_peering_crds_ship_with_the_chart() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text()))
    # The groups and plurals Kopf looks for (kopf._cogs.structs.references), one per peering mode.
    assert {(d["spec"]["group"], d["spec"]["names"]["plural"], d["spec"]["scope"]) for d in docs} == {
        ("kopf.dev", "clusterkopfpeerings", "Cluster"),
        ("kopf.dev", "kopfpeerings", "Namespaced"),
    }


def test_disruption_budget_and_spread_defaults(helm: Helm) -> None:
    m = helm.render()
    pdb = m.one("PodDisruptionBudget", "octoconn", RELEASE_NAMESPACE)
    assert pdb["spec"]["maxUnavailable"] == 1
    selector = m.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    # Soft by default: a one-node cluster still runs both replicas.
    (term,) = m.pod_spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    (spread,) = m.pod_spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == selector

    own_affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    own_spread = [{"maxSkew": 1, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule"}]
    custom = helm.render(
        {
            "affinity": own_affinity,
            "topologySpreadConstraints": own_spread,
            "podDisruptionBudget": {"enabled": False},
            "replicaCount": 3,
        }
    )
    assert custom.pod_spec["affinity"] == own_affinity
    assert custom.pod_spec["topologySpreadConstraints"] == own_spread
    assert custom.of_kind("PodDisruptionBudget") == []
    assert custom.one("Deployment")["spec"]["replicas"] == 3


def test_sharded_releases_share_no_rbac_or_peering(helm: Helm) -> None:
    """Several releases with disjoint watchNamespaces split the work: nothing they create may collide or overlap."""

    def release(name: str, namespaces: list[str]) -> Manifests:
        values = helm.values_args({"watchNamespaces": namespaces})
        args = ["template", name, str(CHART), "--namespace", RELEASE_NAMESPACE, "--kube-version", KUBE_VERSION]
        return Manifests([d for d in yaml.safe_load_all(helm.run(*args, *values).stdout) if d])

    shards = {"shard-a": ["team-a", "team-b"], "shard-b": ["team-c"]}
    rendered = {name: release(name, namespaces) for name, namespaces in shards.items()}

    def keys(m: Manifests) -> set[tuple[str, str | None, str]]:
        return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in m.docs}

    # Helm refuses to install an object that another release owns; none may be shared.
    assert keys(rendered["shard-a"]) & keys(rendered["shard-b"]) == set()
    for name, m in rendered.items():
        subject = {"kind": "ServiceAccount", "name": f"{name}-octoconn", "namespace": RELEASE_NAMESPACE}
        # Namespaced rules (Secrets, resources, peering) only in the release's own namespaces...
        assert {r["metadata"]["namespace"] for r in m.of_kind("Role")} == set(shards[name])
        assert {p["metadata"]["namespace"] for p in m.of_kind("KopfPeering")} == set(shards[name])
        assert {p["metadata"]["name"] for p in m.of_kind("KopfPeering")} == {f"{name}-octoconn"}
        assert m.of_kind("ClusterKopfPeering") == []
        # ...and cluster-wide only what Kopf must scan.
        cluster_resources = {res for r in m.of_kind("ClusterRole") for rule in r["rules"] for res in rule["resources"]}
        assert cluster_resources == {"namespaces", "customresourcedefinitions"}
        for binding in m.of_kind("RoleBinding") + m.of_kind("ClusterRoleBinding"):
            assert binding["subjects"] == [subject]


# --- one source of truth -------------------------------------------------------------------------------------


def test_chart_crd_is_a_copy_of_crds() -> None:
    source = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    copy = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert copy == source
    for name in source:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"helm/octoconn/crds/{name} differs from crds/{name}: cp crds/*.yaml helm/octoconn/crds/"
        )


def test_deploy_matches_helm_template(helm: Helm, tmp_path: Path) -> None:
    subprocess.run(
        ["sh", str(DEPLOY / "render.sh"), str(tmp_path)],
        env={**helm.env, "HELM": str(helm.path)},
        check=True,
        capture_output=True,
        text=True,
    )
    expected = sorted(p.name for p in tmp_path.glob("*.yaml"))
    assert sorted(p.name for p in DEPLOY.glob("*.yaml")) == expected
    _, mismatch, errors = filecmp.cmpfiles(DEPLOY, tmp_path, expected, shallow=False)
    assert mismatch + errors == [], f"deploy/ is out of date ({mismatch + errors}): run deploy/render.sh"


def test_deploy_namespace_is_the_rendered_namespace() -> None:
    docs = [d for p in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    (namespace,) = [d for d in docs if d["kind"] == "Namespace"]
    name = namespace["metadata"]["name"]
    assert {d["metadata"]["namespace"] for d in docs if "namespace" in d["metadata"]} == {name}


# --- installed into a real API server ------------------------------------------------------------------------


class ServiceAccountView:
    """The API server as the chart's ServiceAccount sees it: a TokenRequest token in a kubeconfig of its own."""

    def __init__(self, control_plane: Any, kube_api: Any, namespace: str, name: str, workdir: Path) -> None:
        from kubernetes import client, config

        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        )
        token = (
            client.CoreV1Api(kube_api).create_namespaced_service_account_token(name, namespace, request).status.token
        )
        kubeconfig = control_plane.kubeconfig_for_token(token, workdir / f"{name}.kubeconfig")
        self.name = name
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.kubeconfig = kubeconfig

    def can(self, verb: str, resource: str, namespace: str = "", *, group: str = "", name: str = "") -> bool:
        from kubernetes import client

        resource, _, subresource = resource.partition("/")
        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    verb=verb,
                    group=group,
                    resource=resource,
                    subresource=subresource,
                    namespace=namespace,
                    name=name,
                )
            )
        )
        return bool(client.AuthorizationV1Api(self.api).create_self_subject_access_review(review).status.allowed)

    def close(self) -> None:
        self.api.close()


@pytest.fixture
def install(helm: Helm, control_plane: Any, kube_api: Any, namespace: str, tmp_path: Path) -> Iterator[Any]:
    """Install the chart into the test's namespace under a unique release name; uninstall afterwards."""
    installed: list[str] = []
    views: list[ServiceAccountView] = []

    def _install(values: dict[str, Any]) -> ServiceAccountView:
        # Unique per test: ClusterRoles and ClusterRoleBindings are named after the release.
        release = f"oc{secrets.token_hex(3)}"
        helm.run(
            "install",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kubeconfig",
            control_plane.kubeconfig,
            # No kubelet runs, so the pod never becomes ready; the chart's objects are what is under test.
            "--wait=false",
            *helm.values_args(values),
        )
        installed.append(release)
        view = ServiceAccountView(control_plane, kube_api, namespace, f"{release}-octoconn", tmp_path)
        views.append(view)
        return view

    yield _install
    for view in views:
        view.close()
    for release in installed:
        helm.run("uninstall", release, "--namespace", namespace, "--kubeconfig", control_plane.kubeconfig, check=False)


def _new_namespace(kube_api: Any, prefix: str) -> str:
    from kubernetes import client

    name = f"{prefix}-{secrets.token_hex(4)}"
    client.CoreV1Api(kube_api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def _secret(kube_api: Any, namespace: str, name: str = "octopus-api-key") -> None:
    from kubernetes import client

    body = client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data={"apiKey": "API-TEST"})
    client.CoreV1Api(kube_api).create_namespaced_secret(namespace, body)


def _status(call: Any) -> int:
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


@pytest.mark.cluster
def test_installed_rbac_with_watch_namespaces(install: Any, kube_api: Any, namespace: str) -> None:
    from kubernetes import client

    watched, unwatched = _new_namespace(kube_api, "watched"), _new_namespace(kube_api, "unwatched")
    _secret(kube_api, watched)
    _secret(kube_api, unwatched)
    sa = install({"watchNamespaces": [watched]})

    odc = {"group": "octoconn.dev", "resource": "octopusdeployconnections"}
    for verb in ("get", "list", "watch", "patch", "update"):
        assert sa.can(verb, odc["resource"], watched, group=odc["group"]), verb
    for verb in ("get", "list", "watch", "patch", "update"):
        assert sa.can(verb, "octopusdeploysecretsyncs", watched, group="octoconn.dev"), verb
    for verb in ("get", "patch", "update"):
        assert sa.can(verb, "octopusdeployconnections/status", watched, group="octoconn.dev"), verb
        assert sa.can(verb, "octopusdeploysecretsyncs/status", watched, group="octoconn.dev"), verb
    for verb in ("get", "list", "watch"):
        assert sa.can(verb, "secrets", watched), verb
    assert sa.can("create", "events", watched)
    assert sa.can("create", "events", watched, group="events.k8s.io")
    assert sa.can("list", "namespaces")
    assert sa.can("watch", "namespaces")
    assert sa.can("list", "customresourcedefinitions", group="apiextensions.k8s.io")

    for verb in ("create", "update", "patch", "delete", "deletecollection"):
        assert not sa.can(verb, "secrets", watched), verb
    # Least privilege: outside the watched namespaces nothing is readable, not even the operator's own namespace.
    for ns in (unwatched, namespace):
        assert not sa.can("get", "secrets", ns), ns
        assert not sa.can("list", "octopusdeployconnections", ns, group="octoconn.dev"), ns
    assert not sa.can("list", "secrets")  # cluster-wide
    assert not sa.can("create", "serviceaccounts/token", namespace, name="default")
    assert not sa.can("create", "octopusdeployconnections", watched, group="octoconn.dev")

    # The same answers from real requests, not only from the authorizer's review.
    core = client.CoreV1Api(sa.api)
    assert _status(lambda: core.read_namespaced_secret("octopus-api-key", watched)) == 200
    assert _status(lambda: core.read_namespaced_secret("octopus-api-key", unwatched)) == 403
    stolen = client.V1Secret(metadata=client.V1ObjectMeta(name="planted"), string_data={"k": "v"})
    assert _status(lambda: core.create_namespaced_secret(watched, stolen)) == 403
    assert _status(lambda: core.delete_namespaced_secret("octopus-api-key", watched)) == 403
    custom = client.CustomObjectsApi(sa.api)
    list_odc = custom.list_namespaced_custom_object
    assert _status(lambda: list_odc("octoconn.dev", "v1alpha1", watched, "octopusdeployconnections")) == 200
    assert _status(lambda: list_odc("octoconn.dev", "v1alpha1", unwatched, "octopusdeployconnections")) == 403

    # Peering (two replicas by default): the release's KopfPeering in each watched namespace, patchable by name only.
    kopf = {"group": "kopf.dev"}
    assert sa.can("watch", "kopfpeerings", watched, **kopf)
    assert sa.can("patch", "kopfpeerings", watched, name=sa.name, **kopf)
    assert not sa.can("patch", "kopfpeerings", watched, name="another-operator", **kopf)
    assert not sa.can("list", "kopfpeerings", unwatched, **kopf)
    assert not sa.can("list", "clusterkopfpeerings", **kopf)
    touch = {"status": {"probe": {"priority": 1, "lifetime": 0, "lastseen": "2026-01-01T00:00:00+00:00"}}}
    patch = custom.patch_namespaced_custom_object
    assert _status(lambda: patch("kopf.dev", "v1", watched, "kopfpeerings", sa.name, touch)) == 200


@pytest.mark.cluster
def test_installed_rbac_cluster_wide_with_kubernetes_auth(install: Any, kube_api: Any, namespace: str) -> None:
    from kubernetes import client

    elsewhere = _new_namespace(kube_api, "anywhere")
    _secret(kube_api, elsewhere)
    sa = install({"auth": {"method": "kubernetes", "kubernetes": {"identityId": "identity-1"}}})
    # The ServiceAccount the chart created (no controller-manager runs, so there is not even a "default" one).
    assert _service_accounts(kube_api, namespace) == [sa.name]
    own_name = sa.name

    for ns in (elsewhere, namespace):
        assert sa.can("list", "octopusdeployconnections", ns, group="octoconn.dev")
        assert sa.can("patch", "octopusdeployconnections/status", ns, group="octoconn.dev")
        assert sa.can("watch", "secrets", ns)
        assert sa.can("create", "events", ns)
        for verb in ("create", "update", "patch", "delete"):
            assert not sa.can(verb, "secrets", ns), (verb, ns)
    assert sa.can("list", "secrets")  # all namespaces: one cluster-wide watch

    # Kubernetes Auth: a token for its own ServiceAccount, and for no other.
    assert sa.can("create", "serviceaccounts/token", namespace, name=own_name)
    assert not sa.can("create", "serviceaccounts/token", namespace, name="default")
    assert not sa.can("create", "serviceaccounts/token", elsewhere, name=own_name)
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    minted = client.CoreV1Api(sa.api).create_namespaced_service_account_token(own_name, namespace, request)
    assert minted.status.token
    assert _status(lambda: client.CoreV1Api(sa.api).read_namespaced_secret("octopus-api-key", elsewhere)) == 200

    # Peering cluster-wide: the release's ClusterKopfPeering, patchable by name only.
    assert sa.can("watch", "clusterkopfpeerings", group="kopf.dev")
    assert sa.can("patch", "clusterkopfpeerings", group="kopf.dev", name=sa.name)
    assert not sa.can("patch", "clusterkopfpeerings", group="kopf.dev", name="another-operator")
    custom = client.CustomObjectsApi(sa.api)
    assert _status(lambda: custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", sa.name)) == 200


def _service_accounts(kube_api: Any, namespace: str) -> list[str]:
    from kubernetes import client

    items = client.CoreV1Api(kube_api).list_namespaced_service_account(namespace).items
    return [sa.metadata.name for sa in items if sa.metadata.name != "default"]


def _chart() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


# --- metrics -------------------------------------------------------------------------------------------------


def test_metrics_service_points_at_the_operator_metrics_port(helm: Helm) -> None:
    m = helm.render({"metrics": {"port": 9100, "path": "/prom"}})
    service = m.one("Service", "octoconn-metrics")
    assert service["spec"]["selector"] == m.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}]
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in m.container["ports"]
    assert m.env["OCTOCONN_METRICS_PORT"] == "9100"
    assert m.env["OCTOCONN_METRICS_PATH"] == "/prom"
    # Off by default: both need the Prometheus Operator's CRDs.
    assert m.of_kind("ServiceMonitor") == []
    assert m.of_kind("PrometheusRule") == []


def test_metrics_disabled_turns_the_endpoint_off_too(helm: Helm) -> None:
    m = helm.render({"metrics": {"enabled": False}})
    assert m.of_kind("Service") == []
    assert m.env["OCTOCONN_METRICS_PORT"] == "0"
    assert all(p["name"] != "metrics" for p in m.container["ports"])
    proc = helm.template({"metrics": {"enabled": False, "prometheusRule": {"enabled": True}}}, check=False)
    assert proc.returncode != 0
    assert "metrics.prometheusRule.enabled needs metrics.enabled" in proc.stderr


def test_service_monitor_selects_only_the_metrics_service(helm: Helm) -> None:
    values = {
        "metrics": {"path": "/prom", "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"a": "b"}}}
    }
    m = helm.render(values)
    monitor = m.one("ServiceMonitor", "octoconn", RELEASE_NAMESPACE)
    assert monitor["metadata"]["labels"]["a"] == "b"
    selector = monitor["spec"]["selector"]["matchLabels"]
    matching = [s for s in m.of_kind("Service") if selector.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in matching] == ["octoconn-metrics"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/prom", "interval": "15s", "honorLabels": True}


def test_prometheus_rule_ships_the_rules_file(helm: Helm) -> None:
    m = helm.render({"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}}})
    rule = m.one("PrometheusRule", "octoconn", RELEASE_NAMESPACE)
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
