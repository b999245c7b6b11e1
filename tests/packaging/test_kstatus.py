"""What Flux shows (kstatus, tests/kstatus built from sigs.k8s.io/cli-utils) for every saved object of both kinds.

tests/kstatus/cases.py holds the expected verdicts; the objects are saved from the cluster tier.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tests.kstatus.cases import CASES, CONNECTIONS, OTHERS, SYNCS, run_kstatus, write_tests

FOLDERS = {"connections": CONNECTIONS, "syncs": SYNCS, "others": OTHERS}


def test_flux_shows_the_expected_status_for_every_saved_state(tmp_path: Path) -> None:
    code, results = run_kstatus(write_tests(tmp_path / "kstatus_test.yaml", FOLDERS))
    assert [r for r in results if not r["ok"]] == []
    assert code == 0
    assert len(results) == len(CASES)
    got = {r["got"]["status"] for r in results}
    assert got == {"Current", "InProgress", "Failed", "Terminating"}
    failed = [r["got"]["message"] for r in results if r["got"]["status"] == "Failed"]
    assert any("octopus-key was not found" in m for m in failed)  # the reason, in Ready's words
    assert any('"No Such Project"' in m for m in failed)


def test_a_wrong_expectation_is_caught(tmp_path: Path) -> None:
    """The check above can fail: a failing sync expected as Current is reported."""
    wrong = tuple(replace(c, status="Current") if c.name == "degraded_destination_not_found" else c for c in CASES)
    code, results = run_kstatus(write_tests(tmp_path / "kstatus_test.yaml", FOLDERS, wrong))
    assert code == 1
    (bad,) = [r for r in results if not r["ok"]]
    assert bad["got"]["status"] == "Failed"
