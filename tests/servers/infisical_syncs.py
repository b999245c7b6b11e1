"""Infisical's Octopus Deploy secret syncs, for the Infisical test double.

Infisical pushes the secrets of one project, environment and folder into an Octopus project's sensitive variables.
Its behaviour has traps an operator must guard against, so this double copies them rather than tidying them up:
create and update answer at once and never call Octopus; every update queues a full sync; a failing sync stays
"running" through five attempts; syncs run in the background and really GET and PUT the Octopus project's variable
set (the Octopus double's, over HTTP) with the connection's stored instance URL and API key; two syncs into one
project delete each other's variables unless their key schemas differ; a delete with removal can fail and leave
the sync. The facts come from docs/remote-apis.md ("Infisical secret syncs"). infisical.py only creates the store
(``state.syncs``), the engine (``server.secret_syncs``) and registers the routes.

Routes (machine-identity Bearer token), prefix ``/api/v1/secret-syncs/octopus-deploy`` unless absolute:

| call | route | in | 200 body |
|---|---|---|---|
| list | GET / | ?projectId= (required) | ``{secretSyncs}`` |
| get | GET /{syncId} | uuid | ``{secretSync}`` |
| get by name | GET /sync-name/{name} | ?projectId= (required) | ``{secretSync}`` |
| create | POST / | create body | ``{secretSync}``, syncStatus "pending" (null w/o auto-sync) |
| update | PATCH /{syncId} | update body (*) | ``{secretSync}`` |
| delete | DELETE /{syncId} | ?removeSecrets=true or false | ``{secretSync}`` (gone, or removeStatus "pending") |
| sync now | POST /{syncId}/sync-secrets | none | ``{secretSync}``, syncStatus "pending" |
| remove | POST /{syncId}/remove-secrets | none | ``{secretSync}``, removeStatus "pending" |
| import | POST /{syncId}/import-secrets | ?importBehavior= | never: 400 |
| duplicate check | POST /check-destination | (**) | ``{hasDuplicate, duplicateProjectId?}`` |
| all destinations | GET /api/v1/secret-syncs | ?projectId= | ``{secretSyncs}`` |
| options | GET /api/v1/secret-syncs/options | | ``{secretSyncOptions}`` |

(*) any of name, connectionId, description, environment, secretPath, isAutoSyncEnabled, syncOptions,
destinationConfig; a sent syncOptions/destinationConfig replaces the stored one. (**) {destinationConfig, projectId,
excludeSyncId?, connectionId?}.

Behaviour → test in tests/servers/test_infisical_syncs.py:

| Behaviour | Test |
|---|---|
| create: shape, pending, no Octopus call before the answer | test_create_answers_pending_without_calling_octopus |
| create without auto-sync: status null, nothing queued | test_create_without_auto_sync_queues_nothing |
| a sync writes the folder's secrets as sensitive variables (§4 steps) | test_sync_writes_sensitive_variables |
| keySchema rendering, {{environment}}, scope from scopeValues | test_key_schema_and_scope_values |
| non-sensitive variables kept as read; surviving sensitive kept by Id | test_sync_keeps_other_variables |
| deletion: sensitive names matching the schema and not in the map go | test_sync_deletes_matching_sensitive_variables |
| disableSecretDeletion keeps them but still replaces same names | test_disable_secret_deletion |
| two syncs without prefixes delete each other's variables | test_two_syncs_without_prefixes_fight |
| two syncs with distinct prefixes coexist | test_two_syncs_with_distinct_prefixes_coexist |
| wrong space/project only shows as a failed sync later | test_wrong_project_fails_later_with_octopus_body |
| failure stays "running" through five attempts, then "failed" | test_failure_stays_running_through_five_attempts |
| a transient failure heals on a retry | test_transient_failure_heals_on_retry |
| missing VariableEdit: Octopus's 403 body as the message | test_missing_permission_message_is_the_octopus_body |
| unreachable Octopus: node message | test_unreachable_octopus_message |
| 3xx is a failure (redirects not followed) | test_redirect_is_a_failure |
| 5xx retried inside an attempt | test_5xx_retried_inside_an_attempt |
| every PATCH (even {}) queues a full sync and moves updatedAt | test_every_patch_queues_a_full_sync |
| PATCH replaces syncOptions/destinationConfig; projectId dropped | test_patch_replaces_nested_objects |
| PATCH 404 text has no quotes | test_patch_and_get_not_found_texts |
| a secret change queues the folder's auto-sync syncs (debounced) | test_secret_change_triggers_auto_sync |
| sync-secrets with auto-sync off; lock held → 400 | test_sync_now_and_lock_held |
| folder gone: sync-secrets 400; job message | test_folder_gone |
| remove-secrets removes only current keys, both sensitive flags | test_remove_secrets |
| delete without removal leaves Octopus untouched | test_delete_without_removal |
| delete with removal: row stays until removal succeeds | test_delete_with_removal_succeeds |
| delete with removal failing leaves the sync, removeStatus failed | test_delete_with_removal_failure_keeps_the_sync |
| import-secrets → 400 before lookup (422 without importBehavior) | test_import_is_400_before_lookup |
| TRAP: body-less call with a JSON Content-Type → 500 | test_body_less_calls_with_a_json_type_are_500 |
| validation: 422 issues (name, initialSyncBehavior, keySchema, spaceId, scope, uuid) | test_create_validation_errors |
| unknown keys dropped; secretPath trailing slash; defaults | test_create_normalises_and_drops_unknown_keys |
| name unique per project; 403 unknown or foreign project; folder 400 | test_create_lookup_errors |
| connection checks: 404, other app 400 | test_create_connection_errors |
| get by name; list; all destinations; options | test_get_by_name_list_and_options |
| other destination's sync → 400 | test_other_destination_is_400 |
| check-destination deep-equal duplicate | test_check_destination |
| blockDuplicateSecretSyncDestinations | test_block_duplicate_destinations |
| connection with syncs cannot be deleted | test_connection_with_syncs_cannot_be_deleted |
| job concurrency: ≤3 per connection, lock re-queue | test_jobs_per_connection_are_limited |
| message over 1024 characters cut to 1021 + "..." | test_long_message_is_cut |
| outbound calls recorded with the key redacted | test_sync_writes_sensitive_variables |
| standalone CLI: --seed-secret, --sync-timing fast | test_cli_seeds_secrets_and_runs_syncs |

Timings are ``state.syncs.timing`` (a ``SyncTiming``); upstream's are the defaults, ``SyncTiming.fast()`` is for
tests. Choices where the reference is silent (double's choices):
- Job ids are increasing numeric strings, as BullMQ's are. A remove job waits the same random first delay as a sync.
- The address guard and a deleted connection fail an attempt like any other error (retried).
- PATCH with only one of ``environment``/``secretPath`` → 400 "Must specify both source environment and secret path";
  with both, an unknown folder → the 400 folder text.
- ``spaceName``/``projectName`` in ``destinationConfig`` are kept when strings (the newer revision). ``recursive``
  is accepted and stored but subfolders are not synced; ``keySchema: null`` is a 422 (zod ``.optional()``).
- Connection delete refused with "Cannot delete App Connection with existing connections. Remove all existing
  connections and try again." (the second sentence is a guess).
- Lock/concurrency exhaustion of a remove job sets ``removeStatus`` "failed" with the same text as a sync.
- Permissions inside a project are not modelled: any identity of the project's org may use every route.
- A project the double does not know answers 403 "You are not allowed to access this project": a real Infisical
  refuses a machine identity that is no member of the project before it looks the project up (the reference's 404
  "Project with <id> not found" is what a member, or a user, would see). The status is what real Infisical answered
  when tried; the wording is the double's.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import re
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

if TYPE_CHECKING:
    from aiohttp import web

    from tests.servers.infisical import InfisicalServer, InfisicalState, _Actor, _Connection

DESTINATION = "octopus-deploy"
DESTINATION_NAME = "Octopus Deploy"
PREFIX = "/api/v1/secret-syncs"
OCTOPUS_PREFIX = f"{PREFIX}/{DESTINATION}"
INITIAL_SYNC_BEHAVIOR = "overwrite-destination"
NAME_MAX = 256
ENVIRONMENT_MAX = 64
KEY_SCHEMA_MAX = 255
MESSAGE_MAX = 1024
SECRET_KEY_PLACEHOLDER = "{{secretKey}}"
ENVIRONMENT_PLACEHOLDER = "{{environment}}"
KEY_SCHEMA_RE = re.compile(r"^(?:[a-zA-Z0-9_\-/]|\{\{secretKey\}\}|\{\{environment\}\})*$")
KEY_SCHEMA_MESSAGE = (
    "Key schema must include exactly one {{secretKey}} placeholder. It can also include {{environment}} "
    "placeholders. Only alphanumeric characters (a-z, A-Z, 0-9), dashes (-), underscores (_), and slashes (/) are "
    "allowed besides the placeholders."
)
LOCK_HELD = "A job for this sync is already in progress. Please try again shortly."
FOLDER_GONE_REQUEST = (
    "Invalid source configuration: folder no longer exists. Please configure a valid source and try again."
)
FOLDER_GONE_JOB = json.dumps(
    {
        "error": "Invalid Secret Sync source configuration: folder no longer exists. "
        "Please update source environment and secret path."
    },
    separators=(",", ":"),
)
JOB_GATE_EXHAUSTED = "Failed to run job. This typically happens when a sync is already in progress. Please try again."
IMPORT_NOT_SUPPORTED = "Octopus Deploy does not support importing secrets."
CONNECTION_IN_USE = (
    "Cannot delete App Connection with existing connections. Remove all existing connections and try again."
)
SCOPE_KEYS = {  # scopeValues member → Octopus Scope key
    "environments": "Environment",
    "roles": "Role",
    "machines": "Machine",
    "processes": "ProcessOwner",
    "actions": "Action",
    "channels": "Channel",
}
HANDLEBARS_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&#x27;",
    "`": "&#x60;",
    "=": "&#x3D;",
}
OPTIONS_ITEM = {
    "name": DESTINATION_NAME,
    "destination": DESTINATION,
    "connection": DESTINATION,
    "canImportSecrets": False,
    "canRemoveSecretsOnDeletion": True,
}

Status = Literal["pending", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class SyncTiming:
    """Every delay of the job engine, in seconds. Defaults are upstream's; ``fast()`` keeps the same shape for tests."""

    first_delay_min: float = 0.0  # each job waits random(min, max) before its first attempt
    first_delay_max: float = 10.0
    attempts: int = 5
    backoff_base: float = 3.0  # wait before retry n (n = 1..4): base * 2**(n-1)
    requeue_min: float = 30.0  # a job that finds the lock or the connection busy comes back in [min, max]
    requeue_max: float = 40.0
    max_requeues: int = 30
    max_jobs_per_connection: int = 3
    http_retries: int = 3  # retries of one Octopus call on 5xx/429/network errors, inside an attempt
    http_retry_base: float = 0.1  # axios-retry: base * 2**n (+0-20 %)
    debounce: float = 3.0  # secret changes per project/environment/path are gathered this long

    @classmethod
    def fast(cls) -> SyncTiming:
        return cls(
            first_delay_max=0.0,
            backoff_base=0.02,
            requeue_min=0.02,
            requeue_max=0.04,
            http_retry_base=0.0,
            debounce=0.05,
        )


