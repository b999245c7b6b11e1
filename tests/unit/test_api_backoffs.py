"""Kopf's retries of failed Kubernetes API calls: short steps, so a healed API server is used again within seconds."""

from __future__ import annotations

import kopf

from octoconn.handlers import API_ERROR_BACKOFFS


def test_api_errors_are_retried_in_short_steps_for_as_long_as_kopfs_default() -> None:
    default = kopf.OperatorSettings().networking.error_backoffs
    assert not isinstance(default, int | float)
    # Kopf's own last steps are 13 and 21 s: after a 90 s outage, changes waited up to 21 s more (docs/reliability.md).
    assert max(API_ERROR_BACKOFFS) <= 5
    # An outage is retried at least as long before Kopf gives up on a call and starts it over.
    assert sum(API_ERROR_BACKOFFS) >= sum(default)
