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


# --- a secret sync's destination -------------------------------------------------------------------------------------
def key_file_for(tmp_path: Path, key: str, *, bom: bool = False) -> str:
    path = tmp_path / "key"
    path.write_bytes(("\ufeff" if bom else "").encode() + key.encode() + b"\r\n")
    return str(path)


def check_destination(octopus: OctopusServer, key_file: str, *args: str) -> subprocess.CompletedProcess[str]:
    return octoconn("check", "--instance-url", octopus.url, "--api-key-file", key_file, "--allow-http", *args)


def test_check_a_destination_with_the_operators_five_reads(octopus: OctopusServer, tmp_path: Path) -> None:
    projects = octopus.state.projects
    project = projects.add_project("Spaces-1", "Cli Shop")
    production = projects.add_environment("Spaces-1", "Cli Production")
    before = len(octopus.state.requests)
    result = check_destination(
        octopus,
        key_file_for(tmp_path, octopus.state.issue_key()),
        *("--space", "Default", "--project", "cli-shop", "--environment", "cli production"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"OK: project Cli Shop ({project}) in space Default (Spaces-1) exists and user" in lines[-2]
    assert lines[-1] == f"Scope environments: Cli Production ({production})"
    requests = octopus.state.requests[before:]
    assert {r.method for r in requests} == {"GET"}  # nothing written
    # The key check (root, user, key expiry), then the destination's five reads, as the operator makes them.
    assert [r.path for r in requests][3:] == [
        "/api/users/me",
        "/api/spaces/all",
        "/api/Spaces-1/projects/all",
        f"/api/Spaces-1/projects/{project}/variables",
        "/api/users/Users-1/permissions",
    ]


def test_check_a_destination_gives_the_operators_permission_verdict(octopus: OctopusServer, tmp_path: Path) -> None:
    projects = octopus.state.projects
    projects.add_project("Spaces-1", "Cli Locked")
    test_env = projects.add_environment("Spaces-1", "Cli Test")
    no_edit = octopus.state.issue_key(permissions={"SpaceView", "ProjectView", "VariableView"})
    result = check_destination(
        octopus, key_file_for(tmp_path, no_edit), "--space", "Spaces-1", "--project", "Cli Locked"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("FAILED (MissingPermission): Octopus user")
    assert "lacks VariableEdit on project Cli Locked" in result.stderr
    assert no_edit not in result.stdout + result.stderr

    # VariableEdit limited to one environment: enough for variables scoped to it, not for unscoped ones.
    limited = octopus.state.issue_key(
        permissions={"SpaceView", "ProjectView", "VariableView", "VariableEdit", "EnvironmentView"}
    )
    projects.restrict(limited, "VariableEdit", environments=[test_env])
    key_file = key_file_for(tmp_path, limited)
    unscoped = check_destination(octopus, key_file, "--space", "Default", "--project", "Cli Locked")
    assert unscoped.returncode == 1
    assert "lacks VariableEditUnscoped" in unscoped.stderr
    scoped = check_destination(
        octopus, key_file, "--space", "Default", "--project", "Cli Locked", "--environment", test_env
    )
    assert scoped.returncode == 0, scoped.stderr


def test_check_a_destination_names_what_is_not_found(octopus: OctopusServer, tmp_path: Path) -> None:
    octopus.state.projects.add_project("Spaces-1", "Cli Found")
    key_file = key_file_for(tmp_path, octopus.state.issue_key())
    project = check_destination(octopus, key_file, "--space", "Default", "--project", "Cli Fund")
    assert project.returncode == 1
    assert project.stderr.startswith("FAILED (DestinationNotFound):")
    assert '"Cli Fund"' in project.stderr
    scope = check_destination(octopus, key_file, "--space", "Default", "--project", "Cli Found", "--role", "no-such")
    assert scope.returncode == 1
    assert 'spec.destination.scope.roles: "no-such"' in scope.stderr


def test_check_a_destination_warns_of_a_non_sensitive_variable_of_a_written_name(
    octopus: OctopusServer, tmp_path: Path
) -> None:
    projects = octopus.state.projects
    project = projects.add_project("Spaces-1", "Cli Clash")
    projects.set_variable(project, "db_pass", "plain-value", sensitive=False)
    projects.set_variable(project, "API_TOKEN", "old-secret", sensitive=True)  # Infisical replaces this one
    key_file = key_file_for(tmp_path, octopus.state.issue_key())
    where = ("--space", "Default", "--project", "Cli Clash")
    keys = ("--secret-key", "DB_PASS", "--secret-key", "API_TOKEN")

    clash = check_destination(octopus, key_file, *where, *keys)
    assert clash.returncode == 0, clash.stderr  # a warning, as on DestinationVerified, which stays True
    (warning,) = [line for line in clash.stdout.splitlines() if line.startswith("WARNING")]
    assert (
        f"project Cli Clash ({project}) in space Default (Spaces-1) already has non-sensitive variables named DB_PASS."
        in warning
    )
    assert "API_TOKEN" not in warning
    assert "plain-value" not in clash.stdout

    apart = check_destination(octopus, key_file, *where, *keys, "--key-schema", "WEB_{{secretKey}}")
    assert apart.returncode == 0, apart.stderr
    assert "WARNING" not in apart.stdout


def test_check_trims_a_key_file_as_the_operator_does(octopus: OctopusServer, tmp_path: Path) -> None:
    """An editor's byte-order mark and a Windows line end: the operator's trim (Infisical's), so the key works."""
    octopus.state.projects.add_project("Spaces-1", "Cli Bom")
    key_file = key_file_for(tmp_path, octopus.state.issue_key(), bom=True)
    result = check_destination(octopus, key_file, "--space", "Default", "--project", "Cli Bom")
    assert result.returncode == 0, result.stderr
    assert "OK: the key belongs to user" in result.stdout
    assert "OK: project Cli Bom" in result.stdout


def test_check_destination_options_go_together(tmp_path: Path) -> None:
    key_file = key_file_for(tmp_path, "API-UNUSED0000000000000000")
    base = ("check", "--instance-url", "https://x.example", "--api-key-file", key_file)
    for args, expected in [
        (("--project", "Web"), "--space and --project go together"),
        (("--environment", "Production"), "need --space and --project"),
        (
            ("--space", "Default", "--project", "Web", "--key-schema", "{{environment}}_{{secretKey}}"),
            "--source-environment",
        ),
    ]:
        result = octoconn(*base, *args)
        assert result.returncode == 2, args
        assert expected in result.stderr
