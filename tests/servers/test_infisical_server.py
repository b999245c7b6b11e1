"""Tests of the Infisical test double against its reference page, over real sockets, with the real Octopus double.

The mapping from each behaviour on the page to these tests is the table in tests/servers/infisical.py.
Time-dependent behaviour (TTLs, lockouts, rate windows) runs on a ManualClock: no test sleeps.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.infisical import (
    DEFAULT_ORG_ID,
    JWT_EXPIRED,
    JWT_MALFORMED,
    K8S_AUDIENCE_DENIED,
    K8S_HOST_REQUIRED,
    K8S_NAME_DENIED,
    K8S_NAMESPACE_DENIED,
    K8S_NOT_CONFIGURED,
    LOCKED_OUT,
    NOT_SUPPORTED,
    ApiError,
    InfisicalServer,
    InfisicalState,
    KubeApiConfig,
    ManualClock,
    _check_review,
    _KubernetesAuth,
    is_internal_ipv4,
    parse_ipv4_host,
)
from tests.servers.octopus import OctopusServer

BASE = "/api/v1/app-connections/octopus-deploy"
LOGIN = "/api/v1/auth/universal-auth/login"
K8S_LOGIN = "/api/v1/auth/kubernetes-auth/login"
RENEW = "/api/v1/auth/token/renew"
REQ_ID = re.compile(r"req-[A-Za-z0-9]{14}")
RESPONSE_KEYS = {
    "id",
    "name",
    "description",
    "version",
    "orgId",
    "projectId",
    "createdAt",
    "updatedAt",
    "isPlatformManagedCredentials",
    "gatewayId",
    "isAutoRotationEnabled",
    "credentialsHash",
    "app",
    "method",
    "credentials",
}
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
WRONG_KEY = "API-WRONGWRONGWRONGWRONGWRONG1"


# --- helpers -------------------------------------------------------------------------------------------------------


def login(server: InfisicalServer, client_id: str | None = None, client_secret: str | None = None) -> str:
    response = httpx.post(
        server.url + LOGIN,
        json={"clientId": client_id or server.client_id, "clientSecret": client_secret or server.client_secret},
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["accessToken"]
    return token


def client_for(server: InfisicalServer, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token or login(server)}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def assert_error(response: httpx.Response, status: int, message: Any, error: str | None = None) -> dict[str, Any]:
    """Infisical's error body, exactly: {reqId, statusCode, message, error}."""
    names = {400: "BadRequest", 401: "UnauthorizedError", 403: "PermissionDenied", 404: "NotFound"}
    names |= {422: "ValidationFailure", 429: "RateLimitExceeded", 500: "InternalServerError"}
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert REQ_ID.fullmatch(body["reqId"]), body
    assert body["statusCode"] == status
    assert body["error"] == (error or names[status])
    assert body["message"] == message, body["message"]
    return body


def connection_body(
    octopus: OctopusServer, name: str = "my-conn", key: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "method": "api-key",
        "credentials": {"instanceUrl": octopus.url, "apiKey": key if key is not None else octopus.state.issue_key()},
        **extra,
    }


def users_me_calls(octopus: OctopusServer) -> int:
    return len(octopus.state.requests_to("/api/users/me"))


def required(path: list[Any], expected: str = "string") -> dict[str, Any]:
    return {"code": "invalid_type", "expected": expected, "received": "undefined", "path": path, "message": "Required"}


@pytest.fixture
def api(infisical: InfisicalServer) -> Iterator[httpx.Client]:
    """An httpx client for the ``infisical`` fixture, logged in through Universal Auth."""
    with client_for(infisical) as client:
        yield client


@pytest.fixture
def clocked(infisical_factory: Callable[..., InfisicalServer]) -> tuple[InfisicalServer, ManualClock]:
    """A double on a clock that moves only when the test says so."""
    clock = ManualClock()
    server = infisical_factory(state=InfisicalState(clock=clock, allow_internal_ips=True))
    return server, clock


def create(api: httpx.Client, octopus: OctopusServer, name: str = "my-conn", **extra: Any) -> dict[str, Any]:
    response = api.post(BASE, json=connection_body(octopus, name, **extra))
    assert response.status_code == 200, response.text
    connection: dict[str, Any] = response.json()["appConnection"]
    return connection


# --- Universal Auth ------------------------------------------------------------------------------------------------


def test_universal_login_returns_bearer_token(infisical: InfisicalServer) -> None:
    response = httpx.post(
        infisical.url + LOGIN, json={"clientId": infisical.client_id, "clientSecret": infisical.client_secret}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"accessToken", "expiresIn", "accessTokenMaxTTL", "tokenType"}
    assert body["tokenType"] == "Bearer"
    assert body["expiresIn"] == 7200
    assert body["accessTokenMaxTTL"] == 7200
    listed = httpx.get(infisical.url + BASE, headers={"Authorization": f"Bearer {body['accessToken']}"})
    assert listed.status_code == 200
    assert listed.json() == {"appConnections": []}


def test_universal_login_wrong_secret_is_invalid_credentials(infisical: InfisicalServer) -> None:
    response = httpx.post(infisical.url + LOGIN, json={"clientId": infisical.client_id, "clientSecret": "nope"})
    assert_error(response, 401, "Invalid credentials")


def test_universal_login_unknown_client_id_is_not_counted(infisical: InfisicalServer) -> None:
    for _ in range(5):
        response = httpx.post(infisical.url + LOGIN, json={"clientId": "who-is-this", "clientSecret": "x"})
        assert_error(response, 401, "Invalid credentials")
    login(infisical)  # the real identity is not locked


def test_universal_login_locks_after_three_failures_for_300_seconds(
    clocked: tuple[InfisicalServer, ManualClock],
) -> None:
    server, clock = clocked
    server.state.add_universal_identity(client_id="ci", client_secret="right")
    for _ in range(3):
        response = httpx.post(server.url + LOGIN, json={"clientId": "ci", "clientSecret": "wrong"})
        assert_error(response, 401, "Invalid credentials")
    # Locked now: even the right secret is refused, for 300 s after the third failure.
    assert_error(httpx.post(server.url + LOGIN, json={"clientId": "ci", "clientSecret": "right"}), 401, LOCKED_OUT)
    assert "temporarily locked" in LOCKED_OUT
    clock.advance(299)
    assert_error(httpx.post(server.url + LOGIN, json={"clientId": "ci", "clientSecret": "right"}), 401, LOCKED_OUT)
    clock.advance(1)
    login(server, "ci", "right")


def test_universal_login_failure_counter_resets_after_30_seconds(clocked: tuple[InfisicalServer, ManualClock]) -> None:
    server, clock = clocked
    server.state.add_universal_identity(client_id="ci", client_secret="right")
    for _ in range(2):
        httpx.post(server.url + LOGIN, json={"clientId": "ci", "clientSecret": "wrong"})
    clock.advance(30)  # the counter record expires 30 s after the last failure
    for _ in range(2):
        assert_error(
            httpx.post(server.url + LOGIN, json={"clientId": "ci", "clientSecret": "wrong"}), 401, "Invalid credentials"
        )
    login(server, "ci", "right")  # two failures in the current window: not locked, and the success clears them
    for _ in range(2):
        httpx.post(server.url + LOGIN, json={"clientId": "ci", "clientSecret": "wrong"})
    login(server, "ci", "right")


def test_universal_login_expired_client_secret(infisical: InfisicalServer) -> None:
    infisical.state.add_universal_identity(client_id="old", client_secret="s3cret", client_secret_expired=True)
    response = httpx.post(infisical.url + LOGIN, json={"clientId": "old", "clientSecret": "s3cret"})
    assert_error(response, 401, "Access denied due to expired client secret")
    # Upstream revokes the secret on the spot; from then on it is just wrong.
    response = httpx.post(infisical.url + LOGIN, json={"clientId": "old", "clientSecret": "s3cret"})
    assert_error(response, 401, "Invalid credentials")


