"""A test double for the parts of Infisical's backend octoconn uses, following docs/remote-apis.md.

"The page" below is that document's section on Infisical app connections. Where the page is silent, the double
copies Infisical's public backend source (backend/src/services/app-connection, identity-ua,
identity-kubernetes-auth, identity-access-token, server/plugins/error-handler.ts, lib/validator/validate-url.ts,
lib/config/request.ts) and says so in a comment.
It runs on a real 127.0.0.1 socket (``InfisicalServer``) or standalone::

    uv run python -m tests.servers.infisical --port 0 --allow-internal-ips --client-id ID --client-secret SECRET

Project secrets and Octopus Deploy secret syncs live in tests/servers/infisical_secrets.py and infisical_syncs.py,
each with its own behaviour table (CLI: ``--seed-secret PROJECT:ENV:PATH:KEY=VALUE``, ``--sync-timing fast``).

Behaviour → the test in tests/servers/test_infisical_server.py that checks it:

| Behaviour (page, or source where noted)  | Test |
|------------------------------------------|------|
| UA login → token, expiresIn, Bearer      | test_universal_login_returns_bearer_token |
| UA 401 "Invalid credentials"             | test_universal_login_wrong_secret_is_invalid_credentials |
| UA unknown client id: 401, not counted   | test_universal_login_unknown_client_id_is_not_counted |
| Lockout after 3 failures for 300 s       | test_universal_login_locks_after_three_failures_for_300_seconds |
| Lockout counter resets (30 s)            | test_universal_login_failure_counter_resets_after_30_seconds |
| UA expired client secret → 401           | test_universal_login_expired_client_secret |
| Login bodies schema-checked (422)        | test_login_body_schema_failures_are_422 |
| K8s Auth: real TokenReview, SA username  | test_kubernetes_login_with_a_service_account_token (cluster) |
| K8s Auth: namespace limit                | test_kubernetes_login_wrong_namespace_is_refused (cluster) |
| K8s Auth: name and audience limits       | test_kubernetes_login_name_and_audience_limits (cluster) |
| K8s Auth: garbage JWT refused; lockout   | test_kubernetes_login_garbage_jwt_refused_and_locks_out (cluster) |
| K8s Auth: SA reviewing itself (source)    | test_kubernetes_login_self_review_needs_auth_delegator (cluster) |
| K8s Auth: checks after the review         | test_token_review_result_checks |
| K8s Auth: unknown identity → 404         | test_kubernetes_login_unknown_identity_is_404 |
| K8s Auth: no cluster configured → 400    | test_kubernetes_login_without_a_cluster_is_400 |
| Renew: same token, longer life           | test_renew_extends_life_and_returns_the_same_token |
| Renew: 401 once max TTL is reached       | test_renew_is_refused_once_max_ttl_is_reached |
| Token TTL: refused after expiry          | test_token_is_refused_after_its_ttl |
| expire_tokens() helper                   | test_expire_tokens_refuses_every_token |
| Expired token as upstream's JWT check    | test_expired_token_mode_jwt_exp_answers_403_token_error |
| Missing token → 401 "Token missing"      | test_missing_token_is_401_token_missing |
| Garbage bearer → 403 TokenError (source) | test_malformed_token_is_403_token_error |
| Helper routes → 403 for identities       | test_helper_routes_are_forbidden_for_machine_identities |
| Create; Response object; no apiKey       | test_create_response_shape_never_contains_the_api_key |
| Get by id; 404; uuid; other app → 400    | test_get_by_id_and_its_errors |
| Get by name (?projectId=)                | test_get_by_name_in_org_and_project_scope |
| List (?projectId=); project in list only | test_list_is_sorted_has_project_and_filters |
| Delete → deleted row; then 404           | test_delete_returns_the_row_then_404 |
| Name slug rule 1-64 → 422 issue list     | test_name_rules_are_422_issue_lists |
| Description trimmed, ≤255, nullable      | test_description_is_trimmed_nullable_and_limited |
| instanceUrl URL ≤255 trimmed; apiKey     | test_instance_url_and_api_key_rules |
| method must be "api-key"                 | test_method_must_be_api_key |
| isPlatformManaged/gatewayId/rotation     | test_platform_managed_gateway_and_rotation_are_rejected |
| Unknown keys silently dropped            | test_unknown_keys_are_dropped |
| Unknown project → 400 (before Octopus)   | test_create_unknown_project_is_400_without_calling_octopus |
| projectId create-only (PATCH ignores it) | test_patch_ignores_project_id |
| Names unique per org / per project       | test_names_are_unique_per_org_and_per_project |
| Octopus called BEFORE duplicate check    | test_create_calls_octopus_before_the_duplicate_check |
| New hash per credentials write, v1       | test_patch_identical_credentials_new_hash_version_1 |
| PATCH w/o credentials: same hash         | test_patch_without_credentials_keeps_the_hash_and_skips_octopus |
| PATCH credentials whole ("Required")     | test_patch_credentials_must_be_the_whole_object |
| PATCH bad key → 400, row untouched       | test_patch_with_a_bad_key_leaves_the_row_untouched |
| PATCH {} → only updatedAt moves          | test_empty_patch_moves_only_updated_at |
| Rename + null description; dup rename    | test_rename_with_null_description_and_duplicate_rename |
| Check: GET /api/users/me, both headers   | test_create_checks_users_me_once_with_both_key_headers |
| instanceUrl kept as sent; / stripped     | test_instance_url_kept_as_sent_and_checked_without_trailing_slash |
| Path prefix checked under the prefix     | test_instance_url_path_prefix_is_checked_under_the_prefix |
| Wrong key → "...status code 401"         | test_create_with_a_wrong_key_is_400_with_the_axios_message |
| Revoked key → 400                        | test_create_with_a_revoked_key_is_400 |
| Unreachable → "connect ECONNREFUSED"     | test_create_with_unreachable_octopus_is_econnrefused |
| Redirects not followed                   | test_redirects_are_not_followed |
| 5xx retried                              | test_validation_retries_5xx_then_passes |
| 3 retries, then 400                      | test_validation_gives_up_after_three_retries |
| 429 retried                              | test_validation_retries_429 |
| TLS: unknown CA fails, not retried       | test_validation_tls_unknown_ca_is_not_retried |
| TLS: trusted CA passes                   | test_validation_tls_with_a_trusted_ca_passes |
| SSRF: user:pass@ refused                 | test_ssrf_user_info_is_refused |
| SSRF: localhost always refused           | test_ssrf_localhost_refused_even_when_internal_ips_allowed |
| SSRF: 127.0.0.1 refused with switch off  | test_ssrf_loopback_is_refused_when_the_switch_is_off |
| SSRF: private/loopback/link-local ranges | test_ssrf_private_ranges |
| SSRF: unresolvable host (source) → 500   | test_ssrf_unresolvable_host_is_500 |
| Error body {reqId, statusCode, ...}      | test_error_body_shape |
| TRAP: JSON type + empty body → 500       | test_empty_json_body_is_the_500_trap |
| Malformed JSON → 500                     | test_malformed_json_is_500 |
| Rate limit: reads, 429 + Retry-After     | test_rate_limit_on_reads |
| Rate limit: logins count as writes       | test_rate_limit_on_writes_counts_logins |
| Fault: 500                               | test_fault_error |
| Fault: latency                           | test_fault_latency |
| Fault: dropped connection                | test_fault_drop |
| Fault: answer lost after the write       | test_fault_after_action_keeps_the_write |
| Fault: every n-th request only           | test_fault_every_third_request |
| Faults cleared                           | test_faults_clear |
| Requests recorded, secrets redacted      | test_requests_are_recorded_with_secrets_redacted |
| Outbound calls recorded, key redacted    | test_outbound_calls_are_recorded_with_the_key_redacted |
| Out-of-band delete / rewrite (drift)     | test_out_of_band_delete_and_rewrite |
| Other org's connection → 403             | test_connection_of_another_org_is_forbidden |
| Other apps' connections hold names       | test_connections_of_other_apps_hold_names |
| Older release: projectId dropped (switch)| test_older_release_drops_project_id_and_creates_an_org_level_connection |
| No Octopus app: 404 "Route …" (switch)   | test_release_without_octopus_connections_has_no_such_routes |
| Standalone CLI (seeded other-app names)  | test_cli_prints_the_url_and_answers |

Choices where the page is silent (each from the upstream source unless marked "double's choice"):
- Expired access tokens answer 401 UnauthorizedError "Failed to renew MI access token due to TTL expiration" (the
  server-side TTL check). Real Infisical signs its tokens with a JWT ``exp``, so a token past its TTL is usually caught
  first by ``jwt.verify`` and answered 403 ``TokenError`` "Your token has expired. Please re-authenticate.".
  ``state.expired_token_mode = "jwt-exp"`` switches the double to that answer; clients should re-login on both.
- Garbage bearer tokens: 403 ``TokenError`` (jsonwebtoken's "jwt malformed" / "invalid signature"); a well-signed token
  the server no longer knows: 401 "No identity access token found".
- Renewal needs ``now + TTL <= created + maxTTL``; with TTL == max TTL (the defaults) a renewal is refused as soon as
  any time has passed ("Failed to renew MI access token past its Max TTL expiration"), exactly as upstream.
- Lockout: threshold 3, duration 300 s, failure counter reset 30 s after the last failure (upstream defaults). Unknown
  client ids do not count. Kubernetes Auth is locked out the same way (upstream has no Kubernetes lockout; the brief
  for this double asked for it).
- A hostname that does not resolve: upstream's ``dns.resolve4`` throws outside the try/catch → 500 "Something went
  wrong". IPv6 literals go the same way (``resolve4("[::1]")`` fails). The double resolves with getaddrinfo, so
  /etc/hosts names resolve here (upstream asks DNS only).
- Description: the schema allows 256 characters, the column holds 255 (page: "the column may be 255"): exactly 256
  characters after trimming → 500 "Something went wrong" at insert time (double's choice, modelled on the page).
- ``projectId: ""`` on create → 500 (an empty string reaches the uuid column; double's choice).
- Listing without ``projectId`` returns every Octopus connection of the org, project ones included (upstream
  ``findWithProjectDetails({orgId, app})``). Unknown ``projectId`` on list → 404 "Could not find project with ID" and a
  project or connection of another org → 403 PermissionDenied (double's choice; upstream's texts unverified).
- Get by name not found → 404 "Could not find App Connection with name <n> in organization|project scope." (upstream).
- Non-uuid ``:connectionId`` → 422 ``{"validation":"uuid","code":"invalid_string","message":"Invalid uuid"}``.
- Unknown route → 404 "Route <METHOD>:<path> not found". A body with a non-JSON content type → 500 (Fastify's 415
  goes through Infisical's generic handler).
- The Octopus check uses no redirects, 3 retries with axios-retry's exponential delay (0.2 s, 0.4 s, 0.8 s, +0-20 %;
  ``state.validation_retry_base_delay`` scales it, 0 in tests), retries 5xx, 429 and network errors but not timeouts
  or certificate errors. A timeout (``state.validation_timeout``, default 30 s, double's choice: axios has none)
  answers "timeout of 30000ms exceeded". TLS uses the system CAs plus ``state.octopus_ca_pem`` (NODE_EXTRA_CA_CERTS).
- TokenReview: a reviewer token file if configured, else the admin client certificate, else the login JWT itself
  reviews itself (upstream's "no reviewer JWT" mode); without a CA file, TLS is not verified (upstream:
  ``rejectUnauthorized: Boolean(caCert)``).
- Rate limiting is a fixed 60 s window from the first counted request, like @fastify/rate-limit, with
  x-ratelimit-limit/-remaining/-reset headers; reads are GETs, writes are POST/PATCH/DELETE and every auth call.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import random
import re
import secrets
import signal
import socket
import ssl
import string
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.servers.infisical_secrets import SecretApi, SecretStore
from tests.servers.infisical_syncs import (
    CONNECTION_IN_USE,
    SecretSyncApi,
    SyncStore,
    match_routes,
)
from tests.servers.infisical_syncs import add_cli_arguments as add_sync_cli_arguments
from tests.servers.infisical_syncs import apply_cli_arguments as apply_sync_cli_arguments
from tests.servers.runner import ServerThread, ThreadedServer

log = logging.getLogger("tests.servers.infisical")

# --- Texts and numbers ---------------------------------------------------------------------------------------------

DEFAULT_ORG_ID = "6f4c1a2e-8b3d-4e5f-9a7b-2c1d0e9f8a7b"
OCTOPUS_APP = "octopus-deploy"
OCTOPUS_APP_NAME = "Octopus Deploy"  # APP_CONNECTION_NAME_MAP[AppConnection.OctopusDeploy]
API_KEY_METHOD = "api-key"
CONNECTIONS_PREFIX = "/api/v1/app-connections"
# Other apps' paths exist so that an Octopus id asked for under them gets upstream's 400 (a selection of upstream's
# AppConnection enum; more would change nothing).
OTHER_APPS = frozenset(
    {
        "aws",
        "github",
        "gcp",
        "azure-key-vault",
        "azure-app-configuration",
        "azure-devops",
        "databricks",
        "humanitec",
        "terraform-cloud",
        "vercel",
        "postgres",
        "mssql",
        "mysql",
        "camunda",
        "windmill",
        "auth0",
        "hashicorp-vault",
        "ldap",
        "teamcity",
        "1password",
        "heroku",
        "render",
        "flyio",
        "gitlab",
        "cloudflare",
        "bitbucket",
        "railway",
        "checkly",
        "supabase",
        "netlify",
    }
)

ERROR_NAMES = {
    400: "BadRequest",
    401: "UnauthorizedError",
    403: "PermissionDenied",
    404: "NotFound",
    422: "ValidationFailure",
    429: "RateLimitExceeded",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
SOMETHING_WENT_WRONG = "Something went wrong"
TOKEN_MISSING = "Token missing"
INVALID_CREDENTIALS = "Invalid credentials"
LOCKED_OUT = "This identity auth method is temporarily locked, please try again later"
EXPIRED_CLIENT_SECRET = "Access denied due to expired client secret"
NO_TOKEN_FOUND = "No identity access token found"
TOKEN_TTL_EXPIRED = "Failed to renew MI access token due to TTL expiration"
TOKEN_MAX_TTL_EXPIRED = "Failed to renew MI access token due to Max TTL expiration"
TOKEN_PAST_MAX_TTL = "Failed to renew MI access token past its Max TTL expiration"
JWT_EXPIRED = "Your token has expired. Please re-authenticate."
JWT_MALFORMED = "The provided access token is malformed. Please use a valid token or generate a new one and try again."
API_KEY_AUTH_GONE = "API key authentication is not supported anymore. Please switch to identity authentication."
LOCAL_IPS_NOT_ALLOWED = "Local IPs not allowed as URL"
USER_INFO_NOT_ALLOWED = "URLs with user credentials (e.g., user:pass@) are not allowed"
VALIDATION_FAILED = "Failed to validate Octopus Deploy credentials"
NOT_SUPPORTED = f"Not supported for {OCTOPUS_APP_NAME} Connections"
FORBIDDEN_RESOURCE = "You are not allowed to access this resource"
K8S_NOT_CONFIGURED = "Kubernetes auth method not found for identity, did you configure Kubernetes auth?"
K8S_HOST_REQUIRED = "Kubernetes host is required when token review mode is set to API"
K8S_NOT_AUTHENTICATED = "Kubernetes token not authenticated"
K8S_NAMESPACE_DENIED = "Access denied: K8s namespace not allowed."
K8S_NAME_DENIED = "Access denied: K8s name not allowed."
K8S_AUDIENCE_DENIED = "Access denied: K8s audience not allowed."
K8S_DEFAULT_401 = (
    "Token reviewer JWT is invalid or expired. Please verify the token reviewer JWT is correct and has not expired."
)
K8S_DEFAULT_403 = (
    "Token reviewer JWT does not have permission to perform TokenReviews. Ensure the service account has the "
    "'system:auth-delegator' ClusterRole binding."
)

LOCKOUT_THRESHOLD = 3
LOCKOUT_DURATION_SECONDS = 300
LOCKOUT_COUNTER_RESET_SECONDS = 30
DEFAULT_TOKEN_TTL = 7200
VALIDATION_RETRIES = 3  # axios-retry REQUEST_RETRY_CONFIG.retries: 1 try + 3 retries
RATE_LIMIT_WINDOW_SECONDS = 60
NAME_MAX = 64
DESCRIPTION_SCHEMA_MAX = 256
DESCRIPTION_COLUMN_MAX = 255
INSTANCE_URL_MAX = 255
AXIOS_USER_AGENT = "axios/1.12.2"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
REDACTED = "***"
SECRET_BODY_FIELDS = frozenset({"apiKey", "clientSecret", "jwt", "accessToken"})
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "x-octopus-apikey", "x-nuget-apikey"})

SLUG_RE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

# lib/ip/ipRange.ts: every IPv4 range that is not "unicast" counts as internal.
INTERNAL_IPV4_NETWORKS = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # unspecified
        "255.255.255.255/32",  # broadcast
        "224.0.0.0/4",  # multicast
        "169.254.0.0/16",  # link-local
        "127.0.0.0/8",  # loopback
        "100.64.0.0/10",  # carrier-grade NAT
        "10.0.0.0/8",  # private
        "172.16.0.0/12",
        "192.168.0.0/16",
        "192.0.0.0/24",  # reserved
        "192.0.2.0/24",
        "192.88.99.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "240.0.0.0/4",
    )
)


# --- Clock ---------------------------------------------------------------------------------------------------------


class ManualClock:
    """A clock that moves only when told to: ``InfisicalState(clock=ManualClock())`` then ``clock.advance(301)``."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def _iso(epoch: float) -> str:
    # JavaScript's Date.toISOString(): milliseconds and a "Z".
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- Records for assertions ----------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as the server saw it. Secrets are already replaced by "***"."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased; authorization / x-api-key values redacted
    json: Any  # parsed body with apiKey/clientSecret/jwt/accessToken redacted; None when absent or not JSON
    identity_id: str | None = None  # the identity the bearer token belonged to, once authenticated
    token_fingerprint: str | None = None  # first 12 hex of sha256(token): tells tokens apart without storing them
    status: int | None = None  # the status answered; None for a dropped connection
    fault: str | None = None  # "error" | "drop" | "rate_limit" when a fault answered


