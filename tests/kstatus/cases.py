"""What Flux shows for each saved object of both kinds: kstatus, computed by tests/kstatus (Go, sigs.k8s.io/cli-utils).

The objects are saved from the cluster tier (tests/cluster/test_argocd_health.py for connections,
tests/cluster/test_sync_saved_states.py for secret syncs and a deleting connection). ``CASES`` says, per saved file,
which kstatus status Flux shows and where its message comes from; ``write_tests`` turns that into the runner's input
for a folder of saved objects, so a refreshed object (new ids in a message) needs no hand edit here.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.envtest.binaries import ensure_kstatus

ROOT = Path(__file__).resolve().parents[2]
CONNECTIONS = ROOT / "tests" / "argocd" / "testdata"
SYNCS = ROOT / "tests" / "argocd" / "sync" / "testdata"
OTHERS = ROOT / "tests" / "argocd" / "connection-deleting" / "testdata"

READY_MESSAGE = "<Ready's message>"  # the message is the Ready condition's own: it says what is wrong and what to do


@dataclass(frozen=True)
class Case:
    folder: str  # "connections", "syncs" or "others"
    name: str  # the saved file, without .yaml
    status: str  # Current, InProgress, Failed, Terminating
    message: str  # a literal, or READY_MESSAGE


def _generation_message(kind: str) -> str:
    # kstatus's own words; the saved objects are one generation ahead of what the operator observed.
    return f"{kind} generation is 2, but latest observed generation is 1"


CASES: tuple[Case, ...] = (
    # No status yet: kstatus finds neither observedGeneration nor a condition and calls that Current (see
    # docs/flux.md: Flux may pass a `wait` before the operator has seen a new object).
    Case("connections", "progressing_no_status", "Current", "Resource is current"),
    Case("connections", "healthy", "Current", "Resource is Ready"),
    Case("connections", "progressing_new_generation", "InProgress", _generation_message("OctopusDeployConnection")),
    Case("connections", "progressing_ready_unknown", "InProgress", READY_MESSAGE),
    Case("connections", "degraded_secret_not_found", "Failed", READY_MESSAGE),
    Case("connections", "suspended_paused", "InProgress", READY_MESSAGE),
    Case("others", "connection_deleting", "Terminating", "Resource scheduled for deletion"),
    Case("syncs", "progressing_no_status", "Current", "Resource is current"),
    Case("syncs", "healthy", "Current", "Resource is Ready"),
    Case("syncs", "progressing_running", "InProgress", READY_MESSAGE),
    Case("syncs", "progressing_new_generation", "InProgress", _generation_message("OctopusDeploySecretSync")),
    Case("syncs", "degraded_destination_not_found", "Failed", READY_MESSAGE),
    Case("syncs", "suspended_paused", "InProgress", READY_MESSAGE),
    Case("syncs", "deleting_blocked", "Terminating", "Resource scheduled for deletion"),
)


def ready_message(obj: dict[str, Any]) -> str:
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    return str(ready["message"])


def write_tests(path: Path, folders: dict[str, Path], cases: tuple[Case, ...] = CASES) -> Path:
    """The runner's input at ``path``: each case's saved object (by absolute path) and what kstatus must say."""
    tests = []
    for case in cases:
        source = folders[case.folder] / f"{case.name}.yaml"
        obj = yaml.safe_load(source.read_text())
        message = ready_message(obj) if case.message == READY_MESSAGE else case.message
        tests.append({"inputPath": str(source), "want": {"status": case.status, "message": message}})
    path.write_text(yaml.safe_dump({"tests": tests}, sort_keys=False))
    return path


def run_kstatus(tests: Path) -> tuple[int, list[dict[str, Any]]]:
    proc = subprocess.run(
        [str(ensure_kstatus()), "-tests", str(tests)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]