@dataclass
class _Sync:
    id: str
    name: str
    description: str | None
    destination: str
    project_id: str
    org_id: str
    connection_id: str
    folder_id: str | None
    is_auto_sync_enabled: bool
    sync_options: dict[str, Any]
    destination_config: dict[str, Any]
    created_at: float
    updated_at: float
    sync_status: Status | None = None
    last_sync_job_id: str | None = None
    last_sync_message: str | None = None
    last_synced_at: float | None = None
    remove_status: Status | None = None
    last_remove_job_id: str | None = None
    last_remove_message: str | None = None
    last_removed_at: float | None = None


@dataclass
class _Job:
    id: str
    sync_id: str
    kind: Literal["sync", "remove"]
    delete_on_success: bool = False
    attempt: int = 0
    requeues: int = 0


class SyncStore:
    """``infisical.state.syncs``: the rows, the timings and switches. Uses the state's lock."""

    def __init__(self, state: InfisicalState) -> None:
        self._state = state
        self._syncs: dict[str, _Sync] = {}
        self.timing = SyncTiming()
        self.block_duplicate_destinations = False  # the org setting blockDuplicateSecretSyncDestinations

    def sync(self, sync_id: str) -> dict[str, Any] | None:
        """The row as the API shows it (None once deleted)."""
        with self._state._lock:
            row = self._syncs.get(sync_id)
            return self._view(row) if row is not None else None

    def all(self) -> list[dict[str, Any]]:
        with self._state._lock:
            return [self._view(r) for r in self._syncs.values()]

    def add_foreign_sync(self, *, destination: str, name: str, project_id: str, connection_id: str) -> str:
        """A sync of another destination (e.g. "aws-parameter-store"), for name clashes and cross-destination 400s."""
        with self._state._lock:
            now = self._state.clock()
            project = self._state._projects[project_id]
            row = _Sync(
                str(uuid.uuid4()), name, None, destination, project_id, project.org_id, connection_id, None, False,
                {}, {}, now, now,
            )  # fmt: skip
            self._syncs[row.id] = row
            return row.id

    def uses_connection(self, connection_id: str) -> bool:
        with self._state._lock:
            return any(r.connection_id == connection_id for r in self._syncs.values())

    def _touch(self, row: _Sync) -> None:
        # Every row write moves updatedAt (a DB trigger upstream); a clock that stands still must not hide it.
        row.updated_at = max(self._state.clock(), row.updated_at + 0.001)

    def _view(self, row: _Sync) -> dict[str, Any]:
        from tests.servers.infisical import _iso

        located = self._state.secrets.folder_by_id(row.folder_id)
        connection = self._state._connections.get(row.connection_id)

        def when(moment: float | None) -> str | None:
            return _iso(moment) if moment is not None else None

        return {
            "id": row.id,
            "name": row.name,
            "description": row.description,
            "destination": row.destination,
            "isAutoSyncEnabled": row.is_auto_sync_enabled,
            "version": 1,  # upstream never increments it
            "projectId": row.project_id,
            "folderId": located[0].id if located else None,
            "connectionId": row.connection_id,
            "createdAt": _iso(row.created_at),
            "updatedAt": _iso(row.updated_at),
            "syncStatus": row.sync_status,
            "lastSyncJobId": row.last_sync_job_id,
            "lastSyncMessage": row.last_sync_message,
            "lastSyncedAt": when(row.last_synced_at),
            "importStatus": None,
            "lastImportJobId": None,
            "lastImportMessage": None,
            "lastImportedAt": None,
            "removeStatus": row.remove_status,
            "lastRemoveJobId": row.last_remove_job_id,
            "lastRemoveMessage": row.last_remove_message,
            "lastRemovedAt": when(row.last_removed_at),
            "syncOptions": copy.deepcopy(row.sync_options),
            "connection": (
                {"app": connection.app, "name": connection.name, "id": connection.id} if connection else None
            ),
            "environment": (
                {"slug": located[1].slug, "name": located[1].name, "id": located[1].id} if located else None
            ),
            "folder": {"id": located[0].id, "path": located[0].path} if located else None,
            "destinationConfig": copy.deepcopy(row.destination_config),
        }


