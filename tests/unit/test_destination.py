"""Pure decisions of ``octoconn.destination``: the names a sync writes, and those Octopus would then hold twice."""

from __future__ import annotations

import pytest

from octoconn.destination import clash_message, clashing_names, managed_by_infisical, variable_names
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
