"""The OctopusDeploySecretSync resource as pydantic models: the source of truth for its CRD.

A secret sync is Infisical's "Octopus Deploy" Secret Sync declared in the cluster: which Infisical folder
(project, environment, path) is written into which Octopus project's sensitive variables, through which
``OctopusDeployConnection``. ``crds/octoconn.dev_octopusdeploysecretsyncs.yaml`` is generated from these classes by
``octoconn.crd``; a test fails when the committed file drifts from them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from octoconn.models import (
    GROUP,
    SLUG_PATTERN,
    SLUG_RULE,
    Condition,
    ManagedStatus,
    Refusal,
    _Model,
    _Spec,
    _spec_config,
    _with_rules,
    cel,
    conditions_field,
    pattern_rule,
)

KIND = "OctopusDeploySecretSync"
PLURAL = "octopusdeploysecretsyncs"
SINGULAR = "octopusdeploysecretsync"
SHORT_NAMES = ["odss"]

ANNOTATION_SYNC_REQUESTED_AT = f"{GROUP}/sync-requested-at"

# Infisical's keySchema rule: must hold {{secretKey}}; may hold {{environment}}; otherwise a-z A-Z 0-9 _ - /.
KEY_SCHEMA_PATTERN = r"^([a-zA-Z0-9_/-]|\{\{secretKey\}\}|\{\{environment\}\})*$"
KEY_SCHEMA_RULE = "letters, digits, _, - and /, with {{secretKey}} and optionally {{environment}}"
SECRET_PATH_PATTERN = r"^/.*$"
# Octopus ids look like Spaces-1 / Projects-1; anything else is a name to resolve.
NAME_OR_ID_MAX = 200

_OctopusId = Annotated[str, Field(description="An Octopus id.")]
_ScopeList = Annotated[str, Field(description="A name or an Octopus id.", min_length=1, max_length=NAME_OR_ID_MAX)]


class ConnectionRef(_Spec):
    """An OctopusDeployConnection in this resource's namespace."""

    name: Annotated[
        str,
        Field(
            description="Name of an OctopusDeployConnection in the same namespace. The sync uses its Infisical "
            "connection, its Infisical identity and, to verify the destination, its Octopus API key.",
            min_length=1,
            max_length=253,
        ),
    ]


class SyncSource(_Spec):
    """Where the secrets come from in Infisical."""

    project_id: Annotated[
        str,
        Field(
            description="Infisical project id holding the secrets. Immutable: a sync cannot move between projects.",
            min_length=1,
            max_length=64,
        ),
    ]
    environment: Annotated[
        str,
        Field(
            description="Slug of the Infisical environment, e.g. prod.",
            min_length=1,
            max_length=64,
            pattern=SLUG_PATTERN,
            json_schema_extra=_with_rules(pattern_rule(SLUG_PATTERN, SLUG_RULE)),
        ),
    ]
    secret_path: Annotated[
        str,
        Field(
            description="Folder of the secrets in that environment, e.g. / or /apps/web.",
            min_length=1,
            max_length=1024,
            pattern=SECRET_PATH_PATTERN,
            json_schema_extra=_with_rules(pattern_rule(SECRET_PATH_PATTERN, "a folder path starting with /")),
        ),
    ]


class ScopeValues(_Spec):
    """Octopus scope given to every variable the sync writes. Each entry is a name or an id, as Octopus shows it
    in the project's variable editor; names are resolved to ids through the project's variable set."""

    environments: Annotated[
        list[_ScopeList] | None,
        Field(description="Octopus environments, e.g. Production or Environments-1.", max_length=100),
    ] = None
    roles: Annotated[
        list[_ScopeList] | None, Field(description="Target roles (tags), e.g. web-server.", max_length=100)
    ] = None
    machines: Annotated[
        list[_ScopeList] | None, Field(description="Deployment targets, e.g. web-01 or Machines-1.", max_length=100)
    ] = None
    channels: Annotated[
        list[_ScopeList] | None, Field(description="Channels, e.g. Default or Channels-1.", max_length=100)
    ] = None
    processes: Annotated[
        list[_ScopeList] | None,
        Field(
            description="Processes: the deployment process (Deployment process or the project id) or runbooks by "
            "name or id.",
            max_length=100,
        ),
    ] = None
    actions: Annotated[
        list[_ScopeList] | None, Field(description="Deployment steps, by name or action id.", max_length=100)
    ] = None


