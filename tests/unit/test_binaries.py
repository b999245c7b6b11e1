"""The binary registry (tests/envtest/binaries.py): what `make demo` builds, and the progress lines of a build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.envtest import binaries
from tests.envtest.binaries import Tool, ensure, tools


def test_the_demo_needs_only_the_control_plane() -> None:
    assert [t.name for t in tools(demo=True)] == ["etcd", "kube-apiserver", "kubectl"]
    everything = {t.name for t in tools()}
    assert {"helm", "promtool", "argocd-health", "argocd-health-latest", "kstatus", "osv-scanner"} <= everything


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown binaries: nope"):
        tools(["kubectl", "nope"])


def _fake(name: str, folder: Path, seconds: float) -> Tool:
    def build(out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(name)

    return Tool(name, lambda: folder / name / name, build, seconds)


def test_progress_says_which_how_far_and_how_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OCTOCONN_CACHE", str(tmp_path))
    monkeypatch.setattr(binaries.shutil, "which", lambda _: "/usr/bin/go")
    (tmp_path / "build-times.json").write_text(json.dumps({"second": 300.0}))
    present = _fake("present", tmp_path, 10)
    present.build(present.path())  # already built: neither counted nor rebuilt
    selected = [present, _fake("first", tmp_path, 120), _fake("second", tmp_path, 60)]

    paths = ensure(selected)

    assert {name: path.read_text() for name, path in paths.items()} == {n: n for n in ("present", "first", "second")}
    lines = [line for line in capsys.readouterr().err.splitlines() if "building" in line]
    assert lines == [
        "[binaries] [1/2] building first: about 2.0 min (a fresh two-core machine); "
        "about 7.0 min left for the 2 still to build",
        "[binaries] [2/2] building second: about 5.0 min (its build on the previous run); "
        "about 5.0 min left for the 1 still to build",
    ]
    times = json.loads((tmp_path / "build-times.json").read_text())
    assert set(times) == {"first", "second"}  # each build's own time replaces the previous one
    assert times["second"] < 300