def test_login_body_schema_failures_are_422(infisical: InfisicalServer) -> None:
    response = httpx.post(infisical.url + LOGIN, json={})
    assert_error(response, 422, [required(["clientId"]), required(["clientSecret"])])
    response = httpx.post(infisical.url + LOGIN, json={"clientId": 5, "clientSecret": "x"})
    wrong_type = {"code": "invalid_type", "expected": "string", "received": "number", "path": ["clientId"]}
    assert_error(response, 422, [{**wrong_type, "message": "Expected string, received number"}])
    response = httpx.post(infisical.url + K8S_LOGIN, json=["not", "an", "object"])
    array = {"code": "invalid_type", "expected": "object", "received": "array", "path": []}
    assert_error(response, 422, [{**array, "message": "Expected object, received array"}])


# --- Tokens --------------------------------------------------------------------------------------------------------


def test_missing_token_is_401_token_missing(infisical: InfisicalServer) -> None:
    response = httpx.get(infisical.url + BASE)
    body = assert_error(response, 401, "Token missing")
    assert set(body) == {"reqId", "statusCode", "message", "error"}


def test_malformed_token_is_403_token_error(infisical: InfisicalServer) -> None:
    response = httpx.get(infisical.url + BASE, headers={"Authorization": "Bearer not-a-jwt"})
    assert_error(response, 403, JWT_MALFORMED, error="TokenError")
    with InfisicalServer() as other:
        other.state.add_universal_identity(client_id="x", client_secret="y")
        foreign = login(other, "x", "y")
    response = httpx.get(infisical.url + BASE, headers={"Authorization": f"Bearer {foreign}"})
    assert_error(response, 403, "invalid signature", error="TokenError")


def test_token_is_refused_after_its_ttl(clocked: tuple[InfisicalServer, ManualClock]) -> None:
    server, clock = clocked
    server.state.add_universal_identity(client_id="ci", client_secret="s", access_token_ttl=60)
    token = login(server, "ci", "s")
    headers = {"Authorization": f"Bearer {token}"}
    clock.advance(60)
    assert httpx.get(server.url + BASE, headers=headers).status_code == 200  # expiry is strictly after the TTL
    clock.advance(1)
    assert_error(
        httpx.get(server.url + BASE, headers=headers), 401, "Failed to renew MI access token due to TTL expiration"
    )
    # The expired token row is deleted, as upstream does.
    assert_error(httpx.get(server.url + BASE, headers=headers), 401, "No identity access token found")


