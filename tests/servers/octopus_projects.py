"""Projects, scope values, per-project permissions and project variable sets for the Octopus test double.

Infisical's Octopus Deploy secret sync reads and rewrites one project's variable set, and octoconn checks the
destination before it asks Infisical to do so. This module gives the double (tests/servers/octopus.py) what both
need, with Octopus's semantics as docs/remote-apis.md describes them. It is kept apart from octopus.py so the
connection-only double stays small; octopus.py only registers these routes and creates ``state.projects``.

Routes (all need a valid key; ids are Octopus ids, never names or slugs, except where said):

| Route | Answer |
|---|---|
| GET /api/{spaceId}/projects/all | plain array of projects the key may view (ProjectView, per project) |
| GET /api/{spaceId}/projects/{idOrSlug} | one project (id or slug); 404 unknown; 403 ProjectView |
| GET /api/{spaceId}/projects/{projectId}/variables (*) | the variable set; sensitive values null |
| PUT the same (*) | replace the whole list; Version checked; answer = the new set |
| GET /api/{spaceId}/environments/all | plain array ``{Id, Name, Slug, SpaceId}`` |
| GET /api/{spaceId}/projects/{projectId}/channels | paged channels of the project |
| GET /api/users/{userId}/permissions | the key's permissions as Octopus's UserPermissionSetResource |

(*) also served at /api/spaces/{spaceId}/projects/{projectId}/variables and at
/api/{spaceId}/variables/variableset-{projectId}.

Behaviour → test in tests/servers/test_octopus_projects.py:

| Behaviour | Test |
|---|---|
| projects/all: plain array, ProjectView per project | test_projects_all_is_a_plain_array_filtered_by_project_view |
| paged projects: ?ids, ?name, ?partialName; ProjectView per project | test_paged_projects_filters_and_restrictions |
| project by id or slug; other space / unknown → 404 | test_project_by_id_or_slug_and_404s |
| project outside a ProjectView restriction: 403 | test_project_outside_restriction_is_forbidden |
| variables GET: document fields, Links, ScopeValues | test_variable_set_document_shape |
| ScopeValues: every kind (environments ... actions) | test_scope_values_list_every_kind |
| sensitive values never returned (GET and PUT answer) | test_sensitive_values_are_never_returned |
| three routes serve the same set | test_three_routes_serve_one_set |
| PUT takes the echoed GET document (no ProjectId) | test_put_accepts_the_echoed_document |
| PUT: no Id → new GUID; Version + 1; LastModified* | test_put_new_ids_and_version_bump |
| sensitive kept by Id when Value null or "" | test_sensitive_value_kept_by_id |
| sensitive with Id and a value → updated; without Id and null → "" | test_sensitive_update_and_empty_new |
| stale Version → 400 conflict text, nothing changed | test_stale_version_is_a_conflict |
| variable without Type → 500 NullReferenceException | test_variable_without_type_is_500 |
| variable without Name → 400 | test_variable_without_name_is_400 |
| names case-sensitive, duplicates allowed | test_names_case_sensitive_duplicates_allowed |
| missing VariableView → 403 naming it | test_variables_need_variable_view |
| missing VariableEdit (per project) → 403; other project fine | test_variable_edit_restricted_to_projects |
| env-restricted VariableEdit: unscoped change needs VariableEditUnscoped | (next line) |
|   | test_environment_restricted_edit_needs_unscoped_for_unscoped |
| env-restricted VariableEdit: other environment → 403 | test_environment_restricted_edit_other_environment |
| permissions endpoint: SpacePermissions with restrictions | test_permissions_endpoint_lists_restrictions |
| permissions endpoint: other user → 403 | test_permissions_of_another_user_is_forbidden |
| unknown space/project on variables → 404; slug → 404 | test_variables_unknown_space_or_project_is_404 |
| scope ids validated only when switched on | test_scope_id_validation_switch |
| environments/all, channels | test_environments_all_and_channels |
| seeding API reads back values (tests only) | test_seeding_and_reading_back_values |
| standalone CLI --seed-project | test_cli_seed_project |

Choices where the reference is silent (double's choice; each is one constant or flag here):
- A new project's variable set has ``Version`` 0 and an empty list; every accepted PUT adds 1, even one that
  changes nothing. A PUT without ``Version`` counts as version 0.
- Stale ``Version`` → 400, ``ErrorMessage`` "There was a problem with your request.", the conflict text in
  ``Errors`` (status and ErrorMessage unverified upstream).
- A variable without ``Type`` → 500 "Object reference not set to an instance of an object."; without a non-empty
  ``Name`` → 400 with ``Errors`` ["Variable names cannot be empty."].
- A variable sent with an ``Id`` the set does not hold is created with that Id.
- Scope ids are not checked on PUT unless ``state.projects.validate_scope_ids`` is True; then an unknown id → 400
  ``Errors`` ["The scope value '<id>' is not valid for <Kind>."].
- Permissions belong to the key (the double has no teams): ``issue_key(permissions=...)`` grants them everywhere,
  ``state.projects.restrict(key, permission, projects=..., environments=...)`` narrows one of them. An
  environment-restricted ``VariableEdit`` may add, change or remove only variables scoped to allowed environments;
  a change to a variable without an environment scope needs ``VariableEditUnscoped`` (missing → 403 naming it).
  ``VariableView`` is checked per project only (the double never filters a variable set by environment).
- The variables routes accept ids only; a slug or a name → 404 ``NOT_FOUND_MESSAGE``. Unknown space or project →
  404 before any permission check, like the existing projects probe.
- ScopeValues list every environment, machine, role and tenant tag of the space, and the project's channels,
  processes (the deployment process, id = project id, named "Deployment process", then runbooks) and steps
  (actions).
- ``/api/users/{id}/permissions`` answers for the key in use; another user's id → 403 naming UserView.
- Project listings: ``?name`` matches the whole name ignoring case, ``?partialName`` a part of it ignoring case,
  ``?ids`` a comma-separated list; a ProjectView limited to some projects hides the others (no 403).
"""

