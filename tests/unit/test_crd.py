"""The CRDs are generated from the pydantic models: one source of truth, checked here for both kinds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from octoconn import crd, models, sync_models

ROOT = Path(__file__).resolve().parents[2]
KINDS = pytest.mark.parametrize("kind", crd.KINDS, ids=[k.kind for k in crd.KINDS])


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += walk(sub, f"{path}.{name}")
    if "items" in schema:
        out += walk(schema["items"], f"{path}[]")
    return out


def schema(kind: crd.Kind) -> dict[str, Any]:
    return crd.build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@KINDS
def test_committed_crd_matches_the_models(kind: crd.Kind) -> None:
    assert (ROOT / "crds" / kind.file_name).read_text() == crd.render(kind), "crds/ is stale: run `make crds`"


def test_crds_directory_holds_exactly_the_generated_kinds() -> None:
    ours = sorted(p.name for p in (ROOT / "crds").glob(f"{models.GROUP}_*.yaml"))
    assert ours == sorted(k.file_name for k in crd.KINDS)


@KINDS
def test_every_field_has_a_description_for_kubectl_explain(kind: crd.Kind) -> None:
    missing = [path for path, sub in walk(schema(kind)) if path and path != ".metadata" and not sub.get("description")]
    assert missing == []


@KINDS
def test_no_defaults_anywhere(kind: crd.Kind) -> None:
    assert [path for path, sub in walk(schema(kind)) if "default" in sub] == []


@KINDS
def test_string_limits_never_land_on_arrays(kind: crd.Kind) -> None:
    """maxLength on an array would be ignored by the API server; lists get maxItems."""
    wrong = [path for path, sub in walk(schema(kind)) if sub.get("type") == "array" and "maxLength" in sub]
    assert wrong == []


def test_connection_spec_fields_match_model_aliases() -> None:
    spec = schema(crd.CONNECTION)["properties"]["spec"]
    aliases = {f.alias for f in models.OctopusDeployConnectionSpec.model_fields.values()}
    assert set(spec["properties"]) == aliases
    assert spec["required"] == ["instanceUrl", "apiKeySecretRef"]


def test_secret_sync_spec_fields_match_model_aliases() -> None:
    spec = schema(crd.SECRET_SYNC)["properties"]["spec"]
    aliases = {f.alias for f in sync_models.OctopusDeploySecretSyncSpec.model_fields.values()}
    assert set(spec["properties"]) == aliases
    assert spec["required"] == ["connectionRef", "source", "destination"]
    scope = spec["properties"]["destination"]["properties"]["scope"]["properties"]
    assert set(scope) == {"environments", "roles", "machines", "channels", "processes", "actions"}
    assert scope["environments"]["maxItems"] == 100
    assert scope["environments"]["items"]["maxLength"] == sync_models.NAME_OR_ID_MAX


@pytest.mark.parametrize(
    ("kind", "status_model"),
    [
        (crd.CONNECTION, models.OctopusDeployConnectionStatus),
        (crd.SECRET_SYNC, sync_models.OctopusDeploySecretSyncStatus),
    ],
)
def test_status_round_trips_through_the_schema_fields(kind: crd.Kind, status_model: Any) -> None:
    status = schema(kind)["properties"]["status"]
    assert set(status_model(id="x").to_patch()) == set(status["properties"])  # with an id: every field


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        (crd.CONNECTION, ["Ready", "Reason", "Connection ID", "Instance", "Last Verified", "Age"]),
        (crd.SECRET_SYNC, ["Ready", "Reason", "Connection", "Project", "Sync Status", "Last Synced", "Age"]),
    ],
)
def test_printer_columns(kind: crd.Kind, columns: list[str]) -> None:
    version = yaml.safe_load((ROOT / "crds" / kind.file_name).read_text())["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")] == columns
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize(
    ("key_schema", "valid"),
    [
        ("WEB_{{secretKey}}", True),
        ("{{environment}}/{{secretKey}}", True),
        ("{{secretKey}}", True),
        ("A B", False),
        ("X_{{other}}", False),
        ("X.{{secretKey}}", False),
    ],
)
def test_key_schema_pattern_follows_infisical(key_schema: str, valid: bool) -> None:
    import re

    assert bool(re.fullmatch(sync_models.KEY_SCHEMA_PATTERN, key_schema)) is valid
