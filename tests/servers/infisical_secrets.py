"""Environments, folders and secrets of Infisical projects, for the Infisical test double.

A secret sync reads one project's secrets at an environment and folder, and a secret change there queues the syncs
of that folder. This module keeps that source side: ``state.secrets`` (a ``SecretStore``) for tests, and the few
REST routes a client or the demo uses to read and write secrets (Infisical's v3 "raw" secrets API, folders and
environments). infisical.py only creates the store and registers the routes.

Routes (machine-identity Bearer token; ``workspaceId`` also accepted as ``projectId``):

| Route | Body / query | 200 body |
|---|---|---|
| GET /api/v3/secrets/raw | ?workspaceId&environment&secretPath=/&viewSecretValue=true | ``{secrets, imports: []}`` |
| GET /api/v3/secrets/raw/{name} | same query | ``{secret}`` |
| POST /api/v3/secrets/raw/{name} | {workspaceId, environment, secretPath?, secretValue, secretComment?} | secret |
| PATCH /api/v3/secrets/raw/{name} | {workspaceId, environment, secretPath?, secretValue?, secretComment?} | secret |
| DELETE /api/v3/secrets/raw/{name} | {workspaceId, environment, secretPath?} (JSON body) | ``{secret}`` (as it was) |
| GET /api/v1/folders | ?workspaceId&environment&path=/ | ``{folders: [{id, name}...]}`` |
| POST /api/v1/folders | {workspaceId, environment, name, path?} | ``{folder: {id, name, path}}`` |
| POST /api/v1/workspace/{projectId}/environments | {name, slug} | ``{message, workspace, environment}`` |

A secret: ``{id, _id, workspace, environment, version, type: "shared", secretKey, secretValue, secretComment,
secretReminderNote, secretReminderRepeatDays, skipMultilineEncoding, createdAt, updatedAt, secretPath, tags,
secretMetadata, secretValueHidden}``. With ``viewSecretValue=false`` (on the list) every ``secretValue`` is
Infisical's mask ``<hidden-by-infisical>`` and ``secretValueHidden`` is true.

Behaviour → test in tests/servers/test_infisical_secrets.py:

| Behaviour | Test |
|---|---|
| projects start with dev, staging, prod and a root folder | test_projects_start_with_three_environments |
| create, read, list, update, delete a secret over HTTP | test_secret_crud_over_http |
| secret shape | test_secret_crud_over_http |
| list with viewSecretValue=false: keys, no values | test_listing_without_values |
| duplicate create → 400; missing → 404 | test_duplicate_and_missing_secrets |
| unknown project / environment / folder → 404 | test_unknown_project_environment_or_folder |
| project of another org → 403 | test_project_of_another_org_is_forbidden |
| folders: create (nested), list | test_folders_create_and_list |
| environments: create; duplicate slug → 400 | test_environment_create |
| listing a folder that does not exist → empty | test_unknown_folder_lists_empty |
| every write notifies listeners (project, env, path) | test_writes_notify_listeners |
| seeding API (set/delete secret, delete folder) | test_seeding_api |

Choices (double's): error texts for a missing environment/folder/secret and a duplicate secret are modelled on
upstream's wording but unverified; folder imports and secret references are not modelled (a folder's secrets are
its own); ``type: "personal"`` is refused with 400; listing an unknown folder answers an empty list.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

    from tests.servers.infisical import InfisicalServer, InfisicalState, _Actor

DEFAULT_ENVIRONMENTS = (("Development", "dev"), ("Staging", "staging"), ("Production", "prod"))
FOLDER_NAME_RE = re.compile(r"[a-zA-Z0-9_-]+")
HIDDEN_VALUE = "<hidden-by-infisical>"  # upstream's INFISICAL_SECRET_VALUE_HIDDEN_MASK

Listener = Callable[[str, str, str], None]  # (project id, environment slug, folder path)


@dataclass
class _Secret:
    id: str
    key: str
    value: str
    comment: str
    version: int
    created_at: float
    updated_at: float


@dataclass
class _Folder:
    id: str
    project_id: str
    environment: str  # slug
    path: str
    secrets: dict[str, _Secret] = field(default_factory=dict)


@dataclass
class _Environment:
    id: str
    name: str
    slug: str


def normalise_path(path: str) -> str:
    """Infisical's secret paths: leading "/", no trailing "/" except the root."""
    path = "/" + path.strip().strip("/")
    return path


