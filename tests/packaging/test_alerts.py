"""The chart's alerting rules, as the PrometheusRule renders them: ``promtool check rules`` accepts them, and
``promtool test rules`` runs tests/packaging/prometheus/alerts_test.yaml, where every alert is shown firing.

promtool is built from Go modules like the control plane's binaries (tests/envtest/binaries.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.envtest.binaries import ensure_promtool
from tests.packaging.test_chart import Helm, helm  # noqa: F401 - the session's helm fixture

UNIT_TESTS = Path(__file__).resolve().parent / "prometheus" / "alerts_test.yaml"


@pytest.fixture(scope="module")
def promtool() -> Path:
    return ensure_promtool()


@pytest.fixture
def rules(helm: Helm, tmp_path: Path) -> Path:  # noqa: F811 - the fixture imported above
    """The rules as a user gets them from the chart, next to a copy of the unit tests that load them."""
    rendered = helm.render({"metrics": {"prometheusRule": {"enabled": True}}})
    (rule,) = rendered.of_kind("PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    return path


def run(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120, check=False)


def alert_names(rules: Path) -> set[str]:
    spec = yaml.safe_load(rules.read_text())
    return {rule["alert"] for group in spec["groups"] for rule in group["rules"] if "alert" in rule}


def test_promtool_check_rules(promtool: Path, rules: Path) -> None:
    proc = run(promtool, "check", "rules", str(rules))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_names(rules))} rules found" in proc.stdout + proc.stderr


def test_promtool_check_rules_catches_a_broken_rule(promtool: Path, tmp_path: Path) -> None:
    """The check above can fail: a typo in an expression is reported."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "sum(up"}]}]}))
    proc = run(promtool, "check", "rules", str(broken))
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test_that_makes_it_fire(rules: Path) -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    quiet = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if not case.get("exp_alerts")
    }
    expected = {
        "OctoconnResourceNotReady",
        "OctoconnSecretSyncNotReady",
        "OctoconnSecretSyncFailing",
        "OctoconnApiKeyExpiringSoon",
        "OctoconnInfisicalIdentityRefused",
        "OctoconnRateLimited",
        "OctoconnNoSuccessfulReconcile",
    }
    assert alert_names(rules) == expected
    assert fired == expected, "each alert needs a test case where it fires"
    assert quiet == expected, "each alert needs a test case where it stays quiet"


def test_promtool_test_rules(promtool: Path, rules: Path) -> None:
    proc = run(promtool, "test", "rules", str(rules.parent / UNIT_TESTS.name))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr
