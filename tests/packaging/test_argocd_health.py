"""deploy/argocd/'s health checks in Argo CD's own Lua VM (v3.2.12 and the newest v3, tests/argocd) over the objects
saved by tests/cluster/test_argocd_health.py (connections) and tests/cluster/test_sync_saved_states.py (secret
syncs), and the two ways docs/argocd.md ships them (argocd-cm, argo-cd Helm values) carry exactly those scripts.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.envtest.binaries import ARGOCD_LATEST_VERSION, ensure_argocd_health

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "argocd"
CONNECTION = ("octoconn.dev/OctopusDeployConnection", DEPLOY / "health.lua", ROOT / "tests/argocd/health_test.yaml")
SYNC = (
    "octoconn.dev/OctopusDeploySecretSync",
    DEPLOY / "secret-sync-health.lua",
    ROOT / "tests/argocd/sync/health_test.yaml",
)
DOCS = ROOT / "docs" / "argocd.md"
VERSIONS = pytest.mark.parametrize("latest", [False, True], ids=["v3.2.12", ARGOCD_LATEST_VERSION])


def run(script: Path, tests: Path, group_kind: str, *, latest: bool = False) -> tuple[int, list[dict[str, Any]]]:
    runner = ensure_argocd_health(latest=latest)
    proc = subprocess.run(
        [str(runner), "-script", str(script), "-tests", str(tests), "-group-kind", group_kind],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


@VERSIONS
def test_saved_connections_get_the_expected_health(latest: bool) -> None:
    group_kind, script, cases = CONNECTION
    code, results = run(script, cases, group_kind, latest=latest)
    assert [r for r in results if not r["ok"]] == []
    assert code == 0
    statuses = [r["got"]["status"] for r in results]
    assert sorted(statuses) == ["Degraded", "Healthy", "Progressing", "Progressing", "Progressing", "Suspended"]
    degraded = next(r for r in results if r["got"]["status"] == "Degraded")
    assert "octopus-key was not found" in degraded["got"]["message"]  # Ready's own message, not a generic one


@VERSIONS
def test_saved_secret_syncs_get_the_expected_health(latest: bool) -> None:
    group_kind, script, cases = SYNC
    code, results = run(script, cases, group_kind, latest=latest)
    assert [r for r in results if not r["ok"]] == []
    assert code == 0
    by_case = {Path(r["inputPath"]).stem: r["got"] for r in results}
    assert by_case["healthy"]["status"] == "Healthy"
    assert by_case["progressing_running"]["status"] == "Progressing"
    assert "(running)" in by_case["progressing_running"]["message"]  # Infisical is running the sync
    assert by_case["degraded_destination_not_found"]["status"] == "Degraded"
    assert '"No Such Project"' in by_case["degraded_destination_not_found"]["message"]  # the reason, in its words
    assert by_case["suspended_paused"]["status"] == "Suspended"
    assert by_case["deleting_blocked"]["status"] == "Degraded"


@pytest.mark.parametrize("kind", [CONNECTION, SYNC], ids=["connection", "secret-sync"])
def test_the_runner_reports_a_wrong_script(tmp_path: Path, kind: tuple[str, Path, Path]) -> None:
    """The checks above can fail: a script that says Healthy for everything is caught."""
    group_kind, _, cases = kind
    always_healthy = tmp_path / "health.lua"
    always_healthy.write_text('return {status = "Healthy", message = "fine"}\n')
    code, results = run(always_healthy, cases, group_kind)
    assert code == 1
    assert any(r["want"]["status"] == "Degraded" for r in results if not r["ok"])


def test_string_library_is_not_available_as_in_argo_cd(tmp_path: Path) -> None:
    """The runner opens only what Argo CD opens: a script using string.lower fails there as it would in Argo CD."""
    group_kind, _, cases = CONNECTION
    script = tmp_path / "health.lua"
    script.write_text('return {status = string.lower("HEALTHY"), message = ""}\n')
    code, results = run(script, cases, group_kind)
    assert code == 1
    assert all("string" in r.get("error", "") for r in results), results


def _yaml_blocks(markdown: str) -> list[dict[str, Any]]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", markdown, flags=re.DOTALL)]


@pytest.mark.parametrize("where", ["argocd-cm", "helm-values"])
@pytest.mark.parametrize("kind", [CONNECTION, SYNC], ids=["connection", "secret-sync"])
def test_docs_ship_exactly_the_scripts(where: str, kind: tuple[str, Path, Path]) -> None:
    group_kind, script, _ = kind
    key = "resource.customizations.health." + group_kind.replace("/", "_")
    blocks = _yaml_blocks(DOCS.read_text())
    if where == "argocd-cm":
        (cm,) = [b for b in blocks if b.get("kind") == "ConfigMap"]
        assert cm["metadata"]["name"] == "argocd-cm"
        value = cm["data"][key]
    else:
        (values,) = [b for b in blocks if "configs" in b]
        value = values["configs"]["cm"][key]
    assert value == script.read_text()
