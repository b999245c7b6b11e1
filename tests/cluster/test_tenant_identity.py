"""Per-resource Infisical identities (spec.infisical): a team's own credentials, optionally on its own host."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.conftest import CLIENT_ID, Kube, Remotes
from tests.servers.infisical import InfisicalServer

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator")]

TEAM_ID = "team-a-identity"
TEAM_SECRET = "team-a-secret-5d1c9e0b7a3f4e2d8c6b"


@pytest.fixture
def team_infisical(remotes: Remotes) -> Iterator[InfisicalServer]:
    """The team's own Infisical host, which must only ever see the team's identity."""
    server = InfisicalServer(allow_internal_ips=True).start()
    server.state.add_universal_identity(client_id=TEAM_ID, client_secret=TEAM_SECRET)
    remotes.issued_secrets.append(TEAM_SECRET)
    try:
        yield server
    finally:
        server.stop()


def team_spec(remotes: Remotes, host: str | None) -> dict[str, Any]:
    infisical: dict[str, Any] = {"credentialsSecretRef": {"name": "team-identity"}}
    if host:
        infisical["hostUrl"] = host
    return {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": "octopus-key"}, "infisical": infisical}


def test_team_identity_on_its_own_host(kube: Kube, remotes: Remotes, team_infisical: InfisicalServer) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.put_secret("team-identity", {"clientId": TEAM_ID, "clientSecret": TEAM_SECRET})
    kube.apply_odc("team-conn", team_spec(remotes, team_infisical.url))

    obj = kube.wait_condition("team-conn", "Ready", "True", "Available")
    assert team_infisical.state.connection(obj["status"]["id"]) is not None
    assert remotes.infisical.state.connection(obj["status"]["id"]) is None
    logins = team_infisical.state.requests_to("/api/v1/auth/universal-auth/login")
    assert logins
    assert {r.json["clientId"] for r in logins} == {TEAM_ID}  # the operator's own identity never went there
    assert all(r.json["clientId"] != CLIENT_ID for r in logins)


def test_finalizer_still_works_when_the_identity_secret_went_first(
    kube: Kube, remotes: Remotes, team_infisical: InfisicalServer
) -> None:
    """A namespace deletion removes the identity Secret and the resource together."""
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.put_secret("team-identity", {"clientId": TEAM_ID, "clientSecret": TEAM_SECRET})
    kube.apply_odc("team-gone", team_spec(remotes, team_infisical.url))
    connection_id = kube.wait_condition("team-gone", "Ready", "True", "Available")["status"]["id"]

    kube.core.delete_namespaced_secret("team-identity", kube.namespace)
    kube.delete_odc("team-gone")
    kube.wait_gone("team-gone")
    assert team_infisical.state.connection(connection_id) is None


def test_wrong_team_secret_is_reported_without_the_secret(
    kube: Kube, remotes: Remotes, team_infisical: InfisicalServer
) -> None:
    wrong = "not-the-team-secret-0a9b8c7d6e5f"
    remotes.issued_secrets.append(wrong)
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.put_secret("team-identity", {"clientId": TEAM_ID, "clientSecret": wrong})
    kube.apply_odc("team-wrong", team_spec(remotes, team_infisical.url))

    obj = kube.wait_condition("team-wrong", "Synced", "False", "InfisicalAuthFailed")
    message = kube.condition("team-wrong", "Ready")["message"]  # type: ignore[index]
    assert "Invalid credentials" in message
    assert wrong not in repr(obj)
    assert team_infisical.state.connections() == []


def test_missing_team_secret(kube: Kube, remotes: Remotes) -> None:
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("team-missing", team_spec(remotes, None))
    kube.wait_condition("team-missing", "Synced", "False", "InfisicalCredentialsMissing")
    assert "team-identity" in kube.condition("team-missing", "Ready")["message"]  # type: ignore[index]
