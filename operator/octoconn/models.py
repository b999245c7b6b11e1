"""The OctopusDeployConnection resource as pydantic models: the single source of truth for the CRD schema.

``crds/octoconn.dev_octopusdeployconnections.yaml`` is generated from these classes by ``octoconn.crd`` (field
types, descriptions, required fields, enums, patterns and CEL rules), and a test fails when the committed file
drifts from them. Spec models are frozen: the operator reads spec and never writes it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "octoconn.dev"
VERSION = "v1alpha1"
KIND = "OctopusDeployConnection"
PLURAL = "octopusdeployconnections"
SINGULAR = "octopusdeployconnection"
SHORT_NAMES = ["odc"]
CATEGORIES = ["octoconn", "infisical"]

DEFAULT_API_KEY_SECRET_KEY = "apiKey"
DEFAULT_CLIENT_ID_KEY = "clientId"
DEFAULT_CLIENT_SECRET_KEY = "clientSecret"

# Infisical's slug rule for connection names (docs/remote-apis.md).
SLUG_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
SLUG_RULE = "lowercase letters and digits, with single hyphens between them (e.g. octopus-prod)"
# A Secret's name is a DNS-1123 subdomain.
DNS1123_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_NAME_RULE = (
    "the name of a Secret: lowercase letters, digits, hyphens and dots, starting and ending with a letter or digit"
)
# A data key of a Secret.
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
SECRET_KEY_RULE = "a key of a Secret: letters, digits, hyphens, underscores and dots"
HOST_URL_PATTERN = r"^https?://[^\s/]+(/.*)?$"

ANNOTATION_PAUSED = f"{GROUP}/paused"
ANNOTATION_RECONCILE_REQUESTED_AT = f"{GROUP}/reconcile-requested-at"
ANNOTATION_ADOPT_EXISTING = f"{GROUP}/adopt-existing"
FINALIZER = f"{GROUP}/finalizer"
# The operator's own bookkeeping lives on a sub-domain, apart from the annotations users set.
OPERATOR_PREFIX = f"operator.{GROUP}"
ANNOTATION_PENDING_CREATE = f"{OPERATOR_PREFIX}/pending-create"


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> JsonDict:
    """A CEL validation rule for ``x-kubernetes-validations``.

    ``field_path`` and ``reason`` (FieldValueInvalid, FieldValueRequired, FieldValueForbidden...) decide how the API
    server words the error: without a field path, a rule on the whole object is reported as "<nil>: Invalid value".
    """
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def pattern_rule(pattern: str, requirement: str) -> JsonDict:
    """A ``pattern`` as a CEL rule whose message says the rule in words.

    The API server's own message for a schema pattern is "should match '<regular expression>'"; for this rule it is
    ``<field>: Invalid value: "<value>": must be <requirement>``.
    """
    if "'" in pattern:
        raise ValueError("the pattern goes inside a single-quoted CEL string")
    return {"rule": f"self.matches('{_cel_escape(pattern)}')", "message": f"must be {requirement}"}


def _cel_escape(text: str) -> str:
    return text.replace("\\", "\\\\")  # a backslash of the regular expression, inside a CEL string literal


def _with_rules(*rules: JsonDict) -> JsonDict:
    return {"x-kubernetes-validations": list(rules)}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def _spec_config(*rules: JsonDict) -> ConfigDict:
    """Spec models are frozen (the operator never writes spec); ``rules`` become the object's CEL validations."""
    extra: JsonDict = {"x-kubernetes-validations": list(rules)} if rules else {}
    return ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True, json_schema_extra=extra or None
    )


class _Spec(_Model):
    model_config = _spec_config()


class SecretKeyRef(_Spec):
    """Selects one key of a Secret in the resource's own namespace."""

    name: Annotated[
        str,
        Field(
            description="Name of a Secret in the same namespace as this resource. "
            "Cross-namespace references are not supported.",
            min_length=1,
            max_length=253,
            pattern=DNS1123_SUBDOMAIN_PATTERN,
            json_schema_extra=_with_rules(pattern_rule(DNS1123_SUBDOMAIN_PATTERN, SECRET_NAME_RULE)),
        ),
    ]
    key: Annotated[
        str | None,
        Field(
            description="Key inside the Secret's data that holds the Octopus API key. "
            f'When absent, "{DEFAULT_API_KEY_SECRET_KEY}".',
            min_length=1,
            max_length=253,
            pattern=SECRET_KEY_PATTERN,
            json_schema_extra=_with_rules(pattern_rule(SECRET_KEY_PATTERN, SECRET_KEY_RULE)),
        ),
    ] = None

    def data_key(self) -> str:
        return self.key or DEFAULT_API_KEY_SECRET_KEY