@dataclass
class OutboundCall:
    """A call this server made: Octopus credential checks (``state.outbound``), TokenReviews (``token_reviews``)."""

    method: str
    url: str
    headers: dict[str, str]  # key and bearer values redacted
    status: int | None  # HTTP status, None when no response arrived
    error: str | None  # the axios-style message when it failed
    attempt: int = 1


@dataclass(frozen=True)
class KubeApiConfig:
    """Where and how to send TokenReviews.

    Credentials, first found wins: ``token_file`` (a reviewer JWT, like Infisical's tokenReviewerJwt), the admin
    client certificate, or none (the login JWT reviews itself, Infisical's default). No ``ca_file`` = TLS unverified,
    as upstream does when no CA is configured.
    """

    url: str
    ca_file: str | None = None
    token_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None


# --- Errors --------------------------------------------------------------------------------------------------------


_NO_DETAILS = object()


class ApiError(Exception):
    """Raised by handlers; becomes the error body ``{reqId, statusCode, message, error}``."""

    def __init__(
        self,
        status: int,
        message: str | list[dict[str, Any]],
        *,
        error: str | None = None,
        headers: dict[str, str] | None = None,
        details: Any = _NO_DETAILS,
    ) -> None:
        super().__init__(message if isinstance(message, str) else "validation failure")
        self.status = status
        self.message = message
        self.error = error or ERROR_NAMES.get(status, "Error")
        self.headers = headers or {}
        self.details = details

    def body(self, req_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "reqId": req_id,
            "statusCode": self.status,
            "message": self.message,
            "error": self.error,
        }
        if self.details is not _NO_DETAILS:
            body["details"] = self.details
        return body


def _req_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "req-" + "".join(secrets.choice(alphabet) for _ in range(14))


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), headers={"Content-Type": JSON_CONTENT_TYPE, **(headers or {})}
    )


def _unprocessable(issues: list[dict[str, Any]]) -> ApiError:
    return ApiError(422, issues, error="ValidationFailure")


