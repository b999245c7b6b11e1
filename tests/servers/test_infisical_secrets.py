"""Tests of the Infisical double's environments, folders and secrets (tests/servers/infisical_secrets.py's table)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.servers.infisical import InfisicalServer
from tests.servers.test_infisical_server import assert_error, client_for

RAW = "/api/v3/secrets/raw"
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
OTHER_ORG = "11111111-1111-4111-8111-111111111111"


@pytest.fixture
def api(infisical: InfisicalServer) -> Iterator[httpx.Client]:
    with client_for(infisical) as client:
        yield client


@pytest.fixture
def project(infisical: InfisicalServer) -> str:
    return infisical.state.add_project()


def where(project: str, path: str = "/", environment: str = "prod") -> dict[str, Any]:
    return {"workspaceId": project, "environment": environment, "secretPath": path}


def test_projects_start_with_three_environments(infisical: InfisicalServer, project: str) -> None:
    environments = infisical.state.secrets.environments(project)
    assert [(e["name"], e["slug"]) for e in environments] == [
        ("Development", "dev"),
        ("Staging", "staging"),
        ("Production", "prod"),
    ]
    for slug in ("dev", "staging", "prod"):
        assert infisical.state.secrets.folder_id(project, slug, "/") is not None


def test_secret_crud_over_http(api: httpx.Client, infisical: InfisicalServer, project: str) -> None:
    created = api.post(f"{RAW}/DB_PASS", json={**where(project), "secretValue": "hunter2", "secretComment": "db"})
    assert created.status_code == 200, created.text
    secret = created.json()["secret"]
    assert secret["secretKey"] == "DB_PASS"
    assert secret["secretValue"] == "hunter2"
    assert secret["secretComment"] == "db"
    assert secret["version"] == 1
    assert secret["type"] == "shared"
    assert secret["workspace"] == project
    assert secret["environment"] == "prod"
    assert secret["secretPath"] == "/"
    assert ISO_MS.fullmatch(secret["createdAt"])
    assert secret["id"] == secret["_id"]

    got = api.get(f"{RAW}/DB_PASS", params=where(project))
    assert got.json()["secret"] == secret
    listed = api.get(RAW, params=where(project)).json()
    assert listed == {"secrets": [secret], "imports": []}

    updated = api.patch(f"{RAW}/DB_PASS", json={**where(project), "secretValue": "new"})
    assert updated.json()["secret"]["secretValue"] == "new"
    assert updated.json()["secret"]["version"] == 2
    assert updated.json()["secret"]["secretComment"] == "db"
    assert infisical.state.secrets.secrets(project, "prod", "/") == {"DB_PASS": "new"}

    deleted = api.request("DELETE", f"{RAW}/DB_PASS", json=where(project))
    assert deleted.json()["secret"]["secretValue"] == "new"
    assert infisical.state.secrets.secrets(project, "prod", "/") == {}


def test_listing_without_values(api: httpx.Client, infisical: InfisicalServer, project: str) -> None:
    # What the operator asks for when it only needs the names: Infisical masks every value.
    infisical.state.secrets.set_secret(project, "prod", "/", "DB_PASS", "hunter2")
    listed = api.get(RAW, params={**where(project), "viewSecretValue": "false"}).json()["secrets"]
    assert [(s["secretKey"], s["secretValue"], s["secretValueHidden"]) for s in listed] == [
        ("DB_PASS", "<hidden-by-infisical>", True)
    ]
    assert "hunter2" not in json.dumps(listed)
    shown = api.get(RAW, params={**where(project), "viewSecretValue": "true"}).json()["secrets"]
    assert [(s["secretValue"], s["secretValueHidden"]) for s in shown] == [("hunter2", False)]


def test_duplicate_and_missing_secrets(api: httpx.Client, project: str) -> None:
    assert api.post(f"{RAW}/A", json={**where(project), "secretValue": "1"}).status_code == 200
    assert_error(api.post(f"{RAW}/A", json={**where(project), "secretValue": "2"}), 400, "Secret already exist")
    assert_error(api.get(f"{RAW}/B", params=where(project)), 404, "Secret with name 'B' not found")
    assert_error(
        api.patch(f"{RAW}/B", json={**where(project), "secretValue": "x"}), 404, "Secret with name 'B' not found"
    )


def test_unknown_project_environment_or_folder(api: httpx.Client, project: str) -> None:
    assert_error(api.get(RAW, params=where("nope")), 404, "Project with ID 'nope' not found")
    assert_error(
        api.get(RAW, params=where(project, environment="qa")),
        404,
        f"Environment with slug 'qa' in project with ID {project} not found",
    )
    assert_error(
        api.post(f"{RAW}/A", json={**where(project, "/missing"), "secretValue": "1"}),
        404,
        "Folder with path '/missing' in environment with slug 'prod' not found",
    )


def test_project_of_another_org_is_forbidden(api: httpx.Client, infisical: InfisicalServer) -> None:
    foreign = infisical.state.add_project(org_id=OTHER_ORG)
    assert api.get(RAW, params=where(foreign)).status_code == 403


def test_folders_create_and_list(api: httpx.Client, infisical: InfisicalServer, project: str) -> None:
    apps = api.post("/api/v1/folders", json={"workspaceId": project, "environment": "prod", "name": "apps"})
    assert apps.status_code == 200
    assert apps.json()["folder"]["path"] == "/apps"
    web = api.post(
        "/api/v1/folders", json={"workspaceId": project, "environment": "prod", "name": "web", "path": "/apps"}
    )
    assert web.json()["folder"]["path"] == "/apps/web"
    assert web.json()["folder"]["id"] == infisical.state.secrets.folder_id(project, "prod", "/apps/web")
    listed = api.get("/api/v1/folders", params={"workspaceId": project, "environment": "prod", "path": "/"})
    assert [f["name"] for f in listed.json()["folders"]] == ["apps"]
    bad = api.post("/api/v1/folders", json={"workspaceId": project, "environment": "prod", "name": "a b"})
    assert bad.status_code == 422
    assert api.post(f"{RAW}/X", json={**where(project, "/apps/web/"), "secretValue": "1"}).status_code == 200


def test_environment_create(api: httpx.Client, infisical: InfisicalServer, project: str) -> None:
    created = api.post(f"/api/v1/workspace/{project}/environments", json={"name": "QA", "slug": "qa"})
    assert created.status_code == 200
    assert created.json()["environment"]["slug"] == "qa"
    assert infisical.state.secrets.folder_id(project, "qa", "/") is not None
    duplicate = api.post(f"/api/v1/workspace/{project}/environments", json={"name": "QA", "slug": "qa"})
    assert_error(duplicate, 400, "Environment with slug already exist")
    assert api.post(f"/api/v1/workspace/{project}/environments", json={"slug": "Bad Slug"}).status_code == 422


def test_unknown_folder_lists_empty(api: httpx.Client, project: str) -> None:
    assert api.get(RAW, params=where(project, "/nowhere")).json() == {"secrets": [], "imports": []}


def test_writes_notify_listeners(api: httpx.Client, infisical: InfisicalServer, project: str) -> None:
    seen: list[tuple[str, str, str]] = []
    infisical.state.secrets.listeners.append(lambda *where_: seen.append(where_))
    infisical.state.secrets.add_folder(project, "dev", "/a")
    api.post(f"{RAW}/A", json={**where(project, "/a/", "dev"), "secretValue": "1"})
    api.patch(f"{RAW}/A", json={**where(project, "/a", "dev"), "secretValue": "2"})
    api.request("DELETE", f"{RAW}/A", json=where(project, "/a", "dev"))
    infisical.state.secrets.set_secret(project, "prod", "/", "B", "1")
    assert seen == [(project, "dev", "/a")] * 3 + [(project, "prod", "/")]


def test_seeding_api(infisical: InfisicalServer, project: str) -> None:
    secrets = infisical.state.secrets
    secrets.set_secret(project, "prod", "/apps/web", "A", "1")  # folders made as needed
    assert secrets.secrets(project, "prod", "/apps/web") == {"A": "1"}
    secrets.delete_secret(project, "prod", "/apps/web", "A")
    assert secrets.secrets(project, "prod", "/apps/web") == {}
    with pytest.raises(KeyError):
        secrets.delete_secret(project, "prod", "/apps/web", "A")
    secrets.delete_folder(project, "prod", "/apps")
    assert secrets.folder_id(project, "prod", "/apps/web") is None
    assert secrets.folder_id(project, "prod", "/") is not None
    with pytest.raises(KeyError):
        secrets.environments("no-such-project")