class SecretStore:
    """``infisical.state.secrets``. Uses the state's lock; writes call the listeners after releasing it."""

    def __init__(self, state: InfisicalState) -> None:
        self._state = state
        self._environments: dict[str, list[_Environment]] = {}  # project id → environments
        self._folders: dict[str, _Folder] = {}  # folder id → folder
        self.listeners: list[Listener] = []

    # Seeding and reading (tests)

    def environments(self, project_id: str) -> list[dict[str, str]]:
        with self._state._lock:
            return [{"id": e.id, "name": e.name, "slug": e.slug} for e in self._project_environments(project_id)]

    def add_environment(self, project_id: str, slug: str, name: str | None = None) -> str:
        with self._state._lock:
            environments = self._project_environments(project_id)
            if any(e.slug == slug for e in environments):
                raise ValueError(f"environment {slug} exists")
            environment = _Environment(str(uuid.uuid4()), name or slug, slug)
            environments.append(environment)
            self._folder_at(project_id, slug, "/", create=True)
            return environment.id

    def add_folder(self, project_id: str, environment: str, path: str) -> str:
        """Create the folder at ``path`` (and its parents); returns its id."""
        with self._state._lock:
            folder = self._folder_at(project_id, environment, path, create=True)
            assert folder is not None
            return folder.id

    def delete_folder(self, project_id: str, environment: str, path: str) -> None:
        """Delete the folder and everything under it (syncs that read it lose their source)."""
        with self._state._lock:
            target = normalise_path(path)
            for folder_id, folder in list(self._folders.items()):
                inside = folder.path == target or folder.path.startswith(target.rstrip("/") + "/")
                if folder.project_id == project_id and folder.environment == environment and inside:
                    del self._folders[folder_id]
        self._notify(project_id, environment, normalise_path(path))

    def set_secret(
        self, project_id: str, environment: str, path: str, key: str, value: str, *, comment: str = ""
    ) -> None:
        """Create or update a secret as if someone saved it in the Infisical UI (folders created as needed)."""
        with self._state._lock:
            folder = self._folder_at(project_id, environment, path, create=True)
            assert folder is not None
            now = self._state.clock()
            secret = folder.secrets.get(key)
            if secret is None:
                folder.secrets[key] = _Secret(str(uuid.uuid4()), key, value, comment, 1, now, now)
            else:
                secret.value, secret.comment, secret.version, secret.updated_at = (
                    value,
                    comment,
                    secret.version + 1,
                    now,
                )
        self._notify(project_id, environment, normalise_path(path))

    def delete_secret(self, project_id: str, environment: str, path: str, key: str) -> None:
        with self._state._lock:
            folder = self._folder_at(project_id, environment, path)
            if folder is None or key not in folder.secrets:
                raise KeyError(key)
            del folder.secrets[key]
        self._notify(project_id, environment, normalise_path(path))

    def secrets(self, project_id: str, environment: str, path: str) -> dict[str, str]:
        """Key → value of one folder ({} when it does not exist)."""
        with self._state._lock:
            folder = self._folder_at(project_id, environment, path)
            return {s.key: s.value for s in folder.secrets.values()} if folder is not None else {}

    # For the sync engine

    def folder_id(self, project_id: str, environment: str, path: str) -> str | None:
        with self._state._lock:
            folder = self._folder_at(project_id, environment, path)
            return folder.id if folder is not None else None

    def folder_by_id(self, folder_id: str | None) -> tuple[_Folder, _Environment] | None:
        with self._state._lock:
            folder = self._folders.get(folder_id) if folder_id is not None else None
            if folder is None:
                return None
            environment = next(e for e in self._project_environments(folder.project_id) if e.slug == folder.environment)
            return folder, environment

    def secrets_with_comments(self, folder_id: str) -> dict[str, tuple[str, str]]:
        with self._state._lock:
            folder = self._folders.get(folder_id)
            return {s.key: (s.value, s.comment) for s in folder.secrets.values()} if folder is not None else {}

    # Internals (call with the state lock held)

    def _project_environments(self, project_id: str) -> list[_Environment]:
        if project_id not in self._state._projects:
            raise KeyError(f"unknown project {project_id}")
        if project_id not in self._environments:
            # Infisical creates every new project with these three environments.
            self._environments[project_id] = [_Environment(str(uuid.uuid4()), n, s) for n, s in DEFAULT_ENVIRONMENTS]
            for _, slug in DEFAULT_ENVIRONMENTS:
                root = _Folder(str(uuid.uuid4()), project_id, slug, "/")
                self._folders[root.id] = root
        return self._environments[project_id]

    def _environment(self, project_id: str, slug: str) -> _Environment | None:
        return next((e for e in self._project_environments(project_id) if e.slug == slug), None)

    def _folder_at(self, project_id: str, environment: str, path: str, *, create: bool = False) -> _Folder | None:
        if self._environment(project_id, environment) is None:
            if not create:
                return None
            raise KeyError(f"unknown environment {environment}")
        target = normalise_path(path)
        found = self._find(project_id, environment, target)
        if found is not None or not create:
            return found
        parts = [p for p in target.split("/") if p]
        current = "/"
        folder = self._find(project_id, environment, "/")
        if folder is None:
            folder = _Folder(str(uuid.uuid4()), project_id, environment, "/")
            self._folders[folder.id] = folder
        for part in parts:
            current = current.rstrip("/") + "/" + part
            folder = self._find(project_id, environment, current)
            if folder is None:
                folder = _Folder(str(uuid.uuid4()), project_id, environment, current)
                self._folders[folder.id] = folder
        return folder

    def _find(self, project_id: str, environment: str, path: str) -> _Folder | None:
        for folder in self._folders.values():
            if folder.project_id == project_id and folder.environment == environment and folder.path == path:
                return folder
        return None

    def _notify(self, project_id: str, environment: str, path: str) -> None:
        for listener in list(self.listeners):
            listener(project_id, environment, path)


