"""The image's SBOM (make image, Dockerfile stage "sbom"): in the image where its label says, beside it in dist/, and
listing exactly what the image's virtualenv holds: every locked runtime dependency at its locked version, no dev tool.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.test_image import operator_image, podman  # noqa: F401 - operator_image is a fixture

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _locked_runtime() -> set[tuple[str, str]]:
    out = subprocess.run(
        ["uv", "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    pins = [line.split(";")[0].strip() for line in out.splitlines() if re.match(r"^[A-Za-z0-9]", line)]
    return {(_normal(name), version) for name, version in (pin.split("==") for pin in pins)}


def test_the_image_carries_an_sbom_of_its_virtualenv(operator_image: str) -> None:  # noqa: F811
    path = podman("image", "inspect", "--format", '{{ index .Labels "dev.octoconn.sbom" }}', operator_image)
    label = path.stdout.strip()
    assert label == "/app/sbom.cdx.json"
    raw = podman("run", "--rm", "--entrypoint", "cat", operator_image, label).stdout
    bom: dict[str, Any] = json.loads(raw)
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["metadata"]["component"]["name"] == "octoconn"
    components = {(_normal(c["name"]), c["version"]) for c in bom["components"]}
    locked = _locked_runtime()
    assert locked, "uv export listed no runtime dependency"
    assert locked - components == set()  # every locked runtime dependency, at its locked version
    names = {name for name, _ in components}
    assert names - {name for name, _ in locked} <= {"octoconn"}  # nothing else: no dev tool, no SBOM generator
    assert not names & {"pytest", "mypy", "ruff", "cyclonedx-bom", "uv"}
    # The copy beside the image (hack/image.sh copies it out after the build) is the image's own file.
    assert json.loads((ROOT / "dist" / "sbom.cdx.json").read_text()) == bom