from __future__ import annotations

import copy
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tests.servers.octopus import ApiKeyRecord, OctopusServer, OctopusState

CONFLICT_MESSAGE = (
    "Changes to these variables could not be saved, because another user has made changes to the variables between "
    "when you started editing and when you saved your changes. Please reload or open a new tab to make your changes."
)
BAD_REQUEST_MESSAGE = "There was a problem with your request."
NULL_REFERENCE_MESSAGE = "Object reference not set to an instance of an object."
EMPTY_NAME_MESSAGE = "Variable names cannot be empty."
INITIAL_VERSION = 0

# Every permission a key without a permission list holds; the names are Octopus's.
ALL_PERMISSIONS = (
    "SpaceView",
    "ProjectView",
    "ProjectEdit",
    "EnvironmentView",
    "MachineView",
    "VariableView",
    "VariableViewUnscoped",
    "VariableEdit",
    "VariableEditUnscoped",
    "ProcessView",
    "TenantView",
)
SCOPE_KINDS = {  # Scope key on a variable → ScopeValues collection
    "Environment": "Environments",
    "Machine": "Machines",
    "Role": "Roles",
    "Channel": "Channels",
    "ProcessOwner": "Processes",
    "Action": "Actions",
    "TenantTag": "TenantTags",
}


@dataclass
class Restriction:
    """Octopus's UserPermissionRestriction: None = not restricted on that axis."""

    projects: frozenset[str] | None = None
    environments: frozenset[str] | None = None


@dataclass
class _Machine:
    id: str
    name: str
    roles: list[str]
    environments: list[str]


@dataclass
class _SpaceData:
    environments: dict[str, str] = field(default_factory=dict)  # id → name
    machines: dict[str, _Machine] = field(default_factory=dict)
    extra_roles: list[str] = field(default_factory=list)
    tenant_tags: list[str] = field(default_factory=list)  # canonical "Tag Set/Tag"