# --- HTTP ----------------------------------------------------------------------------------------------------------


class SecretApi:
    """Handlers for the routes in the module docstring; ``routes`` lists them for infisical.py's dispatcher."""

    def __init__(self, server: InfisicalServer) -> None:
        self.server = server

    @property
    def store(self) -> SecretStore:
        return self.server.state.secrets

    @staticmethod
    def routes() -> list[Any]:
        from tests.servers.infisical import _route

        secret = r"/api/v3/secrets/raw/(?P<secret_name>[^/]+)"
        return [
            _route("GET", r"/api/v3/secrets/raw/?", "secret_api.list", "read", "identity"),
            _route("GET", secret, "secret_api.get", "read", "identity"),
            _route("POST", secret, "secret_api.create", "write", "identity"),
            _route("PATCH", secret, "secret_api.update", "write", "identity"),
            _route("DELETE", secret, "secret_api.delete", "write", "identity"),
            _route("GET", r"/api/v1/folders/?", "secret_api.list_folders", "read", "identity"),
            _route("POST", r"/api/v1/folders/?", "secret_api.create_folder", "write", "identity"),
            _route(
                "POST",
                r"/api/v1/workspace/(?P<project_id>[^/]+)/environments",
                "secret_api.create_environment",
                "write",
                "identity",
            ),
        ]

    # helpers

    def _source(self, values: Any, actor: _Actor, path_key: str = "secretPath") -> tuple[str, str, str]:
        """(project id, environment slug, path) from a query or body; 404/403 for a project, 404 environment."""
        from tests.servers.infisical import ApiError, _invalid_type, _unprocessable

        if not isinstance(values, dict):
            raise _unprocessable([_invalid_type("object", values, [])])
        project_id = values.get("workspaceId") or values.get("projectId")
        environment = values.get("environment")
        issues = []
        if not isinstance(project_id, str):
            issues.append(_invalid_type("string", project_id, ["workspaceId"]))
        if not isinstance(environment, str):
            issues.append(_invalid_type("string", environment, ["environment"]))
        raw_path = values.get(path_key, "/")
        if not isinstance(raw_path, str):
            issues.append(_invalid_type("string", raw_path, [path_key]))
        if issues:
            raise _unprocessable(issues)
        assert isinstance(project_id, str)
        assert isinstance(environment, str)
        assert isinstance(raw_path, str)
        with self.server.state._lock:
            project = self.server.state._projects.get(project_id)
            if project is None:
                raise ApiError(404, f"Project with ID '{project_id}' not found")
            self.server._check_org(project.org_id, actor)
            if self.store._environment(project_id, environment) is None:
                raise ApiError(404, f"Environment with slug '{environment}' in project with ID {project_id} not found")
        return project_id, environment, normalise_path(raw_path)

    def _folder(self, project_id: str, environment: str, path: str) -> _Folder:
        from tests.servers.infisical import ApiError

        folder = self.store._folder_at(project_id, environment, path)
        if folder is None:
            raise ApiError(404, f"Folder with path '{path}' in environment with slug '{environment}' not found")
        return folder

    def _view(self, folder: _Folder, secret: _Secret, *, hidden: bool = False) -> dict[str, Any]:
        from tests.servers.infisical import _iso

        return {
            "id": secret.id,
            "_id": secret.id,
            "workspace": folder.project_id,
            "environment": folder.environment,
            "version": secret.version,
            "type": "shared",
            "secretKey": secret.key,
            "secretValue": HIDDEN_VALUE if hidden else secret.value,
            "secretComment": secret.comment,
            "secretReminderNote": None,
            "secretReminderRepeatDays": None,
            "skipMultilineEncoding": False,
            "createdAt": _iso(secret.created_at),
            "updatedAt": _iso(secret.updated_at),
            "secretPath": folder.path,
            "tags": [],
            "secretMetadata": [],
            "secretValueHidden": hidden,
        }

    def _secret_of(self, folder: _Folder, name: str) -> _Secret:
        from tests.servers.infisical import ApiError

        secret = folder.secrets.get(name)
        if secret is None:
            raise ApiError(404, f"Secret with name '{name}' not found")
        return secret

    # handlers: (request, params, actor, body) → (status, body)

    async def list(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        project_id, environment, path = self._source(dict(request.query), actor)
        hidden = request.query.get("viewSecretValue", "true").lower() == "false"  # zod convertStringBoolean(true)
        with self.server.state._lock:
            folder = self.store._folder_at(project_id, environment, path)
            secrets = [self._view(folder, s, hidden=hidden) for s in folder.secrets.values()] if folder else []
        return 200, {"secrets": secrets, "imports": []}

    async def get(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        project_id, environment, path = self._source(dict(request.query), actor)
        with self.server.state._lock:
            folder = self._folder(project_id, environment, path)
            return 200, {"secret": self._view(folder, self._secret_of(folder, params["secret_name"]))}

    async def create(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        from tests.servers.infisical import ApiError, _invalid_type, _unprocessable

        project_id, environment, path = self._source(body, actor)
        value = body.get("secretValue")
        if not isinstance(value, str):
            raise _unprocessable([_invalid_type("string", value, ["secretValue"])])
        if body.get("type", "shared") != "shared":
            raise ApiError(400, "This test double stores shared secrets only")
        name = params["secret_name"]
        with self.server.state._lock:
            folder = self._folder(project_id, environment, path)
            if name in folder.secrets:
                raise ApiError(400, "Secret already exist")
        comment = body.get("secretComment") if isinstance(body.get("secretComment"), str) else ""
        self.store.set_secret(project_id, environment, path, name, value, comment=comment)
        with self.server.state._lock:
            return 200, {"secret": self._view(folder, folder.secrets[name])}

    async def update(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        project_id, environment, path = self._source(body, actor)
        name = params["secret_name"]
        with self.server.state._lock:
            folder = self._folder(project_id, environment, path)
            secret = self._secret_of(folder, name)
            value = body["secretValue"] if isinstance(body.get("secretValue"), str) else secret.value
            comment = body["secretComment"] if isinstance(body.get("secretComment"), str) else secret.comment
        self.store.set_secret(project_id, environment, path, name, value, comment=comment)
        with self.server.state._lock:
            return 200, {"secret": self._view(folder, folder.secrets[name])}

    async def delete(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        from tests.servers.infisical import MISSING

        values = body if body is not MISSING else dict(request.query)
        project_id, environment, path = self._source(values, actor)
        name = params["secret_name"]
        with self.server.state._lock:
            folder = self._folder(project_id, environment, path)
            view = self._view(folder, self._secret_of(folder, name))
        self.store.delete_secret(project_id, environment, path, name)
        return 200, {"secret": view}

    async def list_folders(
        self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any
    ) -> tuple[int, Any]:
        project_id, environment, path = self._source(dict(request.query), actor, path_key="path")
        prefix = path.rstrip("/") + "/"
        with self.server.state._lock:
            children = [
                {"id": f.id, "name": f.path.rsplit("/", 1)[1]}
                for f in self.store._folders.values()
                if f.project_id == project_id
                and f.environment == environment
                and f.path.startswith(prefix)
                and "/" not in f.path[len(prefix) :]
                and f.path != "/"
            ]
        return 200, {"folders": children}

    async def create_folder(
        self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any
    ) -> tuple[int, Any]:
        from tests.servers.infisical import _unprocessable

        project_id, environment, parent = self._source(body, actor, path_key="path")
        name = body.get("name")
        if not isinstance(name, str) or not FOLDER_NAME_RE.fullmatch(name):
            raise _unprocessable(
                [
                    {
                        "code": "custom",
                        "message": "Folder name can only contain letters, numbers, dashes and underscores",
                        "path": ["name"],
                    }
                ]
            )
        path = parent.rstrip("/") + "/" + name
        folder_id = self.store.add_folder(project_id, environment, path)
        return 200, {"folder": {"id": folder_id, "name": name, "path": path}}

    async def create_environment(
        self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any
    ) -> tuple[int, Any]:
        from tests.servers.infisical import SLUG_RE, ApiError, _unprocessable

        project_id = params["project_id"]
        if not isinstance(body, dict) or not isinstance(body.get("slug"), str) or not SLUG_RE.fullmatch(body["slug"]):
            raise _unprocessable(
                [
                    {
                        "code": "custom",
                        "message": "slug field can only contain lowercase letters, numbers, and hyphens",
                        "path": ["slug"],
                    }
                ]
            )
        name = body.get("name") if isinstance(body.get("name"), str) else body["slug"]
        with self.server.state._lock:
            project = self.server.state._projects.get(project_id)
            if project is None:
                raise ApiError(404, f"Project with ID '{project_id}' not found")
            self.server._check_org(project.org_id, actor)
            if self.store._environment(project_id, body["slug"]) is not None:
                raise ApiError(400, "Environment with slug already exist")
        environment_id = self.store.add_environment(project_id, body["slug"], name)
        return 200, {
            "message": "Successfully created new environment",
            "workspace": project_id,
            "environment": {"id": environment_id, "name": name, "slug": body["slug"]},
        }
