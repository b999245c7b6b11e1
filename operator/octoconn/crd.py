"""Generate the CustomResourceDefinition from ``octoconn.models``.

The models are the single source of truth: field names (camelCase aliases), types, descriptions, required
fields, enums, length limits, patterns and CEL rules all come from them. ``python -m octoconn.crd`` prints the
CRD; ``make crds`` writes it to ``crds/``; a test fails when the committed file differs from the output.
No ``default:`` is ever emitted: defaults on optional fields make Argo CD report OutOfSync forever.
"""

from __future__ import annotations

import sys
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from octoconn import models

_STRING_CONSTRAINTS = {"min_length": "minLength", "max_length": "maxLength"}
_NUMBER_CONSTRAINTS = {"ge": "minimum", "le": "maximum"}


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _type_schema(annotation: Any) -> dict[str, Any]:
    annotation = _strip_optional(annotation)
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
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
    schema = _type_schema(field.annotation)
    for meta in field.metadata:
        for attr, key in {**_STRING_CONSTRAINTS, **_NUMBER_CONSTRAINTS}.items():
            value = getattr(meta, attr, None)
            if value is not None:
                schema[key] = value
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


def _printer_columns() -> list[dict[str, Any]]:
    def cond(field: str) -> str:
        return f'.status.conditions[?(@.type=="Ready")].{field}'

    return [
        {"name": "Ready", "type": "string", "jsonPath": cond("status")},
        {"name": "Reason", "type": "string", "jsonPath": cond("reason")},
        {"name": "Connection ID", "type": "string", "jsonPath": ".status.id"},
        {"name": "Instance", "type": "string", "jsonPath": ".spec.instanceUrl"},
        {"name": "Last Verified", "type": "date", "jsonPath": ".status.lastVerifiedTime"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Hash", "type": "string", "jsonPath": ".status.credentialsHash", "priority": 1},
        {"name": "Message", "type": "string", "jsonPath": cond("message"), "priority": 1},
    ]


def build_crd() -> dict[str, Any]:
    spec_schema = model_schema(models.OctopusDeployConnectionSpec)
    status_schema = model_schema(models.OctopusDeployConnectionStatus)
    root = {
        "type": "object",
        "description": "OctopusDeployConnection registers an Octopus Deploy API key, kept in a Secret, as an "
        "Infisical App Connection and keeps it verified and in sync.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this representation of the object."},
            "kind": {"type": "string", "description": "Kind of this object: OctopusDeployConnection."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": models.ROOT_VALIDATIONS,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{models.PLURAL}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": models.SHORT_NAMES,
                "categories": models.CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `python -m octoconn.crd` from operator/octoconn/models.py. Do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