@dataclass
class _ProjectData:
    project_id: str
    space_id: str
    version: int = INITIAL_VERSION
    variables: list[dict[str, Any]] = field(default_factory=list)  # stored WITH sensitive values
    channels: dict[str, str] = field(default_factory=dict)
    runbooks: dict[str, str] = field(default_factory=dict)
    steps: dict[str, str] = field(default_factory=dict)  # action GUID → step name
    last_modified_on: str | None = None
    last_modified_by: str | None = None


class ProjectStore:
    """Scope values, variable sets and permission restrictions; ``octopus.state.projects``. Thread-safe."""

    def __init__(self, state: OctopusState) -> None:
        self._state = state
        self._lock = threading.RLock()
        self._spaces: dict[str, _SpaceData] = {}
        self._projects: dict[str, _ProjectData] = {}
        self._restrictions: dict[str, dict[str, Restriction]] = {}  # key value → permission → restriction
        self._numbers: dict[str, int] = {}
        self.validate_scope_ids = False

    # Seeding (tests and the standalone CLI)

    def add_environment(self, space_id: str, name: str) -> str:
        with self._lock:
            environment_id = self._next("Environments")
            self._space_data(space_id).environments[environment_id] = name
            return environment_id

    def add_machine(
        self, space_id: str, name: str, *, roles: list[str] | None = None, environments: list[str] | None = None
    ) -> str:
        with self._lock:
            machine_id = self._next("Machines")
            machine = _Machine(machine_id, name, list(roles or []), list(environments or []))
            self._space_data(space_id).machines[machine_id] = machine
            return machine_id

    def add_role(self, space_id: str, role: str) -> str:
        """A target role (tag); Octopus's role ids are the role names."""
        with self._lock:
            self._space_data(space_id).extra_roles.append(role)
            return role

    def add_tenant_tag(self, space_id: str, tag_set: str, tag: str) -> str:
        with self._lock:
            canonical = f"{tag_set}/{tag}"
            self._space_data(space_id).tenant_tags.append(canonical)
            return canonical

    def add_channel(self, project_id: str, name: str) -> str:
        with self._lock:
            channel_id = self._next("Channels")
            self._project_data(project_id).channels[channel_id] = name
            return channel_id

    def add_runbook(self, project_id: str, name: str) -> str:
        with self._lock:
            runbook_id = self._next("Runbooks")
            self._project_data(project_id).runbooks[runbook_id] = name
            return runbook_id

    def add_step(self, project_id: str, name: str) -> str:
        """A deployment process step; returns its action id (a GUID, as Octopus's are)."""
        with self._lock:
            action_id = str(uuid.uuid4())
            self._project_data(project_id).steps[action_id] = name
            return action_id

    def add_project(self, space_id: str, name: str) -> str:
        """``state.add_project`` plus its Default channel, so it is ready for variables."""
        project_id = self._state.add_project(space_id, name)
        with self._lock:
            self._project_data(project_id)
        return project_id

    def set_variable(
        self,
        project_id: str,
        name: str,
        value: str | None,
        *,
        sensitive: bool = False,
        scope: dict[str, list[str]] | None = None,
        type_: str | None = None,
        description: str | None = None,
    ) -> str:
        """Add a variable as if someone made it in the Octopus UI (Version + 1); returns its Id."""
        with self._lock:
            data = self._project_data(project_id)
            variable = {
                "Id": str(uuid.uuid4()),
                "Name": name,
                "Value": value,
                "Description": description,
                "Scope": dict(scope or {}),
                "IsEditable": True,
                "Prompt": None,
                "Type": type_ or ("Sensitive" if sensitive else "String"),
                "IsSensitive": sensitive,
            }
            data.variables.append(variable)
            data.version += 1
            return str(variable["Id"])

    def variables(self, project_id: str) -> list[dict[str, Any]]:
        """The stored variables WITH sensitive values: for test assertions only, never served."""
        with self._lock:
            return copy.deepcopy(self._project_data(project_id).variables)

    def version(self, project_id: str) -> int:
        with self._lock:
            return self._project_data(project_id).version

    def restrict(
        self,
        key: str,
        permission: str,
        *,
        projects: list[str] | None = None,
        environments: list[str] | None = None,
    ) -> None:
        """Narrow one of ``key``'s permissions to some projects and/or environments (as a team's scoping does)."""
        with self._lock:
            self._restrictions.setdefault(key, {})[permission] = Restriction(
                frozenset(projects) if projects is not None else None,
                frozenset(environments) if environments is not None else None,
            )

    # Permission decisions

    def visible(self, record: ApiKeyRecord, projects: list[dict[str, Any]], query: Any) -> list[dict[str, Any]]:
        """The projects a listing shows: ProjectView per project, then ``?ids``, ``?name``, ``?partialName``."""
        shown = [p for p in projects if self.permitted(record, "ProjectView", p["Id"])]
        if query.get("ids"):
            wanted = set(query["ids"].split(","))
            shown = [p for p in shown if p["Id"] in wanted]
        if query.get("name"):
            shown = [p for p in shown if p["Name"].lower() == query["name"].lower()]
        if query.get("partialName"):
            shown = [p for p in shown if query["partialName"].lower() in p["Name"].lower()]
        return shown

    def permitted(self, record: ApiKeyRecord, permission: str, project_id: str | None = None) -> bool:
        if record.permissions is not None and permission not in record.permissions:
            return False
        with self._lock:
            restriction = self._restrictions.get(record.value, {}).get(permission)
        if restriction is None or restriction.projects is None or project_id is None:
            return True
        return project_id in restriction.projects

    def restriction(self, record: ApiKeyRecord, permission: str) -> Restriction:
        with self._lock:
            return self._restrictions.get(record.value, {}).get(permission, Restriction())

    def held_permissions(self, record: ApiKeyRecord) -> list[str]:
        return sorted(record.permissions) if record.permissions is not None else list(ALL_PERMISSIONS)

    # Internals

    def _next(self, kind: str) -> str:
        number = self._numbers.get(kind, 0) + 1
        self._numbers[kind] = number
        return f"{kind}-{number}"

    def _space_data(self, space_id: str) -> _SpaceData:
        if self._state._space(space_id) is None:
            raise KeyError(f"unknown space {space_id}")
        return self._spaces.setdefault(space_id, _SpaceData())

    def _project_data(self, project_id: str) -> _ProjectData:
        data = self._projects.get(project_id)
        if data is not None:
            return data
        space_id = self._space_of(project_id)
        if space_id is None:
            raise KeyError(f"unknown project {project_id}")
        data = _ProjectData(project_id, space_id)
        data.channels[self._next("Channels")] = "Default"
        self._projects[project_id] = data
        return data

    def _space_of(self, project_id: str) -> str | None:
        for space in self._state._space_list():
            if any(p["Id"] == project_id for p in space.projects):
                return space.id
        return None

    def _scope_values(self, data: _ProjectData) -> dict[str, list[dict[str, Any]]]:
        space = self._spaces.get(data.space_id, _SpaceData())
        roles: list[str] = []
        for role in [r for m in space.machines.values() for r in m.roles] + space.extra_roles:
            if role not in roles:
                roles.append(role)
        processes = [{"ProcessType": "Deployment", "Id": data.project_id, "Name": "Deployment process"}]
        processes += [{"ProcessType": "Runbook", "Id": i, "Name": n} for i, n in data.runbooks.items()]
        return {
            "Environments": [{"Id": i, "Name": n} for i, n in space.environments.items()],
            "Machines": [{"Id": m.id, "Name": m.name} for m in space.machines.values()],
            "Actions": [{"Id": i, "Name": n} for i, n in data.steps.items()],
            "Roles": [{"Id": r, "Name": r} for r in roles],
            "Channels": [{"Id": i, "Name": n} for i, n in data.channels.items()],
            "TenantTags": [{"Id": t, "Name": t.split("/", 1)[1]} for t in space.tenant_tags],
            "Processes": processes,
        }


