"""The CRD is generated from the pydantic models: one source of truth, checked here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from octoconn import crd, models

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "octoconn.dev_octopusdeployconnections.yaml"


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += walk(sub, f"{path}.{name}")
    if "items" in schema:
        out += walk(schema["items"], f"{path}[]")
    return out


def schema() -> dict[str, Any]:
    return crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == crd.render(), "crds/ is stale: run `make crds`"


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    missing = [path for path, sub in walk(schema()) if path and path != ".metadata" and not sub.get("description")]
    assert missing == []


def test_no_defaults_anywhere() -> None:
    assert [path for path, sub in walk(schema()) if "default" in sub] == []


def test_spec_fields_match_model_aliases() -> None:
    spec = schema()["properties"]["spec"]
    aliases = {f.alias for f in models.OctopusDeployConnectionSpec.model_fields.values()}
    assert set(spec["properties"]) == aliases
    assert spec["required"] == ["instanceUrl", "apiKeySecretRef"]


def test_status_round_trips_through_the_schema_fields() -> None:
    status = schema()["properties"]["status"]
    dumped = models.OctopusDeployConnectionStatus().to_patch()
    assert set(dumped) == set(status["properties"])


def test_printer_columns() -> None:
    version = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert names == ["Ready", "Reason", "Connection ID", "Instance", "Last Verified", "Age"]
    assert version["subresources"] == {"status": {}}