class SyncDestination(_Spec):
    """Where the secrets go in Octopus: one project's variable set."""

    space: Annotated[
        str,
        Field(
            description="Octopus space, by id (Spaces-1) or by name (Default). A name is resolved with the "
            "connection's API key; the id found is shown in status.destination.",
            min_length=1,
            max_length=NAME_OR_ID_MAX,
        ),
    ]
    project: Annotated[
        str,
        Field(
            description="Octopus project in that space, by id (Projects-1), name or slug, resolved like space.",
            min_length=1,
            max_length=NAME_OR_ID_MAX,
        ),
    ]
    scope: Annotated[
        ScopeValues | None,
        Field(description="Optional scope of the variables written; absent means unscoped variables."),
    ] = None


class SyncOptions(_Spec):
    """How Infisical writes the secrets."""

    key_schema: Annotated[
        str | None,
        Field(
            description="Variable name template, e.g. WEB_{{secretKey}}. Must contain {{secretKey}}; may contain "
            "{{environment}}; other characters only letters, digits, _, - and /. Two syncs into one Octopus project "
            "need key schemas that cannot produce the same names: without one, a sync owns every sensitive "
            "variable of the project. Changing it leaves the variables written under the old names in Octopus: "
            "Infisical no longer touches them and the operator does not delete them (it cannot tell which the sync "
            "wrote); a Warning Event (VariablesLeftInOctopus) names them once.",
            min_length=1,
            max_length=255,
            pattern=KEY_SCHEMA_PATTERN,
            json_schema_extra=_with_rules(
                pattern_rule(KEY_SCHEMA_PATTERN, KEY_SCHEMA_RULE),
                cel("self.contains('{{secretKey}}')", "keySchema must contain {{secretKey}}"),
            ),
        ),
    ] = None
    disable_secret_deletion: Annotated[
        bool | None,
        Field(
            description="When true, sensitive variables whose secret is gone from Infisical are kept in Octopus. "
            "When absent, false: they are deleted."
        ),
    ] = None
    auto_sync: Annotated[
        bool | None,
        Field(
            description="When absent or true, every secret change in the folder is synced at once. When false, "
            "only spec changes and the octoconn.dev/sync-requested-at annotation sync."
        ),
    ] = None


class OctopusDeploySecretSyncSpec(_Spec):
    """Desired state: which Infisical secrets are written into which Octopus project, through which connection."""

    model_config = _spec_config(
        cel(
            "self.source.projectId == oldSelf.source.projectId",
            "source.projectId is immutable: delete and recreate the resource to sync from another project",
            ".source.projectId",
            "FieldValueForbidden",
        ),
        cel(
            "!has(self.removeSecrets) || !self.removeSecrets || !has(self.deletionPolicy) || "
            "self.deletionPolicy == 'Delete'",
            "removeSecrets: true needs deletionPolicy Delete (an orphaned sync keeps writing its variables)",
            ".removeSecrets",
            "FieldValueForbidden",
        ),
    )

    connection_ref: Annotated[ConnectionRef, Field(description="The OctopusDeployConnection this sync writes through.")]
    source: Annotated[SyncSource, Field(description="The Infisical folder whose secrets are synced.")]
    destination: Annotated[SyncDestination, Field(description="The Octopus project that receives them.")]
    sync_name: Annotated[
        str | None,
        Field(
            description="Name of the sync in Infisical: lowercase letters, digits and single inner hyphens, unique "
            "in the Infisical project. When absent, metadata.name.",
            min_length=1,
            max_length=256,
            pattern=SLUG_PATTERN,
            json_schema_extra=_with_rules(pattern_rule(SLUG_PATTERN, SLUG_RULE)),
        ),
    ] = None
    description: Annotated[
        str | None, Field(description="Description shown in Infisical (at most 255 characters).", max_length=255)
    ] = None
    options: Annotated[SyncOptions | None, Field(description="Key schema, deletion and auto-sync options.")] = None
    deletion_policy: Annotated[
        Literal["Delete", "Orphan"] | None,
        Field(
            description="What happens to the Infisical sync when this resource is deleted: Delete (when absent) "
            "removes it, Orphan leaves it in Infisical, still syncing."
        ),
    ] = None
    remove_secrets: Annotated[
        bool | None,
        Field(
            description="With deletionPolicy Delete: remove the variables this sync wrote from Octopus before the "
            "sync is deleted. The resource stays until Infisical confirms the removal. When absent, false."
        ),
    ] = None

    def effective_deletion_policy(self) -> Literal["Delete", "Orphan"]:
        return self.deletion_policy or "Delete"

    @property
    def key_schema(self) -> str | None:
        return self.options.key_schema if self.options else None

    @property
    def auto_sync(self) -> bool:
        return not (self.options is not None and self.options.auto_sync is False)

    @property
    def disable_secret_deletion(self) -> bool:
        return self.options is not None and self.options.disable_secret_deletion is True