# --- HTTP ----------------------------------------------------------------------------------------------------------


class ProjectRoutes:
    """The handlers; ``register`` adds them to the double's app. Helpers come from octopus.py at call time."""

    def __init__(self, server: OctopusServer) -> None:
        self.server = server

    @property
    def store(self) -> ProjectStore:
        return self.server.state.projects

    def register(self, app: web.Application, api: str) -> None:
        app.router.add_get(api + "/users/{user_id}/permissions", self._permissions)
        app.router.add_get(api + "/{space_id}/projects/all", self._projects_all)
        app.router.add_get(api + "/{space_id}/environments/all", self._environments_all)
        for path in (
            api + "/{space_id}/projects/{project_id}/variables",
            api + "/spaces/{space_id}/projects/{project_id}/variables",
            api + "/{space_id}/variables/variableset-{project_id}",
        ):
            app.router.add_get(path, self._get_variables)
            app.router.add_put(path, self._put_variables)
        app.router.add_get(api + "/{space_id}/projects/{project_id}/channels", self._channels)
        app.router.add_get(api + "/{space_id}/projects/{project_ref}", self._project)

    # helpers

    def _auth(self, request: web.Request) -> ApiKeyRecord | web.Response:
        return self.server._authenticate(request)

    def _project_doc(self, space_id: str, project: dict[str, Any]) -> dict[str, Any]:
        path = self.server._link(f"/api/{space_id}/projects/{project['Id']}")
        return {
            **project,
            "SpaceId": space_id,
            "IsDisabled": False,
            "VariableSetId": f"variableset-{project['Id']}",
            "DeploymentProcessId": f"deploymentprocess-{project['Id']}",
            "IsVersionControlled": False,
            "Links": {"Self": path, "Variables": path + "/variables", "Channels": path + "/channels{/id}{?skip,take}"},
        }

    def _find(self, space_id: str, ref: str, *, by_slug: bool) -> dict[str, Any] | None:
        space = self.server.state._space(space_id)
        if space is None:
            return None
        for project in space.projects:
            if project["Id"] == ref or (by_slug and project["Slug"] == ref):
                return project
        return None

    # handlers

    async def _projects_all(self, request: web.Request) -> web.StreamResponse:
        from tests.servers.octopus import NOT_FOUND_MESSAGE, _error, _json

        auth = self._auth(request)
        if isinstance(auth, web.Response):
            return auth
        space = self.server.state._space(request.match_info["space_id"])
        if space is None:
            return _error(404, NOT_FOUND_MESSAGE)
        visible = [p for p in space.projects if self.store.permitted(auth, "ProjectView", p["Id"])]
        return _json(200, [self._project_doc(space.id, p) for p in visible])

    async def _project(self, request: web.Request) -> web.StreamResponse:
        from tests.servers.octopus import NOT_FOUND_MESSAGE, _error, _forbidden, _json

        auth = self._auth(request)
        if isinstance(auth, web.Response):
            return auth
        space_id = request.match_info["space_id"]
        project = self._find(space_id, request.match_info["project_ref"], by_slug=True)
        if project is None:
            return _error(404, NOT_FOUND_MESSAGE)
        if not self.store.permitted(auth, "ProjectView", project["Id"]):
            return _forbidden("ProjectView")
        return _json(200, self._project_doc(space_id, project))

    async def _environments_all(self, request: web.Request) -> web.StreamResponse:
        from tests.servers.octopus import NOT_FOUND_MESSAGE, _error, _forbidden, _json

        auth = self._auth(request)
        if isinstance(auth, web.Response):
            return auth
        space_id = request.match_info["space_id"]
        if self.server.state._space(space_id) is None:
            return _error(404, NOT_FOUND_MESSAGE)
        if not self.store.permitted(auth, "EnvironmentView"):
            return _forbidden("EnvironmentView")
        with self.store._lock:
            environments = dict(self.store._spaces.get(space_id, _SpaceData()).environments)
        return _json(
            200,
            [
                {"Id": i, "Name": n, "Slug": n.lower().replace(" ", "-"), "SpaceId": space_id}
                for i, n in environments.items()
            ],
        )

    async def _channels(self, request: web.Request) -> web.StreamResponse:
        from tests.servers.octopus import NOT_FOUND_MESSAGE, _error, _forbidden, _json, _Paging

        auth = self._auth(request)
        if isinstance(auth, web.Response):
            return auth
        space_id = request.match_info["space_id"]
        project = self._find(space_id, request.match_info["project_id"], by_slug=False)
        if project is None:
            return _error(404, NOT_FOUND_MESSAGE)
        if not self.store.permitted(auth, "ProjectView", project["Id"]):
            return _forbidden("ProjectView")
        paging = _Paging(request)
        if paging.problem is not None:
            return _error(400, BAD_REQUEST_MESSAGE, Errors=[paging.problem])
        with self.store._lock:
            channels = dict(self.store._project_data(project["Id"]).channels)
        items = [
            {"Id": i, "Name": n, "ProjectId": project["Id"], "SpaceId": space_id, "IsDefault": n == "Default"}
            for i, n in channels.items()
        ]
        path = self.server._link(f"/api/{space_id}/projects/{project['Id']}/channels")
        return _json(200, paging.page("Channel", items, path, path + "{/id}{?skip,take,partialName}"))

    async def _permissions(self, request: web.Request) -> web.StreamResponse:
        from tests.servers.octopus import _forbidden, _json

        auth = self._auth(request)
        if isinstance(auth, web.Response):
            return auth
        user_id = request.match_info["user_id"]
        if user_id != auth.user_id:
            return _forbidden("UserView")
        spaces = self.server.state._space_list()
        space_permissions: dict[str, list[dict[str, Any]]] = {}
        for permission in self.store.held_permissions(auth):
            restriction = self.store.restriction(auth, permission)
            space_permissions[permission] = [
                {
                    "SpaceId": space.id,
                    "RestrictedToProjectIds": sorted(restriction.projects or []),
                    "RestrictedToEnvironmentIds": sorted(restriction.environments or []),
                    "RestrictedToTenantIds": [],
                    "RestrictedToProjectGroupIds": [],
                }
                for space in spaces
            ]
        link = self.server._link(f"/api/users/{user_id}/permissions")
        return _json(
            200,
            {
                "Id": user_id,
                "SpacePermissions": space_permissions,
                "SystemPermissions": ["SpaceView"] if self.store.permitted(auth, "SpaceView") else [],
                "Teams": [],
                "IsPermissionsComplete": True,
                "Links": {"Self": link, "Export": link + "/export"},
            },
        )

    def _variables_target(self, request: web.Request) -> tuple[ApiKeyRecord, _ProjectData] | web.Response:
        from tests.servers.octopus import NOT_FOUND_MESSAGE, _error

        auth = self._auth(request)
        if isinstance(auth, web.Response):
            return auth
        project = self._find(request.match_info["space_id"], request.match_info["project_id"], by_slug=False)
        if project is None:
            return _error(404, NOT_FOUND_MESSAGE)
        with self.store._lock:
            return auth, self.store._project_data(project["Id"])

    def _document(self, data: _ProjectData) -> dict[str, Any]:
        with self.store._lock:
            variables = [
                {**v, "Value": None} if _is_sensitive(v) else copy.deepcopy(v) for v in data.variables
            ]  # Octopus never returns a sensitive value
            return {
                "Id": f"variableset-{data.project_id}",
                "OwnerId": data.project_id,
                "Version": data.version,
                "SpaceId": data.space_id,
                "Variables": variables,
                "ScopeValues": self.store._scope_values(data),
                "LastModifiedOn": data.last_modified_on,
                "LastModifiedBy": data.last_modified_by,
                "Links": {"Self": self.server._link(f"/api/{data.space_id}/projects/{data.project_id}/variables")},
            }

    async def _get_variables(self, request: web.Request) -> web.StreamResponse:
        from tests.servers.octopus import _forbidden, _json

        target = self._variables_target(request)
        if isinstance(target, web.Response):
            return target
        auth, data = target
        if not self.store.permitted(auth, "VariableView", data.project_id):
            return _forbidden("VariableView")
        return _json(200, self._document(data))

    async def _put_variables(self, request: web.Request) -> web.StreamResponse:
        from tests.servers.octopus import _error, _forbidden, _iso, _json

        target = self._variables_target(request)
        if isinstance(target, web.Response):
            return target
        auth, data = target
        if not self.store.permitted(auth, "VariableEdit", data.project_id):
            return _forbidden("VariableEdit")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, BAD_REQUEST_MESSAGE, Errors=["The request body is not valid JSON."])
        if not isinstance(body, dict) or not isinstance(body.get("Variables"), list):
            return _error(400, BAD_REQUEST_MESSAGE, Errors=["The Variables field is required."])
        sent: list[Any] = body["Variables"]
        if any(not isinstance(v, dict) for v in sent):
            return _error(400, BAD_REQUEST_MESSAGE, Errors=["Each variable must be an object."])
        if any(v.get("Type") is None for v in sent):
            return _error(500, NULL_REFERENCE_MESSAGE)
        if any(not isinstance(v.get("Name"), str) or not v["Name"].strip() for v in sent):
            return _error(400, BAD_REQUEST_MESSAGE, Errors=[EMPTY_NAME_MESSAGE])
        user = self.server.state._user(auth.user_id)
        with self.store._lock:
            version = body.get("Version", 0)
            if version != data.version:
                return _error(400, BAD_REQUEST_MESSAGE, Errors=[CONFLICT_MESSAGE])
            if self.store.validate_scope_ids:
                problem = self._invalid_scope(data, sent)
                if problem is not None:
                    return _error(400, BAD_REQUEST_MESSAGE, Errors=[problem])
            new_list = self._merge(data, sent)
            denied = self._environment_denial(auth, data.variables, new_list)
            if denied is not None:
                return _forbidden(denied)
            data.variables = new_list
            data.version += 1
            data.last_modified_on = _iso(self.server.state.clock())
            data.last_modified_by = user.username
            return _json(200, self._document(data))

    @staticmethod
    def _merge(data: _ProjectData, sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
        stored = {v["Id"]: v for v in data.variables}
        merged: list[dict[str, Any]] = []
        for incoming in sent:
            variable = copy.deepcopy(incoming)
            variable.setdefault("Scope", {})
            variable_id = variable.get("Id")
            old = stored.get(variable_id) if variable_id else None
            if not variable_id:
                variable["Id"] = str(uuid.uuid4())
            if _is_sensitive(variable) and variable.get("Value") in (None, ""):
                # Sent with an Id and no value: Octopus keeps what it stores. Without an Id there is nothing to keep.
                variable["Value"] = old["Value"] if old is not None and _is_sensitive(old) else ""
            merged.append(variable)
        return merged

    def _environment_denial(
        self, auth: ApiKeyRecord, before: list[dict[str, Any]], after: list[dict[str, Any]]
    ) -> str | None:
        """With an environment-restricted VariableEdit, every touched variable must be in an allowed environment."""
        restriction = self.store.restriction(auth, "VariableEdit")
        if restriction.environments is None:
            return None
        old = {v["Id"]: v for v in before}
        new = {v["Id"]: v for v in after}
        touched = [v for i, v in new.items() if old.get(i) != v] + [v for i, v in old.items() if i not in new]
        for variable in touched:
            environments = (variable.get("Scope") or {}).get("Environment") or []
            if not environments:
                if not self.store.permitted(auth, "VariableEditUnscoped"):
                    return "VariableEditUnscoped"
            elif not set(environments) <= restriction.environments:
                return "VariableEdit"
        return None

    def _invalid_scope(self, data: _ProjectData, sent: list[dict[str, Any]]) -> str | None:
        known = {kind: {item["Id"] for item in items} for kind, items in self.store._scope_values(data).items()}
        for variable in sent:
            for key, ids in (variable.get("Scope") or {}).items():
                collection = SCOPE_KINDS.get(key)
                if collection is None:
                    continue
                for scope_id in ids or []:
                    if scope_id not in known[collection]:
                        return f"The scope value '{scope_id}' is not valid for {key}."
        return None


def _is_sensitive(variable: dict[str, Any]) -> bool:
    return variable.get("IsSensitive") is True or variable.get("Type") == "Sensitive"