def _internal() -> ApiError:
    return ApiError(500, SOMETHING_WENT_WRONG)


# --- zod-like request validation -------------------------------------------------------------------------------------
# Issues have zod v3's shape because that is what Infisical's 422 carries (see the page's examples).

Issue = dict[str, Any]
Path_ = list[str | int]


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def _zod_type(value: Any) -> str:
    if value is MISSING:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _invalid_type(expected: str, value: Any, path: Path_, message: str | None = None) -> Issue:
    received = _zod_type(value)
    default = "Required" if received == "undefined" else f"Expected {expected}, received {received}"
    return {
        "code": "invalid_type",
        "expected": expected,
        "received": received,
        "path": path,
        "message": message or default,
    }


def _too_small(minimum: int, path: Path_, message: str) -> Issue:
    return {
        "code": "too_small",
        "minimum": minimum,
        "type": "string",
        "inclusive": True,
        "exact": False,
        "message": message,
        "path": path,
    }


def _too_big(maximum: int, path: Path_, message: str) -> Issue:
    return {
        "code": "too_big",
        "maximum": maximum,
        "type": "string",
        "inclusive": True,
        "exact": False,
        "message": message,
        "path": path,
    }


def _trimmed_string(value: Any, path: Path_, issues: list[Issue]) -> str | None:
    """z.string().trim(): None (and an issue) when not a string."""
    if not isinstance(value, str):
        issues.append(_invalid_type("string", value, path))
        return None
    return value.strip()


def is_whatwg_url(text: str) -> bool:
    """Roughly ``new URL(text)`` succeeding, which is zod v3's ``.url()``.

    Special schemes (http, https, ws, wss, ftp) need a host; file may have none; other schemes take anything.
    """
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", text, re.DOTALL)
    if match is None:
        return False
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in {"http", "https", "ws", "wss", "ftp", "file"}:
        return True
    authority = re.split(r"[/?#\\]", rest.lstrip("/\\"), maxsplit=1)[0]
    hostport = authority.rsplit("@", 1)[-1]
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]")
        port = port.removeprefix(":")
        host_ok = bool(host) and bool(re.fullmatch(r"[0-9A-Fa-f:.]+", host))
    else:
        host, _, port = hostport.partition(":")
        host_ok = bool(host) and not re.search(r"[\s#%/:<>?@\[\\\]^|]", host)
    if scheme == "file" and not host:
        return True
    if port and (not port.isdigit() or int(port) > 65535):
        return False
    return host_ok


def _credentials(value: Any, path: Path_, issues: list[Issue]) -> dict[str, str] | None:
    """OctopusDeployConnectionApiKeyCredentialsSchema."""
    if not isinstance(value, dict):
        issues.append(_invalid_type("object", value, path))
        return None
    start = len(issues)
    url = _trimmed_string(value.get("instanceUrl", MISSING), [*path, "instanceUrl"], issues)
    if url is not None:
        url_path = [*path, "instanceUrl"]
        # zod runs every string check and reports each failure, in declaration order: url, min, max.
        if not is_whatwg_url(url):
            issues.append(
                {"validation": "url", "code": "invalid_string", "message": "Invalid Instance URL", "path": url_path}
            )
        if len(url) < 1:
            issues.append(_too_small(1, url_path, "Instance URL required"))
        if len(url) > INSTANCE_URL_MAX:
            issues.append(
                _too_big(INSTANCE_URL_MAX, url_path, f"String must contain at most {INSTANCE_URL_MAX} character(s)")
            )
    key = _trimmed_string(value.get("apiKey", MISSING), [*path, "apiKey"], issues)
    if key is not None and len(key) < 1:
        issues.append(_too_small(1, [*path, "apiKey"], "API key required"))
    if len(issues) > start or url is None or key is None:
        return None
    return {"instanceUrl": url, "apiKey": key}


def _name(value: Any, path: Path_, issues: list[Issue]) -> str | None:
    """slugSchema({field: "name"}): trim, 1..64, slugify(v) === v."""
    name = _trimmed_string(value, path, issues)
    if name is None:
        return None
    start = len(issues)
    if len(name) < 1:
        issues.append(_too_small(1, path, "name field must be at least 1 lowercase character"))
    if len(name) > NAME_MAX:
        issues.append(_too_big(NAME_MAX, path, f"name field must be at most {NAME_MAX} lowercase characters"))
    # slugify("") is "", so the refine passes for the empty string; min() already reported it.
    if name and not SLUG_RE.fullmatch(name):
        issues.append(
            {
                "code": "custom",
                "message": "name field can only contain lowercase letters, numbers, and hyphens",
                "path": path,
            }
        )
    return name if len(issues) == start else None


def _description(value: Any, path: Path_, issues: list[Issue]) -> Any:
    """z.string().trim().max(256, ...).nullish(): MISSING, None or the trimmed string."""
    if value is MISSING or value is None:
        return value
    text = _trimmed_string(value, path, issues)
    if text is not None and len(text) > DESCRIPTION_SCHEMA_MAX:
        issues.append(_too_big(DESCRIPTION_SCHEMA_MAX, path, "Description cannot exceed 256 characters"))
        return None
    return text


def _literal_false(value: Any, path: Path_, issues: list[Issue]) -> None:
    if value is not MISSING and value is not False:
        issues.append(
            {"code": "invalid_literal", "expected": False, "received": value, "path": path, "message": NOT_SUPPORTED}
        )


def _undefined_or_null(value: Any, path: Path_, issues: list[Issue]) -> None:
    """z.undefined({message}).or(z.null({message})): anything else is an invalid union."""
    if value is MISSING or value is None:
        return
    union_errors = [
        {"issues": [_invalid_type(expected, value, path, NOT_SUPPORTED)], "name": "ZodError"}
        for expected in ("undefined", "null")
    ]
    issues.append({"code": "invalid_union", "unionErrors": union_errors, "path": path, "message": "Invalid input"})


def parse_create_body(body: Any) -> dict[str, Any]:
    """CreateOctopusDeployConnectionSchema = ValidateCredentials (discriminated on method) .and(GenericCreateFields).

    A zod intersection parses both sides and reports the issues of both, left first.
    """
    issues: list[Issue] = []
    out: dict[str, Any] = {}
    # Left: discriminatedUnion("method", [{method: "api-key", credentials}])
    if not isinstance(body, dict):
        issues.append(_invalid_type("object", body, []))
    elif body.get("method", MISSING) != API_KEY_METHOD:
        issues.append(
            {
                "code": "invalid_union_discriminator",
                "options": [API_KEY_METHOD],
                "path": ["method"],
                "message": f"Invalid discriminator value. Expected '{API_KEY_METHOD}'",
            }
        )
    else:
        out["method"] = API_KEY_METHOD
        out["credentials"] = _credentials(body.get("credentials", MISSING), ["credentials"], issues)
    # Right: GenericCreateAppConnectionFieldsSchema(OctopusDeploy) — no platform credentials, gateways or rotation.
    if not isinstance(body, dict):
        issues.append(_invalid_type("object", body, []))
    else:
        out["name"] = _name(body.get("name", MISSING), ["name"], issues)
        out["description"] = _description(body.get("description", MISSING), ["description"], issues)
        project_id = body.get("projectId", MISSING)
        if project_id is not MISSING and not isinstance(project_id, str):
            issues.append(_invalid_type("string", project_id, ["projectId"]))
        out["projectId"] = project_id
        _literal_false(body.get("isPlatformManagedCredentials", MISSING), ["isPlatformManagedCredentials"], issues)
        _undefined_or_null(body.get("gatewayId", MISSING), ["gatewayId"], issues)
        _literal_false(body.get("isAutoRotationEnabled", MISSING), ["isAutoRotationEnabled"], issues)
        _undefined_or_null(body.get("rotation", MISSING), ["rotation"], issues)
    if issues:
        raise _unprocessable(issues)
    return out  # unknown keys never make it here: zod strips them


def parse_update_body(body: Any) -> dict[str, Any]:
    """UpdateOctopusDeployConnectionSchema = {credentials?}.and(GenericUpdateFields). Absent keys stay absent."""
    issues: list[Issue] = []
    out: dict[str, Any] = {}
    if not isinstance(body, dict):
        issues.append(_invalid_type("object", body, []))
        issues.append(_invalid_type("object", body, []))
        raise _unprocessable(issues)
    if "credentials" in body:
        out["credentials"] = _credentials(body["credentials"], ["credentials"], issues)
    if "name" in body:
        out["name"] = _name(body["name"], ["name"], issues)
    if "description" in body:
        out["description"] = _description(body["description"], ["description"], issues)
    _literal_false(body.get("isPlatformManagedCredentials", MISSING), ["isPlatformManagedCredentials"], issues)
    _undefined_or_null(body.get("gatewayId", MISSING), ["gatewayId"], issues)
    if issues:
        raise _unprocessable(issues)
    return out


def _parse_strings(body: Any, *keys: str) -> dict[str, str]:
    """z.object({key: z.string().trim(), ...}) for the auth routes."""
    issues: list[Issue] = []
    if not isinstance(body, dict):
        raise _unprocessable([_invalid_type("object", body, [])])
    out: dict[str, str] = {}
    for key in keys:
        value = _trimmed_string(body.get(key, MISSING), [key], issues)
        if value is not None:
            out[key] = value
    if issues:
        raise _unprocessable(issues)
    return out


def _connection_id_param(value: str) -> str:
    if not UUID_RE.fullmatch(value):
        raise _unprocessable(
            [{"validation": "uuid", "code": "invalid_string", "message": "Invalid uuid", "path": ["connectionId"]}]
        )
    return value


# --- SSRF guard (lib/validator/validate-url.ts blockLocalAndPrivateIpAddresses) --------------------------------------


def parse_ipv4_host(host: str) -> str | None:
    """The dotted quad a WHATWG URL makes of an IPv4 host ("127.1", "0x7f.0.0.1", "2130706433"), else None."""
    if not host or not re.fullmatch(r"[0-9a-fA-Fx.]+", host) or not re.search(r"(^|\.)(0x[0-9a-fA-F]*|\d+)\.?$", host):
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(host.rstrip(".")))
    except OSError:
        return None


