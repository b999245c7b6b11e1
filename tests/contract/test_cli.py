"""`octoconn check | version | run` as a user runs them: a real process, the Octopus test server on a socket."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from octoconn import __version__
from tests.servers.octopus import OctopusServer


def octoconn(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OCTOCONN_")}
    return subprocess.run(
        [sys.executable, "-m", "octoconn", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        input=stdin,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    result = octoconn("version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"octoconn {__version__}"


def test_check_accepts_a_valid_key(octopus: OctopusServer, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(octopus.state.issue_key(user_id="Users-2") + "\n")
    result = octoconn("check", "--instance-url", octopus.url + "/api/", "--api-key-file", str(key_file), "--allow-http")
    assert result.returncode == 0, result.stderr
    assert "OK: the key belongs to service account" in result.stdout
    assert "(Users-2)" in result.stdout
    assert "Key expires at" in result.stdout


def test_check_reads_the_key_from_stdin(octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    result = octoconn("check", "--instance-url", octopus.url, "--api-key-file", "-", "--allow-http", stdin=key)
    assert result.returncode == 0, result.stderr
    assert "OK: the key belongs to user" in result.stdout


def test_check_rejects_a_revoked_key_without_printing_it(octopus: OctopusServer, tmp_path: Path) -> None:
    key = octopus.state.issue_key()
    octopus.state.revoke_key(key)
    key_file = tmp_path / "key"
    key_file.write_text(key)
    result = octoconn("check", "--instance-url", octopus.url, "--api-key-file", str(key_file), "--allow-http")
    assert result.returncode == 1
    assert result.stderr.startswith("FAILED (InvalidApiKey):")
    assert key not in result.stdout + result.stderr


def test_check_refuses_http_unless_allowed(octopus: OctopusServer, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(octopus.state.issue_key())
    result = octoconn("check", "--instance-url", octopus.url, "--api-key-file", str(key_file))
    assert result.returncode == 1
    assert "InsecureInstanceUrl" in result.stderr
    assert octopus.state.requests == []  # the key never left the machine


def test_check_missing_key_file(tmp_path: Path) -> None:
    result = octoconn("check", "--instance-url", "https://x.example", "--api-key-file", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_run_refuses_incomplete_settings_with_a_clear_message() -> None:
    result = octoconn("run", env={"OCTOCONN_AUTH_METHOD": "universal"})
    assert result.returncode == 2
    assert "OCTOCONN_CLIENT_ID" in result.stderr
    result = octoconn("run", env={"OCTOCONN_AUTH_METHOD": "kubernetes"})
    assert result.returncode == 2
    assert "OCTOCONN_KUBERNETES_IDENTITY_ID" in result.stderr


def test_run_reports_an_unreadable_secret_file(tmp_path: Path) -> None:
    env = {"OCTOCONN_CLIENT_ID": "id", "OCTOCONN_CLIENT_SECRET_FILE": str(tmp_path / "missing")}
    result = octoconn("run", env=env)
    assert result.returncode == 2
    assert "OCTOCONN_CLIENT_SECRET_FILE" in result.stderr
    assert "cannot be read" in result.stderr


def test_settings_errors_name_the_variable_and_never_echo_a_secret() -> None:
    secret = "client-secret-that-must-not-appear"
    env = {"OCTOCONN_AUTH_METHOD": "kubernetes", "OCTOCONN_CLIENT_SECRET": secret, "OCTOCONN_MAX_WORKERS": "many"}
    result = octoconn("run", env=env)
    assert result.returncode == 2
    assert "OCTOCONN_MAX_WORKERS" in result.stderr
    assert secret not in result.stdout + result.stderr


def test_run_checks_the_ca_bundle_at_start(tmp_path: Path) -> None:
    base = {"OCTOCONN_CLIENT_ID": "id", "OCTOCONN_CLIENT_SECRET": "secret"}
    result = octoconn("run", env={**base, "OCTOCONN_OCTOPUS_CA_BUNDLE": str(tmp_path / "missing.pem")})
    assert result.returncode == 2
    assert "OCTOCONN_OCTOPUS_CA_BUNDLE" in result.stderr
    assert "cannot be read" in result.stderr
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    result = octoconn("run", env={**base, "OCTOCONN_OCTOPUS_CA_BUNDLE": str(garbage)})
    assert result.returncode == 2
    assert "holds no PEM certificate" in result.stderr


def test_check_with_a_tls_octopus_and_its_ca(tmp_path: Path) -> None:
    with OctopusServer(tls=True) as server:
        assert server.ca_pem is not None
        ca = tmp_path / "ca.pem"
        ca.write_text(server.ca_pem)
        key_file = tmp_path / "key"
        key_file.write_text(server.state.issue_key())
        refused = octoconn("check", "--instance-url", server.url, "--api-key-file", str(key_file))
        assert refused.returncode == 1
        assert "OctopusTLSError" in refused.stderr
        assert "--ca-bundle" in refused.stderr
        accepted = octoconn(
            "check", "--instance-url", server.url, "--api-key-file", str(key_file), "--ca-bundle", str(ca)
        )
        assert accepted.returncode == 0, accepted.stderr


def test_check_refuses_a_huge_key_file_quickly(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"A" * 10_000_000)
    result = octoconn("check", "--instance-url", "https://x.example", "--api-key-file", str(big))
    assert result.returncode == 1
    assert "MalformedApiKey" in result.stderr
    assert "AAAAAAAA" not in result.stderr
