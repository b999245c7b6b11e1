"""The docs: the README documents every setting the operator reads, and the repository points nowhere outside."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from octoconn.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"`(OCTOCONN_[A-Z_]+)`", README.read_text()))
    expected = {f"OCTOCONN_{name.upper()}" for name in Settings.model_fields}
    assert expected - documented == set(), "settings missing from the README"
    unknown = {
        name
        for name in documented - expected
        # Test-only and cache variables are documented next to the tests, not in the Settings table.
        if name not in {"OCTOCONN_TEST_KUBECONFIG", "OCTOCONN_CACHE"}
    }
    assert unknown == set(), "the README documents settings that do not exist"


def _tracked_files() -> list[Path]:
    root = README.parent
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    return [root / name for name in listed.decode().split("\0") if name]


# Built from parts so that this file does not match itself.
_OUTSIDE = re.compile("|".join([r"\.\./" + "shared", r"(?<![\w.~-])/" + "work/", "shared/" + "reference"]))
# The one allowed reference: CI hands the audit the offline advisory database beside the checkout, when there is one.
_ALLOWED = {(".ci/run", "advisories=../" + "shared/advisories")}


def test_the_repository_stands_alone() -> None:
    """Nothing tracked points at a path outside the repository: the facts it relies on live in docs/."""
    offenders = []
    for path in _tracked_files():
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary files carry no references
        for number, line in enumerate(text.splitlines(), 1):
            if _OUTSIDE.search(line) and (str(path.relative_to(README.parent)), line.strip()) not in _ALLOWED:
                offenders.append(f"{path.relative_to(README.parent)}:{number}: {line.strip()[:100]}")
    assert offenders == [], "files point outside the repository:\n" + "\n".join(offenders)


def test_remote_apis_page_has_a_section_per_service() -> None:
    page = (README.parent / "docs" / "remote-apis.md").read_text()
    headings = re.findall(r"^## (.+)$", page, re.MULTILINE)
    assert headings[:3] == ["Octopus Deploy", "Infisical app connections", "Infisical secret syncs"]
    for module in ("tests/servers/octopus.py", "tests/servers/infisical.py"):
        docstring = (README.parent / module).read_text().split('"""', 2)[1]
        assert "docs/remote-apis.md" in docstring, f"{module} does not say where its facts come from"
