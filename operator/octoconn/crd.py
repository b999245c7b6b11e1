"""Generate the CustomResourceDefinitions from ``octoconn.models`` and ``octoconn.sync_models``.

The models are the single source of truth: field names (camelCase aliases), types, descriptions, required
fields, enums, length limits, patterns and CEL rules all come from them. ``python -m octoconn.crd [PLURAL]`` prints
one CRD; ``make crds`` writes both to ``crds/`` and the chart; a test fails when a committed file differs.
No ``default:`` is ever emitted: defaults on optional fields make Argo CD report OutOfSync forever.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from octoconn import models, sync_models

_STRING_CONSTRAINTS = {"min_length": "minLength", "max_length": "maxLength"}
_NUMBER_CONSTRAINTS = {"ge": "minimum", "le": "maximum"}
_ARRAY_CONSTRAINTS = {"minLength": "minItems", "maxLength": "maxItems"}


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _constraints(schema: dict[str, Any], metadata: list[Any]) -> dict[str, Any]:
    array = schema.get("type") == "array"
    for meta in metadata:
        for attr, key in {**_STRING_CONSTRAINTS, **_NUMBER_CONSTRAINTS}.items():
            value = getattr(meta, attr, None)
            if value is not None:
                schema[_ARRAY_CONSTRAINTS.get(key, key) if array else key] = value
    return schema


def _type_schema(annotation: Any) -> dict[str, Any]:
    annotation = _strip_optional(annotation)
    if get_origin(annotation) is Annotated:
        inner, *extras = get_args(annotation)
        metadata = [m for extra in extras for m in (extra.metadata if isinstance(extra, FieldInfo) else [extra])]
        described = [e.description for e in extras if isinstance(e, FieldInfo) and e.description]
        schema = _constraints(_type_schema(inner), metadata)
        return {"description": described[0], **schema} if described else schema
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_schema(annotation)
    if origin is Literal:
        values = list(get_args(annotation))
        return {"type": "string", "enum": values}
    if origin is list:
        (item,) = get_args(annotation)
        return {"type": "array", "items": _type_schema(item)}
    if annotation is str:
        return {"type": "string"}
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer", "format": "int64"}
    raise TypeError(f"no CRD mapping for {annotation!r}")


def _field_schema(field: FieldInfo) -> dict[str, Any]:
    schema = _constraints(_type_schema(field.annotation), field.metadata)
    if isinstance(field.json_schema_extra, dict):
        schema.update(field.json_schema_extra)
    # The API server's message for a failed ``pattern`` shows the raw regular expression, so a pattern reaches the
    # CRD only as a CEL rule with a message in words (models.pattern_rule); one without it is a mistake.
    for meta in field.metadata:
        pattern = getattr(meta, "pattern", None)
        rules = [r.get("rule") for r in schema.get("x-kubernetes-validations", [])]
        if pattern is not None and models.pattern_rule(pattern, "")["rule"] not in rules:
            raise ValueError(f"pattern {pattern!r} needs a models.pattern_rule with a message in words")
    if not field.description:
        raise ValueError("every CRD field needs a description (kubectl explain shows it)")
    return {"description": field.description, **schema}


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        properties[alias] = _field_schema(field)
        if field.is_required():
            required.append(alias)
    schema: dict[str, Any] = {"type": "object", "description": (model.__doc__ or "").strip(), "properties": properties}
    if required:
        schema["required"] = required
    extra = model.model_config.get("json_schema_extra")
    if isinstance(extra, dict):
        schema.update(extra)
    return schema


def _ready(field: str) -> str:
    return f'.status.conditions[?(@.type=="Ready")].{field}'


@dataclass(frozen=True)
class Kind:
    """One custom resource of the group: its names, models, root rules and printer columns."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    root_validations: list[Any]
    columns: list[dict[str, Any]]

    @property
    def file_name(self) -> str:
        return f"{models.GROUP}_{self.plural}.yaml"