class InfisicalCredentialsRef(_Spec):
    """Selects a Secret holding a Universal Auth machine identity."""

    name: Annotated[
        str,
        Field(
            description="Name of a Secret in the same namespace holding a Universal Auth client id and secret.",
            min_length=1,
            max_length=253,
            pattern=DNS1123_SUBDOMAIN_PATTERN,
            json_schema_extra=_with_rules(pattern_rule(DNS1123_SUBDOMAIN_PATTERN, SECRET_NAME_RULE)),
        ),
    ]
    client_id_key: Annotated[
        str | None,
        Field(
            description=f'Key of the client id in the Secret. When absent, "{DEFAULT_CLIENT_ID_KEY}".',
            min_length=1,
            max_length=253,
            pattern=SECRET_KEY_PATTERN,
            json_schema_extra=_with_rules(pattern_rule(SECRET_KEY_PATTERN, SECRET_KEY_RULE)),
        ),
    ] = None
    client_secret_key: Annotated[
        str | None,
        Field(
            description=f'Key of the client secret in the Secret. When absent, "{DEFAULT_CLIENT_SECRET_KEY}".',
            min_length=1,
            max_length=253,
            pattern=SECRET_KEY_PATTERN,
            json_schema_extra=_with_rules(pattern_rule(SECRET_KEY_PATTERN, SECRET_KEY_RULE)),
        ),
    ] = None


class InfisicalSpec(_Spec):
    """A per-resource Infisical identity, for clusters shared by several teams."""

    model_config = _spec_config(
        cel(
            "!has(self.hostUrl) || has(self.credentialsSecretRef)",
            "infisical.hostUrl requires infisical.credentialsSecretRef: the operator never sends its own "
            "identity to a host chosen in a resource",
            ".hostUrl",
            "FieldValueForbidden",
        )
    )

    credentials_secret_ref: Annotated[
        InfisicalCredentialsRef | None,
        Field(
            description="Secret with the Universal Auth credentials used for this resource instead of the operator's."
        ),
    ] = None
    host_url: Annotated[
        str | None,
        Field(
            description="Infisical base URL for this resource (e.g. https://eu.infisical.com). Honoured only together "
            "with credentialsSecretRef.",
            max_length=255,
            pattern=HOST_URL_PATTERN,
            json_schema_extra=_with_rules(
                pattern_rule(HOST_URL_PATTERN, "an http(s) URL such as https://eu.infisical.com")
            ),
        ),
    ] = None


class OctopusDeployConnectionSpec(_Spec):
    """Desired state: which Octopus instance and key to register in Infisical, and how."""

    model_config = _spec_config(
        cel(
            "!has(oldSelf.projectId) || (has(self.projectId) && self.projectId == oldSelf.projectId)",
            "projectId is immutable: delete and recreate the resource to move the connection to another project",
            ".projectId",
            "FieldValueForbidden",
        ),
        cel(
            "has(oldSelf.projectId) || !has(self.projectId)",
            "projectId cannot be added after creation: delete and recreate the resource to move the "
            "connection into a project",
            ".projectId",
            "FieldValueForbidden",
        ),
        cel(
            "has(self.infisical) == has(oldSelf.infisical) && "
            "(!has(self.infisical) || self.infisical == oldSelf.infisical)",
            "infisical is immutable: the connection lives with the identity and host that created it; "
            "delete and recreate the resource to move it",
            ".infisical",
            "FieldValueForbidden",
        ),
    )

    instance_url: Annotated[
        str,
        Field(
            description="Base URL of the Octopus Deploy server, e.g. https://example.octopus.app or "
            "https://octopus.internal/octopus. A trailing /, /api or a pasted portal path (/app#/...) is removed "
            "before use. Must be https unless the operator runs with OCTOCONN_ALLOW_HTTP=true.",
            min_length=1,
            max_length=255,
            json_schema_extra={
                "x-kubernetes-validations": [
                    cel(
                        "self.trim().lowerAscii().startsWith('https://') || "
                        "self.trim().lowerAscii().startsWith('http://')",
                        "instanceUrl must start with https:// (or http:// where the operator allows it)",
                    ),
                    cel(
                        "!self.trim().matches('^[a-zA-Z]+://[^/]*@')",
                        "instanceUrl must not contain user:password@; put the API key in the Secret",
                    ),
                ]
            },
        ),
    ]
    api_key_secret_ref: Annotated[
        SecretKeyRef,
        Field(description="The Secret, in this namespace, that holds the Octopus API key (API-...)."),
    ]
    connection_name: Annotated[
        str | None,
        Field(
            description="Name of the App Connection in Infisical: 1-64 lowercase letters, digits and single inner "
            "hyphens. When absent, metadata.name is used (which must then satisfy the same rule).",
            min_length=1,
            max_length=64,
            pattern=SLUG_PATTERN,
            json_schema_extra=_with_rules(pattern_rule(SLUG_PATTERN, SLUG_RULE)),
        ),
    ] = None
    description: Annotated[
        str | None,
        Field(
            description="Description of the App Connection shown in Infisical (at most 255 characters).", max_length=255
        ),
    ] = None
    project_id: Annotated[
        str | None,
        Field(
            description="Infisical project id for a project-level connection. When absent the connection is "
            "org-level. Immutable once set.",
            min_length=1,
            max_length=64,
        ),
    ] = None
    deletion_policy: Annotated[
        Literal["Delete", "Orphan"] | None,
        Field(
            description="What happens to the Infisical connection when this resource is deleted: Delete (when "
            "absent) removes it, Orphan leaves it in Infisical.",
        ),
    ] = None
    infisical: Annotated[
        InfisicalSpec | None,
        Field(description="Optional per-resource Infisical identity; when absent the operator's identity is used."),
    ] = None

    def effective_deletion_policy(self) -> Literal["Delete", "Orphan"]:
        return self.deletion_policy or "Delete"