def is_internal_ipv4(ip: str) -> bool:
    address = ipaddress.IPv4Address(ip)
    return any(address in network for network in INTERNAL_IPV4_NETWORKS)


# --- Faults --------------------------------------------------------------------------------------------------------


@dataclass
class _Fault:
    kind: Literal["error", "drop"]
    remaining: int | None  # None = until cleared
    path_prefix: str | None
    status: int = 500
    after_action: bool = False  # the request is carried out first; only its answer is lost or replaced
    method: str | None = None  # only requests of this method
    every: int = 1  # hits only every n-th matching request (the fault tier's "a third of them")
    seen: int = 0


@dataclass
class _Window:
    started: float | None = None
    count: int = 0


class Faults:
    """Per-test misbehaviour. Faults queue in the order set; each request consumes the first one that matches."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._queue: list[_Fault] = []
        self._latency = 0.0
        self._latency_prefix: str | None = None
        self.reads_per_minute: int | None = None
        self.writes_per_minute: int | None = None
        self._windows = {"read": _Window(), "write": _Window()}

    def error(
        self,
        status: int = 500,
        times: int | None = 1,
        *,
        path_prefix: str | None = None,
        after_action: bool = False,
        method: str | None = None,
        every: int = 1,
    ) -> None:
        """Answer the next ``times`` requests (None = until cleared) with ``status`` and Infisical's error body.
        ``after_action``: carry the request out first, as a server that fails while answering does; with ``every``,
        only each ``every``-th matching request, the others pass."""
        self._add(_Fault("error", times, path_prefix, status, after_action, method, every=every))

    def drop(
        self,
        times: int | None = 1,
        *,
        path_prefix: str | None = None,
        after_action: bool = False,
        method: str | None = None,
        every: int = 1,
    ) -> None:
        """Close the next ``times`` connections without a response (``after_action``: once the request is done;
        with ``every``: each ``every``-th one)."""
        self._add(_Fault("drop", times, path_prefix, after_action=after_action, method=method, every=every))

    def latency(self, seconds: float, *, path_prefix: str | None = None) -> None:
        """Delay every response by ``seconds`` until cleared."""
        with self._lock:
            self._latency = seconds
            self._latency_prefix = path_prefix

    def rate_limit(self, reads_per_minute: int | None = None, writes_per_minute: int | None = None) -> None:
        """Infisical Cloud's limits (60 reads / 200 writes a minute); None = no limit. Starts fresh windows."""
        with self._lock:
            self.reads_per_minute = reads_per_minute
            self.writes_per_minute = writes_per_minute
            self._windows = {"read": _Window(), "write": _Window()}

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._latency = 0.0
            self._latency_prefix = None
            self.reads_per_minute = None
            self.writes_per_minute = None
            self._windows = {"read": _Window(), "write": _Window()}

    def _add(self, fault: _Fault) -> None:
        if fault.remaining is not None and fault.remaining < 1:
            raise ValueError("times must be at least 1, or None for 'until cleared'")
        if fault.every < 1:
            raise ValueError("every must be at least 1")
        with self._lock:
            self._queue.append(fault)

    def _take(self, path: str, method: str = "GET") -> tuple[_Fault | None, float]:
        with self._lock:
            prefix = self._latency_prefix
            delay = self._latency if prefix is None or path.startswith(prefix) else 0.0
            for fault in self._queue:
                if fault.path_prefix is not None and not path.startswith(fault.path_prefix):
                    continue
                if fault.method is not None and fault.method != method:
                    continue
                fault.seen += 1
                if fault.seen % fault.every:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._queue.remove(fault)
                return fault, delay
            return None, delay

    def _count(self, kind: Literal["read", "write"]) -> tuple[dict[str, str], ApiError | None]:
        """Count one request; return the x-ratelimit headers and the 429 to answer, if over the limit."""
        with self._lock:
            limit = self.reads_per_minute if kind == "read" else self.writes_per_minute
            if limit is None:
                return {}, None
            now = self._clock()
            window = self._windows[kind]
            if window.started is None or now >= window.started + RATE_LIMIT_WINDOW_SECONDS:
                window.started, window.count = now, 0
            window.count += 1
            reset = max(1, math.ceil(window.started + RATE_LIMIT_WINDOW_SECONDS - now))
            headers = {
                "x-ratelimit-limit": str(limit),
                "x-ratelimit-remaining": str(max(0, limit - window.count)),
                "x-ratelimit-reset": str(reset),
            }
            if window.count <= limit:
                return headers, None
            message = f"Rate limit exceeded. Please try again in {reset} seconds"
            return headers, ApiError(429, message, headers={**headers, "retry-after": str(reset)})


# --- State ---------------------------------------------------------------------------------------------------------


@dataclass
class _UniversalAuth:
    client_id: str
    client_secret: str
    client_secret_expired: bool
    client_secret_revoked: bool
    ttl: int
    max_ttl: int


@dataclass
class _KubernetesAuth:
    allowed_namespaces: list[str] | None
    allowed_names: list[str] | None
    allowed_audience: str | None
    ttl: int
    max_ttl: int


@dataclass
class _Identity:
    id: str
    org_id: str
    universal: _UniversalAuth | None = None
    kubernetes: _KubernetesAuth | None = None


@dataclass
class _Token:
    id: str
    identity_id: str
    org_id: str
    created_at: float
    ttl: int
    max_ttl: int
    last_renewed_at: float | None = None
    force_expired: bool = False

    def expired(self, now: float) -> bool:
        if self.force_expired:
            return True
        start = self.last_renewed_at if self.last_renewed_at is not None else self.created_at
        return self.ttl > 0 and now > start + self.ttl


@dataclass
class _Lockout:
    failed_attempts: int
    locked_out: bool
    expires_at: float


@dataclass
class _Project:
    id: str
    org_id: str
    name: str
    slug: str


@dataclass
class _Connection:
    id: str
    app: str
    method: str
    name: str
    description: str | None
    org_id: str
    project_id: str | None
    encrypted_credentials: bytes
    created_at: float
    updated_at: float


@dataclass
class _Actor:
    identity_id: str
    org_id: str