# --- Request validation (zod issues, as infisical.py's) ------------------------------------------------------------


def _slug(value: Any, path: list[Any], issues: list[dict[str, Any]], *, field_name: str, maximum: int) -> str | None:
    from tests.servers.infisical import SLUG_RE, _too_big, _too_small, _trimmed_string

    text = _trimmed_string(value, path, issues)
    if text is None:
        return None
    start = len(issues)
    if len(text) < 1:
        issues.append(_too_small(1, path, f"{field_name} field must be at least 1 lowercase character"))
    if len(text) > maximum:
        issues.append(_too_big(maximum, path, f"{field_name} field must be at most {maximum} lowercase characters"))
    if text and not SLUG_RE.fullmatch(text):
        issues.append(
            {
                "code": "custom",
                "message": f"{field_name} field can only contain lowercase letters, numbers, and hyphens",
                "path": path,
            }
        )
    return text if len(issues) == start else None


def _min_string(value: Any, path: list[Any], issues: list[dict[str, Any]], message: str) -> str | None:
    from tests.servers.infisical import _too_small, _trimmed_string

    text = _trimmed_string(value, path, issues)
    if text is not None and not text:
        issues.append(_too_small(1, path, message))
        return None
    return text


def _uuid(value: Any, path: list[Any], issues: list[dict[str, Any]]) -> str | None:
    from tests.servers.infisical import UUID_RE, _invalid_type

    if not isinstance(value, str):
        issues.append(_invalid_type("string", value, path))
        return None
    if not UUID_RE.fullmatch(value):
        issues.append({"validation": "uuid", "code": "invalid_string", "message": "Invalid uuid", "path": path})
        return None
    return value


def _boolean(value: Any, path: list[Any], issues: list[dict[str, Any]]) -> bool | None:
    from tests.servers.infisical import _invalid_type

    if not isinstance(value, bool):
        issues.append(_invalid_type("boolean", value, path))
        return None
    return value


def _secret_path(value: Any, issues: list[dict[str, Any]]) -> str | None:
    text = _min_string(value, ["secretPath"], issues, "Secret path required")
    if text is None:
        return None
    return text[:-1] if text.endswith("/") and text != "/" else text


def _sync_options(value: Any, issues: list[dict[str, Any]]) -> dict[str, Any] | None:
    from tests.servers.infisical import MISSING, _invalid_type, _too_big

    path: list[Any] = ["syncOptions"]
    if not isinstance(value, dict):
        issues.append(_invalid_type("object", value, path))
        return None
    start = len(issues)
    out: dict[str, Any] = {}
    behavior = value.get("initialSyncBehavior", MISSING)
    if behavior != INITIAL_SYNC_BEHAVIOR:
        issues.append(
            {
                "received": behavior if behavior is not MISSING else None,
                "code": "invalid_literal",
                "expected": INITIAL_SYNC_BEHAVIOR,
                "path": [*path, "initialSyncBehavior"],
                "message": f'Invalid literal value, expected "{INITIAL_SYNC_BEHAVIOR}"',
            }
        )
    out["initialSyncBehavior"] = INITIAL_SYNC_BEHAVIOR
    schema = value.get("keySchema", MISSING)
    if schema is not MISSING:  # .optional(): null is not "absent"
        if not isinstance(schema, str):
            issues.append(_invalid_type("string", schema, [*path, "keySchema"]))
        else:
            schema = schema.strip()
            if len(schema) > KEY_SCHEMA_MAX:
                issues.append(_too_big(KEY_SCHEMA_MAX, [*path, "keySchema"], "Key schema cannot exceed 255 characters"))
            if SECRET_KEY_PLACEHOLDER not in schema or not KEY_SCHEMA_RE.fullmatch(schema):
                issues.append({"code": "custom", "message": KEY_SCHEMA_MESSAGE, "path": [*path, "keySchema"]})
            out["keySchema"] = schema
    for flag in ("disableSecretDeletion", "recursive"):
        if flag in value:
            checked = _boolean(value[flag], [*path, flag], issues)
            if checked is not None:
                out[flag] = checked
    return out if len(issues) == start else None


