"""Tests of the Octopus double's projects, scope values, permissions and variable sets, over real sockets.

The table in tests/servers/octopus_projects.py maps each behaviour to these tests.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.servers.octopus import JSON_CONTENT_TYPE, NOT_FOUND_MESSAGE, OctopusServer
from tests.servers.octopus_projects import CONFLICT_MESSAGE, EMPTY_NAME_MESSAGE, NULL_REFERENCE_MESSAGE
from tests.servers.test_octopus_server import _Cli

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
VARIABLES = "/api/Spaces-1/projects/Projects-1/variables"


def call(server: OctopusServer, method: str, path: str, key: str, body: Any = None) -> httpx.Response:
    headers = {"X-Octopus-ApiKey": key, "Accept": "application/json", "Content-Type": "application/json"}
    return httpx.request(method, server.url + path, headers=headers, json=body, timeout=10)


def forbidden(response: httpx.Response, permission: str) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == JSON_CONTENT_TYPE
    assert response.json()["ErrorMessage"].endswith(f"Missing permission: {permission}")


def sensitive(name: str, value: str | None, **extra: Any) -> dict[str, Any]:
    return {"Name": name, "Value": value, "Type": "Sensitive", "IsSensitive": True, "Scope": {}, **extra}


def put(server: OctopusServer, key: str, variables: list[dict[str, Any]], path: str = VARIABLES) -> httpx.Response:
    document = call(server, "GET", path, key).json()
    return call(server, "PUT", path, key, {**document, "Variables": variables})


# --- Projects ------------------------------------------------------------------------------------------------------


def test_projects_all_is_a_plain_array_filtered_by_project_view(octopus: OctopusServer) -> None:
    second = octopus.state.projects.add_project("Spaces-1", "Web App")
    everything = octopus.state.issue_key()
    narrow = octopus.state.issue_key(permissions={"ProjectView"})
    octopus.state.projects.restrict(narrow, "ProjectView", projects=[second])

    all_projects = call(octopus, "GET", "/api/Spaces-1/projects/all", everything).json()
    assert isinstance(all_projects, list)
    assert [(p["Id"], p["Name"], p["Slug"]) for p in all_projects] == [
        ("Projects-1", "Hello World", "hello-world"),
        (second, "Web App", "web-app"),
    ]
    assert all_projects[0]["VariableSetId"] == "variableset-Projects-1"
    assert all_projects[0]["IsVersionControlled"] is False
    assert [p["Id"] for p in call(octopus, "GET", "/api/Spaces-1/projects/all", narrow).json()] == [second]


def test_paged_projects_filters_and_restrictions(octopus: OctopusServer) -> None:
    web = octopus.state.projects.add_project("Spaces-1", "Web App")
    api = octopus.state.projects.add_project("Spaces-1", "Web API")
    key = octopus.state.issue_key()

    def names(key: str, **params: str) -> list[str]:
        response = httpx.get(
            octopus.url + "/api/Spaces-1/projects", headers={"X-Octopus-ApiKey": key}, params=params, timeout=10
        )
        assert response.status_code == 200, response.text
        return [p["Name"] for p in response.json()["Items"]]

    assert names(key) == ["Hello World", "Web App", "Web API"]
    assert names(key, name="web app") == ["Web App"]
    assert names(key, partialName="WEB") == ["Web App", "Web API"]
    assert names(key, ids=f"{api},Projects-1") == ["Hello World", "Web API"]
    narrow = octopus.state.issue_key(permissions={"ProjectView"})
    octopus.state.projects.restrict(narrow, "ProjectView", projects=[web])
    assert names(narrow) == ["Web App"]


def test_project_by_id_or_slug_and_404s(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    other_space = octopus.state.add_space("Platform")
    elsewhere = octopus.state.projects.add_project(other_space, "Infra")

    by_id = call(octopus, "GET", "/api/Spaces-1/projects/Projects-1", key)
    by_slug = call(octopus, "GET", "/api/Spaces-1/projects/hello-world", key)
    assert by_id.status_code == by_slug.status_code == 200
    assert by_id.json() == by_slug.json()
    assert by_id.json()["Links"]["Variables"] == "/api/Spaces-1/projects/Projects-1/variables"
    for path in (
        "/api/Spaces-1/projects/Projects-99",
        f"/api/Spaces-1/projects/{elsewhere}",
        "/api/Spaces-9/projects/x",
    ):
        response = call(octopus, "GET", path, key)
        assert response.status_code == 404
        assert response.json()["ErrorMessage"] == NOT_FOUND_MESSAGE


def test_project_outside_restriction_is_forbidden(octopus: OctopusServer) -> None:
    second = octopus.state.projects.add_project("Spaces-1", "Web App")
    key = octopus.state.issue_key(permissions={"ProjectView"})
    octopus.state.projects.restrict(key, "ProjectView", projects=[second])

    forbidden(call(octopus, "GET", "/api/Spaces-1/projects/Projects-1", key), "ProjectView")
    assert call(octopus, "GET", f"/api/Spaces-1/projects/{second}", key).status_code == 200


def test_environments_all_and_channels(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    dev = octopus.state.projects.add_environment("Spaces-1", "Dev")
    prod = octopus.state.projects.add_environment("Spaces-1", "Production")
    hotfix = octopus.state.projects.add_channel("Projects-1", "Hotfix")

    environments = call(octopus, "GET", "/api/Spaces-1/environments/all", key).json()
    assert [(e["Id"], e["Name"], e["Slug"]) for e in environments] == [
        (dev, "Dev", "dev"),
        (prod, "Production", "production"),
    ]
    forbidden(
        call(octopus, "GET", "/api/Spaces-1/environments/all", octopus.state.issue_key(permissions={"ProjectView"})),
        "EnvironmentView",
    )
    channels = call(octopus, "GET", "/api/Spaces-1/projects/Projects-1/channels", key).json()
    assert channels["ItemType"] == "Channel"
    assert [(c["Name"], c["IsDefault"]) for c in channels["Items"]] == [("Default", True), ("Hotfix", False)]
    assert channels["Items"][1]["Id"] == hotfix


# --- Variable sets -------------------------------------------------------------------------------------------------


def test_variable_set_document_shape(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    response = call(octopus, "GET", VARIABLES, key)

    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_CONTENT_TYPE
    document = response.json()
    assert document["Id"] == "variableset-Projects-1"
    assert document["OwnerId"] == "Projects-1"
    assert document["SpaceId"] == "Spaces-1"
    assert document["Version"] == 0
    assert document["Variables"] == []
    assert document["Links"] == {"Self": VARIABLES}
    assert set(document) >= {"ScopeValues", "LastModifiedOn", "LastModifiedBy"}
    assert "ProjectId" not in document


def test_scope_values_list_every_kind(octopus: OctopusServer) -> None:
    projects = octopus.state.projects
    dev = projects.add_environment("Spaces-1", "Dev")
    machine = projects.add_machine("Spaces-1", "web-01", roles=["web-server"], environments=[dev])
    projects.add_role("Spaces-1", "db-server")
    tag = projects.add_tenant_tag("Spaces-1", "Region", "us-east")
    runbook = projects.add_runbook("Projects-1", "Rotate keys")
    action = projects.add_step("Projects-1", "Deploy web")

    values = call(octopus, "GET", VARIABLES, octopus.state.issue_key()).json()["ScopeValues"]

    assert values["Environments"] == [{"Id": dev, "Name": "Dev"}]
    assert values["Machines"] == [{"Id": machine, "Name": "web-01"}]
    assert values["Roles"] == [{"Id": "web-server", "Name": "web-server"}, {"Id": "db-server", "Name": "db-server"}]
    assert values["TenantTags"] == [{"Id": tag, "Name": "us-east"}]
    assert tag == "Region/us-east"
    assert [c["Name"] for c in values["Channels"]] == ["Default"]
    assert values["Processes"] == [
        {"ProcessType": "Deployment", "Id": "Projects-1", "Name": "Deployment process"},
        {"ProcessType": "Runbook", "Id": runbook, "Name": "Rotate keys"},
    ]
    assert values["Actions"] == [{"Id": action, "Name": "Deploy web"}]
    assert GUID.fullmatch(action)


def test_sensitive_values_are_never_returned(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    octopus.state.projects.set_variable("Projects-1", "DB_HOST", "db.internal")
    octopus.state.projects.set_variable("Projects-1", "DB_PASS", "hunter2", sensitive=True)
    octopus.state.projects.set_variable("Projects-1", "HALF", "half-secret", type_="Sensitive")

    got = call(octopus, "GET", VARIABLES, key)
    assert {v["Name"]: v["Value"] for v in got.json()["Variables"]} == {
        "DB_HOST": "db.internal",
        "DB_PASS": None,
        "HALF": None,
    }
    answer = put(octopus, key, [*got.json()["Variables"], sensitive("NEW", "s3cret")])
    assert answer.status_code == 200
    for value in ("hunter2", "s3cret", "half-secret"):
        assert value not in answer.text
    stored = {v["Name"]: v["Value"] for v in octopus.state.projects.variables("Projects-1")}
    assert stored == {"DB_HOST": "db.internal", "DB_PASS": "hunter2", "HALF": "half-secret", "NEW": "s3cret"}


def test_three_routes_serve_one_set(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    octopus.state.projects.set_variable("Projects-1", "A", "1")
    paths = [
        VARIABLES,
        "/api/spaces/Spaces-1/projects/Projects-1/variables",
        "/api/Spaces-1/variables/variableset-Projects-1",
    ]
    documents = [call(octopus, "GET", p, key).json() for p in paths]
    assert documents[0] == documents[1] == documents[2]

    assert put(octopus, key, [sensitive("B", "2")], path=paths[2]).status_code == 200
    assert [v["Name"] for v in call(octopus, "GET", paths[0], key).json()["Variables"]] == ["B"]


def test_put_accepts_the_echoed_document(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    octopus.state.projects.add_environment("Spaces-1", "Dev")
    document = call(octopus, "GET", VARIABLES, key).json()
    assert "ProjectId" not in document

    answer = call(octopus, "PUT", VARIABLES, key, {**document, "Variables": [sensitive("A", "1")]})

    assert answer.status_code == 200, answer.text
    assert answer.json()["ScopeValues"] == document["ScopeValues"]


def test_put_new_ids_and_version_bump(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    first = put(octopus, key, [sensitive("A", "1"), {"Name": "B", "Value": "2", "Type": "String", "Scope": {}}])
    assert first.status_code == 200
    body = first.json()
    assert body["Version"] == 1
    assert all(GUID.fullmatch(v["Id"]) for v in body["Variables"])
    assert body["LastModifiedBy"] == "admin"
    assert body["LastModifiedOn"] is not None

    # Nothing changed, yet Octopus stores a new version.
    again = call(octopus, "PUT", VARIABLES, key, body)
    assert again.json()["Version"] == 2
    assert [v["Id"] for v in again.json()["Variables"]] == [v["Id"] for v in body["Variables"]]
    assert octopus.state.projects.version("Projects-1") == 2


def test_sensitive_value_kept_by_id(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    kept_id = octopus.state.projects.set_variable("Projects-1", "PASS", "hunter2", sensitive=True)
    emptied_id = octopus.state.projects.set_variable("Projects-1", "OTHER", "x", sensitive=True)
    document = call(octopus, "GET", VARIABLES, key).json()
    by_id = {v["Id"]: v for v in document["Variables"]}
    by_id[emptied_id]["Value"] = ""

    assert call(octopus, "PUT", VARIABLES, key, document).status_code == 200

    stored = {v["Id"]: v["Value"] for v in octopus.state.projects.variables("Projects-1")}
    assert stored == {kept_id: "hunter2", emptied_id: "x"}


def test_sensitive_update_and_empty_new(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    variable_id = octopus.state.projects.set_variable("Projects-1", "PASS", "old", sensitive=True)
    document = call(octopus, "GET", VARIABLES, key).json()
    document["Variables"][0]["Value"] = "new"
    document["Variables"].append(sensitive("EMPTY", None))

    assert call(octopus, "PUT", VARIABLES, key, document).status_code == 200

    stored = {v["Name"]: (v["Id"], v["Value"]) for v in octopus.state.projects.variables("Projects-1")}
    assert stored["PASS"] == (variable_id, "new")
    assert stored["EMPTY"][1] == ""


def test_stale_version_is_a_conflict(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    stale = call(octopus, "GET", VARIABLES, key).json()
    assert put(octopus, key, [sensitive("A", "1")]).status_code == 200  # someone else saved in between

    response = call(octopus, "PUT", VARIABLES, key, {**stale, "Variables": [sensitive("B", "2")]})

    assert response.status_code == 400
    assert response.json() == {"ErrorMessage": "There was a problem with your request.", "Errors": [CONFLICT_MESSAGE]}
    assert [v["Name"] for v in octopus.state.projects.variables("Projects-1")] == ["A"]
    assert octopus.state.projects.version("Projects-1") == 1
    without_version = {k: v for k, v in stale.items() if k != "Version"}
    assert call(octopus, "PUT", VARIABLES, key, without_version).status_code == 400  # absent counts as 0


def test_variable_without_type_is_500(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    response = put(octopus, key, [{"Name": "A", "Value": "1", "Scope": {}}])
    assert response.status_code == 500
    assert response.json()["ErrorMessage"] == NULL_REFERENCE_MESSAGE
    assert octopus.state.projects.version("Projects-1") == 0


def test_variable_without_name_is_400(octopus: OctopusServer) -> None:
    response = put(octopus, octopus.state.issue_key(), [sensitive("", "1")])
    assert response.status_code == 400
    assert response.json()["Errors"] == [EMPTY_NAME_MESSAGE]


def test_names_case_sensitive_duplicates_allowed(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    variables = [
        sensitive("DB_PASS", "a"),
        sensitive("db_pass", "b"),
        {"Name": "DB_PASS", "Value": "plain", "Type": "String", "IsSensitive": False, "Scope": {}},
    ]
    assert put(octopus, key, variables).status_code == 200
    stored = [(v["Name"], v["Value"]) for v in octopus.state.projects.variables("Projects-1")]
    assert stored == [("DB_PASS", "a"), ("db_pass", "b"), ("DB_PASS", "plain")]


# --- Permissions ---------------------------------------------------------------------------------------------------


def test_variables_need_variable_view(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key(permissions={"ProjectView", "VariableEdit"})
    forbidden(call(octopus, "GET", VARIABLES, key), "VariableView")


def test_variable_edit_restricted_to_projects(octopus: OctopusServer) -> None:
    second = octopus.state.projects.add_project("Spaces-1", "Web App")
    key = octopus.state.issue_key(permissions={"ProjectView", "VariableView", "VariableEdit"})
    octopus.state.projects.restrict(key, "VariableEdit", projects=[second])

    forbidden(put(octopus, key, [sensitive("A", "1")]), "VariableEdit")
    assert octopus.state.projects.version("Projects-1") == 0
    assert (
        put(octopus, key, [sensitive("A", "1")], path=f"/api/Spaces-1/projects/{second}/variables").status_code == 200
    )


def test_environment_restricted_edit_needs_unscoped_for_unscoped(octopus: OctopusServer) -> None:
    dev = octopus.state.projects.add_environment("Spaces-1", "Dev")
    key = octopus.state.issue_key(permissions={"ProjectView", "VariableView", "VariableEdit"})
    octopus.state.projects.restrict(key, "VariableEdit", environments=[dev])

    forbidden(put(octopus, key, [sensitive("A", "1")]), "VariableEditUnscoped")
    assert put(octopus, key, [sensitive("A", "1", Scope={"Environment": [dev]})]).status_code == 200

    unscoped = octopus.state.issue_key(
        permissions={"ProjectView", "VariableView", "VariableEdit", "VariableEditUnscoped"}
    )
    octopus.state.projects.restrict(unscoped, "VariableEdit", environments=[dev])
    assert put(octopus, unscoped, [sensitive("B", "1")]).status_code == 200


def test_environment_restricted_edit_other_environment(octopus: OctopusServer) -> None:
    dev = octopus.state.projects.add_environment("Spaces-1", "Dev")
    prod = octopus.state.projects.add_environment("Spaces-1", "Prod")
    octopus.state.projects.set_variable("Projects-1", "PROD_ONLY", "p", sensitive=True, scope={"Environment": [prod]})
    key = octopus.state.issue_key(permissions={"ProjectView", "VariableView", "VariableEdit"})
    octopus.state.projects.restrict(key, "VariableEdit", environments=[dev])

    # Dropping the Prod variable touches an environment the key may not edit.
    forbidden(put(octopus, key, [sensitive("A", "1", Scope={"Environment": [dev]})]), "VariableEdit")
    document = call(octopus, "GET", VARIABLES, key).json()
    keep_prod = [*document["Variables"], sensitive("A", "1", Scope={"Environment": [dev]})]
    assert call(octopus, "PUT", VARIABLES, key, {**document, "Variables": keep_prod}).status_code == 200


def test_permissions_endpoint_lists_restrictions(octopus: OctopusServer) -> None:
    dev = octopus.state.projects.add_environment("Spaces-1", "Dev")
    key = octopus.state.issue_key(permissions={"ProjectView", "VariableView", "VariableEdit"})
    octopus.state.projects.restrict(key, "VariableEdit", projects=["Projects-1"], environments=[dev])

    response = call(octopus, "GET", "/api/users/Users-1/permissions", key)

    assert response.status_code == 200
    body = response.json()
    assert set(body["SpacePermissions"]) == {"ProjectView", "VariableView", "VariableEdit"}
    assert body["SpacePermissions"]["VariableView"] == [
        {
            "SpaceId": "Spaces-1",
            "RestrictedToProjectIds": [],
            "RestrictedToEnvironmentIds": [],
            "RestrictedToTenantIds": [],
            "RestrictedToProjectGroupIds": [],
        }
    ]
    edit = body["SpacePermissions"]["VariableEdit"][0]
    assert edit["RestrictedToProjectIds"] == ["Projects-1"]
    assert edit["RestrictedToEnvironmentIds"] == [dev]
    full = call(octopus, "GET", "/api/users/Users-1/permissions", octopus.state.issue_key()).json()
    assert {"VariableEdit", "VariableEditUnscoped", "VariableView", "ProjectView"} <= set(full["SpacePermissions"])


def test_permissions_of_another_user_is_forbidden(octopus: OctopusServer) -> None:
    forbidden(call(octopus, "GET", "/api/users/Users-2/permissions", octopus.state.issue_key()), "UserView")


def test_variables_unknown_space_or_project_is_404(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    for path in (
        "/api/Spaces-9/projects/Projects-1/variables",
        "/api/Spaces-1/projects/Projects-99/variables",
        "/api/Spaces-1/projects/hello-world/variables",
    ):
        for method in ("GET", "PUT"):
            response = call(octopus, method, path, key, {"Variables": []} if method == "PUT" else None)
            assert response.status_code == 404, (method, path)
            assert response.json()["ErrorMessage"] == NOT_FOUND_MESSAGE


@pytest.mark.parametrize("validate", [False, True])
def test_scope_id_validation_switch(octopus: OctopusServer, validate: bool) -> None:
    octopus.state.projects.validate_scope_ids = validate
    response = put(
        octopus, octopus.state.issue_key(), [sensitive("A", "1", Scope={"Environment": ["Environments-99"]})]
    )
    if validate:
        assert response.status_code == 400
        assert response.json()["Errors"] == ["The scope value 'Environments-99' is not valid for Environment."]
    else:
        assert response.status_code == 200


def test_seeding_and_reading_back_values(octopus: OctopusServer) -> None:
    project = octopus.state.projects.add_project("Spaces-1", "Seeded")
    variable_id = octopus.state.projects.set_variable(project, "TOKEN", "t0k3n", sensitive=True, description="d")
    assert octopus.state.projects.variables(project) == [
        {
            "Id": variable_id,
            "Name": "TOKEN",
            "Value": "t0k3n",
            "Description": "d",
            "Scope": {},
            "IsEditable": True,
            "Prompt": None,
            "Type": "Sensitive",
            "IsSensitive": True,
        }
    ]
    assert octopus.state.projects.version(project) == 1
    with pytest.raises(KeyError):
        octopus.state.projects.variables("Projects-99")


def test_cli_seed_project() -> None:
    seed = "API-SEEDSEEDSEEDSEEDSEEDSEEDSE"
    cli = _Cli("--port", "0", "--seed-key", seed, "--seed-project", "Web App", "--seed-environment", "Dev")
    try:
        url = cli.wait_for("octopus test server listening on")
        project = cli.wait_for("seeded:")
        environment = cli.wait_for("seeded:")
        assert project == "Projects-2 Web App"
        assert environment == "Environments-1 Dev"
        response = httpx.get(
            url + "/api/Spaces-1/projects/Projects-2/variables", headers={"X-Octopus-ApiKey": seed}, timeout=10
        )
        assert response.status_code == 200
        assert response.json()["ScopeValues"]["Environments"] == [{"Id": "Environments-1", "Name": "Dev"}]
    finally:
        assert cli.stop() == 0