CONNECTION = Kind(
    kind=models.KIND,
    plural=models.PLURAL,
    singular=models.SINGULAR,
    short_names=models.SHORT_NAMES,
    description="OctopusDeployConnection registers an Octopus Deploy API key, kept in a Secret, as an "
    "Infisical App Connection and keeps it verified and in sync.",
    spec=models.OctopusDeployConnectionSpec,
    status=models.OctopusDeployConnectionStatus,
    root_validations=models.ROOT_VALIDATIONS,
    columns=[
        {"name": "Ready", "type": "string", "jsonPath": _ready("status")},
        {"name": "Reason", "type": "string", "jsonPath": _ready("reason")},
        {"name": "Connection ID", "type": "string", "jsonPath": ".status.id"},
        {"name": "Instance", "type": "string", "jsonPath": ".spec.instanceUrl"},
        {"name": "Last Verified", "type": "date", "jsonPath": ".status.lastVerifiedTime"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Hash", "type": "string", "jsonPath": ".status.credentialsHash", "priority": 1},
        {"name": "Message", "type": "string", "jsonPath": _ready("message"), "priority": 1},
    ],
)

SECRET_SYNC = Kind(
    kind=sync_models.KIND,
    plural=sync_models.PLURAL,
    singular=sync_models.SINGULAR,
    short_names=sync_models.SHORT_NAMES,
    description="OctopusDeploySecretSync declares an Infisical Secret Sync that writes the secrets of one Infisical "
    "folder into an Octopus Deploy project's sensitive variables, through an OctopusDeployConnection.",
    spec=sync_models.OctopusDeploySecretSyncSpec,
    status=sync_models.OctopusDeploySecretSyncStatus,
    root_validations=sync_models.ROOT_VALIDATIONS,
    columns=[
        {"name": "Ready", "type": "string", "jsonPath": _ready("status")},
        {"name": "Reason", "type": "string", "jsonPath": _ready("reason")},
        {"name": "Connection", "type": "string", "jsonPath": ".spec.connectionRef.name"},
        {"name": "Project", "type": "string", "jsonPath": ".status.destination.projectId"},
        {"name": "Sync Status", "type": "string", "jsonPath": ".status.syncStatus"},
        {"name": "Last Synced", "type": "date", "jsonPath": ".status.lastSyncedAt"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Sync ID", "type": "string", "jsonPath": ".status.id", "priority": 1},
        {"name": "Message", "type": "string", "jsonPath": _ready("message"), "priority": 1},
    ],
)

KINDS = (CONNECTION, SECRET_SYNC)


def build_crd(kind: Kind = CONNECTION) -> dict[str, Any]:
    root = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this representation of the object."},
            "kind": {"type": "string", "description": f"Kind of this object: {kind.kind}."},
            "metadata": {"type": "object"},
            "spec": model_schema(kind.spec),
            "status": model_schema(kind.status),
        },
        "x-kubernetes-validations": kind.root_validations,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": kind.short_names,
                "categories": models.CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render(kind: Kind = CONNECTION) -> str:
    module = kind.spec.__module__.rsplit(".", 1)[-1]
    header = f"# Generated by `make crds` from operator/octoconn/{module}.py. Do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(kind), sort_keys=False, width=120)


def write_all(directory: Path) -> list[Path]:
    """Write every CRD into ``directory`` (``make crds``); returns the files written."""
    written = []
    for kind in KINDS:
        path = directory / kind.file_name
        path.write_text(render(kind))
        written.append(path)
    return written


def main() -> None:
    """``python -m octoconn.crd [PLURAL]`` prints one CRD; ``--write DIR...`` writes all of them into each DIR."""
    args = sys.argv[1:]
    if args[:1] == ["--write"]:
        for directory in args[1:]:
            for path in write_all(Path(directory)):
                sys.stdout.write(f"wrote {path}\n")
        return
    by_plural = {kind.plural: kind for kind in KINDS}
    sys.stdout.write(render(by_plural[args[0]] if args else CONNECTION))


if __name__ == "__main__":
    main()