class Condition(_Model):
    """A metav1.Condition."""

    type: Annotated[str, Field(description="Condition type: Ready, CredentialsVerified or Synced.", max_length=316)]
    status: Annotated[Literal["True", "False", "Unknown"], Field(description="True, False or Unknown.")]
    reason: Annotated[str, Field(description="CamelCase reason for the last transition.", max_length=1024)]
    message: Annotated[str, Field(description="Human-readable detail: what is wrong and what to do.", max_length=32768)]
    last_transition_time: Annotated[
        str, Field(description="When status last changed (RFC 3339).", json_schema_extra={"format": "date-time"})
    ]
    observed_generation: Annotated[
        int | None, Field(description="metadata.generation this condition was computed from.", ge=0)
    ] = None


class OctopusIdentityStatus(_Model):
    """Who the API key belongs to, as Octopus reported at the last verification."""

    user_id: Annotated[str | None, Field(description="Octopus user or service-account id, e.g. Users-42.")] = None
    username: Annotated[str | None, Field(description="Octopus username of the key's owner.")] = None
    is_service: Annotated[bool | None, Field(description="Whether the key belongs to a service account.")] = None
    server_version: Annotated[str | None, Field(description="Octopus Server version reported by /api.")] = None
    key_expires_at: Annotated[
        str | None,
        Field(
            description="When the key expires, when Octopus could tell (best effort, matched by key hint).",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None


class PendingCreate(_Model):
    """Marker written before POSTing to Infisical, so a retry after a crash adopts instead of duplicating."""

    name: Annotated[str, Field(description="Connection name being created.")]
    project_id: Annotated[str | None, Field(description="Project of the connection being created.")] = None
    started_at: Annotated[
        str, Field(description="When the create was attempted (RFC 3339).", json_schema_extra={"format": "date-time"})
    ]


class Refusal(_Model):
    """A create or update Infisical refused for good (HTTP 400/422), kept in status so it is not sent again for
    nothing. Each kind adds what the refusal holds for (``octoconn.engine`` decides when it is sent again)."""

    operation: Annotated[Literal["create", "update"], Field(description="The refused request.")]
    reason: Annotated[str, Field(description="Condition reason of the refusal.", max_length=1024)]
    message: Annotated[str, Field(description="What Infisical answered, and what to do.", max_length=32768)]


class RefusedWrite(Refusal):
    """A create or update Infisical refused for good (HTTP 400/422), kept so it is not sent again for nothing.

    It holds for the generation, Secret version and reconcile-requested-at value it was refused at: a change to any
    of them sends the request again. Survives operator restarts because it lives in status.
    """

    generation: Annotated[int, Field(description="metadata.generation the request was refused at.", ge=0)]
    secret_resource_version: Annotated[str, Field(description="resourceVersion of the API key Secret at the time.")]
    reconcile_requested_at: Annotated[
        str | None, Field(description="Value of the octoconn.dev/reconcile-requested-at annotation at the time.")
    ] = None


def conditions_field(summarised: str) -> Any:
    """``status.conditions``: a list keyed by type, whose description names the kind's condition types."""
    return Field(
        description=f"Ready (summary), {summarised} and Synced.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class ManagedStatus(_Model):
    """What every managed kind's status has: the generation last reconciled and the conditions. Each kind's status
    declares ``conditions`` again, only to name its own condition types in the schema's description."""

    observed_generation: Annotated[int | None, Field(description="metadata.generation last reconciled.", ge=0)] = None
    conditions: Annotated[list[Condition] | None, conditions_field("the conditions it summarises,")] = None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions or [] if c.type == type_), None)

    # The remote object's identity (JSON names), left out of a patch from a status that records no id.
    identity_fields: ClassVar[tuple[str, ...]] = ("id",)

    def to_patch(self) -> dict[str, Any]:
        """The status as a JSON merge patch body: every field, with ``None`` clearing stale values, except the
        remote object's identity (``identity_fields``). No pass removes a recorded id, so an id-less status comes
        from a view older than the record (a second operator process that has not seen the first one's write yet):
        writing its nulls would erase the record, and with it the proof that the remote object is ours."""
        patch = self.model_dump(by_alias=True, mode="json")
        if patch.get("id") is None:
            for field_name in self.identity_fields:
                patch.pop(field_name, None)
        return patch


class OctopusDeployConnectionStatus(ManagedStatus):
    """Observed state, written only by the operator. Never contains secret material."""

    identity_fields = ("id", "version", "credentialsHash")

    id: Annotated[str | None, Field(description="Infisical App Connection id.")] = None
    version: Annotated[int | None, Field(description="App Connection version as Infisical returned it.")] = None
    credentials_hash: Annotated[
        str | None, Field(description="Infisical's credentialsHash after the operator's last credentials write.")
    ] = None
    org_id: Annotated[str | None, Field(description="Infisical organization id.")] = None
    project_id: Annotated[str | None, Field(description="Infisical project id, when project-level.")] = None
    connection_name: Annotated[str | None, Field(description="Connection name in Infisical.")] = None
    instance_url: Annotated[str | None, Field(description="Normalised Octopus URL registered in Infisical.")] = None
    octopus: Annotated[
        OctopusIdentityStatus | None, Field(description="Identity of the API key at the last verification.")
    ] = None
    secret_resource_version: Annotated[
        str | None, Field(description="resourceVersion of the Secret whose key was last verified and pushed.")
    ] = None
    last_verified_time: Annotated[
        str | None,
        Field(
            description=(
                "When Octopus last accepted the key (RFC 3339). A check that changes nothing else refreshes it at most "
                "hourly; a re-check asked for with octoconn.dev/reconcile-requested-at always does."
            ),
            json_schema_extra={"format": "date-time"},
        ),
    ] = None
    last_synced_time: Annotated[
        str | None,
        Field(
            description="When the Infisical connection was last confirmed to match (RFC 3339); refreshed like "
            "lastVerifiedTime.",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None
    handled_reconcile_request: Annotated[
        str | None,
        Field(
            description=(
                "Value of the octoconn.dev/reconcile-requested-at annotation at the last check, so that a value set "
                "while the operator was stopped is acted on when it starts."
            ),
        ),
    ] = None
    pending_create: Annotated[
        PendingCreate | None,
        Field(
            description=(
                "Written by earlier versions while a create call was in flight; the marker is now the "
                "operator.octoconn.dev/pending-create annotation. Cleared by the next status write."
            )
        ),
    ] = None
    refused_write: Annotated[
        RefusedWrite | None,
        Field(
            description="Set while Infisical's definitive refusal of a create or update stands; that request is not "
            "sent again until the resource, its Secret or octoconn.dev/reconcile-requested-at changes."
        ),
    ] = None
    conditions: Annotated[list[Condition] | None, conditions_field("CredentialsVerified")] = None


# Rules that need metadata.name live at the top level of the schema.
ROOT_VALIDATIONS = [
    cel(
        f"has(self.spec.connectionName) || (size(self.metadata.name) <= 64 && "
        f"self.metadata.name.matches('{SLUG_PATTERN}'))",
        "spec.connectionName is required when metadata.name is not a valid Infisical connection name "
        "(1-64 lowercase letters, digits and single inner hyphens)",
        ".spec.connectionName",
        "FieldValueRequired",
    )
]
