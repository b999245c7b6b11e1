"""Pure decisions of ``octoconn.reconcile``: conditions, Ready summary, patch plans, retry delays."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from octoconn import errors
from octoconn.conditions import READY, retry_delay, rfc3339, set_condition, transition_events
from octoconn.models import Condition, OctopusDeployConnectionStatus
from octoconn.reconcile import (
    CREDENTIALS_VERIFIED,
    KEY_EXPIRING_SOON,
    SYNCED,
    Resource,
    ignored_by_infisical,
    js_trim,
    key_expiry_events,
    key_expiry_message,
    plan_update,
    stored_description,
    summarize_ready,
)
from octoconn.remote import AppConnection, OctopusIdentity
from octoconn.stores import StatusMemory

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


# --- what Infisical stores, and what it did not do -----------------------------------------------------------------
def test_values_are_compared_as_infisical_stores_them() -> None:
    assert js_trim("\ufeff API-KEY \r\n") == "API-KEY"  # JavaScript's trim also removes a byte-order mark
    assert stored_description("  Production  ") == "Production"
    assert stored_description("   ") is None
    assert stored_description(None) is None
    plan = plan_update(
        remote=remote(description="Production"),
        desired_name="prod",
        desired_description=" Production\n",
        instance_url="https://octo.example",
        key_changed=False,
        recorded_hash="h1",
    )
    assert plan.empty


def test_ignored_by_infisical_names_each_difference() -> None:
    asked = {"name": "prod", "description": "d", "instance_url": "https://octo.example"}
    assert ignored_by_infisical(remote(), project_id=None, **asked) == []
    (dropped,) = ignored_by_infisical(remote(), project_id="p1", **asked)
    assert "ignored projectId p1" in dropped
    assert "does not support project-level app connections" in dropped
    problems = ignored_by_infisical(
        remote(name="other", description="x", instance_url="https://elsewhere"), project_id=None, **asked
    )
    assert problems == [
        'it stored the name "other" instead of "prod"',
        "it stored the description 'x' instead of 'd'",
        "it stored the instance URL 'https://elsewhere' instead of 'https://octo.example'",
    ]


class _Kube:
    def __init__(self) -> None:
        self.stored: dict[str, Any] = {}

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, plural: str = ""
    ) -> dict[str, Any] | None:
        return {"metadata": {"namespace": namespace, "name": name, "uid": "u1"}, "status": dict(status)}


async def test_status_memory_puts_our_last_write_into_an_older_body() -> None:
    memory = StatusMemory(_Kube())  # type: ignore[arg-type]
    old = {"metadata": {"namespace": "ns", "name": "a", "uid": "u1"}, "status": {"pendingCreate": {"name": "a"}}}
    assert memory.view(old) == old
    await memory.patch_status("ns", "a", {"id": "c1"})
    assert memory.view(old)["status"] == {"id": "c1"}  # the watch has not delivered our write yet
    assert memory.view({**old, "metadata": {**old["metadata"], "uid": "u2"}})["status"] == old["status"]  # recreated
    await memory.patch_status("ns", "a", {"id": "c1"})
    caught_up = {**old, "status": {"id": "c1"}, "spec": {"description": "newer"}}
    assert memory.view(caught_up) == caught_up
    assert memory.view(old) == old  # once caught up, the body is the truth again


async def test_status_memory_never_hides_a_later_write_by_another_process() -> None:
    class Versioned(_Kube):
        async def patch_status(
            self, namespace: str, name: str, status: Mapping[str, Any], *, plural: str = ""
        ) -> dict[str, Any] | None:
            stored = await super().patch_status(namespace, name, status, plural=plural)
            assert stored is not None
            stored["metadata"]["resourceVersion"] = "120"
            return stored

    memory = StatusMemory(Versioned())  # type: ignore[arg-type]
    await memory.patch_status("ns", "a", {"reason": "ours"})
    meta = {"namespace": "ns", "name": "a", "uid": "u1"}
    older = {"metadata": {**meta, "resourceVersion": "119"}, "status": {}}
    assert memory.view(older)["status"] == {"reason": "ours"}  # the watch lags behind our write
    # A second operator process wrote after us: its status is the truth, not the one we remember.
    later = {"metadata": {**meta, "resourceVersion": "121"}, "status": {"id": "c1", "reason": "theirs"}}
    assert memory.view(later)["status"] == {"id": "c1", "reason": "theirs"}
    assert memory.view(older)["status"] == {}  # the memory is gone once a later body was seen


def test_a_status_without_an_id_never_erases_a_recorded_one() -> None:
    from octoconn.sync_models import OctopusDeploySecretSyncStatus

    # A pass working from a view older than the record (another process's status write it has not seen) must not
    # write id: null over the id that proves the connection is this resource's.
    assert {"id", "version", "credentialsHash"}.isdisjoint(OctopusDeployConnectionStatus().to_patch())
    assert OctopusDeployConnectionStatus().to_patch()["conditions"] is None  # other fields still clear stale values
    assert OctopusDeployConnectionStatus(id="c1").to_patch()["id"] == "c1"
    assert "id" not in OctopusDeploySecretSyncStatus().to_patch()
    assert OctopusDeploySecretSyncStatus(id="s1").to_patch()["id"] == "s1"


# --- key-expiry warning ------------------------------------------------------------------------------------------
WINDOW = timedelta(days=14)


def identity(expires: datetime | None) -> OctopusIdentity:
    return OctopusIdentity(
        user_id="Users-1",
        username="ci",
        display_name=None,
        is_service=True,
        server_version=None,
        key_expires_at=expires,
    )


def verified(
    reason: str, *, status: str = "True", expires: datetime | None, at: datetime
) -> OctopusDeployConnectionStatus:
    return OctopusDeployConnectionStatus.model_validate(
        {
            "conditions": [
                {
                    "type": CREDENTIALS_VERIFIED,
                    "status": status,
                    "reason": reason,
                    "message": "m",
                    "lastTransitionTime": "x",
                }
            ],
            "octopus": {"userId": "Users-1", "username": "ci", "keyExpiresAt": rfc3339(expires) if expires else None},
            "lastVerifiedTime": rfc3339(at),
        }
    )


@pytest.mark.parametrize(
    ("expires_in", "expected"),
    [
        (timedelta(days=20), None),
        (timedelta(days=14), "in 14 days"),
        (timedelta(days=1, hours=2), "in 1 day)"),
        (timedelta(hours=3), "in less than a day"),
    ],
)
def test_key_expiry_message(expires_in: timedelta, expected: str | None) -> None:
    message = key_expiry_message(identity(T0 + expires_in), "team/key", now=T0, window=WINDOW)
    if expected is None:
        assert message is None
    else:
        assert message is not None
        assert expected in message
        assert "Secret team/key" in message


def test_key_expiry_message_off_or_unknown() -> None:
    assert key_expiry_message(identity(T0 + timedelta(days=1)), "s", now=T0, window=timedelta(0)) is None
    assert key_expiry_message(identity(None), "s", now=T0, window=WINDOW) is None


def test_key_expiry_warning_once_per_key_even_across_an_outage() -> None:
    soon = T0 + timedelta(days=5)
    first_seen = verified(KEY_EXPIRING_SOON, expires=soon, at=T1)
    # First time in the window: one Warning.
    assert [
        e.reason
        for e in key_expiry_events(
            verified("ApiKeyValid", expires=soon, at=T0 - timedelta(days=10)), first_seen, window=WINDOW
        )
    ] == [KEY_EXPIRING_SOON]
    # The next pass, and the pass after an outage (the status in between says OctopusUnreachable): none.
    assert key_expiry_events(first_seen, verified(KEY_EXPIRING_SOON, expires=soon, at=T1), window=WINDOW) == []
    outage = verified("OctopusUnreachable", status="Unknown", expires=soon, at=T1)
    assert key_expiry_events(outage, verified(KEY_EXPIRING_SOON, expires=soon, at=T1), window=WINDOW) == []
    # A new key that also expires soon: warned again. Not in the window: nothing.
    other = verified(KEY_EXPIRING_SOON, expires=soon + timedelta(days=1), at=T1)
    assert [e.type for e in key_expiry_events(first_seen, other, window=WINDOW)] == ["Warning"]
    assert (
        key_expiry_events(first_seen, verified("ApiKeyValid", expires=T0 + timedelta(days=180), at=T1), window=WINDOW)
        == []
    )