def test_expire_tokens_refuses_every_token(infisical: InfisicalServer) -> None:
    first, second = login(infisical), login(infisical)
    infisical.state.expire_tokens()
    for token in (first, second):
        response = httpx.get(infisical.url + BASE, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
    assert httpx.get(infisical.url + BASE, headers={"Authorization": f"Bearer {login(infisical)}"}).status_code == 200


def test_expired_token_mode_jwt_exp_answers_403_token_error(infisical: InfisicalServer) -> None:
    token = login(infisical)
    infisical.state.expired_token_mode = "jwt-exp"
    infisical.state.expire_tokens()
    response = httpx.get(infisical.url + BASE, headers={"Authorization": f"Bearer {token}"})
    assert_error(response, 403, JWT_EXPIRED, error="TokenError")


def test_renew_extends_life_and_returns_the_same_token(clocked: tuple[InfisicalServer, ManualClock]) -> None:
    server, clock = clocked
    server.state.add_universal_identity(
        client_id="ci", client_secret="s", access_token_ttl=60, access_token_max_ttl=300
    )
    token = login(server, "ci", "s")
    clock.advance(50)
    response = httpx.post(server.url + RENEW, json={"accessToken": token})
    assert response.status_code == 200
    assert response.json() == {"accessToken": token, "expiresIn": 60, "accessTokenMaxTTL": 300, "tokenType": "Bearer"}
    clock.advance(50)  # 100 s after login, 50 s after the renewal: alive only thanks to the renewal
    assert httpx.get(server.url + BASE, headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_renew_is_refused_once_max_ttl_is_reached(clocked: tuple[InfisicalServer, ManualClock]) -> None:
    server, clock = clocked
    server.state.add_universal_identity(
        client_id="ci", client_secret="s", access_token_ttl=60, access_token_max_ttl=100
    )
    token = login(server, "ci", "s")
    clock.advance(30)
    assert httpx.post(server.url + RENEW, json={"accessToken": token}).status_code == 200  # 30 + 60 <= 100
    clock.advance(50)
    response = httpx.post(server.url + RENEW, json={"accessToken": token})  # 80 + 60 > 100
    assert_error(response, 401, "Failed to renew MI access token past its Max TTL expiration")
    # A token without a TTL meets its max TTL head-on.
    server.state.add_universal_identity(
        client_id="forever", client_secret="s", access_token_ttl=0, access_token_max_ttl=100
    )
    token = login(server, "forever", "s")
    clock.advance(101)
    response = httpx.post(server.url + RENEW, json={"accessToken": token})
    assert_error(response, 401, "Failed to renew MI access token due to Max TTL expiration")


def test_helper_routes_are_forbidden_for_machine_identities(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    connection = create(api, octopus)
    for helper in ("spaces", "projects", "scope-values"):
        response = api.get(f"{BASE}/{connection['id']}/{helper}")
        body = assert_error(response, 403, "You are not allowed to access this resource")
        assert "details" in body
    assert_error(httpx.get(f"{infisical.url}{BASE}/{connection['id']}/spaces"), 401, "Token missing")


# --- Kubernetes Auth -----------------------------------------------------------------------------------------------


def test_kubernetes_login_unknown_identity_is_404(infisical: InfisicalServer) -> None:
    response = httpx.post(infisical.url + K8S_LOGIN, json={"identityId": str(uuid.uuid4()), "jwt": "x.y.z"})
    assert_error(response, 404, K8S_NOT_CONFIGURED)
    # A Universal Auth identity has no Kubernetes Auth either.
    response = httpx.post(infisical.url + K8S_LOGIN, json={"identityId": infisical.identity_id, "jwt": "x.y.z"})
    assert_error(response, 404, K8S_NOT_CONFIGURED)


def test_kubernetes_login_without_a_cluster_is_400(infisical: InfisicalServer) -> None:
    identity = infisical.state.add_kubernetes_identity()
    response = httpx.post(infisical.url + K8S_LOGIN, json={"identityId": identity, "jwt": "x.y.z"})
    assert_error(response, 400, K8S_HOST_REQUIRED)


def _kube_config(control_plane: Any, *, with_admin: bool = True) -> KubeApiConfig:
    return KubeApiConfig(
        url=control_plane.url,
        ca_file=control_plane.ca_file,
        client_cert_file=control_plane.admin_cert_file if with_admin else None,
        client_key_file=control_plane.admin_key_file if with_admin else None,
    )


def _service_account_token(kube_api: Any, namespace: str, name: str, audiences: list[str] | None = None) -> str:
    """A ServiceAccount and a 600 s TokenRequest for it, the way Infisical's own operator logs in."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    try:
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
    except client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=audiences or [], expiration_seconds=600)
    )
    status = core.create_namespaced_service_account_token(name, namespace, request).status
    assert status is not None
    assert status.token
    return str(status.token)


@pytest.mark.cluster
def test_kubernetes_login_with_a_service_account_token(
    infisical_factory: Callable[..., InfisicalServer], control_plane: Any, kube_api: Any, namespace: str
) -> None:
    server = infisical_factory(allow_internal_ips=True, kube_api=_kube_config(control_plane))
    identity = server.state.add_kubernetes_identity(allowed_namespaces=[namespace], allowed_names=["octoconn"])
    jwt = _service_account_token(kube_api, namespace, "octoconn")
    response = httpx.post(server.url + K8S_LOGIN, json={"identityId": identity, "jwt": jwt})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tokenType"] == "Bearer"
    assert body["expiresIn"] == 7200
    listed = httpx.get(server.url + BASE, headers={"Authorization": f"Bearer {body['accessToken']}"})
    assert listed.status_code == 200
    review = server.state.token_reviews[-1]
    assert review.status == 201
    assert review.url == control_plane.url + "/apis/authentication.k8s.io/v1/tokenreviews"
    assert server.state.requests_to(K8S_LOGIN)[-1].json == {"identityId": identity, "jwt": "***"}


@pytest.mark.cluster
def test_kubernetes_login_wrong_namespace_is_refused(
    infisical_factory: Callable[..., InfisicalServer], control_plane: Any, kube_api: Any, namespace: str
) -> None:
    server = infisical_factory(allow_internal_ips=True, kube_api=_kube_config(control_plane))
    identity = server.state.add_kubernetes_identity(allowed_namespaces=["somewhere-else"])
    jwt = _service_account_token(kube_api, namespace, "octoconn")
    response = httpx.post(server.url + K8S_LOGIN, json={"identityId": identity, "jwt": jwt})
    assert_error(response, 401, K8S_NAMESPACE_DENIED)


@pytest.mark.cluster
def test_kubernetes_login_name_and_audience_limits(
    infisical_factory: Callable[..., InfisicalServer], control_plane: Any, kube_api: Any, namespace: str
) -> None:
    server = infisical_factory(allow_internal_ips=True, kube_api=_kube_config(control_plane))
    wrong_name = server.state.add_kubernetes_identity(allowed_names=["someone-else"])
    jwt = _service_account_token(kube_api, namespace, "octoconn")
    assert_error(httpx.post(server.url + K8S_LOGIN, json={"identityId": wrong_name, "jwt": jwt}), 401, K8S_NAME_DENIED)

    audience = server.state.add_kubernetes_identity(allowed_audience="octoconn.dev")
    # A token for the API server's own audience fails the TokenReview, which asks for "octoconn.dev".
    response = httpx.post(server.url + K8S_LOGIN, json={"identityId": audience, "jwt": jwt})
    assert response.status_code == 401
    assert "octoconn.dev" in response.json()["message"]  # the API server's own reason, passed through
    scoped = _service_account_token(kube_api, namespace, "octoconn", audiences=["octoconn.dev"])
    response = httpx.post(server.url + K8S_LOGIN, json={"identityId": audience, "jwt": scoped})
    assert response.status_code == 200, response.text
    assert server.state.token_reviews[-1].status == 201


def test_token_review_result_checks() -> None:
    """The checks after a TokenReview answered, for results a real API server does not produce on demand."""
    k8s = _KubernetesAuth(["ns"], ["sa"], "octoconn.dev", 60, 60)

    def review(username: str, audiences: list[str]) -> dict[str, Any]:
        return {"status": {"authenticated": True, "user": {"username": username}, "audiences": audiences}}

    assert _check_review(review("system:serviceaccount:ns:sa", ["octoconn.dev"]), k8s) == ("ns", "sa")
    with pytest.raises(ApiError) as raised:
        _check_review(review("system:serviceaccount:ns:sa", ["something-else"]), k8s)
    assert (raised.value.status, raised.value.message) == (401, K8S_AUDIENCE_DENIED)
    with pytest.raises(ApiError) as raised:
        _check_review(review("jane@example.com", ["octoconn.dev"]), k8s)
    assert raised.value.status == 400
    assert "Expected format: system:serviceaccount:<namespace>:<name>" in str(raised.value.message)
    with pytest.raises(ApiError) as raised:
        _check_review({"status": {"authenticated": False}}, k8s)
    assert (raised.value.status, raised.value.message) == (401, "Kubernetes token not authenticated")
    with pytest.raises(ApiError) as raised:
        _check_review({"status": {"authenticated": False, "error": "token expired"}}, k8s)
    assert (raised.value.status, raised.value.message) == (401, "token expired")


@pytest.mark.cluster
def test_kubernetes_login_garbage_jwt_refused_and_locks_out(
    infisical_factory: Callable[..., InfisicalServer], control_plane: Any, kube_api: Any, namespace: str
) -> None:
    server = infisical_factory(allow_internal_ips=True, kube_api=_kube_config(control_plane))
    identity = server.state.add_kubernetes_identity()
    for _ in range(3):
        response = httpx.post(server.url + K8S_LOGIN, json={"identityId": identity, "jwt": "garbage"})
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "UnauthorizedError"
        assert response.json()["message"] not in ("", LOCKED_OUT)  # the API server's reason, e.g. invalid bearer token
    jwt = _service_account_token(kube_api, namespace, "octoconn")
    assert_error(httpx.post(server.url + K8S_LOGIN, json={"identityId": identity, "jwt": jwt}), 401, LOCKED_OUT)


@pytest.mark.cluster
def test_kubernetes_login_self_review_needs_auth_delegator(
    infisical_factory: Callable[..., InfisicalServer], control_plane: Any, kube_api: Any, namespace: str
) -> None:
    # No reviewer credentials: the login JWT reviews itself, and a plain ServiceAccount may not create TokenReviews.
    server = infisical_factory(allow_internal_ips=True, kube_api=_kube_config(control_plane, with_admin=False))
    identity = server.state.add_kubernetes_identity()
    jwt = _service_account_token(kube_api, namespace, "octoconn")
    response = httpx.post(server.url + K8S_LOGIN, json={"identityId": identity, "jwt": jwt})
    assert response.status_code == 401, response.text
    assert 'cannot create resource "tokenreviews"' in response.json()["message"]
    assert server.state.token_reviews[-1].status == 403
    assert server.state.token_reviews[-1].headers["Authorization"] == "Bearer ***"


# --- App connections: CRUD and response shape ---------------------------------------------------------------------


def test_create_response_shape_never_contains_the_api_key(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    key = octopus.state.issue_key()
    response = api.post(BASE, json=connection_body(octopus, "my-conn", key, description="  made by a test  "))
    assert response.status_code == 200, response.text
    assert key not in response.text
    body = response.json()
    assert set(body) == {"appConnection"}
    connection = body["appConnection"]
    assert set(connection) == RESPONSE_KEYS  # no "project" outside lists
    assert connection["name"] == "my-conn"
    assert connection["description"] == "made by a test"
    assert connection["version"] == 1
    assert connection["orgId"] == DEFAULT_ORG_ID
    assert connection["projectId"] is None
    assert connection["isPlatformManagedCredentials"] is False
    assert connection["gatewayId"] is None
    assert connection["isAutoRotationEnabled"] is False
    assert connection["app"] == "octopus-deploy"
    assert connection["method"] == "api-key"
    assert connection["credentials"] == {"instanceUrl": octopus.url}
    assert re.fullmatch(r"[0-9a-f]{64}", connection["credentialsHash"])
    assert ISO_MS.fullmatch(connection["createdAt"])
    assert connection["createdAt"] == connection["updatedAt"]
    uuid.UUID(connection["id"])
    stored = infisical.state.connection(connection["id"])
    assert stored is not None
    assert stored["_credentials"] == {"instanceUrl": octopus.url, "apiKey": key}
    for read in (api.get(f"{BASE}/{connection['id']}"), api.get(BASE), api.get(f"{BASE}/connection-name/my-conn")):
        assert read.status_code == 200
        assert key not in read.text
        assert "apiKey" not in read.text


def test_get_by_id_and_its_errors(api: httpx.Client, octopus: OctopusServer) -> None:
    connection = create(api, octopus)
    assert api.get(f"{BASE}/{connection['id']}").json() == {"appConnection": connection}
    missing = str(uuid.uuid4())
    assert_error(api.get(f"{BASE}/{missing}"), 404, f"Could not find App Connection with ID {missing}")
    uuid_issue = {"validation": "uuid", "code": "invalid_string", "message": "Invalid uuid", "path": ["connectionId"]}
    assert_error(api.get(f"{BASE}/not-a-uuid"), 422, [uuid_issue])
    for app in ("aws", "github"):
        response = api.get(f"/api/v1/app-connections/{app}/{connection['id']}")
        assert_error(response, 400, f'App Connection with ID {connection["id"]} is not for App "{app}"')
    assert_error(
        api.get(f"/api/v1/app-connections/no-such-app/{connection['id']}"),
        404,
        f"Route GET:/api/v1/app-connections/no-such-app/{connection['id']} not found",
    )


def test_get_by_name_in_org_and_project_scope(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    project = infisical.state.add_project()
    org_level = create(api, octopus, "shared")
    in_project = create(api, octopus, "shared", projectId=project)
    assert api.get(f"{BASE}/connection-name/shared").json() == {"appConnection": org_level}
    assert api.get(f"{BASE}/connection-name/shared", params={"projectId": project}).json() == {
        "appConnection": in_project
    }
    assert_error(
        api.get(f"{BASE}/connection-name/missing"),
        404,
        "Could not find App Connection with name missing in organization scope.",
    )
    assert_error(
        api.get(f"{BASE}/connection-name/missing", params={"projectId": project}),
        404,
        "Could not find App Connection with name missing in project scope.",
    )
    infisical.state.add_foreign_connection(app="aws", name="aws-keys")
    assert_error(
        api.get(f"{BASE}/connection-name/aws-keys"),
        400,
        'App Connection with name aws-keys is not for App "octopus-deploy"',
    )


def test_list_is_sorted_has_project_and_filters(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    project = infisical.state.add_project(name="Team Alpha")
    b = create(api, octopus, "b-conn")
    a = create(api, octopus, "a-conn")
    c = create(api, octopus, "c-conn", projectId=project)
    infisical.state.add_foreign_connection(app="aws", name="aws-keys")
    listed = api.get(BASE).json()["appConnections"]
    assert [x["name"] for x in listed] == ["a-conn", "b-conn", "c-conn"]  # other apps are not listed
    assert listed[0] == {**a, "project": None}
    assert listed[1] == {**b, "project": None}
    assert listed[2] == {
        **c,
        "project": {"name": "Team Alpha", "id": project, "type": "secret-manager", "slug": "team-alpha"},
    }
    in_project = api.get(f"{BASE}/", params={"projectId": project}).json()["appConnections"]
    assert [x["id"] for x in in_project] == [c["id"]]


def test_delete_returns_the_row_then_404(infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer) -> None:
    connection = create(api, octopus)
    response = api.delete(f"{BASE}/{connection['id']}")
    assert response.status_code == 200
    assert response.json() == {"appConnection": connection}
    message = f"Could not find App Connection with ID {connection['id']}"
    assert_error(api.get(f"{BASE}/{connection['id']}"), 404, message)
    assert_error(api.delete(f"{BASE}/{connection['id']}"), 404, message)
    assert infisical.state.connections() == []
    other = create(api, octopus, "other")
    response = api.delete(f"/api/v1/app-connections/aws/{other['id']}")
    assert_error(response, 400, f'App Connection with ID {other["id"]} is not for App "aws"')
    assert infisical.state.connection(other["id"]) is not None


# --- App connections: schema ---------------------------------------------------------------------------------------

SLUG_MESSAGE = "name field can only contain lowercase letters, numbers, and hyphens"


@pytest.mark.parametrize(
    ("name", "issue"),
    [
        ("Bad Name", {"code": "custom", "message": SLUG_MESSAGE, "path": ["name"]}),
        ("UPPER", {"code": "custom", "message": SLUG_MESSAGE, "path": ["name"]}),
        ("under_score", {"code": "custom", "message": SLUG_MESSAGE, "path": ["name"]}),
        ("double--hyphen", {"code": "custom", "message": SLUG_MESSAGE, "path": ["name"]}),
        ("-leading", {"code": "custom", "message": SLUG_MESSAGE, "path": ["name"]}),
        (
            "a" * 65,
            {
                "code": "too_big",
                "maximum": 64,
                "type": "string",
                "inclusive": True,
                "exact": False,
                "message": "name field must be at most 64 lowercase characters",
                "path": ["name"],
            },
        ),
        (
            "   ",
            {
                "code": "too_small",
                "minimum": 1,
                "type": "string",
                "inclusive": True,
                "exact": False,
                "message": "name field must be at least 1 lowercase character",
                "path": ["name"],
            },
        ),
        (None, {**required(["name"]), "received": "null", "message": "Expected string, received null"}),
    ],
)
def test_name_rules_are_422_issue_lists(
    api: httpx.Client, octopus: OctopusServer, name: str | None, issue: dict[str, Any]
) -> None:
    response = api.post(BASE, json=connection_body(octopus, name))  # type: ignore[arg-type]
    assert_error(response, 422, [issue])
    assert users_me_calls(octopus) == 0  # schema failures never reach Octopus
    body = connection_body(octopus)
    del body["name"]
    assert_error(api.post(BASE, json=body), 422, [required(["name"])])
    assert create(api, octopus, "  trimmed-0k  ")["name"] == "trimmed-0k"
    assert create(api, octopus, "a" * 64)["name"] == "a" * 64


def test_description_is_trimmed_nullable_and_limited(api: httpx.Client, octopus: OctopusServer) -> None:
    assert create(api, octopus, "d1", description="  spaced  ")["description"] == "spaced"
    assert create(api, octopus, "d2", description=None)["description"] is None
    assert create(api, octopus, "d3")["description"] is None
    assert create(api, octopus, "d4", description="x" * 255)["description"] == "x" * 255
    too_big = {
        "code": "too_big",
        "maximum": 256,
        "type": "string",
        "inclusive": True,
        "exact": False,
        "message": "Description cannot exceed 256 characters",
        "path": ["description"],
    }
    assert_error(api.post(BASE, json=connection_body(octopus, "d5", description="x" * 257)), 422, [too_big])
    # 256 passes the schema but not the 255-character column.
    assert_error(
        api.post(BASE, json=connection_body(octopus, "d6", description="x" * 256)), 500, "Something went wrong"
    )
    issue = {"code": "invalid_type", "expected": "string", "received": "number", "path": ["description"]}
    response = api.post(BASE, json=connection_body(octopus, "d7", description=7))
    assert_error(response, 422, [{**issue, "message": "Expected string, received number"}])


def test_instance_url_and_api_key_rules(infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer) -> None:
    url_path = ["credentials", "instanceUrl"]
    invalid_url = {"validation": "url", "code": "invalid_string", "message": "Invalid Instance URL", "path": url_path}
    small = {"code": "too_small", "minimum": 1, "type": "string", "inclusive": True, "exact": False}

    def post(credentials: Any) -> httpx.Response:
        return api.post(BASE, json={"name": "n", "method": "api-key", "credentials": credentials})

    key = octopus.state.issue_key()
    assert_error(post({"instanceUrl": "not a url", "apiKey": key}), 422, [invalid_url])
    assert_error(post({"instanceUrl": "http://", "apiKey": key}), 422, [invalid_url])
    assert_error(
        post({"instanceUrl": "   ", "apiKey": key}),
        422,
        [invalid_url, {**small, "message": "Instance URL required", "path": url_path}],
    )
    long_url = "http://127.0.0.1/" + "p" * 239  # 256 characters
    too_big = {"code": "too_big", "maximum": 255, "type": "string", "inclusive": True, "exact": False}
    assert_error(
        post({"instanceUrl": long_url, "apiKey": key}),
        422,
        [{**too_big, "message": "String must contain at most 255 character(s)", "path": url_path}],
    )
    key_path = ["credentials", "apiKey"]
    for empty in ("", "   "):
        response = post({"instanceUrl": octopus.url, "apiKey": empty})
        assert_error(response, 422, [{**small, "message": "API key required", "path": key_path}])
    assert_error(post({"instanceUrl": octopus.url}), 422, [required(key_path)])
    assert_error(
        post(None),
        422,
        [{**required(["credentials"], "object"), "received": "null", "message": "Expected object, received null"}],
    )
    assert users_me_calls(octopus) == 0
    # Both are trimmed before use: the trimmed key is what Octopus sees, the trimmed URL what is stored.
    response = post({"instanceUrl": f"  {octopus.url}  ", "apiKey": f"  {key}  "})
    assert response.status_code == 200, response.text
    assert response.json()["appConnection"]["credentials"] == {"instanceUrl": octopus.url}
    assert octopus.state.requests_to("/api/users/me")[-1].headers["x-octopus-apikey"] == key


def test_method_must_be_api_key(api: httpx.Client, octopus: OctopusServer) -> None:
    issue = {
        "code": "invalid_union_discriminator",
        "options": ["api-key"],
        "path": ["method"],
        "message": "Invalid discriminator value. Expected 'api-key'",
    }
    assert_error(api.post(BASE, json=connection_body(octopus, method="oauth")), 422, [issue])
    body = connection_body(octopus)
    del body["method"]
    assert_error(api.post(BASE, json=body), 422, [issue])


def test_platform_managed_gateway_and_rotation_are_rejected(api: httpx.Client, octopus: OctopusServer) -> None:
    def literal(path: str, value: Any) -> dict[str, Any]:
        return {
            "code": "invalid_literal",
            "expected": False,
            "received": value,
            "path": [path],
            "message": NOT_SUPPORTED,
        }

    response = api.post(BASE, json=connection_body(octopus, isPlatformManagedCredentials=True))
    assert_error(response, 422, [literal("isPlatformManagedCredentials", True)])
    response = api.post(BASE, json=connection_body(octopus, isAutoRotationEnabled=True))
    assert_error(response, 422, [literal("isAutoRotationEnabled", True)])
    for field in ("gatewayId", "rotation"):
        response = api.post(BASE, json=connection_body(octopus, **{field: "x"}))
        assert response.status_code == 422
        [issue] = response.json()["message"]
        assert issue["code"] == "invalid_union"
        assert issue["path"] == [field]
        assert [e["issues"][0]["message"] for e in issue["unionErrors"]] == [NOT_SUPPORTED, NOT_SUPPORTED]
    allowed = {
        "isPlatformManagedCredentials": False,
        "isAutoRotationEnabled": False,
        "gatewayId": None,
        "rotation": None,
    }
    assert create(api, octopus, "allowed", **allowed)["gatewayId"] is None


def test_unknown_keys_are_dropped(api: httpx.Client, octopus: OctopusServer) -> None:
    body = connection_body(octopus, foo=1, version=9, app="aws", orgId="someone-else", credentialsHash="0" * 64)
    body["credentials"]["extra"] = "dropped"
    response = api.post(BASE, json=body)
    assert response.status_code == 200, response.text
    connection = response.json()["appConnection"]
    assert set(connection) == RESPONSE_KEYS
    assert (connection["version"], connection["app"], connection["orgId"]) == (1, "octopus-deploy", DEFAULT_ORG_ID)
    assert connection["credentialsHash"] != "0" * 64


def test_create_unknown_project_is_400_without_calling_octopus(api: httpx.Client, octopus: OctopusServer) -> None:
    project = str(uuid.uuid4())
    response = api.post(BASE, json=connection_body(octopus, projectId=project))
    assert_error(response, 400, f"Could not find project with ID {project}")
    assert users_me_calls(octopus) == 0


def test_names_are_unique_per_org_and_per_project(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    p1, p2 = infisical.state.add_project(), infisical.state.add_project()
    duplicate = 'An App Connection with the name "same" already exists'
    create(api, octopus, "same")
    assert_error(api.post(BASE, json=connection_body(octopus, "same")), 400, duplicate)
    create(api, octopus, "same", projectId=p1)  # a project is its own namespace
    assert_error(api.post(BASE, json=connection_body(octopus, "same", projectId=p1)), 400, duplicate)
    create(api, octopus, "same", projectId=p2)
    infisical.state.add_foreign_connection(app="aws", name="taken-by-aws")  # names are unique across apps
    response = api.post(BASE, json=connection_body(octopus, "taken-by-aws"))
    assert_error(response, 400, 'An App Connection with the name "taken-by-aws" already exists')


def test_create_calls_octopus_before_the_duplicate_check(api: httpx.Client, octopus: OctopusServer) -> None:
    create(api, octopus, "dup")
    response = api.post(BASE, json=connection_body(octopus, "dup", key=WRONG_KEY))
    assert_error(response, 400, "Failed to validate Octopus Deploy credentials: Request failed with status code 401")
    response = api.post(BASE, json=connection_body(octopus, "dup"))
    assert_error(response, 400, 'An App Connection with the name "dup" already exists')
    assert users_me_calls(octopus) == 3


# --- App connections: updates ---------------------------------------------------------------------------------------


def test_patch_without_credentials_keeps_the_hash_and_skips_octopus(api: httpx.Client, octopus: OctopusServer) -> None:
    connection = create(api, octopus)
    calls = users_me_calls(octopus)
    response = api.patch(f"{BASE}/{connection['id']}", json={"description": "new words"})
    assert response.status_code == 200
    updated = response.json()["appConnection"]
    assert updated["description"] == "new words"
    assert updated["credentialsHash"] == connection["credentialsHash"]
    assert updated["updatedAt"] > connection["updatedAt"]
    assert users_me_calls(octopus) == calls


def test_patch_identical_credentials_new_hash_version_1(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    key = octopus.state.issue_key()
    connection = create(api, octopus, key=key)
    credentials = {"instanceUrl": octopus.url, "apiKey": key}
    hashes = {connection["credentialsHash"]}
    for _ in range(2):
        response = api.patch(f"{BASE}/{connection['id']}", json={"credentials": credentials})
        assert response.status_code == 200
        updated = response.json()["appConnection"]
        assert updated["version"] == 1
        hashes.add(updated["credentialsHash"])
    assert len(hashes) == 3  # AES-GCM with a random IV: same values, new blob, new hash
    stored = infisical.state.connection(connection["id"])
    assert stored is not None
    assert stored["credentialsHash"] == updated["credentialsHash"]
    assert stored["credentialsHash"] != hashlib.sha256(repr(credentials).encode()).hexdigest()
    assert users_me_calls(octopus) == 3


def test_patch_with_a_bad_key_leaves_the_row_untouched(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    connection = create(api, octopus)
    before = infisical.state.connection(connection["id"])
    response = api.patch(
        f"{BASE}/{connection['id']}",
        json={"name": "renamed", "credentials": {"instanceUrl": octopus.url, "apiKey": WRONG_KEY}},
    )
    assert_error(response, 400, "Failed to validate Octopus Deploy credentials: Request failed with status code 401")
    assert infisical.state.connection(connection["id"]) == before


def test_empty_patch_moves_only_updated_at(
    clocked: tuple[InfisicalServer, ManualClock], octopus: OctopusServer
) -> None:
    server, _clock = clocked
    server.state.add_universal_identity(client_id="ci", client_secret="s")
    with client_for(server, login(server, "ci", "s")) as api:
        connection = create(api, octopus)
        response = api.patch(f"{BASE}/{connection['id']}", json={})
        assert response.status_code == 200
        updated = response.json()["appConnection"]
    # The clock stood still, and updatedAt still moved.
    assert updated["updatedAt"] > connection["updatedAt"]
    assert {**updated, "updatedAt": None} == {**connection, "updatedAt": None}


def test_patch_credentials_must_be_the_whole_object(api: httpx.Client, octopus: OctopusServer) -> None:
    connection = create(api, octopus)
    response = api.patch(f"{BASE}/{connection['id']}", json={"credentials": {"apiKey": octopus.state.issue_key()}})
    assert_error(response, 422, [required(["credentials", "instanceUrl"])])
    response = api.patch(f"{BASE}/{connection['id']}", json={"credentials": {"instanceUrl": octopus.url}})
    assert_error(response, 422, [required(["credentials", "apiKey"])])
    assert_error(
        api.patch(f"{BASE}/{uuid.uuid4()}", json={"credentials": {}}),
        422,
        [
            required(["credentials", "instanceUrl"]),
            required(["credentials", "apiKey"]),
        ],
    )


def test_patch_ignores_project_id(infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer) -> None:
    project = infisical.state.add_project()
    connection = create(api, octopus)
    response = api.patch(f"{BASE}/{connection['id']}", json={"projectId": project})
    assert response.status_code == 200
    assert response.json()["appConnection"]["projectId"] is None


def test_older_release_drops_project_id_and_creates_an_org_level_connection(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    project = infisical.state.add_project()
    infisical.state.older_release = True
    created = create(api, octopus, "in-project", projectId=project)
    assert created["projectId"] is None  # silently: 200, no error, no warning
    unknown = create(api, octopus, "unknown-project", projectId="6f1c7a0e-1111-4222-8333-944445555666")
    assert unknown["projectId"] is None  # no project check either
    found = api.get(f"{BASE}/connection-name/in-project", params={"projectId": project})
    assert found.status_code == 200
    assert found.json()["appConnection"]["id"] == created["id"]  # the query parameter is ignored too
    infisical.state.older_release = False
    assert_error(
        api.get(f"{BASE}/connection-name/in-project", params={"projectId": project}),
        404,
        "Could not find App Connection with name in-project in project scope.",
    )


def test_release_without_octopus_connections_has_no_such_routes(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    infisical.state.octopus_app_available = False
    assert_error(api.get(f"{BASE}/connection-name/x"), 404, f"Route GET:{BASE}/connection-name/x not found")
    assert_error(api.post(BASE, json=connection_body(octopus)), 404, f"Route POST:{BASE} not found")
    other_app = api.get("/api/v1/app-connections/windmill/connection-name/x")
    assert other_app.status_code == 404  # other apps' routes are still there
    assert "Route" not in other_app.json()["message"]


def test_connections_of_other_apps_hold_names(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    infisical.state.add_foreign_connection(app="windmill", name="shared-name")
    assert_error(
        api.get(f"{BASE}/connection-name/shared-name"),
        400,
        'App Connection with name shared-name is not for App "octopus-deploy"',
    )
    response = api.post(BASE, json=connection_body(octopus, name="shared-name"))
    assert_error(response, 400, 'An App Connection with the name "shared-name" already exists')
    renamed = create(api, octopus, "mine")
    response = api.patch(f"{BASE}/{renamed['id']}", json={"name": "shared-name"})
    assert_error(response, 400, 'An App Connection with the name "shared-name" already exists')


def test_rename_with_null_description_and_duplicate_rename(api: httpx.Client, octopus: OctopusServer) -> None:
    connection = create(api, octopus, "first", description="words")
    create(api, octopus, "second")
    response = api.patch(f"{BASE}/{connection['id']}", json={"name": "renamed", "description": None})
    assert response.status_code == 200
    updated = response.json()["appConnection"]
    assert (updated["name"], updated["description"]) == ("renamed", None)
    response = api.patch(f"{BASE}/{connection['id']}", json={"name": "second"})
    assert_error(response, 400, 'An App Connection with the name "second" already exists')
    assert api.patch(f"{BASE}/{connection['id']}", json={"name": "renamed"}).status_code == 200  # its own name
    missing = str(uuid.uuid4())
    assert_error(api.patch(f"{BASE}/{missing}", json={}), 404, f"Could not find App Connection with ID {missing}")


# --- The credential check ------------------------------------------------------------------------------------------


def test_create_checks_users_me_once_with_both_key_headers(api: httpx.Client, octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    create(api, octopus, key=key)
    [check] = octopus.state.requests
    assert (check.method, check.path) == ("GET", "/api/users/me")
    assert check.headers["x-octopus-apikey"] == key
    assert check.headers["x-nuget-apikey"] == key
    assert check.headers["accept"] == "application/json"


def test_instance_url_kept_as_sent_and_checked_without_trailing_slash(
    api: httpx.Client, octopus: OctopusServer
) -> None:
    response = api.post(
        BASE,
        json=connection_body(octopus)
        | {"credentials": {"instanceUrl": octopus.url + "/", "apiKey": octopus.state.issue_key()}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["appConnection"]["credentials"]["instanceUrl"] == octopus.url + "/"
    assert [r.path for r in octopus.state.requests] == ["/api/users/me"]


def test_instance_url_path_prefix_is_checked_under_the_prefix(
    api: httpx.Client, octopus_factory: Callable[..., OctopusServer]
) -> None:
    octopus = octopus_factory(prefix="/octopus")
    key = octopus.state.issue_key()
    response = api.post(BASE, json=connection_body(octopus, key=key))
    assert response.status_code == 200, response.text
    assert octopus.state.requests[-1].path == "/octopus/api/users/me"
    root = octopus.url.removesuffix("/octopus")
    body = {"name": "at-root", "method": "api-key", "credentials": {"instanceUrl": root, "apiKey": key}}
    assert_error(
        api.post(BASE, json=body),
        400,
        "Failed to validate Octopus Deploy credentials: Request failed with status code 404",
    )


def test_create_with_a_wrong_key_is_400_with_the_axios_message(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    response = api.post(BASE, json=connection_body(octopus, key=WRONG_KEY))
    assert_error(response, 400, "Failed to validate Octopus Deploy credentials: Request failed with status code 401")
    assert users_me_calls(octopus) == 1  # a 401 is not retried
    assert infisical.state.connections() == []


def test_create_with_a_revoked_key_is_400(api: httpx.Client, octopus: OctopusServer) -> None:
    key = octopus.state.issue_key()
    octopus.state.revoke_key(key)
    response = api.post(BASE, json=connection_body(octopus, key=key))
    assert_error(response, 400, "Failed to validate Octopus Deploy credentials: Request failed with status code 401")


def test_create_with_unreachable_octopus_is_econnrefused(infisical: InfisicalServer, api: httpx.Client) -> None:
    infisical.state.validation_retry_base_delay = 0
    body = {"name": "n", "method": "api-key", "credentials": {"instanceUrl": "http://127.0.0.1:1", "apiKey": "API-X"}}
    response = api.post(BASE, json=body)
    assert_error(response, 400, "Failed to validate Octopus Deploy credentials: connect ECONNREFUSED 127.0.0.1:1")
    assert [c.attempt for c in infisical.state.outbound] == [1, 2, 3, 4]  # network errors are retried 3 times


def test_redirects_are_not_followed(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer, octopus_factory: Callable[..., OctopusServer]
) -> None:
    redirecting = octopus_factory(redirect_to=octopus.url, redirect_status=302)
    key = octopus.state.issue_key()
    response = api.post(BASE, json=connection_body(redirecting, key=key))
    assert_error(response, 400, "Failed to validate Octopus Deploy credentials: Request failed with status code 302")
    assert users_me_calls(redirecting) == 1
    assert users_me_calls(octopus) == 0
    assert [c.status for c in infisical.state.outbound] == [302]


def test_validation_retries_5xx_then_passes(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    infisical.state.validation_retry_base_delay = 0
    octopus.state.faults.error(503, times=2)
    create(api, octopus)
    assert users_me_calls(octopus) == 3
    assert [(c.attempt, c.status) for c in infisical.state.outbound] == [(1, 503), (2, 503), (3, 200)]


def test_validation_gives_up_after_three_retries(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    infisical.state.validation_retry_base_delay = 0
    octopus.state.faults.error(500, times=None)
    response = api.post(BASE, json=connection_body(octopus))
    assert_error(response, 400, "Failed to validate Octopus Deploy credentials: Request failed with status code 500")
    assert users_me_calls(octopus) == 4


def test_validation_retries_429(infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer) -> None:
    infisical.state.validation_retry_base_delay = 0
    octopus.state.faults.rate_limit(retry_after=1, times=1)
    create(api, octopus)
    assert [c.status for c in infisical.state.outbound] == [429, 200]


def test_validation_tls_unknown_ca_is_not_retried(
    infisical: InfisicalServer, api: httpx.Client, octopus_factory: Callable[..., OctopusServer]
) -> None:
    octopus = octopus_factory(tls=True)
    response = api.post(BASE, json=connection_body(octopus))
    assert response.status_code == 400
    message = response.json()["message"]
    assert message.startswith("Failed to validate Octopus Deploy credentials: ")
    assert "certificate" in message
    assert len(infisical.state.outbound) == 1


def test_validation_tls_with_a_trusted_ca_passes(
    infisical: InfisicalServer, api: httpx.Client, octopus_factory: Callable[..., OctopusServer]
) -> None:
    octopus = octopus_factory(tls=True)
    infisical.state.octopus_ca_pem = octopus.ca_pem
    assert create(api, octopus)["credentials"]["instanceUrl"].startswith("https://127.0.0.1:")


# --- SSRF guard ----------------------------------------------------------------------------------------------------


def test_ssrf_user_info_is_refused(api: httpx.Client, octopus: OctopusServer) -> None:
    url = octopus.url.replace("http://", "http://user:pass@")
    body = {"name": "n", "method": "api-key", "credentials": {"instanceUrl": url, "apiKey": octopus.state.issue_key()}}
    assert_error(api.post(BASE, json=body), 400, "URLs with user credentials (e.g., user:pass@) are not allowed")
    assert users_me_calls(octopus) == 0


def test_ssrf_localhost_refused_even_when_internal_ips_allowed(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    assert infisical.state.allow_internal_ips
    for host in ("localhost", "LOCALHOST", "host.docker.internal"):
        url = f"http://{host}:{octopus.port}"
        body = {
            "name": "n",
            "method": "api-key",
            "credentials": {"instanceUrl": url, "apiKey": octopus.state.issue_key()},
        }
        assert_error(api.post(BASE, json=body), 400, "Local IPs not allowed as URL")
    assert users_me_calls(octopus) == 0
    create(api, octopus)  # the IP literal of the same server passes while internal IPs are allowed


def test_ssrf_loopback_is_refused_when_the_switch_is_off(
    infisical_factory: Callable[..., InfisicalServer], octopus: OctopusServer
) -> None:
    server = infisical_factory(allow_internal_ips=False)
    assert server.state.allow_internal_ips is False
    with client_for(server) as api:
        for host in ("127.0.0.1", "127.1", "0x7f.0.0.1"):
            url = f"http://{host}:{octopus.port}"
            body = {"name": "n", "method": "api-key", "credentials": {"instanceUrl": url, "apiKey": "API-X"}}
            assert_error(api.post(BASE, json=body), 400, "Local IPs not allowed as URL")
    assert users_me_calls(octopus) == 0
    assert server.state.outbound == []


@pytest.mark.parametrize(
    ("ip", "internal"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("172.32.0.1", False),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("203.0.113.7", True),
        ("8.8.8.8", False),
        ("1.1.1.1", False),
    ],
)
def test_ssrf_private_ranges(ip: str, internal: bool) -> None:
    assert is_internal_ipv4(ip) is internal
    assert parse_ipv4_host(ip) == ip
    assert parse_ipv4_host("2130706433") == "127.0.0.1"
    assert parse_ipv4_host("octopus.example.com") is None


def test_ssrf_unresolvable_host_is_500(infisical: InfisicalServer, api: httpx.Client) -> None:
    # dns.resolve4 fails outside the credential check's try/catch: Infisical answers its generic 500.
    for url in ("http://octopus.invalid", "http://[::1]:8080"):
        body = {"name": "n", "method": "api-key", "credentials": {"instanceUrl": url, "apiKey": "API-X"}}
        assert_error(api.post(BASE, json=body), 500, "Something went wrong")
    assert infisical.state.outbound == []


# --- Errors, traps, faults ------------------------------------------------------------------------------------------


def test_error_body_shape(infisical: InfisicalServer, api: httpx.Client) -> None:
    response = api.get(f"{BASE}/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert set(body) == {"reqId", "statusCode", "message", "error"}
    assert REQ_ID.fullmatch(body["reqId"])
    assert (body["statusCode"], body["error"]) == (404, "NotFound")
    assert api.get(f"{BASE}/{uuid.uuid4()}").json()["reqId"] != body["reqId"]
    assert_error(httpx.get(infisical.url + "/api/v2/nothing"), 404, "Route GET:/api/v2/nothing not found")


def test_empty_json_body_is_the_500_trap(infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer) -> None:
    connection = create(api, octopus)
    json_type = {"Content-Type": "application/json"}
    response = api.delete(f"{BASE}/{connection['id']}", headers=json_type)
    assert_error(response, 500, "Something went wrong")
    assert infisical.state.connection(connection["id"]) is not None
    assert_error(api.get(BASE, headers=json_type), 500, "Something went wrong")
    # Authentication runs before body parsing: without a token it is still a 401.
    assert_error(httpx.delete(f"{infisical.url}{BASE}/{connection['id']}", headers=json_type), 401, "Token missing")
    assert api.delete(f"{BASE}/{connection['id']}").status_code == 200


def test_malformed_json_is_500(api: httpx.Client) -> None:
    response = api.post(BASE, content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(response, 500, "Something went wrong")
    response = api.post(BASE, content=b"name=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(response, 500, "Something went wrong")


def test_rate_limit_on_reads(clocked: tuple[InfisicalServer, ManualClock]) -> None:
    server, clock = clocked
    server.state.add_universal_identity(client_id="ci", client_secret="s")
    server.state.faults.rate_limit(reads_per_minute=2)
    with client_for(server, login(server, "ci", "s")) as api:
        first = api.get(BASE)
        assert first.status_code == 200
        assert (first.headers["x-ratelimit-limit"], first.headers["x-ratelimit-remaining"]) == ("2", "1")
        clock.advance(15)
        assert api.get(BASE).status_code == 200
        response = api.get(BASE)
        assert_error(response, 429, "Rate limit exceeded. Please try again in 45 seconds")
        assert response.headers["retry-after"] == "45"
        assert api.post(LOGIN, json={"clientId": "ci", "clientSecret": "s"}).status_code == 200  # writes unaffected
        clock.advance(45)
        assert api.get(BASE).status_code == 200  # a new window


def test_rate_limit_on_writes_counts_logins(
    clocked: tuple[InfisicalServer, ManualClock], octopus: OctopusServer
) -> None:
    server, _clock = clocked
    server.state.add_universal_identity(client_id="ci", client_secret="s")
    server.state.faults.rate_limit(writes_per_minute=2)
    token = login(server, "ci", "s")  # write 1
    with client_for(server, token) as api:
        create(api, octopus)  # write 2
        assert api.get(BASE).status_code == 200  # reads unaffected
        response = httpx.post(server.url + LOGIN, json={"clientId": "ci", "clientSecret": "s"})
        assert_error(response, 429, "Rate limit exceeded. Please try again in 60 seconds")
        assert response.headers["retry-after"] == "60"
    assert server.state.requests[-1].fault == "rate_limit"


def test_fault_error(infisical: InfisicalServer, api: httpx.Client) -> None:
    infisical.state.faults.error(503, times=2)
    assert_error(api.get(BASE), 503, "Injected fault: HTTP 503", error="ServiceUnavailable")
    assert_error(api.get(BASE), 503, "Injected fault: HTTP 503", error="ServiceUnavailable")
    assert api.get(BASE).status_code == 200
    infisical.state.faults.error(times=1, path_prefix="/api/v1/auth/")
    assert api.get(BASE).status_code == 200  # not a path the fault is for
    assert_error(httpx.post(infisical.url + LOGIN, json={}), 500, "Something went wrong")


def test_fault_latency(infisical: InfisicalServer, api: httpx.Client) -> None:
    infisical.state.faults.latency(0.3)
    started = time.monotonic()
    assert api.get(BASE).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_fault_drop(infisical: InfisicalServer, api: httpx.Client) -> None:
    infisical.state.faults.drop()
    with pytest.raises(httpx.RemoteProtocolError):
        api.get(BASE)
    assert api.get(BASE).status_code == 200
    dropped = [r for r in infisical.state.requests if r.fault == "drop"]
    assert len(dropped) == 1


def test_fault_after_action_keeps_the_write(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    before = len(infisical.state.connections())
    infisical.state.faults.drop(after_action=True, path_prefix=BASE)
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(BASE, json=connection_body(octopus, "first"))
    infisical.state.faults.error(500, after_action=True, path_prefix=BASE)
    answered = api.post(BASE, json=connection_body(octopus, "second"))
    assert answered.status_code == 500
    assert len(infisical.state.connections()) == before + 2  # both were created; only the answers were lost
    assert [r.fault for r in infisical.state.requests[-2:]] == ["drop", "error"]


def test_fault_every_third_request(infisical: InfisicalServer, api: httpx.Client) -> None:
    infisical.state.faults.error(500, times=None, every=3)
    assert [api.get(BASE).status_code for _ in range(7)] == [200, 200, 500, 200, 200, 500, 200]


def test_faults_clear(infisical: InfisicalServer, api: httpx.Client) -> None:
    faults = infisical.state.faults
    faults.error(500, times=None)
    faults.drop(times=None)
    faults.latency(5)
    faults.rate_limit(reads_per_minute=1, writes_per_minute=1)
    faults.clear()
    started = time.monotonic()
    for _ in range(3):
        assert api.get(BASE).status_code == 200
    assert time.monotonic() - started < 5


# --- Records, drift, isolation -------------------------------------------------------------------------------------


def test_requests_are_recorded_with_secrets_redacted(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    key = octopus.state.issue_key()
    token = login(infisical)
    httpx.post(infisical.url + RENEW, json={"accessToken": token})
    httpx.post(infisical.url + K8S_LOGIN, json={"identityId": str(uuid.uuid4()), "jwt": "a.b.c"})
    create(api, octopus, key=key)
    requests = infisical.state.requests
    logins = infisical.state.requests_to(LOGIN)
    assert logins[-1].json == {"clientId": infisical.client_id, "clientSecret": "***"}
    assert infisical.state.requests_to(RENEW)[-1].json == {"accessToken": "***"}
    assert infisical.state.requests_to(K8S_LOGIN)[-1].json["jwt"] == "***"
    created = infisical.state.requests_to(BASE, "POST")[-1]
    assert created.json["credentials"] == {"instanceUrl": octopus.url, "apiKey": "***"}
    assert created.headers["authorization"] == "Bearer ***"
    assert created.identity_id == infisical.identity_id
    assert created.status == 200
    assert created.token_fingerprint is not None
    assert len(created.token_fingerprint) == 12
    everything = repr(requests)
    for secret in (key, token, infisical.client_secret):
        assert secret is not None
        assert secret not in everything


def test_outbound_calls_are_recorded_with_the_key_redacted(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    key = octopus.state.issue_key()
    create(api, octopus, key=key)
    [call] = infisical.state.outbound
    assert (call.method, call.url, call.status, call.error, call.attempt) == (
        "GET",
        octopus.url + "/api/users/me",
        200,
        None,
        1,
    )
    assert call.headers["X-Octopus-ApiKey"] == call.headers["X-NuGet-ApiKey"] == "***"
    assert call.headers["Accept"] == "application/json"
    assert key not in repr(infisical.state.outbound)


def test_out_of_band_delete_and_rewrite(infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer) -> None:
    kept, gone = create(api, octopus, "kept"), create(api, octopus, "gone")
    infisical.state.delete_connection_out_of_band(gone["id"])
    assert_error(api.get(f"{BASE}/{gone['id']}"), 404, f"Could not find App Connection with ID {gone['id']}")
    infisical.state.rewrite_credentials_out_of_band(kept["id"], api_key="API-SOMEONEELSE")
    after = api.get(f"{BASE}/{kept['id']}").json()["appConnection"]
    assert after["credentialsHash"] != kept["credentialsHash"]
    assert after["updatedAt"] > kept["updatedAt"]
    stored = infisical.state.connection(kept["id"])
    assert stored is not None
    assert stored["_credentials"]["apiKey"] == "API-SOMEONEELSE"


def test_connection_of_another_org_is_forbidden(
    infisical: InfisicalServer, api: httpx.Client, octopus: OctopusServer
) -> None:
    connection = create(api, octopus, "ours")
    infisical.state.add_universal_identity(client_id="them", client_secret="s", org_id=str(uuid.uuid4()))
    with client_for(infisical, login(infisical, "them", "s")) as theirs:
        assert theirs.get(BASE).json() == {"appConnections": []}
        assert_error(theirs.get(f"{BASE}/{connection['id']}"), 403, "You are not allowed to access this resource")
        response = theirs.get(f"{BASE}/connection-name/ours")
        assert_error(response, 404, "Could not find App Connection with name ours in organization scope.")
        assert create(theirs, octopus, "ours")["orgId"] != connection["orgId"]  # names are per org


# --- Standalone ----------------------------------------------------------------------------------------------------


def test_cli_prints_the_url_and_answers() -> None:
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "tests.servers.infisical", "--port", "0", "--allow-internal-ips"]
    command += ["--client-id", "cli-id", "--client-secret", "cli-secret", "--other-app-connection", "windmill:wm"]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        match = re.fullmatch(r"infisical test server listening on (http://127\.0\.0\.1:(\d+))", first)
        assert match is not None, first
        assert int(match.group(2)) > 0
        response = httpx.post(match.group(1) + LOGIN, json={"clientId": "cli-id", "clientSecret": "cli-secret"})
        assert response.status_code == 200
        seeded = httpx.get(
            match.group(1) + f"{BASE}/connection-name/wm",
            headers={"Authorization": f"Bearer {response.json()['accessToken']}"},
        )
        assert seeded.status_code == 400  # the name is held by the seeded windmill connection
        assert seeded.json()["message"] == 'App Connection with name wm is not for App "octopus-deploy"'
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0
