"""Pure parts of the Infisical client: response parsing, auth reprs, error-body rendering."""

from __future__ import annotations

import httpx
import pytest

from octoconn.infisical import UNSET, KubernetesAuth, UniversalAuth, _message
from octoconn.remote import AppConnection

CONNECTION = {
    "id": "6f1c7a0e-1111-4222-8333-944445555666",
    "name": "prod-octopus",
    "description": None,
    "version": 1,
    "orgId": "org-1",
    "projectId": None,
    "createdAt": "2025-06-01T10:00:00.000Z",
    "updatedAt": "2025-06-01T10:00:00.000Z",
    "isPlatformManagedCredentials": False,
    "gatewayId": None,
    "isAutoRotationEnabled": False,
    "credentialsHash": "a" * 64,
    "app": "octopus-deploy",
    "method": "api-key",
    "credentials": {"instanceUrl": "https://example.octopus.app"},
}


def test_app_connection_from_api() -> None:
    connection = AppConnection.from_api(CONNECTION)
    assert connection == AppConnection(
        id=CONNECTION["id"],  # type: ignore[arg-type]
        name="prod-octopus",
        description=None,
        version=1,
        org_id="org-1",
        project_id=None,
        credentials_hash="a" * 64,
        instance_url="https://example.octopus.app",
        created_at="2025-06-01T10:00:00.000Z",
        updated_at="2025-06-01T10:00:00.000Z",
    )


@pytest.mark.parametrize("missing", ["id", "name", "version", "orgId", "credentialsHash"])
def test_app_connection_requires_the_fields_status_records(missing: str) -> None:
    data = {k: v for k, v in CONNECTION.items() if k != missing}
    with pytest.raises(ValueError, match="not an app connection"):
        AppConnection.from_api(data)


def test_auth_reprs_hide_secrets() -> None:
    async def mint() -> str:
        return "eyJhbGciOiJSUzI1NiJ9.secret-jwt"

    universal = UniversalAuth(client_id="client-123", client_secret="s3cr3t-value")
    assert "client-123" in repr(universal)
    assert "s3cr3t-value" not in repr(universal)
    assert "s3cr3t-value" not in str(universal)
    kubernetes = KubernetesAuth(identity_id="identity-9", token_source=mint)
    assert "identity-9" in repr(kubernetes)
    assert repr(UNSET) == "UNSET"


def _response(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body)


def test_422_issues_are_rendered_readably() -> None:
    response = _response(
        422,
        {
            "reqId": "req-abcdefghijklmn",
            "statusCode": 422,
            "message": [
                {
                    "validation": "url",
                    "code": "invalid_string",
                    "message": "Invalid Instance URL",
                    "path": ["credentials", "instanceUrl"],
                },
                {"code": "custom", "message": "API key required", "path": ["credentials", "apiKey"]},
                {"code": "custom", "message": "Expected 'api-key'", "path": []},
            ],
            "error": "ValidationFailure",
        },
    )
    assert _message(response) == (
        "credentials.instanceUrl: Invalid Instance URL; credentials.apiKey: API key required; Expected 'api-key'"
    )


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(502, text="<html>Bad gateway</html>"), "HTTP 502 without an Infisical error message"),
        (_response(400, {"message": "  two\n lines "}), "two lines"),
        (_response(500, ["not", "an", "object"]), "HTTP 500 without an Infisical error message"),
    ],
)
def test_odd_error_bodies(response: httpx.Response, expected: str) -> None:
    assert _message(response) == expected