class ResolvedScope(_Model):
    """Scope values as Octopus ids."""

    environments: Annotated[list[_OctopusId] | None, Field(description="Environment ids.")] = None
    roles: Annotated[list[_OctopusId] | None, Field(description="Role ids.")] = None
    machines: Annotated[list[_OctopusId] | None, Field(description="Machine ids.")] = None
    channels: Annotated[list[_OctopusId] | None, Field(description="Channel ids.")] = None
    processes: Annotated[list[_OctopusId] | None, Field(description="Process ids.")] = None
    actions: Annotated[list[_OctopusId] | None, Field(description="Action ids.")] = None


class ResolvedDestination(_Model):
    """The destination as Octopus ids, found with the connection's API key."""

    instance_url: Annotated[str | None, Field(description="The Octopus server (the connection's instanceUrl).")] = None
    space_id: Annotated[str | None, Field(description="Octopus space id, e.g. Spaces-1.")] = None
    space_name: Annotated[str | None, Field(description="Octopus space name.")] = None
    project_id: Annotated[str | None, Field(description="Octopus project id, e.g. Projects-1.")] = None
    project_name: Annotated[str | None, Field(description="Octopus project name.")] = None
    scope: Annotated[ResolvedScope | None, Field(description="Scope values as ids.")] = None


class PendingSyncCreate(_Model):
    """Marker written before creating the sync, so a retry after a crash adopts instead of failing on the name."""

    name: Annotated[str, Field(description="Sync name being created.")]
    started_at: Annotated[
        str, Field(description="When the create was attempted (RFC 3339).", json_schema_extra={"format": "date-time"})
    ]


class SyncRefusedWrite(Refusal):
    """A create or update Infisical refused for good, kept so it is not sent again for nothing (survives restarts)."""

    request: Annotated[
        str, Field(description="SHA-256 of the refused request body (names and ids only, never a secret).")
    ]
    sync_requested_at: Annotated[
        str | None, Field(description="Value of the octoconn.dev/sync-requested-at annotation at the time.")
    ] = None


class OctopusDeploySecretSyncStatus(ManagedStatus):
    """Observed state, written only by the operator. Never contains secret material."""

    id: Annotated[str | None, Field(description="Infisical secret sync id.")] = None
    sync_name: Annotated[str | None, Field(description="Sync name in Infisical.")] = None
    connection_id: Annotated[str | None, Field(description="Infisical app connection id the sync writes through.")] = (
        None
    )
    sync_status: Annotated[
        str | None, Field(description="Infisical's syncStatus: pending, running, succeeded or failed.")
    ] = None
    last_synced_at: Annotated[
        str | None,
        Field(description="When Infisical last synced successfully.", json_schema_extra={"format": "date-time"}),
    ] = None
    last_sync_message: Annotated[
        str | None, Field(description="Infisical's message about the last failed sync, made readable.")
    ] = None
    remove_status: Annotated[str | None, Field(description="Infisical's removeStatus during a removal.")] = None
    destination: Annotated[
        ResolvedDestination | None, Field(description="The Octopus destination as ids, verified with the key.")
    ] = None
    requested_at: Annotated[
        str | None,
        Field(
            description="Infisical's time of the operator's last create, update or sync request: a sync that "
            "succeeded after it reflects the current spec.",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None
    handled_sync_request: Annotated[
        str | None, Field(description="The last octoconn.dev/sync-requested-at value acted on.")
    ] = None
    pending_create: Annotated[
        PendingSyncCreate | None,
        Field(
            description="Written by earlier versions; the create marker is now the "
            "operator.octoconn.dev/pending-create annotation, and this field is read once and cleared."
        ),
    ] = None
    refused_write: Annotated[
        SyncRefusedWrite | None,
        Field(
            description="A create or update Infisical refused for good (400/422): not sent again until the request "
            "(spec or connection) or octoconn.dev/sync-requested-at changes."
        ),
    ] = None
    conditions: Annotated[list[Condition] | None, conditions_field("DestinationVerified")] = None


ROOT_VALIDATIONS = [
    cel(
        f"has(self.spec.syncName) || self.metadata.name.matches('{SLUG_PATTERN}')",
        "spec.syncName is required when metadata.name is not a valid Infisical sync name "
        "(lowercase letters, digits and single inner hyphens)",
        ".spec.syncName",
        "FieldValueRequired",
    )
]