def _destination_config(value: Any, issues: list[dict[str, Any]]) -> dict[str, Any] | None:
    from tests.servers.infisical import _invalid_type

    path: list[Any] = ["destinationConfig"]
    if not isinstance(value, dict):
        issues.append(_invalid_type("object", value, path))
        return None
    start = len(issues)
    out: dict[str, Any] = {}
    space_id = _min_string(value.get("spaceId"), [*path, "spaceId"], issues, "Space ID is required")
    if value.get("scope") != "project":
        # The union parses the raw input: an omitted scope fails although the left side defaults it.
        issues.append(
            {
                "code": "invalid_union_discriminator",
                "options": ["project"],
                "path": [*path, "scope"],
                "message": "Invalid discriminator value. Expected 'project'",
            }
        )
        return None
    project_id = _min_string(value.get("projectId"), [*path, "projectId"], issues, "Project ID is required")
    out.update({"spaceId": space_id, "scope": "project", "projectId": project_id})
    for optional in ("spaceName", "projectName"):
        if isinstance(value.get(optional), str):
            out[optional] = value[optional]
    scope_values = value.get("scopeValues")
    if scope_values is not None:
        if not isinstance(scope_values, dict):
            issues.append(_invalid_type("object", scope_values, [*path, "scopeValues"]))
        else:
            kept: dict[str, list[str]] = {}
            for member in SCOPE_KEYS:
                items = scope_values.get(member)
                if items is None:
                    continue
                if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                    issues.append(_invalid_type("array", items, [*path, "scopeValues", member]))
                    continue
                kept[member] = list(items)
            out["scopeValues"] = kept
    return out if len(issues) == start else None


def parse_create(body: Any) -> dict[str, Any]:
    from tests.servers.infisical import MISSING, _description, _invalid_type, _unprocessable

    issues: list[dict[str, Any]] = []
    if not isinstance(body, dict):
        raise _unprocessable([_invalid_type("object", body, [])])
    out = {
        "name": _slug(body.get("name", MISSING), ["name"], issues, field_name="name", maximum=NAME_MAX),
        "projectId": _min_string(body.get("projectId", MISSING), ["projectId"], issues, "Project ID required"),
        "description": _description(body.get("description", MISSING), ["description"], issues),
        "connectionId": _uuid(body.get("connectionId", MISSING), ["connectionId"], issues),
        "environment": _slug(
            body.get("environment", MISSING), ["environment"], issues, field_name="environment", maximum=ENVIRONMENT_MAX
        ),
        "secretPath": _secret_path(body.get("secretPath", MISSING), issues),
        "isAutoSyncEnabled": True,
        "syncOptions": _sync_options(body.get("syncOptions", MISSING), issues),
        "destinationConfig": _destination_config(body.get("destinationConfig", MISSING), issues),
    }
    if "isAutoSyncEnabled" in body:
        out["isAutoSyncEnabled"] = _boolean(body["isAutoSyncEnabled"], ["isAutoSyncEnabled"], issues)
    if issues:
        raise _unprocessable(issues)
    return out


def parse_update(body: Any) -> dict[str, Any]:
    from tests.servers.infisical import _description, _invalid_type, _unprocessable

    issues: list[dict[str, Any]] = []
    if not isinstance(body, dict):
        raise _unprocessable([_invalid_type("object", body, [])])
    out: dict[str, Any] = {}
    parsers = {
        "name": lambda v: _slug(v, ["name"], issues, field_name="name", maximum=NAME_MAX),
        "connectionId": lambda v: _uuid(v, ["connectionId"], issues),
        "description": lambda v: _description(v, ["description"], issues),
        "environment": lambda v: _slug(v, ["environment"], issues, field_name="environment", maximum=ENVIRONMENT_MAX),
        "secretPath": lambda v: _secret_path(v, issues),
        "isAutoSyncEnabled": lambda v: _boolean(v, ["isAutoSyncEnabled"], issues),
        "syncOptions": lambda v: _sync_options(v, issues),
        "destinationConfig": lambda v: _destination_config(v, issues),
    }
    for key, parse in parsers.items():
        if key in body:
            out[key] = parse(body[key])
    if issues:
        raise _unprocessable(issues)
    return out  # projectId and unknown keys are dropped


# --- What a sync does to Octopus -------------------------------------------------------------------------------------


def render_key(schema: str | None, key: str, environment: str) -> str:
    """Handlebars with {{secretKey}} and {{environment}}; values are HTML-escaped as Handlebars does."""
    if not schema:
        return key

    def escape(text: str) -> str:
        return "".join(HANDLEBARS_ESCAPES.get(c, c) for c in text)

    return schema.replace(ENVIRONMENT_PLACEHOLDER, escape(environment)).replace(SECRET_KEY_PLACEHOLDER, escape(key))


def matches_schema(name: str, schema: str | None, environment: str) -> bool:
    """Does ``name`` look like a key this schema could have produced (the deletion pattern)?"""
    if not schema:
        return True
    rendered = schema.replace(ENVIRONMENT_PLACEHOLDER, environment)
    prefix, _, suffix = rendered.partition(SECRET_KEY_PLACEHOLDER)
    suffix = suffix.replace(SECRET_KEY_PLACEHOLDER, "")
    if len(name) < len(prefix) + len(suffix) or not name.startswith(prefix) or not name.endswith(suffix):
        return False
    middle = name[len(prefix) : len(name) - len(suffix)]
    return not (("/" in prefix or "/" in suffix) and "/" in middle)


def _is_sensitive(variable: dict[str, Any]) -> bool:
    return variable.get("IsSensitive") is True or variable.get("Type") == "Sensitive"


def plan_sync(
    document: dict[str, Any],
    secrets: dict[str, tuple[str, str]],
    *,
    schema: str | None,
    environment: str,
    scope_values: dict[str, list[str]] | None,
    disable_deletion: bool,
) -> dict[str, Any]:
    """The document to PUT back (steps 3-7 of the reference)."""
    keys = {render_key(schema, k, environment): v for k, v in secrets.items()}
    variables = document.get("Variables") or []
    others = [v for v in variables if not _is_sensitive(v)]
    managed = [v for v in variables if _is_sensitive(v)]
    scope = {SCOPE_KEYS[m]: list(ids) for m, ids in (scope_values or {}).items() if m in SCOPE_KEYS}
    new = [
        {
            "Name": name,
            "Value": value,
            "Description": comment or "",
            "Scope": copy.deepcopy(scope),
            "IsEditable": False,
            "Prompt": None,
            "Type": "Sensitive",
            "IsSensitive": True,
        }
        for name, (value, comment) in keys.items()
    ]
    if not disable_deletion:
        managed = [
            v
            for v in managed
            if not (matches_schema(v.get("Name", ""), schema, environment) and v.get("Name") not in keys)
        ]
    managed = [{**v, "Value": None} for v in managed if v.get("Name") not in keys]
    return {**document, "Variables": [*others, *managed, *new]}


