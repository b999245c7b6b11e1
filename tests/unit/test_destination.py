"""Pure decisions of ``octoconn.destination``: the names a sync writes, those Octopus would then hold twice, and
those a keySchema change leaves behind."""

from __future__ import annotations

import pytest

from octoconn.conditions import set_condition, utcnow
from octoconn.destination import (
    CLASH_REASON,
    clash_events,
    clash_message,
    clashing_names,
    left_behind_event,
    left_under_old_schema,
    managed_by_infisical,
    matches_schema,
    schema_change,
    variable_names,
)
from octoconn.models import Condition
from octoconn.remote import OctopusVariable


def plain(name: str) -> OctopusVariable:
    return OctopusVariable(name=name, type="String", is_sensitive=False)


def sensitive(name: str) -> OctopusVariable:
    return OctopusVariable(name=name, type="Sensitive", is_sensitive=True)


@pytest.mark.parametrize(
    ("variable", "managed"),
    [
        (sensitive("A"), True),
        (plain("A"), False),
        # Infisical's split: either mark makes a variable its own.
        (OctopusVariable(name="A", type="String", is_sensitive=True), True),
        (OctopusVariable(name="A", type="Sensitive", is_sensitive=False), True),
        (OctopusVariable(name="A", type="Certificate", is_sensitive=False), False),
        (OctopusVariable(name="A", type=None, is_sensitive=False), False),
    ],
)
def test_managed_by_infisical_as_infisical_splits_the_set(variable: OctopusVariable, managed: bool) -> None:
    assert managed_by_infisical(variable) is managed


def test_variable_names_apply_the_key_schema() -> None:
    keys = ["DB_PASS", "API_TOKEN", "DB_PASS"]
    assert variable_names(keys, key_schema=None, environment="prod") == ["DB_PASS", "API_TOKEN"]
    assert variable_names(keys, key_schema="WEB_{{secretKey}}", environment="prod") == ["WEB_DB_PASS", "WEB_API_TOKEN"]
    assert variable_names(["X"], key_schema="{{environment}}.{{secretKey}}.v1", environment="dev") == ["dev.X.v1"]


def test_a_non_sensitive_variable_with_a_written_name_clashes() -> None:
    project = [plain("DB_PASS"), sensitive("API_TOKEN"), plain("Unrelated"), plain("db_host")]
    written = ["API_TOKEN", "DB_PASS", "DB_HOST", "NEW_ONE"]
    # API_TOKEN is sensitive: Infisical replaces it, nothing is left twice. db_host differs in case only, which
    # Infisical does not see and Octopus does: a clash.
    assert clashing_names(project, written) == ["DB_PASS", "DB_HOST"]


def test_no_clash_without_variables_or_with_a_key_schema_that_keeps_names_apart() -> None:
    assert clashing_names([], ["DB_PASS"]) == []
    assert clashing_names([plain("DB_PASS")], []) == []
    written = variable_names(["DB_PASS"], key_schema="WEB_{{secretKey}}", environment="prod")
    assert clashing_names([plain("DB_PASS")], written) == []
    assert clashing_names([plain("DB_PASS"), plain("DB_PASS")], ["DB_PASS", "DB_PASS"]) == ["DB_PASS"]


def test_clash_message_names_the_variables_and_the_fix() -> None:
    message = clash_message(["DB_PASS", "DB_HOST"], where="Octopus project Web (Projects-1)")
    assert message.startswith(
        "Octopus project Web (Projects-1) already has non-sensitive variables named DB_PASS, DB_HOST"
    )
    assert "keySchema" in message
    many = clash_message([f"V{i}" for i in range(12)], where="P")
    assert "V9 and 2 more" in many
    assert "V10" not in many


@pytest.mark.parametrize(
    ("name", "schema", "matches"),
    [
        ("ANYTHING", None, True),  # no schema: every name is the sync's
        ("WEB_DB", "WEB_{{secretKey}}", True),
        ("WEB_", "WEB_{{secretKey}}", True),  # prefix and suffix may meet
        ("APP_DB", "WEB_{{secretKey}}", False),
        ("prod_DB_x", "{{environment}}_{{secretKey}}_x", True),
        ("dev_DB_x", "{{environment}}_{{secretKey}}_x", False),
        ("a/DB", "a/{{secretKey}}", True),
        ("a/b/DB", "a/{{secretKey}}", False),  # with a / in the prefix, the key part holds none
    ],
)
def test_matches_schema_is_infisicals_deletion_pattern(name: str, schema: str | None, matches: bool) -> None:
    assert matches_schema(name, schema, "prod") is matches


def test_a_schema_change_leaves_the_sensitive_names_only_the_old_schema_matches() -> None:
    variables = [sensitive("OLD_A"), sensitive("OLD_B"), plain("OLD_C"), sensitive("NEW_A"), sensitive("OTHER")]
    old, new = ("OLD_{{secretKey}}", "prod"), ("NEW_{{secretKey}}", "prod")
    assert left_under_old_schema(variables, old=old, new=new) == ["OLD_A", "OLD_B"]
    # From no schema every sensitive name matched; to no schema every one still does.
    assert left_under_old_schema(variables, old=(None, "prod"), new=new) == ["OLD_A", "OLD_B", "OTHER"]
    assert left_under_old_schema(variables, old=old, new=(None, "prod")) == []
    event = left_behind_event(variables, old=("OLD_{{secretKey}}", "prod"), new=new, where="Octopus project Web")
    assert event is not None
    assert (event.type, event.reason) == ("Warning", "VariablesLeftInOctopus")
    assert "OLD_A, OLD_B of Octopus project Web" in event.message
    assert left_behind_event([plain("OLD_C")], old=("OLD_{{secretKey}}", "prod"), new=new, where="x") is None


def test_schema_change_compares_none_and_absent_alike() -> None:
    assert schema_change(None, None) is None
    assert schema_change("", None) is None
    assert schema_change("A_{{secretKey}}", "A_{{secretKey}}") is None
    assert schema_change("A_{{secretKey}}", "B_{{secretKey}}") == "A_{{secretKey}}"
    assert schema_change(None, "B_{{secretKey}}") == ""


def _verified(reason: str, message: str) -> Condition:
    (condition,) = set_condition(
        None, type_="DestinationVerified", status="True", reason=reason, message=message, generation=1, now=utcnow()
    )
    return condition


def test_clash_events_once_per_finding() -> None:
    clash = _verified(CLASH_REASON, "names DB_PASS")
    (event,) = clash_events(None, clash)
    assert (event.type, event.reason, event.message) == ("Warning", CLASH_REASON, "names DB_PASS")
    assert clash_events(clash, clash) == []  # the same finding again: remembered in status
    assert len(clash_events(clash, _verified(CLASH_REASON, "names DB_PASS, API"))) == 1  # a new finding
    assert clash_events(clash, _verified("DestinationVerified", "ok")) == []
