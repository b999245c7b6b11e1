"""Pure decisions of ``octoconn.reconcile``: conditions, Ready summary, patch plans, retry delays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from octoconn import errors
from octoconn.infisical import AppConnection
from octoconn.models import Condition, OctopusDeployConnectionStatus
from octoconn.reconcile import (
    CREDENTIALS_VERIFIED,
    READY,
    SYNCED,
    Resource,
    plan_update,
    retry_delay,
    set_condition,
    summarize_ready,
    transition_events,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def remote(**overrides: object) -> AppConnection:
    fields: dict[str, object] = {
        "id": "7b0c6a44-0000-4000-8000-000000000001",
        "name": "prod",
        "description": "d",
        "version": 1,
        "org_id": "org",
        "project_id": None,
        "credentials_hash": "h1",
        "instance_url": "https://octo.example",
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:00.000Z",
    }
    fields.update(overrides)
    return AppConnection(**fields)  # type: ignore[arg-type]


def cond(conditions: list[Condition], type_: str) -> Condition:
    return next(c for c in conditions if c.type == type_)


class TestSetCondition:
    def test_transition_time_moves_only_when_status_flips(self) -> None:
        first = set_condition(None, type_=SYNCED, status="True", reason="A", message="m", generation=1, now=T0)
        same = set_condition(first, type_=SYNCED, status="True", reason="B", message="n", generation=2, now=T1)
        flipped = set_condition(same, type_=SYNCED, status="False", reason="C", message="o", generation=2, now=T1)
        assert cond(same, SYNCED).last_transition_time == "2026-01-01T00:00:00Z"
        assert cond(same, SYNCED).reason == "B"
        assert cond(same, SYNCED).observed_generation == 2
        assert cond(flipped, SYNCED).last_transition_time == "2026-01-01T00:05:00Z"

    def test_other_conditions_are_kept_and_ordered(self) -> None:
        out = set_condition(None, type_=SYNCED, status="True", reason="A", message="m", generation=1, now=T0)
        out = set_condition(
            out, type_=CREDENTIALS_VERIFIED, status="True", reason="B", message="m", generation=1, now=T0
        )
        out = summarize_ready(out, generation=1, now=T0)
        assert [c.type for c in out] == [READY, CREDENTIALS_VERIFIED, SYNCED]


class TestReady:
    def build(self, verified: str, synced: str) -> list[Condition]:
        out = set_condition(
            None, type_=CREDENTIALS_VERIFIED, status=verified, reason="V", message="vm", generation=1, now=T0
        )  # type: ignore[arg-type]
        out = set_condition(out, type_=SYNCED, status=synced, reason="S", message="sm", generation=1, now=T0)  # type: ignore[arg-type]
        return summarize_ready(out, generation=1, now=T0)

    def test_ready_when_both_true(self) -> None:
        ready = cond(self.build("True", "True"), READY)
        assert (ready.status, ready.reason) == ("True", "Available")

    def test_credentials_failure_wins_over_sync_state(self) -> None:
        ready = cond(self.build("False", "True"), READY)
        assert (ready.status, ready.reason, ready.message) == ("False", "V", "vm")

    def test_sync_failure_is_reported(self) -> None:
        ready = cond(self.build("True", "False"), READY)
        assert (ready.status, ready.reason) == ("False", "S")

    def test_unknown_propagates(self) -> None:
        assert cond(self.build("Unknown", "True"), READY).status == "Unknown"


class TestPlanUpdate:
    def test_nothing_to_do(self) -> None:
        plan = plan_update(
            remote=remote(),
            desired_name="prod",
            desired_description="d",
            instance_url="https://octo.example",
            key_changed=False,
            recorded_hash="h1",
        )
        assert plan.empty

    def test_description_only_never_pushes_credentials(self) -> None:
        plan = plan_update(
            remote=remote(),
            desired_name="prod",
            desired_description="new",
            instance_url="https://octo.example",
            key_changed=False,
            recorded_hash="h1",
        )
        assert plan.description_changed
        assert not plan.push_credentials
        assert plan.name is None

    def test_rename(self) -> None:
        plan = plan_update(
            remote=remote(),
            desired_name="prod-2",
            desired_description="d",
            instance_url="https://octo.example",
            key_changed=False,
            recorded_hash="h1",
        )
        assert plan.name == "prod-2"
        assert not plan.push_credentials

    def test_url_change_pushes_credentials(self) -> None:
        plan = plan_update(
            remote=remote(),
            desired_name="prod",
            desired_description="d",
            instance_url="https://other.example",
            key_changed=False,
            recorded_hash="h1",
        )
        assert plan.push_credentials
        assert not plan.drift_repaired

    def test_rotated_key_pushes_credentials(self) -> None:
        plan = plan_update(
            remote=remote(),
            desired_name="prod",
            desired_description="d",
            instance_url="https://octo.example",
            key_changed=True,
            recorded_hash="h1",
        )
        assert plan.push_credentials

    def test_hash_changed_elsewhere_is_drift(self) -> None:
        plan = plan_update(
            remote=remote(credentials_hash="h2"),
            desired_name="prod",
            desired_description="d",
            instance_url="https://octo.example",
            key_changed=False,
            recorded_hash="h1",
        )
        assert plan.push_credentials
        assert plan.drift_repaired

    def test_empty_and_missing_description_are_equal(self) -> None:
        plan = plan_update(
            remote=remote(description=None),
            desired_name="prod",
            desired_description=None,
            instance_url="https://octo.example",
            key_changed=False,
            recorded_hash="h1",
        )
        assert plan.empty


class TestRetryDelay:
    kwargs = {"backoff_cap": 300.0, "auth_retry": 600.0, "wait_for_change": 900.0}

    def test_rate_limit_honours_retry_after(self) -> None:
        delay = retry_delay(errors.InfisicalRateLimited("slow down", retry_after=17), attempt=1, **self.kwargs)
        assert 17 <= delay <= 18

    def test_backoff_grows_and_is_capped(self) -> None:
        first = [retry_delay(errors.InfisicalUnavailable("x"), attempt=1, **self.kwargs) for _ in range(50)]
        late = [retry_delay(errors.InfisicalUnavailable("x"), attempt=30, **self.kwargs) for _ in range(50)]
        assert all(2.5 <= d <= 5 for d in first)
        assert all(150 <= d <= 300 for d in late)
        assert len(set(late)) > 1  # jittered

    def test_auth_failures_retry_slowly(self) -> None:
        delay = retry_delay(errors.InvalidApiKey("no"), attempt=1, **self.kwargs)
        assert 540 <= delay <= 660

    def test_validation_waits_for_a_change(self) -> None:
        delay = retry_delay(errors.SecretNotFound("no"), attempt=1, **self.kwargs)
        assert delay >= 810


class TestEvents:
    def test_events_only_on_transitions(self) -> None:
        before = OctopusDeployConnectionStatus()
        after = OctopusDeployConnectionStatus(
            conditions=summarize_ready(
                set_condition(
                    set_condition(
                        None,
                        type_=CREDENTIALS_VERIFIED,
                        status="True",
                        reason="ApiKeyValid",
                        message="ok",
                        generation=1,
                        now=T0,
                    ),
                    type_=SYNCED,
                    status="True",
                    reason="UpToDate",
                    message="ok",
                    generation=1,
                    now=T0,
                ),
                generation=1,
                now=T0,
            )
        )
        first = transition_events(before, after)
        assert [(e.type, e.reason) for e in first] == [("Normal", "Available")]
        assert transition_events(after, after) == []

        failed = OctopusDeployConnectionStatus(
            conditions=summarize_ready(
                set_condition(
                    after.conditions,
                    type_=CREDENTIALS_VERIFIED,
                    status="False",
                    reason="InvalidApiKey",
                    message="refused",
                    generation=1,
                    now=T1,
                ),
                generation=1,
                now=T1,
            )
        )
        # One Warning for the failure, not one per condition repeating the same message.
        assert [(e.type, e.reason, e.message) for e in transition_events(after, failed)] == [
            ("Warning", "InvalidApiKey", "refused")
        ]


class TestResource:
    @pytest.mark.parametrize(("annotation", "paused"), [("true", True), ("True ", True), ("false", False), ("", False)])
    def test_paused_annotation(self, annotation: str, paused: bool) -> None:
        body = {
            "metadata": {"name": "n", "namespace": "ns", "annotations": {"octoconn.dev/paused": annotation}},
            "spec": {"instanceUrl": "https://x", "apiKeySecretRef": {"name": "s"}},
        }
        assert Resource.from_body(body).paused is paused

    def test_connection_name_falls_back_to_metadata_name(self) -> None:
        body = {"metadata": {"name": "team-a"}, "spec": {"instanceUrl": "https://x", "apiKeySecretRef": {"name": "s"}}}
        assert Resource.from_body(body).connection_name == "team-a"
        body["spec"]["connectionName"] = "other"  # type: ignore[index]
        assert Resource.from_body(body).connection_name == "other"