class InfisicalState:
    """Identities, tokens, projects, connections and the records. Thread-safe: tests change it while the server
    thread reads it. ``clock`` (seconds since the epoch) drives token TTLs, lockouts, rate windows and dates."""

    def __init__(self, *, clock: Callable[[], float] = time.time, allow_internal_ips: bool = False) -> None:
        self._lock = threading.RLock()
        self.clock = clock
        self.allow_internal_ips = allow_internal_ips  # ALLOW_INTERNAL_IP_CONNECTIONS
        self.faults = Faults(clock)
        self.requests: list[RecordedRequest] = []
        self.outbound: list[OutboundCall] = []
        self.token_reviews: list[OutboundCall] = []
        self.expired_token_mode: Literal["ttl-check", "jwt-exp"] = "ttl-check"
        self.validation_retry_base_delay = 0.1  # axios-retry exponentialDelay: 2^n * 100 ms
        self.validation_timeout = 30.0
        self.octopus_ca_pem: str | None = None  # extra CA trusted for Octopus HTTPS (NODE_EXTRA_CA_CERTS)
        # "Older release" mode: a server from before project-level app connections. Create silently drops projectId
        # (an org-level connection, no project check) and lookups ignore ?projectId=, as such a server's schemas
        # strip the unknown key (docs/remote-apis.md).
        self.older_release = False
        # False: a release from before the Octopus Deploy app connection existed; its routes answer 404 "Route ...".
        self.octopus_app_available = True
        self._identities: dict[str, _Identity] = {}
        self._tokens: dict[str, _Token] = {}
        self._issued_token_values: list[str] = []
        self._lockouts: dict[str, _Lockout] = {}
        self._projects: dict[str, _Project] = {}
        self._connections: dict[str, _Connection] = {}
        # Per-server secrets: the AES-GCM key behind credentialsHash and the HS256 key behind access tokens.
        self._aes = AESGCM(AESGCM.generate_key(bit_length=256))
        self._jwt_secret = secrets.token_bytes(32)
        self.secrets = SecretStore(self)  # environments, folders and secrets of projects (infisical_secrets.py)
        self.syncs = SyncStore(self)  # Octopus Deploy secret syncs (infisical_syncs.py)

    # Identities and tokens

    def add_universal_identity(
        self,
        *,
        client_id: str,
        client_secret: str,
        org_id: str = DEFAULT_ORG_ID,
        access_token_ttl: int = DEFAULT_TOKEN_TTL,
        access_token_max_ttl: int = DEFAULT_TOKEN_TTL,
        client_secret_expired: bool = False,
        identity_id: str | None = None,
    ) -> str:
        """A machine identity with Universal Auth; returns its id. ``identity_id`` adds UA to an existing one."""
        with self._lock:
            if any(i.universal and i.universal.client_id == client_id for i in self._identities.values()):
                raise ValueError("that client id is already registered")
            identity = self._identity_for(identity_id, org_id)
            identity.universal = _UniversalAuth(
                client_id, client_secret, client_secret_expired, False, access_token_ttl, access_token_max_ttl
            )
            return identity.id

    def add_kubernetes_identity(
        self,
        *,
        identity_id: str | None = None,
        allowed_namespaces: list[str] | None = None,
        allowed_names: list[str] | None = None,
        allowed_audience: str | None = None,
        org_id: str = DEFAULT_ORG_ID,
        access_token_ttl: int = DEFAULT_TOKEN_TTL,
        access_token_max_ttl: int = DEFAULT_TOKEN_TTL,
    ) -> str:
        """A machine identity with Kubernetes Auth (or add it to ``identity_id``); returns the identity id."""
        with self._lock:
            identity = self._identity_for(identity_id, org_id)
            identity.kubernetes = _KubernetesAuth(
                list(allowed_namespaces) if allowed_namespaces else None,
                list(allowed_names) if allowed_names else None,
                allowed_audience or None,
                access_token_ttl,
                access_token_max_ttl,
            )
            return identity.id

    def _identity_for(self, identity_id: str | None, org_id: str) -> _Identity:
        if identity_id is not None and identity_id in self._identities:
            return self._identities[identity_id]
        identity = _Identity(id=identity_id or str(uuid.uuid4()), org_id=org_id)
        self._identities[identity.id] = identity
        return identity

    def issue_token(self, identity_id: str) -> str:
        """An access token for ``identity_id`` as if it had logged in (no HTTP call, no rate-limit count)."""
        with self._lock:
            identity = self._identities[identity_id]
            auth = identity.universal or identity.kubernetes
            ttl, max_ttl = (auth.ttl, auth.max_ttl) if auth is not None else (DEFAULT_TOKEN_TTL, DEFAULT_TOKEN_TTL)
            return self._new_token(identity, ttl, max_ttl, {})

    def _new_token(self, identity: _Identity, ttl: int, max_ttl: int, extra_claims: dict[str, Any]) -> str:
        token = _Token(str(uuid.uuid4()), identity.id, identity.org_id, self.clock(), ttl, max_ttl)
        self._tokens[token.id] = token
        claims = {
            "identityId": identity.id,
            "identityAccessTokenId": token.id,
            "authTokenType": "identityAccessToken",
            "iat": int(token.created_at),
            **extra_claims,
        }
        signed = self._sign(claims)
        self._issued_token_values.append(signed)
        return signed

    def issued_access_tokens(self) -> list[str]:
        """Every access token handed out so far, so leak tests can search logs and objects for them."""
        with self._lock:
            return list(self._issued_token_values)

    def expire_tokens(self) -> None:
        """Make every access token issued so far expired (renewal is refused too)."""
        with self._lock:
            for token in self._tokens.values():
                token.force_expired = True

    def _sign(self, claims: dict[str, Any]) -> str:
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._jwt_secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(signature)}"

    def _verify(self, token: str) -> dict[str, Any]:
        """jsonwebtoken's verify(): the claims, or ApiError 403 TokenError with its messages."""
        if not token:
            raise ApiError(403, "jwt must be provided", error="TokenError")
        parts = token.split(".")
        if len(parts) != 3:
            raise ApiError(403, JWT_MALFORMED, error="TokenError")
        try:
            claims = json.loads(_b64url_decode(parts[1]))
            json.loads(_b64url_decode(parts[0]))
        except ValueError:
            raise ApiError(403, "invalid token", error="TokenError") from None
        expected = hmac.new(self._jwt_secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            signature = _b64url_decode(parts[2])
        except ValueError:
            signature = b""
        if not isinstance(claims, dict) or not hmac.compare_digest(signature, expected):
            raise ApiError(403, "invalid signature", error="TokenError")
        return claims

    # Lockout (identity-ua-service.ts: a keystore record per identity and auth method)

    def _locked_out(self, key: str) -> bool:
        with self._lock:
            record = self._lockouts.get(key)
            if record is not None and self.clock() >= record.expires_at:
                del self._lockouts[key]
                record = None
            return record is not None and record.locked_out

    def _count_failure(self, key: str) -> None:
        with self._lock:
            now = self.clock()
            record = self._lockouts.get(key)
            if record is None or now >= record.expires_at:
                record = _Lockout(0, False, now)
            record.failed_attempts += 1
            record.locked_out = record.failed_attempts >= LOCKOUT_THRESHOLD
            record.expires_at = now + (LOCKOUT_DURATION_SECONDS if record.locked_out else LOCKOUT_COUNTER_RESET_SECONDS)
            self._lockouts[key] = record

    def _clear_failures(self, key: str) -> None:
        with self._lock:
            self._lockouts.pop(key, None)

    # Projects and connections

    def add_project(
        self, project_id: str | None = None, *, org_id: str = DEFAULT_ORG_ID, name: str | None = None
    ) -> str:
        with self._lock:
            pid = project_id or str(uuid.uuid4())
            project_name = name or f"project-{pid[:8]}"
            self._projects[pid] = _Project(pid, org_id, project_name, re.sub(r"[^a-z0-9]+", "-", project_name.lower()))
            return pid

    def add_foreign_connection(
        self, *, app: str, name: str, org_id: str = DEFAULT_ORG_ID, project_id: str | None = None
    ) -> str:
        """A connection of another app (e.g. "aws"), for name clashes and cross-app lookups."""
        with self._lock:
            now = self.clock()
            row = _Connection(
                str(uuid.uuid4()), app, "access-key", name, None, org_id, project_id, self._encrypt({}), now, now
            )
            self._connections[row.id] = row
            return row.id

    def connections(self) -> list[dict[str, Any]]:
        """Every stored row as the API shows it, plus ``_credentials`` (plaintext, never in a response)."""
        with self._lock:
            rows = sorted(self._connections.values(), key=lambda r: r.created_at)
            return [{**self._view(r), "_credentials": self._decrypt(r.encrypted_credentials)} for r in rows]

    def connection(self, connection_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._connections.get(connection_id)
            if row is None:
                return None
            return {**self._view(row), "_credentials": self._decrypt(row.encrypted_credentials)}

    def delete_connection_out_of_band(self, connection_id: str) -> None:
        """Someone deleted the connection in the Infisical UI."""
        with self._lock:
            del self._connections[connection_id]

    def rewrite_credentials_out_of_band(
        self, connection_id: str, *, api_key: str | None = None, instance_url: str | None = None
    ) -> None:
        """Someone re-saved the credentials by hand: a new blob, so a new credentialsHash, and a new updatedAt."""
        with self._lock:
            row = self._connections[connection_id]
            credentials = self._decrypt(row.encrypted_credentials)
            if api_key is not None:
                credentials["apiKey"] = api_key
            if instance_url is not None:
                credentials["instanceUrl"] = instance_url
            row.encrypted_credentials = self._encrypt(credentials)
            row.updated_at = self._next_updated_at(row)

    def _encrypt(self, credentials: dict[str, Any]) -> bytes:
        iv = os.urandom(12)  # random IV: identical credentials never give the same blob, so never the same hash
        return iv + self._aes.encrypt(iv, json.dumps(credentials).encode(), None)

    def _decrypt(self, blob: bytes) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._aes.decrypt(blob[:12], blob[12:], None))
        return data

    def _next_updated_at(self, row: _Connection) -> float:
        # "updatedAt changes on every PATCH": a clock that stands still must not hide that.
        return max(self.clock(), row.updated_at + 0.001)

    def _view(self, row: _Connection, *, with_project: bool = False) -> dict[str, Any]:
        """The page's Response object. ``credentials`` carries instanceUrl only: the API key never leaves."""
        credentials = self._decrypt(row.encrypted_credentials)
        view: dict[str, Any] = {
            "id": row.id,
            "name": row.name,
            "description": row.description,
            "version": 1,  # upstream never increments it
            "orgId": row.org_id,
            "projectId": row.project_id,
            "createdAt": _iso(row.created_at),
            "updatedAt": _iso(row.updated_at),
            "isPlatformManagedCredentials": False,
            "gatewayId": None,
            "isAutoRotationEnabled": False,
            "credentialsHash": hashlib.sha256(row.encrypted_credentials).hexdigest(),
            "app": row.app,
            "method": row.method,
            "credentials": {"instanceUrl": credentials["instanceUrl"]} if "instanceUrl" in credentials else {},
        }
        if with_project:
            project = self._projects.get(row.project_id) if row.project_id else None
            view["project"] = (
                {"name": project.name, "id": project.id, "type": "secret-manager", "slug": project.slug}
                if project is not None
                else None
            )
        return view

    def _name_taken(self, org_id: str, project_id: str | None, name: str, exclude: str | None = None) -> bool:
        # The unique index is per org for org-level rows and per project for project rows, across apps.
        return any(
            r.name == name and r.org_id == org_id and r.project_id == project_id and r.id != exclude
            for r in self._connections.values()
        )

    # Records

    def _record(self, entry: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def _record_outbound(self, entry: OutboundCall, *, kind: Literal["octopus", "kube"] = "octopus") -> None:
        with self._lock:
            (self.outbound if kind == "octopus" else self.token_reviews).append(entry)

    def requests_to(self, path_prefix: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path.startswith(path_prefix) and (method is None or r.method == method.upper())
            ]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if k in SECRET_BODY_FIELDS else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _redact_headers(headers: dict[str, str]) -> dict[str, str]:
    redacted = {}
    for name, value in headers.items():
        if name.lower() == "authorization":
            scheme = value.split(" ", 1)[0] if " " in value else ""
            redacted[name] = f"{scheme} {REDACTED}".strip()
        elif name.lower() in SECRET_HEADERS:
            redacted[name] = REDACTED
        else:
            redacted[name] = value
    return redacted


# --- Outbound calls ------------------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    status: int | None
    message: str | None  # axios's error.message; None when the error was not an axios one
    retryable: bool


def _node_network_message(exc: aiohttp.ClientConnectorError) -> str:
    """Node's net error text, e.g. "connect ECONNREFUSED 127.0.0.1:1"."""
    code = errno.errorcode.get(exc.os_error.errno or 0)
    if code:
        return f"connect {code} {exc.host}:{exc.port}"
    return str(exc.os_error)


def _certificate_message(exc: aiohttp.ClientConnectorCertificateError) -> str:
    """OpenSSL's verify text ("unable to get local issuer certificate"), which is also what Node reports."""
    error = exc.certificate_error
    message = error.verify_message if isinstance(error, ssl.SSLCertVerificationError) else None
    return message or str(error)


def _tls_context(*, ca_pem: str | None = None, ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
    return context


# --- HTTP ----------------------------------------------------------------------------------------------------------

HandlerResult = tuple[int, Any]
Kind = Literal["read", "write"]


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: str  # InfisicalServer method name
    kind: Kind
    auth: Literal["none", "identity", "user-session"]


def _route(
    method: str, pattern: str, handler: str, kind: Kind, auth: Literal["none", "identity", "user-session"]
) -> _Route:
    return _Route(method, re.compile(pattern), handler, kind, auth)


_APP = r"(?P<app>[a-z0-9-]+)"
_ID = r"(?P<connection_id>[^/]+)"
ROUTES = (
    _route("POST", r"/api/v1/auth/universal-auth/login", "_universal_login", "write", "none"),
    _route("POST", r"/api/v1/auth/kubernetes-auth/login", "_kubernetes_login", "write", "none"),
    _route("POST", r"/api/v1/auth/token/renew", "_renew", "write", "none"),
    _route("GET", rf"{CONNECTIONS_PREFIX}/{_APP}/?", "_list", "read", "identity"),
    _route("GET", rf"{CONNECTIONS_PREFIX}/{_APP}/connection-name/(?P<name>[^/]*)", "_get_by_name", "read", "identity"),
    _route(
        "GET",
        rf"{CONNECTIONS_PREFIX}/{OCTOPUS_APP}/{_ID}/(spaces|projects|scope-values)",
        "_user_only",
        "read",
        "user-session",
    ),
    _route("GET", rf"{CONNECTIONS_PREFIX}/{_APP}/{_ID}", "_get_by_id", "read", "identity"),
    _route("POST", rf"{CONNECTIONS_PREFIX}/{OCTOPUS_APP}/?", "_create", "write", "identity"),
    _route("PATCH", rf"{CONNECTIONS_PREFIX}/{_APP}/{_ID}", "_update", "write", "identity"),
    _route("DELETE", rf"{CONNECTIONS_PREFIX}/{_APP}/{_ID}", "_delete", "write", "identity"),
)


class InfisicalServer(ThreadedServer):
    """The double on a real socket: ``with InfisicalServer(allow_internal_ips=True) as infisical: infisical.url``.

    ``state`` given: it is used as is, except that ``allow_internal_ips=True`` switches it on.
    ``client_id``/``client_secret``/``identity_id`` are filled by the ``infisical`` fixture (and the CLI).
    """

    def __init__(
        self,
        *,
        state: InfisicalState | None = None,
        allow_internal_ips: bool = False,
        kube_api: KubeApiConfig | None = None,
        port: int = 0,
    ) -> None:
        self.state = state if state is not None else InfisicalState()
        if allow_internal_ips:
            self.state.allow_internal_ips = True
        self.kube_api = kube_api
        self.client_id: str | None = None
        self.client_secret: str | None = None
        self.identity_id: str | None = None
        self._thread = ServerThread(self.make_app, port=port)
        self._started = False
        self.secret_api = SecretApi(self)
        self.secret_syncs = SecretSyncApi(self)
        self._extra_routes: tuple[_Route, ...] = (*SecretApi.routes(), *SecretSyncApi.routes())
        self._validation_tls: tuple[str | None, ssl.SSLContext] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def make_app(self) -> web.Application:
        app = web.Application()
        # One catch-all route: matching, 404s and the order of checks are ours, readable top to bottom in _dispatch.
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_shutdown.append(self.secret_syncs.shutdown)
        return app

    # Front door: record → faults → route → rate limit → auth → body → handler

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        req_id = _req_id()
        raw_body = await request.read()
        content_type = request.headers.get("Content-Type", "")
        is_json = content_type.split(";", 1)[0].strip().lower() == "application/json"
        parsed: Any = MISSING
        if is_json and raw_body:
            try:
                parsed = json.loads(raw_body)
            except ValueError:
                parsed = MISSING
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=_redact_headers({k.lower(): v for k, v in request.headers.items()}),
            json=_redact(parsed) if parsed is not MISSING else None,
        )
        self.state._record(record)

        fault, delay = self.state.faults._take(request.path, request.method)
        if delay:
            await asyncio.sleep(delay)
        if fault is not None and fault.kind == "drop" and not fault.after_action:
            return self._drop(request, record)
        extra_headers: dict[str, str] = {}
        try:
            if fault is not None and not fault.after_action:
                record.fault = "error"
                message = SOMETHING_WENT_WRONG if fault.status == 500 else f"Injected fault: HTTP {fault.status}"
                raise ApiError(fault.status, message)
            route, params = match_routes(self._extra_routes, request.method, request.path) or self._match(
                request.method, request.path
            )
            extra_headers, limited = self.state.faults._count(route.kind)
            if limited is not None:
                record.fault = "rate_limit"
                raise limited
            actor = self._authenticate(request, record) if route.auth != "none" else None
            if route.auth == "user-session":
                # verify-auth.ts: the route takes user sessions (JWT) only, so an identity token is forbidden.
                raise ApiError(403, FORBIDDEN_RESOURCE, details=[])
            # Fastify parses bodies after the onRequest hooks (auth, rate limit): these 500s come after a 401.
            if is_json and not raw_body:
                raise _internal()  # FST_ERR_CTP_EMPTY_JSON_BODY through Infisical's generic handler: the TRAP
            if is_json and parsed is MISSING:
                raise _internal()  # invalid JSON, same path
            if raw_body and not is_json:
                raise _internal()  # FST_ERR_CTP_INVALID_MEDIA_TYPE, same path
            handler = attrgetter(route.handler)(self)  # dotted for the routes of the secrets and syncs modules
            status, body = await handler(request, params, actor, parsed)
            response = _json_response(status, body, extra_headers)
        except ApiError as exc:
            response = _json_response(exc.status, exc.body(req_id), {**extra_headers, **exc.headers})
        except Exception:
            # A bug in this double: answer like Infisical's generic handler, and say so loudly on stderr.
            log.exception("unexpected error in the Infisical test double for %s %s", request.method, request.path)
            response = _json_response(500, _internal().body(req_id), extra_headers)
        if fault is not None and fault.after_action:
            if fault.kind == "drop":
                return self._drop(request, record)
            record.fault = "error"
            message = SOMETHING_WENT_WRONG if fault.status == 500 else f"Injected fault: HTTP {fault.status}"
            response = _json_response(fault.status, ApiError(fault.status, message).body(req_id))
        record.status = response.status
        return response

    @staticmethod
    def _drop(request: web.Request, record: RecordedRequest) -> web.Response:
        record.fault = "drop"
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)  # never reaches the client: the connection is gone

    def _match(self, method: str, path: str) -> tuple[_Route, dict[str, str]]:
        octopus_paths = f"{CONNECTIONS_PREFIX}/{OCTOPUS_APP}"
        if not self.state.octopus_app_available and (path == octopus_paths or path.startswith(octopus_paths + "/")):
            raise ApiError(404, f"Route {method}:{path} not found")
        for route in ROUTES:
            match = route.pattern.fullmatch(path)
            if match is not None and route.method == method:
                params = match.groupdict()
                app = params.get("app")
                if app is None or app == OCTOPUS_APP or app in OTHER_APPS:
                    return route, params
        raise ApiError(404, f"Route {method}:{path} not found")

    def _authenticate(self, request: web.Request, record: RecordedRequest) -> _Actor:
        """inject-identity.ts + verify-auth.ts for identity access tokens."""
        if request.headers.get("x-api-key"):
            raise ApiError(400, API_KEY_AUTH_GONE)
        header = request.headers.get("Authorization", "")
        if not header:
            raise ApiError(401, TOKEN_MISSING)
        raw = header[7:]  # upstream slices "Bearer " off without looking at it
        record.token_fingerprint = hashlib.sha256(raw.encode()).hexdigest()[:12]
        claims = self.state._verify(raw)
        with self.state._lock:
            token = self.state._tokens.get(str(claims.get("identityAccessTokenId")))
            if token is None:
                raise ApiError(401, NO_TOKEN_FOUND)
            if token.expired(self.state.clock()):
                if self.state.expired_token_mode == "jwt-exp":
                    raise ApiError(403, JWT_EXPIRED, error="TokenError")
                del self.state._tokens[token.id]  # upstream deletes the token row when its TTL check fails
                raise ApiError(401, TOKEN_TTL_EXPIRED)
            record.identity_id = token.identity_id
            return _Actor(token.identity_id, token.org_id)

    # Auth routes

    async def _universal_login(
        self, request: web.Request, params: dict[str, str], actor: None, body: Any
    ) -> HandlerResult:
        fields = _parse_strings(body, "clientId", "clientSecret")
        state = self.state
        with state._lock:
            identity = next(
                (i for i in state._identities.values() if i.universal and i.universal.client_id == fields["clientId"]),
                None,
            )
            if identity is None or identity.universal is None:
                raise ApiError(401, INVALID_CREDENTIALS)  # unknown client ids do not count towards a lockout
            ua = identity.universal
            lockout_key = f"lockout:identity:{identity.id}:universal-auth:{ua.client_id}"
            if state._locked_out(lockout_key):
                raise ApiError(401, LOCKED_OUT)
            secret_ok = not ua.client_secret_revoked and hmac.compare_digest(
                fields["clientSecret"].encode(), ua.client_secret.encode()
            )
            if not secret_ok:
                state._count_failure(lockout_key)
                raise ApiError(401, INVALID_CREDENTIALS)
            state._clear_failures(lockout_key)
            if ua.client_secret_expired:
                ua.client_secret_revoked = (
                    True  # upstream revokes it on the spot: the next try is "Invalid credentials"
                )
                raise ApiError(401, EXPIRED_CLIENT_SECRET)
            token = state._new_token(identity, ua.ttl, ua.max_ttl, {})
            return 200, _login_body(token, ua.ttl, ua.max_ttl)

    async def _kubernetes_login(
        self, request: web.Request, params: dict[str, str], actor: None, body: Any
    ) -> HandlerResult:
        fields = _parse_strings(body, "identityId", "jwt")
        state = self.state
        with state._lock:
            identity = state._identities.get(fields["identityId"])
            if identity is None or identity.kubernetes is None:
                raise ApiError(404, K8S_NOT_CONFIGURED)
            k8s = identity.kubernetes
            lockout_key = f"lockout:identity:{identity.id}:kubernetes-auth"
            if state._locked_out(lockout_key):
                raise ApiError(401, LOCKED_OUT)
        review = await self._token_review(fields["jwt"], k8s.allowed_audience)
        try:
            namespace, name = _check_review(review, k8s)
        except ApiError as exc:
            if exc.status == 401:
                state._count_failure(lockout_key)
            raise
        with state._lock:
            state._clear_failures(lockout_key)
            claims = {"identityAuth": {"kubernetes": {"namespace": namespace, "name": name}}}
            token = state._new_token(identity, k8s.ttl, k8s.max_ttl, claims)
            return 200, _login_body(token, k8s.ttl, k8s.max_ttl)

    async def _renew(self, request: web.Request, params: dict[str, str], actor: None, body: Any) -> HandlerResult:
        """identity-access-token-service.ts renewAccessToken; the page: the SAME token comes back."""
        access_token = _parse_strings(body, "accessToken")["accessToken"]
        state = self.state
        claims = state._verify(access_token)
        with state._lock:
            token = state._tokens.get(str(claims.get("identityAccessTokenId")))
            if token is None:
                raise ApiError(401, NO_TOKEN_FOUND)
            now = state.clock()
            if token.expired(now):
                del state._tokens[token.id]
                raise ApiError(401, TOKEN_TTL_EXPIRED)
            if token.max_ttl > 0:
                max_expiry = token.created_at + token.max_ttl
                if now > max_expiry:
                    del state._tokens[token.id]
                    raise ApiError(401, TOKEN_MAX_TTL_EXPIRED)
                if now + token.ttl > max_expiry:
                    del state._tokens[token.id]
                    raise ApiError(401, TOKEN_PAST_MAX_TTL)
            token.last_renewed_at = now
            return 200, _login_body(access_token, token.ttl, token.max_ttl)

    async def _token_review(self, jwt: str, audience: str | None) -> dict[str, Any]:
        """POST {kube}/apis/authentication.k8s.io/v1/tokenreviews, errors mapped like upstream's error handlers."""
        config = self.kube_api
        if config is None:
            raise ApiError(400, K8S_HOST_REQUIRED)
        url = config.url.rstrip("/") + "/apis/authentication.k8s.io/v1/tokenreviews"
        context = _tls_context(ca_file=config.ca_file, verify=config.ca_file is not None)
        headers = {"Content-Type": "application/json"}
        if config.token_file:
            headers["Authorization"] = f"Bearer {Path(config.token_file).read_text().strip()}"
        elif config.client_cert_file:
            context.load_cert_chain(config.client_cert_file, config.client_key_file)
        else:
            headers["Authorization"] = f"Bearer {jwt}"  # no reviewer: the login token reviews itself
        spec: dict[str, Any] = {"token": jwt}
        if audience:
            spec["audiences"] = [audience]
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        call = OutboundCall("POST", url, _redact_headers(headers), None, None)
        self.state._record_outbound(call, kind="kube")
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.post(url, json=review, headers=headers, ssl=context) as response,
            ):
                call.status = response.status
                data = await response.json(content_type=None)
                reason = response.reason or "Unknown error"
        except aiohttp.ClientConnectorCertificateError as exc:
            call.error = _certificate_message(exc)
            raise ApiError(
                400, f"Failed to communicate with Kubernetes API server at {config.url}: {call.error}"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            call.error = _node_network_message(exc)
            if exc.os_error.errno == errno.ECONNREFUSED:
                raise ApiError(
                    400,
                    f"Failed to connect to Kubernetes API server at {config.url}: Connection refused. Verify the host "
                    "URL and ensure the kubernetes api server is accessible.",
                ) from None
            raise ApiError(
                400, f"Failed to communicate with Kubernetes API server at {config.url}: {call.error}"
            ) from None
        except TimeoutError:
            call.error = "timeout of 10000ms exceeded"
            raise ApiError(
                400,
                f"Connection to Kubernetes API server at {config.url} timed out. Verify network connectivity and "
                "firewall rules.",
            ) from None
        except (aiohttp.ClientError, ValueError) as exc:
            call.error = str(exc)
            raise ApiError(400, f"Failed to communicate with Kubernetes API server at {config.url}: {exc}") from None
        if 200 <= response.status < 300:
            return data if isinstance(data, dict) else {}
        message = data.get("message") if isinstance(data, dict) else None
        if response.status == 401:
            raise ApiError(401, message or K8S_DEFAULT_401)
        if response.status == 403:
            raise ApiError(401, message or K8S_DEFAULT_403)
        if message:
            raise ApiError(401, message)
        raise ApiError(400, f"Kubernetes returned HTTP {response.status}: {reason}")

    # App connection routes

    async def _list(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> HandlerResult:
        app = params["app"]
        project_id = request.query.get("projectId") or None
        state = self.state
        if state.older_release:
            project_id = None
        with state._lock:
            if project_id is not None:
                self._project_for(project_id, actor)
                rows = [r for r in state._connections.values() if r.project_id == project_id]
            else:
                rows = [r for r in state._connections.values() if r.org_id == actor.org_id]
            rows = sorted((r for r in rows if r.app == app), key=lambda r: r.name.lower())
            return 200, {"appConnections": [state._view(r, with_project=True) for r in rows]}

    async def _get_by_name(
        self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any
    ) -> HandlerResult:
        name = params["name"].strip()
        if not name:
            raise _unprocessable([_too_small(1, ["connectionName"], "Connection name required")])
        state = self.state
        project_id = None if state.older_release else request.query.get("projectId") or None
        with state._lock:
            row = next(
                (
                    r
                    for r in state._connections.values()
                    if r.name == name
                    and (
                        r.project_id == project_id
                        if project_id
                        else (r.org_id == actor.org_id and r.project_id is None)
                    )
                ),
                None,
            )
            if row is None:
                scope = "project" if project_id else "organization"
                raise ApiError(404, f"Could not find App Connection with name {name} in {scope} scope.")
            self._check_org(row.org_id, actor)
            if row.app != params["app"]:
                raise ApiError(400, f'App Connection with name {name} is not for App "{params["app"]}"')
            return 200, {"appConnection": state._view(row)}

    async def _get_by_id(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> HandlerResult:
        with self.state._lock:
            row = self._row_for(params, actor)
            return 200, {"appConnection": self.state._view(row)}

    async def _user_only(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> HandlerResult:
        raise ApiError(403, FORBIDDEN_RESOURCE, details=[])  # unreachable: _dispatch answers these first

    async def _create(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> HandlerResult:
        """app-connection-service.ts createAppConnection: schema → project → Octopus check → insert (unique name)."""
        fields = parse_create_body(body)
        state = self.state
        project_id = fields["projectId"] if fields["projectId"] is not MISSING else None
        if state.older_release:
            project_id = None  # not in that release's schema: stripped like any unknown key
        if project_id == "":
            raise _internal()  # an empty string reaches the uuid column
        if project_id is not None:
            with state._lock:
                self._project_for(project_id, actor, missing_status=400)
        credentials: dict[str, str] = fields["credentials"]
        await self._validate_octopus_credentials(credentials["instanceUrl"], credentials["apiKey"])
        description = fields["description"] if fields["description"] is not MISSING else None
        with state._lock:
            if isinstance(description, str) and len(description) > DESCRIPTION_COLUMN_MAX:
                raise _internal()  # the schema allowed 256 characters; the varchar(255) column does not
            if state._name_taken(actor.org_id, project_id, fields["name"]):
                raise ApiError(400, f'An App Connection with the name "{fields["name"]}" already exists')
            now = state.clock()
            row = _Connection(
                id=str(uuid.uuid4()),
                app=OCTOPUS_APP,
                method=API_KEY_METHOD,
                name=fields["name"],
                description=description,
                org_id=actor.org_id,
                project_id=project_id,
                encrypted_credentials=state._encrypt(credentials),
                created_at=now,
                updated_at=now,
            )
            state._connections[row.id] = row
            return 200, {"appConnection": state._view(row)}

    async def _update(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> HandlerResult:
        """updateAppConnection: schema → find → Octopus check (only with credentials) → update (unique name)."""
        connection_id = _connection_id_param(params["connection_id"])
        fields = parse_update_body(body)
        state = self.state
        with state._lock:
            self._row_for(params, actor)
        if params["app"] != OCTOPUS_APP:
            # Only reachable for a foreign row under its own app's path; this double has no other app's schema.
            raise ApiError(400, f'This test double cannot update "{params["app"]}" connections')
        credentials = fields.get("credentials")
        if credentials is not None:
            await self._validate_octopus_credentials(credentials["instanceUrl"], credentials["apiKey"])
        with state._lock:
            row = self._row_for(params, actor)  # again: it may have gone while Octopus was asked
            name = fields.get("name", row.name)
            if "name" in fields and state._name_taken(row.org_id, row.project_id, name, exclude=connection_id):
                raise ApiError(400, f'An App Connection with the name "{name}" already exists')
            description = fields.get("description", MISSING)
            if isinstance(description, str) and len(description) > DESCRIPTION_COLUMN_MAX:
                raise _internal()
            row.name = name
            if description is not MISSING:
                row.description = description
            if credentials is not None:
                row.encrypted_credentials = state._encrypt(credentials)
            row.updated_at = state._next_updated_at(row)
            return 200, {"appConnection": state._view(row)}

    async def _delete(self, request: web.Request, params: dict[str, str], actor: _Actor, body: Any) -> HandlerResult:
        with self.state._lock:
            row = self._row_for(params, actor)
            if self.state.syncs.uses_connection(row.id):
                raise ApiError(400, CONNECTION_IN_USE)
            view = self.state._view(row)
            del self.state._connections[row.id]
            return 200, {"appConnection": view}

    def _row_for(self, params: dict[str, str], actor: _Actor) -> _Connection:
        """findById → 404; another org → 403; another app → 400. Call with the state lock held."""
        connection_id = _connection_id_param(params["connection_id"])
        row = self.state._connections.get(connection_id)
        if row is None:
            raise ApiError(404, f"Could not find App Connection with ID {connection_id}")
        self._check_org(row.org_id, actor)
        if row.app != params["app"]:
            raise ApiError(400, f'App Connection with ID {connection_id} is not for App "{params["app"]}"')
        return row

    def _project_for(self, project_id: str, actor: _Actor, *, missing_status: int = 404) -> _Project:
        project = self.state._projects.get(project_id)
        if project is None:
            raise ApiError(missing_status, f"Could not find project with ID {project_id}")
        self._check_org(project.org_id, actor)
        return project

    @staticmethod
    def _check_org(org_id: str, actor: _Actor) -> None:
        if org_id != actor.org_id:
            raise ApiError(403, FORBIDDEN_RESOURCE, details=[])

    # The credential check (octopus-deploy-connection-fns.ts validateOctopusDeployConnectionCredentials)

    async def _validate_octopus_credentials(self, instance_url: str, api_key: str) -> None:
        base = instance_url[:-1] if instance_url.endswith("/") else instance_url  # removeTrailingSlash
        await self._block_local_and_private_ip_addresses(base)  # outside the try: its 400s pass through as they are
        url = f"{base}/api/users/me"
        headers = {
            "X-Octopus-ApiKey": api_key,
            "X-NuGet-ApiKey": api_key,
            "Accept": "application/json",
            "User-Agent": AXIOS_USER_AGENT,
        }
        attempt = 0
        while True:
            attempt += 1
            outcome = await self._get_once(url, headers)
            self.state._record_outbound(
                OutboundCall("GET", url, _redact_headers(headers), outcome.status, outcome.message, attempt)
            )
            if outcome.status is not None and 200 <= outcome.status < 300:
                return
            if not outcome.retryable or attempt > VALIDATION_RETRIES:
                break
            delay = self.state.validation_retry_base_delay * 2**attempt
            await asyncio.sleep(delay + delay * 0.2 * random.random())  # jitter, as axios-retry adds
        if outcome.message is None:
            raise ApiError(400, f"{VALIDATION_FAILED} - verify API key is correct")
        raise ApiError(400, f"{VALIDATION_FAILED}: {outcome.message}")

    async def _get_once(self, url: str, headers: dict[str, str]) -> _Outcome:
        """One axios GET with maxRedirects: 0, reported the way axios and axios-retry see it."""
        scheme = urlsplit(url).scheme.lower()
        if scheme not in {"http", "https"}:
            return _Outcome(None, f"Unsupported protocol {scheme}:", retryable=False)
        timeout = self.state.validation_timeout
        context = self._validation_context()
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                session.get(url, headers=headers, allow_redirects=False, ssl=context) as response,
            ):
                await response.read()
                status = response.status
        except aiohttp.ClientConnectorCertificateError as exc:
            # Node reports OpenSSL's text ("self-signed certificate", "unable to get local issuer certificate");
            # is-retry-allowed keeps axios-retry from retrying certificate errors.
            return _Outcome(None, _certificate_message(exc), retryable=False)
        except aiohttp.ClientConnectorError as exc:
            return _Outcome(None, _node_network_message(exc), retryable=True)
        except aiohttp.ServerDisconnectedError:
            return _Outcome(None, "socket hang up", retryable=True)
        except aiohttp.ClientOSError as exc:
            code = errno.errorcode.get(exc.errno or 0, "ECONNRESET")
            return _Outcome(None, f"read {code}", retryable=True)
        except TimeoutError:
            return _Outcome(None, f"timeout of {int(timeout * 1000)}ms exceeded", retryable=False)  # ECONNABORTED
        except aiohttp.InvalidURL:
            return _Outcome(None, "Invalid URL", retryable=False)
        except aiohttp.ClientError:
            return _Outcome(None, None, retryable=False)  # not an axios error: the "verify API key" wording
        if 200 <= status < 300:
            return _Outcome(status, None, retryable=False)
        return _Outcome(status, f"Request failed with status code {status}", retryable=status == 429 or status >= 500)

    def _validation_context(self) -> ssl.SSLContext:
        # Building a context reads the system CAs (about 23 ms, nearly all of a create's CPU): once per CA setting.
        ca_pem = self.state.octopus_ca_pem
        if self._validation_tls is None or self._validation_tls[0] != ca_pem:
            self._validation_tls = (ca_pem, _tls_context(ca_pem=ca_pem))
        return self._validation_tls[1]

    async def _block_local_and_private_ip_addresses(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.username or parts.password:
            raise ApiError(400, USER_INFO_NOT_ALLOWED)
        host = parts.hostname or ""
        ipv4 = parse_ipv4_host(host)
        if ipv4 is not None:
            addresses = [ipv4]
        else:
            # Refused even with ALLOW_INTERNAL_IP_CONNECTIONS: upstream checks the name before that switch.
            if host in {"localhost", "host.docker.internal"}:
                raise ApiError(400, LOCAL_IPS_NOT_ALLOWED)
            addresses = await self._resolve4(host)
        if any(is_internal_ipv4(a) for a in addresses) and not self.state.allow_internal_ips:
            raise ApiError(400, LOCAL_IPS_NOT_ALLOWED)

    @staticmethod
    async def _resolve4(host: str) -> list[str]:
        # dns.resolve4 throws a plain Error outside validate's try/catch: Infisical's generic handler makes it a 500.
        if not host or ":" in host:
            raise _internal()
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, family=socket.AF_INET, type=socket.SOCK_STREAM
            )
        except OSError:
            raise _internal() from None
        return sorted({str(info[4][0]) for info in infos})


def _login_body(access_token: str, ttl: int, max_ttl: int) -> dict[str, Any]:
    return {"accessToken": access_token, "expiresIn": ttl, "accessTokenMaxTTL": max_ttl, "tokenType": "Bearer"}


def _check_review(review: dict[str, Any], k8s: _KubernetesAuth) -> tuple[str, str]:
    """identity-kubernetes-auth-service.ts login: the checks after the TokenReview answered."""
    status = review.get("status") or {}
    if "error" in status:
        raise ApiError(401, str(status["error"]))
    if not status.get("authenticated"):
        raise ApiError(401, K8S_NOT_AUTHENTICATED)
    username = str((status.get("user") or {}).get("username", ""))
    parts = username.split(":")
    if len(parts) != 4 or parts[0] != "system" or parts[1] != "serviceaccount":
        raise ApiError(
            400,
            f'Invalid Kubernetes service account username format: "{username}". '
            "Expected format: system:serviceaccount:<namespace>:<name>",
        )
    namespace, name = parts[2], parts[3]
    if k8s.allowed_namespaces and namespace not in [n.strip() for n in k8s.allowed_namespaces]:
        raise ApiError(401, K8S_NAMESPACE_DENIED)
    if k8s.allowed_names and name not in [n.strip() for n in k8s.allowed_names]:
        raise ApiError(401, K8S_NAME_DENIED)
    if k8s.allowed_audience and k8s.allowed_audience not in (status.get("audiences") or []):
        raise ApiError(401, K8S_AUDIENCE_DENIED)
    return namespace, name


# --- Standalone ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.infisical", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (the chosen one is printed)")
    parser.add_argument("--allow-internal-ips", action="store_true", help="ALLOW_INTERNAL_IP_CONNECTIONS=true")
    parser.add_argument("--client-id", help="register a Universal Auth identity with this client id")
    parser.add_argument("--client-secret", help="... and this client secret")
    parser.add_argument("--org-id", default=DEFAULT_ORG_ID)
    parser.add_argument("--access-token-ttl", type=int, default=DEFAULT_TOKEN_TTL)
    parser.add_argument("--project-id", action="append", default=[], help="register a project (repeatable)")
    parser.add_argument(
        "--other-app-connection",
        action="append",
        default=[],
        metavar="APP:NAME",
        help="seed a connection of another app holding NAME, e.g. windmill:shared-name (repeatable)",
    )
    parser.add_argument(
        "--older-release", action="store_true", help="silently drop projectId (see state.older_release)"
    )
    parser.add_argument("--kube-apiserver", help="URL for TokenReviews (enables a Kubernetes Auth identity)")
    parser.add_argument("--kube-ca", help="CA file of the kube-apiserver")
    parser.add_argument("--kube-token-file", help="reviewer token file")
    parser.add_argument("--kube-client-cert", help="reviewer client certificate file")
    parser.add_argument("--kube-client-key", help="reviewer client key file")
    parser.add_argument("--kube-identity-id", help="id of the Kubernetes Auth identity (default: random)")
    parser.add_argument("--allowed-namespaces", help="comma-separated")
    parser.add_argument("--allowed-names", help="comma-separated")
    parser.add_argument("--allowed-audience")
    add_sync_cli_arguments(parser)
    args = parser.parse_args(argv)
    if (args.client_id is None) != (args.client_secret is None):
        parser.error("--client-id and --client-secret go together")

    kube_api = None
    if args.kube_apiserver:
        kube_api = KubeApiConfig(
            url=args.kube_apiserver,
            ca_file=args.kube_ca,
            token_file=args.kube_token_file,
            client_cert_file=args.kube_client_cert,
            client_key_file=args.kube_client_key,
        )
    server = InfisicalServer(allow_internal_ips=args.allow_internal_ips, kube_api=kube_api, port=args.port)
    state = server.state
    for project_id in args.project_id:
        state.add_project(project_id, org_id=args.org_id)
    for seeded in args.other_app_connection:
        app, _, name = seeded.partition(":")
        if app not in OTHER_APPS or not name:
            parser.error(f"--other-app-connection {seeded!r}: expected APP:NAME with APP one of {sorted(OTHER_APPS)}")
        state.add_foreign_connection(app=app, name=name, org_id=args.org_id)
    state.older_release = args.older_release
    if args.client_id is not None:
        server.client_id, server.client_secret = args.client_id, args.client_secret
        server.identity_id = state.add_universal_identity(
            client_id=args.client_id,
            client_secret=args.client_secret,
            org_id=args.org_id,
            access_token_ttl=args.access_token_ttl,
            access_token_max_ttl=args.access_token_ttl,
        )
    kube_identity = None
    if kube_api is not None:
        kube_identity = state.add_kubernetes_identity(
            identity_id=args.kube_identity_id,
            allowed_namespaces=args.allowed_namespaces.split(",") if args.allowed_namespaces else None,
            allowed_names=args.allowed_names.split(",") if args.allowed_names else None,
            allowed_audience=args.allowed_audience,
            org_id=args.org_id,
            access_token_ttl=args.access_token_ttl,
            access_token_max_ttl=args.access_token_ttl,
        )
    apply_sync_cli_arguments(args, state)  # after --project-id: seeded secrets need their project
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(f"infisical test server listening on {server.url}", flush=True)
        if server.identity_id is not None:
            print(f"universal-auth identity id: {server.identity_id}", flush=True)
        if kube_identity is not None:
            print(f"kubernetes-auth identity id: {kube_identity}", flush=True)
        # A timeout keeps the main thread returning to Python so the signal handlers run promptly.
        while not stop.wait(timeout=1):
            pass
    return 0


if __name__ == "__main__":
    # Under ``python -m`` this file is ``__main__``, a second copy of the module: the secrets and syncs modules raise
    # ``tests.servers.infisical.ApiError``, which only the canonical module's dispatcher catches. Run that one.
    from tests.servers.infisical import main as canonical_main

    sys.exit(canonical_main())
