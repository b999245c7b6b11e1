"""deploy/argocd/health.lua in Argo CD's own Lua VM over the objects saved by tests/cluster/test_argocd_health.py,
and the two ways docs/argocd.md ships it (argocd-cm, argo-cd Helm values) carry exactly that script.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.envtest.binaries import ensure_argocd_health

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "argocd" / "health.lua"
CASES = ROOT / "tests" / "argocd" / "health_test.yaml"
DOCS = ROOT / "docs" / "argocd.md"
KEY = "resource.customizations.health.octoconn.dev_OctopusDeployConnection"


def run(script: Path, tests: Path) -> tuple[int, list[dict[str, Any]]]:
    proc = subprocess.run(
        [str(ensure_argocd_health()), "-script", str(script), "-tests", str(tests)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def test_saved_objects_get_the_expected_health() -> None:
    code, results = run(SCRIPT, CASES)
    assert [r for r in results if not r["ok"]] == []
    assert code == 0
    statuses = [r["got"]["status"] for r in results]
    assert sorted(statuses) == ["Degraded", "Healthy", "Progressing", "Progressing", "Progressing", "Suspended"]
    degraded = next(r for r in results if r["got"]["status"] == "Degraded")
    assert "octopus-key was not found" in degraded["got"]["message"]  # Ready's own message, not a generic one


def test_the_runner_reports_a_wrong_script(tmp_path: Path) -> None:
    """The check above can fail: a script that says Healthy for everything is caught."""
    always_healthy = tmp_path / "health.lua"
    always_healthy.write_text('return {status = "Healthy", message = "fine"}\n')
    code, results = run(always_healthy, CASES)
    assert code == 1
    assert {r["inputPath"] for r in results if not r["ok"]} >= {"testdata/degraded_secret_not_found.yaml"}


def test_string_library_is_not_available_as_in_argo_cd(tmp_path: Path) -> None:
    """The runner opens only what Argo CD opens: a script using string.lower fails there as it would in Argo CD."""
    script = tmp_path / "health.lua"
    script.write_text('return {status = string.lower("HEALTHY"), message = ""}\n')
    code, results = run(script, CASES)
    assert code == 1
    assert all("string" in r.get("error", "") for r in results), results


def _yaml_blocks(markdown: str) -> list[dict[str, Any]]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", markdown, flags=re.DOTALL)]


@pytest.mark.parametrize("where", ["argocd-cm", "helm-values"])
def test_docs_ship_exactly_the_script(where: str) -> None:
    blocks = _yaml_blocks(DOCS.read_text())
    if where == "argocd-cm":
        (cm,) = [b for b in blocks if b.get("kind") == "ConfigMap"]
        assert cm["metadata"]["name"] == "argocd-cm"
        value = cm["data"][KEY]
    else:
        (values,) = [b for b in blocks if "configs" in b]
        value = values["configs"]["cm"][KEY]
    assert value == SCRIPT.read_text()
