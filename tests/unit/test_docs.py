"""The README documents every setting the operator reads, and nothing it does not."""

from __future__ import annotations

import re
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
