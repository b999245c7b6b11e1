"""`make audit` (hack/audit.sh, osv-scanner) can fail: a known-vulnerable pin is reported, a fixed one is not, and the
report names the database and its age.

Offline, against OCTOCONN_ADVISORY_DB when it is set (.ci/run sets it where the machine has an advisory export),
else against a one-advisory database written here in osv-scanner's offline layout. Either way the scan is
osv-scanner's own: the test checks what the script makes of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "audit.sh"
# A stand-in for the real advisory (PYSEC-2023-74: requests before 2.31.0 leaks Proxy-Authorization on redirects),
# named so that nobody mistakes it for real data.
FIXTURE = {
    "id": "OCTOCONN-TEST-1",
    "modified": "2024-10-10T00:00:00Z",
    "summary": "test advisory: requests before 2.31.0",
    "affected": [
        {
            "package": {"ecosystem": "PyPI", "name": "requests"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.31.0"}]}],
        }
    ],
}


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(folder, advisory id expected for requests==2.25.0)."""
    given = os.environ.get("OCTOCONN_ADVISORY_DB")
    if given:
        return Path(given), "PYSEC-2023-74"
    folder = tmp_path_factory.mktemp("advisories")
    zip_path = folder / "osv-scalibr" / "PyPI" / "all.zip"
    zip_path.parent.mkdir(parents=True)
    with zipfile.ZipFile(zip_path, "w") as z:
        z.writestr(f"{FIXTURE['id']}.json", json.dumps(FIXTURE))
    return folder, str(FIXTURE["id"])


def audit(tmp_path: Path, database: Path, pin: str) -> subprocess.CompletedProcess[str]:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{pin}\n")
    env = {**os.environ, "OCTOCONN_ADVISORY_DB": str(database), "OCTOCONN_AUDIT_REQUIREMENTS": str(requirements)}
    return subprocess.run(
        ["bash", str(SCRIPT), "--offline"], capture_output=True, text=True, env=env, timeout=900, check=False
    )


def test_a_vulnerable_pin_fails_the_audit(tmp_path: Path, database: tuple[Path, str]) -> None:
    folder, advisory = database
    proc = audit(tmp_path, folder, "requests==2.25.0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert advisory in proc.stdout
    assert "audit: database: local OSV export" in proc.stdout
    assert "days old)" in proc.stdout  # how old the data is, always said


def test_a_fixed_pin_passes(tmp_path: Path, database: tuple[Path, str]) -> None:
    folder, advisory = database
    proc = audit(tmp_path, folder, "requests==2.32.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert advisory not in proc.stdout
    assert "no known vulnerability applies" in proc.stdout


def test_without_a_database_the_offline_audit_is_an_error(tmp_path: Path) -> None:
    """Exit 2 (the tool could not run) is what CI fails on; it must differ from 1 (advisories)."""
    proc = audit(tmp_path, tmp_path / "nowhere", "requests==2.25.0")
    assert proc.returncode == 2
    assert "has no osv-scalibr/PyPI/all.zip" in proc.stderr
