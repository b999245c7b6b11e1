"""Peering settings: replicas of one Deployment share their environment, yet must not share a priority."""

from __future__ import annotations

import pytest

from octoconn.cli import peering_priority
from octoconn.settings import Settings, SettingsError, load_settings

UA = {"client_id": "id", "client_secret": "secret"}


def test_explicit_priority_wins() -> None:
    assert peering_priority(Settings(**UA, peering_priority=7)) == 7


def test_unset_priority_is_drawn_per_start_within_kopf_range() -> None:
    settings = Settings(**UA)
    drawn = {peering_priority(settings) for _ in range(50)}
    # Kopf pauses every replica that shares the highest priority, so identical pods must draw different ones.
    assert len(drawn) > 45
    assert all(1 <= p <= 2**31 - 1 for p in drawn)


def test_defaults() -> None:
    settings = Settings(**UA)
    assert settings.peering_name == "octoconn"
    assert settings.peering_lifetime_seconds == 20
    assert settings.peering_priority is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OCTOCONN_PEERING_LIFETIME_SECONDS", "5"),
        ("OCTOCONN_PEERING_NAME", "Not_A_Name"),
        ("OCTOCONN_PEERING_PRIORITY", "-1"),
    ],
)
def test_bad_peering_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv("OCTOCONN_CLIENT_ID", "id")
    monkeypatch.setenv("OCTOCONN_CLIENT_SECRET", "secret")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()