def plan_remove(
    document: dict[str, Any], secrets: dict[str, tuple[str, str]], *, schema: str | None, environment: str
) -> dict[str, Any]:
    keys = {render_key(schema, k, environment) for k in secrets}
    kept = [
        v
        for v in document.get("Variables") or []
        if not (v.get("Name") in keys and v.get("IsSensitive") is True and v.get("Type") == "Sensitive")
    ]
    return {**document, "Variables": [{**v, "Value": None} if _is_sensitive(v) else v for v in kept]}


def job_message(text: str) -> str:
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 3] + "..."


class _OctopusFailure(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- The engine and the routes --------------------------------------------------------------------------------------


@dataclass
class _Gates:
    running_syncs: set[str] = field(default_factory=set)
    per_connection: dict[str, int] = field(default_factory=dict)


class SecretSyncApi:
    """Routes and the background job engine; ``server.secret_syncs``. Jobs run on the server's event loop."""

    def __init__(self, server: InfisicalServer) -> None:
        self.server = server
        self._gates = _Gates()
        self._tasks: set[asyncio.Task[None]] = set()
        self._debounced: dict[tuple[str, str, str], asyncio.TimerHandle] = {}
        self._job_number = 0
        self._stopping = False
        self._incoming = 0  # secret changes handed to the loop but not yet debounced
        self.max_concurrency_seen = 0  # most jobs of one connection that ran at once
        self._tls_cache: tuple[str | None, Any] | None = None
        server.state.secrets.listeners.append(self._secret_changed)

    @property
    def store(self) -> SyncStore:
        return self.server.state.syncs

    @property
    def state(self) -> InfisicalState:
        return self.server.state

    @staticmethod
    def routes() -> list[Any]:
        from tests.servers.infisical import _route

        one = rf"{OCTOPUS_PREFIX}/(?P<sync_id>[^/]+)"
        return [
            _route("GET", rf"{PREFIX}/options", "secret_syncs.options", "read", "identity"),
            _route("GET", rf"{PREFIX}/?", "secret_syncs.list_all", "read", "identity"),
            _route(
                "POST", rf"{OCTOPUS_PREFIX}/check-destination", "secret_syncs.check_destination", "read", "identity"
            ),
            _route("GET", rf"{OCTOPUS_PREFIX}/?", "secret_syncs.list", "read", "identity"),
            _route(
                "GET", rf"{OCTOPUS_PREFIX}/sync-name/(?P<name>[^/]*)", "secret_syncs.get_by_name", "read", "identity"
            ),
            _route("POST", rf"{OCTOPUS_PREFIX}/?", "secret_syncs.create", "write", "identity"),
            _route("GET", one, "secret_syncs.get", "read", "identity"),
            _route("PATCH", one, "secret_syncs.update", "write", "identity"),
            _route("DELETE", one, "secret_syncs.delete", "write", "identity"),
            _route("POST", one + "/sync-secrets", "secret_syncs.sync_now", "write", "identity"),
            _route("POST", one + "/remove-secrets", "secret_syncs.remove_now", "write", "identity"),
            _route("POST", one + "/import-secrets", "secret_syncs.import_secrets", "write", "identity"),
        ]

    async def shutdown(self, app: web.Application) -> None:
        self._stopping = True
        for handle in self._debounced.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # lookups (call with the state lock held)

    def _project(self, project_id: str, actor: _Actor) -> None:
        from tests.servers.infisical import ApiError

        project = self.state._projects.get(project_id)
        if project is None:
            # A machine identity is refused before any lookup: the permission check finds no membership of it in
            # that project, whether or not the project exists (the double's wording; the status is real Infisical's).
            raise ApiError(403, "You are not allowed to access this project", details=[])
        if project.org_id != actor.org_id:
            raise ApiError(403, "This project does not belong to your selected organization.", details=[])

    def _row(self, sync_id: str, actor: _Actor, *, quoted: bool = True) -> _Sync:
        from tests.servers.infisical import ApiError

        _uuid_param(sync_id)
        row = self.store._syncs.get(sync_id)
        if row is None or row.org_id != actor.org_id:
            shown = f'"{sync_id}"' if quoted else sync_id
            raise ApiError(404, f"Could not find {DESTINATION_NAME} Sync with ID {shown}")
        if row.destination != DESTINATION:
            raise ApiError(400, f'Secret sync with ID "{row.id}" is not configured for {DESTINATION_NAME}')
        return row

    def _folder_id(self, project_id: str, environment: str, secret_path: str) -> str:
        from tests.servers.infisical import ApiError

        folder_id = self.state.secrets.folder_id(project_id, environment, secret_path)
        if folder_id is None:
            raise ApiError(
                400,
                f'Could not find folder with path "{secret_path}" in environment "{environment}" for project with ID '
                f'"{project_id}"',
            )
        return folder_id

    def _connection(self, connection_id: str, project_id: str, actor: _Actor) -> _Connection:
        from tests.servers.infisical import ApiError

        connection = self.state._connections.get(connection_id)
        if connection is None or connection.org_id != actor.org_id:
            raise ApiError(404, f"Could not find App Connection with ID {connection_id}")
        if connection.app != DESTINATION:
            raise ApiError(
                400, f"{connection.app} Connection with ID {connection_id} cannot be used to connect to Octopus Deploy"
            )
        if connection.project_id is not None and connection.project_id != project_id:
            raise ApiError(
                400,
                f'You cannot connect project App Connection with ID "{connection_id}" from project with ID '
                f'"{connection.project_id}" to project with ID "{project_id}"',
            )
        return connection

    def _duplicate(self, config: dict[str, Any], actor: _Actor, exclude: str | None) -> _Sync | None:
        return next(
            (
                r
                for r in self.store._syncs.values()
                if r.destination == DESTINATION
                and r.org_id == actor.org_id
                and r.id != exclude
                and r.destination_config == config
            ),
            None,
        )

    def _name_taken(self, project_id: str, name: str, exclude: str | None = None) -> bool:
        return any(
            r.project_id == project_id and r.name == name and r.id != exclude for r in self.store._syncs.values()
        )

    # handlers

    async def options(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        return 200, {"secretSyncOptions": [dict(OPTIONS_ITEM)]}

    async def list_all(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        project_id = _project_query(request)
        with self.state._lock:
            self._project(project_id, actor)
            rows = [r for r in self.store._syncs.values() if r.project_id == project_id]
            return 200, {"secretSyncs": [self.store._view(r) for r in rows]}

    async def list(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        project_id = _project_query(request)
        with self.state._lock:
            self._project(project_id, actor)
            rows = [
                r for r in self.store._syncs.values() if r.project_id == project_id and r.destination == DESTINATION
            ]
            return 200, {"secretSyncs": [self.store._view(r) for r in rows]}

    async def get(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        with self.state._lock:
            return 200, {"secretSync": self.store._view(self._row(params["sync_id"], actor))}

    async def get_by_name(
        self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any
    ) -> tuple[int, Any]:
        from tests.servers.infisical import ApiError

        project_id = _project_query(request)
        name = params["name"]
        with self.state._lock:
            self._project(project_id, actor)
            row = next((r for r in self.store._syncs.values() if r.project_id == project_id and r.name == name), None)
            if row is None:
                raise ApiError(404, f'Could not find {DESTINATION_NAME} Sync with name "{name}"')
            if row.destination != DESTINATION:
                raise ApiError(400, f'Secret sync with ID "{row.id}" is not configured for {DESTINATION_NAME}')
            return 200, {"secretSync": self.store._view(row)}

    async def create(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        from tests.servers.infisical import DESCRIPTION_COLUMN_MAX, ApiError, _internal

        fields = parse_create(body)
        project_id = fields["projectId"]
        with self.state._lock:
            self._project(project_id, actor)
            folder_id = self._folder_id(project_id, fields["environment"], fields["secretPath"])
            if self.store.block_duplicate_destinations:
                duplicate = self._duplicate(fields["destinationConfig"], actor, None)
                if duplicate is not None:
                    where = "" if duplicate.project_id == project_id else f" in project {duplicate.project_id}"
                    raise ApiError(400, f"A secret sync with this destination already exists{where}.")
            self._connection(fields["connectionId"], project_id, actor)
            if self._name_taken(project_id, fields["name"]):
                raise ApiError(
                    400,
                    f'A Secret Sync with the name "{fields["name"]}" already exists for the project with ID '
                    f'"{project_id}"',
                )
            description = fields["description"] if isinstance(fields["description"], str) else None
            if description is not None and len(description) > DESCRIPTION_COLUMN_MAX:
                raise _internal()
            now = self.state.clock()
            row = _Sync(
                id=str(uuid.uuid4()),
                name=fields["name"],
                description=description,
                destination=DESTINATION,
                project_id=project_id,
                org_id=actor.org_id,
                connection_id=fields["connectionId"],
                folder_id=folder_id,
                is_auto_sync_enabled=fields["isAutoSyncEnabled"],
                sync_options=fields["syncOptions"],
                destination_config=fields["destinationConfig"],
                created_at=now,
                updated_at=now,
            )
            self.store._syncs[row.id] = row
            if row.is_auto_sync_enabled:
                row.sync_status = "pending"
                self._queue(row.id, "sync")
            return 200, {"secretSync": self.store._view(row)}

    async def update(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        from tests.servers.infisical import DESCRIPTION_COLUMN_MAX, ApiError, _internal

        fields = parse_update(body)
        with self.state._lock:
            row = self._row(params["sync_id"], actor, quoted=False)
            folder_id = row.folder_id
            if "environment" in fields or "secretPath" in fields:
                if "environment" not in fields or "secretPath" not in fields:
                    raise ApiError(400, "Must specify both source environment and secret path")
                folder_id = self._folder_id(row.project_id, fields["environment"], fields["secretPath"])
            if "connectionId" in fields:
                self._connection(fields["connectionId"], row.project_id, actor)
            if "name" in fields and self._name_taken(row.project_id, fields["name"], exclude=row.id):
                raise ApiError(
                    400,
                    f'A Secret Sync with the name "{fields["name"]}" already exists for the project with ID '
                    f'"{row.project_id}"',
                )
            description = fields.get("description")
            if isinstance(description, str) and len(description) > DESCRIPTION_COLUMN_MAX:
                raise _internal()
            config = fields.get("destinationConfig")
            if (
                config is not None
                and self.store.block_duplicate_destinations
                and self._duplicate(config, actor, row.id)
            ):
                raise ApiError(400, "A secret sync with this destination already exists.")
            row.name = fields.get("name", row.name)
            if "description" in fields:
                row.description = description if isinstance(description, str) else None
            row.connection_id = fields.get("connectionId", row.connection_id)
            row.folder_id = folder_id
            row.is_auto_sync_enabled = fields.get("isAutoSyncEnabled", row.is_auto_sync_enabled)
            row.sync_options = fields.get("syncOptions", row.sync_options)
            row.destination_config = fields.get("destinationConfig", row.destination_config)
            self.store._touch(row)
            # Every update queues a full sync, even one that changed nothing.
            if row.is_auto_sync_enabled and self.state.secrets.folder_by_id(row.folder_id) is not None:
                row.sync_status = "pending"
                self._queue(row.id, "sync")
            return 200, {"secretSync": self.store._view(row)}

    async def delete(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        from tests.servers.infisical import _unprocessable

        remove = request.query.get("removeSecrets", "false")
        if remove not in {"true", "false"}:
            raise _unprocessable(
                [
                    {
                        "received": remove,
                        "code": "invalid_enum_value",
                        "options": ["true", "false"],
                        "path": ["removeSecrets"],
                        "message": f"Invalid enum value. Expected 'true' | 'false', received '{remove}'",
                    }
                ]
            )
        with self.state._lock:
            row = self._row(params["sync_id"], actor)
            if remove == "false":
                view = self.store._view(row)
                del self.store._syncs[row.id]
                return 200, {"secretSync": view}
            self._check_runnable(row)
            row.remove_status = "pending"
            self.store._touch(row)
            self._queue(row.id, "remove", delete_on_success=True)
            return 200, {"secretSync": self.store._view(row)}

    async def sync_now(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> tuple[int, Any]:
        with self.state._lock:
            row = self._row(params["sync_id"], actor)
            self._check_runnable(row)
            row.sync_status = "pending"
            self.store._touch(row)
            self._queue(row.id, "sync")
            return 200, {"secretSync": self.store._view(row)}

    async def remove_now(
        self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any
    ) -> tuple[int, Any]:
        with self.state._lock:
            row = self._row(params["sync_id"], actor)
            self._check_runnable(row)
            row.remove_status = "pending"
            self.store._touch(row)
            self._queue(row.id, "remove")
            return 200, {"secretSync": self.store._view(row)}

    async def import_secrets(
        self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any
    ) -> tuple[int, Any]:
        from tests.servers.infisical import ApiError, _unprocessable

        behavior = request.query.get("importBehavior")
        if behavior not in {"prioritize-source", "prioritize-destination"}:
            raise _unprocessable(
                [
                    {
                        "code": "invalid_enum_value" if behavior is not None else "invalid_type",
                        "options": ["prioritize-source", "prioritize-destination"],
                        "path": ["importBehavior"],
                        "message": "Required" if behavior is None else "Invalid enum value",
                    }
                ]
            )
        raise ApiError(400, IMPORT_NOT_SUPPORTED)  # before the sync is even looked up

    async def check_destination(
        self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any
    ) -> tuple[int, Any]:
        from tests.servers.infisical import _invalid_type, _unprocessable

        issues: list[dict[str, Any]] = []
        if not isinstance(body, dict):
            raise _unprocessable([_invalid_type("object", body, [])])
        config = _destination_config(body.get("destinationConfig"), issues)
        _uuid(body.get("projectId"), ["projectId"], issues)
        exclude = body.get("excludeSyncId")
        if exclude is not None:
            _uuid(exclude, ["excludeSyncId"], issues)
        if issues or config is None:
            raise _unprocessable(issues)
        with self.state._lock:
            duplicate = self._duplicate(config, actor, exclude)
        if duplicate is None:
            return 200, {"hasDuplicate": False}
        return 200, {"hasDuplicate": True, "duplicateProjectId": duplicate.project_id}

    def _check_runnable(self, row: _Sync) -> None:
        from tests.servers.infisical import ApiError

        if row.id in self._gates.running_syncs:
            raise ApiError(400, LOCK_HELD)
        if self.state.secrets.folder_by_id(row.folder_id) is None:
            raise ApiError(400, FOLDER_GONE_REQUEST)

    # the engine

    def _secret_changed(self, project_id: str, environment: str, path: str) -> None:
        """Called by the secret store (any thread): debounce per folder, then queue its auto-sync syncs."""
        loop = self.server._thread.loop
        if self._stopping or loop.is_closed() or not self.server._started:
            return
        self._incoming += 1
        try:
            loop.call_soon_threadsafe(self._debounce, (project_id, environment, path))
        except RuntimeError:  # the loop closed in between: the server is gone, so is its engine
            self._incoming -= 1

    def busy(self) -> bool:
        """Is anything queued, debouncing or running? Tests wait for False before counting calls."""
        return bool(self._incoming or self._debounced or self._tasks)

    def _debounce(self, where: tuple[str, str, str]) -> None:
        self._incoming -= 1
        if self._stopping:
            return
        previous = self._debounced.pop(where, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._debounced[where] = loop.call_later(self.store.timing.debounce, self._folder_changed, where)

    def _folder_changed(self, where: tuple[str, str, str]) -> None:
        self._debounced.pop(where, None)
        project_id, environment, path = where
        with self.state._lock:
            folder_id = self.state.secrets.folder_id(project_id, environment, path)
            for row in self.store._syncs.values():
                if row.destination == DESTINATION and row.is_auto_sync_enabled and row.folder_id == folder_id:
                    if folder_id is None:
                        continue
                    row.sync_status = "pending"
                    self.store._touch(row)
                    self._queue(row.id, "sync")

    def _queue(self, sync_id: str, kind: Literal["sync", "remove"], *, delete_on_success: bool = False) -> None:
        """Queue a job (called on the server loop, with or without the state lock)."""
        self._job_number += 1
        job = _Job(str(self._job_number), sync_id, kind, delete_on_success)
        timing = self.store.timing
        self._spawn(job, random.uniform(timing.first_delay_min, timing.first_delay_max))

    def _spawn(self, job: _Job, delay: float) -> None:
        if self._stopping:
            return
        task = asyncio.get_running_loop().create_task(self._run(job, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: _Job, delay: float) -> None:
        await asyncio.sleep(delay)
        timing = self.store.timing
        with self.state._lock:
            row = self.store._syncs.get(job.sync_id)
            if row is None:
                return  # deleted while queued
            busy = job.sync_id in self._gates.running_syncs or (
                self._gates.per_connection.get(row.connection_id, 0) >= timing.max_jobs_per_connection
            )
            if busy:
                job.requeues += 1
                if job.requeues > timing.max_requeues:
                    self._finish(row, job, ok=False, message=JOB_GATE_EXHAUSTED)
                    return
                self._spawn(job, random.uniform(timing.requeue_min, timing.requeue_max))
                return
            connection_id = row.connection_id
            self._gates.running_syncs.add(job.sync_id)
            self._gates.per_connection[connection_id] = self._gates.per_connection.get(connection_id, 0) + 1
            self.max_concurrency_seen = max(self.max_concurrency_seen, self._gates.per_connection[connection_id])
            job.attempt += 1
            if job.kind == "sync":
                row.sync_status = "running"
            else:
                row.remove_status = "running"
            self.store._touch(row)
            snapshot = replace(row, sync_options=copy.deepcopy(row.sync_options))
        try:
            message: str | None = None
            retryable = True
            try:
                await self._attempt(snapshot, job)
            except _OctopusFailure as failure:
                message = failure.message
            except _NotRetryable as failure:
                message, retryable = failure.message, False
        finally:
            with self.state._lock:
                self._gates.running_syncs.discard(job.sync_id)
                self._gates.per_connection[connection_id] -= 1
        with self.state._lock:
            row = self.store._syncs.get(job.sync_id)
            if row is None:
                return
            if message is None:
                self._finish(row, job, ok=True)
            elif job.kind == "sync" and retryable and job.attempt < timing.attempts:
                # Nothing recorded: the sync stays "running" with its old message until the last attempt.
                self._spawn(job, timing.backoff_base * 2 ** (job.attempt - 1))
            else:
                self._finish(row, job, ok=False, message=message)

    def _finish(self, row: _Sync, job: _Job, *, ok: bool, message: str | None = None) -> None:
        now = self.state.clock()
        if job.kind == "sync":
            row.sync_status = "succeeded" if ok else "failed"
            row.last_sync_job_id = job.id
            row.last_sync_message = None if ok else job_message(message or "")
            if ok:
                row.last_synced_at = now
        else:
            row.remove_status = "succeeded" if ok else "failed"
            row.last_remove_job_id = job.id
            row.last_remove_message = None if ok else job_message(message or "")
            if ok:
                row.last_removed_at = now
            if ok and job.delete_on_success:
                del self.store._syncs[row.id]
                return
        self.store._touch(row)

    async def _attempt(self, row: _Sync, job: _Job) -> None:
        from tests.servers.infisical import ApiError

        with self.state._lock:
            located = self.state.secrets.folder_by_id(row.folder_id)
            connection = self.state._connections.get(row.connection_id)
            credentials = self.state._decrypt(connection.encrypted_credentials) if connection is not None else None
        if located is None:
            raise _NotRetryable(FOLDER_GONE_JOB)
        if credentials is None:
            raise _OctopusFailure(f"Could not find App Connection with ID {row.connection_id}")
        folder, environment = located
        secrets = self.state.secrets.secrets_with_comments(folder.id)
        base = credentials["instanceUrl"]
        base = base[:-1] if base.endswith("/") else base
        try:
            await self.server._block_local_and_private_ip_addresses(base)
        except ApiError as exc:
            raise _OctopusFailure(str(exc.message)) from None
        config = row.destination_config
        url = f"{base}/api/{config['spaceId']}/projects/{config['projectId']}/variables"
        document = await self._call("GET", url, credentials["apiKey"], None, job)
        if not isinstance(document, dict):
            document = {"Variables": []}
        schema = row.sync_options.get("keySchema")
        if job.kind == "sync":
            planned = plan_sync(
                document,
                secrets,
                schema=schema,
                environment=environment.slug,
                scope_values=config.get("scopeValues"),
                disable_deletion=bool(row.sync_options.get("disableSecretDeletion")),
            )
        else:
            planned = plan_remove(document, secrets, schema=schema, environment=environment.slug)
        await self._call("PUT", url, credentials["apiKey"], planned, job)

    def _tls(self, make: Any) -> Any:
        # Building a context reads the system CAs: once per CA setting, not once per call.
        ca_pem = self.state.octopus_ca_pem
        if self._tls_cache is None or self._tls_cache[0] != ca_pem:
            self._tls_cache = (ca_pem, make(ca_pem=ca_pem))
        return self._tls_cache[1]

    async def _call(self, method: str, url: str, api_key: str, body: Any, job: _Job) -> Any:
        """One axios call with Infisical's request config: no redirects, retries on 5xx/429/network errors."""
        from tests.servers.infisical import (
            AXIOS_USER_AGENT,
            OutboundCall,
            _certificate_message,
            _node_network_message,
            _redact_headers,
            _tls_context,
        )

        headers = {
            "X-Octopus-ApiKey": api_key,
            "X-NuGet-ApiKey": api_key,
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": AXIOS_USER_AGENT,
        }
        timing = self.store.timing
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            text = ""
            error: str | None = None
            retryable = False
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
                    session.request(
                        method,
                        url,
                        headers=headers,
                        data=json.dumps(body).encode() if body is not None else None,
                        allow_redirects=False,
                        ssl=self._tls(_tls_context),
                    ) as response,
                ):
                    status = response.status
                    text = await response.text()
            except aiohttp.ClientConnectorCertificateError as exc:
                error = _certificate_message(exc)
            except aiohttp.ClientConnectorError as exc:
                error, retryable = _node_network_message(exc), True
            except aiohttp.ServerDisconnectedError:
                error, retryable = "socket hang up", True
            except aiohttp.ClientError as exc:
                error, retryable = f"read ECONNRESET ({type(exc).__name__})", True
            self.state._record_outbound(OutboundCall(method, url, _redact_headers(headers), status, error, attempt))
            if status is not None and 200 <= status < 300:
                try:
                    return json.loads(text) if text else None
                except ValueError:
                    return None
            if status is not None:
                retryable = status == 429 or status >= 500
                error = _axios_message(status, text)
            if not retryable or attempt > timing.http_retries:
                raise _OctopusFailure(error or "Unknown error")
            delay = timing.http_retry_base * 2**attempt
            await asyncio.sleep(delay + delay * 0.2 * random.random())


class _NotRetryable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _axios_message(status: int, text: str) -> str:
    """What Infisical records: the response body JSON-encoded, else axios's own message."""
    if not text:
        return f"Request failed with status code {status}"
    try:
        parsed = json.loads(text)
    except ValueError:
        return json.dumps(text)
    return json.dumps(parsed, separators=(",", ":"), ensure_ascii=False)


def match_routes(routes: Any, method: str, path: str) -> tuple[Any, dict[str, str]] | None:
    """The first of ``routes`` (infisical.py's ``_Route``) that matches, with its parameters; None when none does."""
    for route in routes:
        match = route.pattern.fullmatch(path)
        if match is not None and route.method == method:
            return route, match.groupdict()
    return None


def _uuid_param(value: str) -> None:
    from tests.servers.infisical import UUID_RE, _unprocessable

    if not UUID_RE.fullmatch(value):
        raise _unprocessable(
            [{"validation": "uuid", "code": "invalid_string", "message": "Invalid uuid", "path": ["syncId"]}]
        )


def _project_query(request: web.Request) -> str:
    from tests.servers.infisical import _too_small, _unprocessable

    project_id = request.query.get("projectId")
    if project_id is None:
        raise _unprocessable(
            [
                {
                    "code": "invalid_type",
                    "expected": "string",
                    "received": "undefined",
                    "path": ["projectId"],
                    "message": "Required",
                }
            ]
        )
    if not project_id.strip():
        raise _unprocessable([_too_small(1, ["projectId"], "Project ID required")])
    return project_id.strip()


# --- Standalone CLI (python -m tests.servers.infisical) --------------------------------------------------------------


def add_cli_arguments(parser: Any) -> None:
    parser.add_argument(
        "--seed-secret",
        action="append",
        default=[],
        metavar="PROJECT:ENV:PATH:KEY=VALUE",
        help="set a secret (folders made as needed; the project must be given with --project-id); repeatable",
    )
    parser.add_argument(
        "--sync-timing",
        choices=["upstream", "fast"],
        default="upstream",
        help="secret-sync job delays: Infisical's (0-10 s first delay, 3 s debounce, 3 s backoff) or fast ones",
    )


def apply_cli_arguments(args: Any, state: InfisicalState) -> None:
    if args.sync_timing == "fast":
        state.syncs.timing = replace(SyncTiming.fast(), debounce=0.5)
    for seed in args.seed_secret:
        project_id, environment, path, assignment = seed.split(":", 3)
        key, _, value = assignment.partition("=")
        state.secrets.set_secret(project_id, environment, path, key, value)
