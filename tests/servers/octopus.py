"""A test double for Octopus Deploy Server, following docs/remote-apis.md, section Octopus Deploy ("the page").

Octopus Server cannot run here, so this double is the oracle for octoconn's Octopus client: it serves the routes
octoconn uses on a real 127.0.0.1 socket, with the same status codes, bodies and headers as the page, including the
awkward parts (anonymous root document, three key transports, exact error texts, rate limiting, 503 while starting).
State lives in plain Python objects that tests change directly (``server.state.issue_key()``, ``.faults.drop()``).

Each behaviour on the page and the test in tests/servers/test_octopus_server.py that covers it:

+----------------------------------------------------+-----------------------------------------------------------------+
| Reference page behaviour                           | Test(s) in test_octopus_server.py                               |
+====================================================+=================================================================+
| [Sending the key]                                  |                                                                 |
| Key in X-Octopus-ApiKey, X-NuGet-ApiKey, ?apikey=  | test_key_transports                                             |
| Authorization: Bearer is not an API key transport  | test_bearer_authorization_is_not_an_api_key                     |
| An empty header counts as no key                   | test_empty_header_counts_as_no_key,                             |
|                                                    | test_empty_header_falls_back_to_query                           |
| Key shape ^API-[A-Z0-9]+$, 26-32 chars, varies     | test_issued_keys_have_the_octopus_shape_and_varying_length      |
| Expiry: default 180 days; old keys Expires null    | test_default_expiry_is_180_days, test_key_without_expiry        |
| [Endpoints]                                        |                                                                 |
| GET /api and /api/: anonymous root document        | test_root_document_both_forms,                                  |
|                                                    | test_root_is_anonymous_even_with_a_bad_key                      |
| Root fields; ApiVersion 3.0.0; InstallationId      | test_root_document_both_forms, test_version_is_configurable,    |
|                                                    | test_installation_id_is_a_stable_uuid                           |
| Root Links Self, CurrentUser, Users, Spaces, ...   | test_root_document_both_forms, test_prefix_links_and_routes     |
| GET /api/users/me: user fields and Links           | test_users_me_normal_user, test_added_user                      |
| EmailAddress absent for service accounts           | test_users_me_service_account                                   |
| apikeys: paged, newest first, Hint = first 8       | test_api_keys_paged_newest_first_with_hint                      |
| apikeys: Hint collisions; keys without a Hint      | test_api_keys_paged_newest_first_with_hint,                     |
|                                                    | test_api_key_hint_collision_and_missing_hint                    |
| apikeys: only the key's own user (double's choice) | test_api_keys_of_another_user_is_forbidden                      |
| /api/spaces paged; /api/spaces/all plain array     | test_spaces_paging, test_spaces_all_is_a_plain_array            |
| /api/{spaceId}/projects?take=1 permission probe    | test_projects_probe_allowed,                                    |
|                                                    | test_projects_probe_forbidden_without_project_view,             |
|                                                    | test_projects_of_unknown_space_is_404                           |
| [Errors]                                           |                                                                 |
| 4xx/5xx: JSON ErrorMessage, exact Content-Type     | test_missing_key_body, test_unknown_route_is_json_404,          |
|                                                    | test_wrong_method_is_json_405, test_bad_paging_is_json_400      |
| Missing key -> 401 'You must be logged in ...'     | test_missing_key_body                                           |
| Wrong/revoked/expired key -> 401 'The API key'     | test_wrong_key_body, test_revoked_key_is_invalid,               |
|                                                    | test_expired_key_is_invalid,                                    |
|                                                    | test_expiry_follows_the_injected_clock                          |
| Missing permission -> 403 ProjectView + HelpText   | test_projects_probe_forbidden_without_project_view              |
| 429 + Retry-After + Octopus-RateLimit(-Policy)     | test_rate_limit_fault                                           |
| 503 while the server is starting                   | test_starting_fault                                             |
| 5xx, slow, dropped (design.md contract tier)       | test_error_fault, test_latency_fault,                           |
|                                                    | test_latency_makes_client_timeouts_fire, test_drop_fault        |
| [URLs and TLS]                                     |                                                                 |
| Path prefix; links carry it; outside it -> 404     | test_prefix_links_and_routes                                    |
| HTTPS with a self-signed CA; verify by default     | test_tls_with_ca, test_tls_without_ca_fails_verification,       |
|                                                    | test_tls_with_another_servers_ca_fails                          |
| Redirects (http->https, another host)              | test_redirect_mode_not_followed,                                |
|                                                    | test_redirect_mode_followed_to_another_server                   |
| [The double itself]                                |                                                                 |
| Faults: order, times, until cleared, per path      | test_faults_are_consumed_in_order, test_fault_until_cleared,    |
|                                                    | test_fault_limited_to_a_path, test_times_must_be_positive       |
| Request log (also for faulted requests)            | test_requests_are_recorded,                                     |
|                                                    | test_concurrent_requests_are_all_recorded,                      |
|                                                    | test_rate_limit_fault                                           |
| Fixtures and standalone CLI                        | test_fixture_octopus_is_plain_http_without_prefix,              |
|                                                    | test_cli_prints_url_and_key_and_answers,                        |
|                                                    | test_cli_seed_key_prefix_and_tls,                               |
|                                                    | test_cli_seed_key_is_repeatable                                 |
+----------------------------------------------------+-----------------------------------------------------------------+

Where things live, in request order: ``_front_door`` (record, latency, faults, redirect mode, JSON 404/405),
``_authenticate`` + ``_presented_key`` (key transports and the two 401s), one handler per route
(``_root``, ``_me``, ``_api_keys``, ``_spaces``, ``_spaces_all``, ``_projects``), ``_Paging`` (paged collections),
``_self_signed_tls`` (HTTPS). Texts from the page are module constants (``MISSING_KEY_MESSAGE``, ...).

Choices where the page is silent or says (unverified) — each is a single constant or argument here:
- Expired keys answer exactly like invalid ones (page: unverified). Revoked keys are deleted, so they also vanish
  from the apikeys list; expired keys stay listed.
- The invalid-key text continues after "try again." with the sentence the Octopus CLI's own tests expect
  ("For instructions on finding your API key, please visit: ..."); the link itself is unverified.
- 404/405/400/429/503/5xx message texts, ``Octopus-RateLimit: r=0;t=<retry_after>`` on the 429, and paging maths for
  empty lists (one empty page) are this double's guesses.
- ``ServiceAccountType`` is "Standard" for service accounts and null for people (enum: Standard, Agent).
- A key with the ProjectView permission sees projects in every space; the double has no teams or roles. An unknown
  space is a 404 before any permission check. Listing another user's keys is a 403 naming UserEdit, whatever the
  key's permissions (octoconn only ever lists its own).
- With several transports at once, X-Octopus-ApiKey wins over X-NuGet-ApiKey over ?apikey=.
- Faults answer before routing and auth (like a proxy or a limiter in front of Octopus) and queue first-in first-out.
- Only the routes above exist; links such as a user's ``Self`` point to routes this double does not serve (404).

Run it by hand: ``uv run python -m tests.servers.octopus --port 8065 [--prefix /octopus] [--tls]``; ``--seed-key``
(repeatable) registers keys you choose instead of printing a generated one; ``--seed-project NAME`` and
``--seed-environment NAME`` (repeatable) add them to Spaces-1 and print ``seeded: <id> <name>``. Projects, scope
values and variable sets: tests/servers/octopus_projects.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import secrets
import signal
import ssl
import string
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.servers.octopus_projects import ProjectRoutes, ProjectStore
from tests.servers.runner import ServerThread, ThreadedServer

# --- Texts and numbers from the page -------------------------------------------------------------------------------

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
MISSING_KEY_MESSAGE = "You must be logged in to perform this action. Please provide a valid API key or log in again."
INVALID_KEY_MESSAGE = (
    "The API key you provided was not valid. Please double-check your API key and try again. "
    "For instructions on finding your API key, please visit: https://oc.to/ApiKey"
)
FORBIDDEN_MESSAGE = (
    "You do not have permission to perform this action. Please contact your Octopus administrator. "
    "Missing permission: {permission}"
)
FORBIDDEN_HELP_TEXT = (
    "The API key authenticates a user who is not a member of a team granting the {permission} permission. "
    "Ask your Octopus administrator to grant it."
)
NOT_FOUND_MESSAGE = "The resource you requested was not found."
RATE_LIMIT_POLICY = "l=200;rpm=600"
API_VERSION = "3.0.0"
DEFAULT_VERSION = "2025.4.1234"
DEFAULT_KEY_LIFETIME = timedelta(days=180)
KEY_HEADERS = ("X-Octopus-ApiKey", "X-NuGet-ApiKey")  # checked in this order, then ?apikey=
KEY_ALPHABET = string.ascii_uppercase + string.digits
KEY_LENGTHS = range(26, 33)  # characters after "API-"; the page saw 26-32
HINT_LENGTH = 8
DEFAULT_TAKE = 30
TAKE_ALL = 2147483647  # Octopus's "Page.All" links use int.MaxValue

DEFAULT_USER_ID = "Users-1"
SERVICE_ACCOUNT_ID = "Users-2"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    # Octopus writes offsets as "+00:00" with milliseconds, e.g. "2024-07-01T01:34:25.016+00:00".
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


# --- State ---------------------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    fault: str | None = None  # the fault that answered it, if any ("rate_limit", "starting", "error", "drop")
    delay: float = 0.0  # latency added before answering, in seconds

    def __repr__(self) -> str:
        # Keys must not leak into pytest failure output or logs.
        headers = {k: ("***" if k in {h.lower() for h in KEY_HEADERS} else v) for k, v in self.headers.items()}
        query = {k: ("***" if k.lower() == "apikey" else v) for k, v in self.query.items()}
        return (
            f"RecordedRequest(method={self.method!r}, path={self.path!r}, query={query!r}, headers={headers!r}, "
            f"fault={self.fault!r}, delay={self.delay!r})"
        )


@dataclass
class User:
    id: str
    username: str
    display_name: str
    is_service: bool
    email: str | None
    created: datetime


@dataclass
class ApiKeyRecord:
    id: str
    value: str
    user_id: str
    purpose: str
    created: datetime
    expires: datetime | None
    permissions: frozenset[str] | None  # None = every permission
    hint: str | None
    sequence: int  # creation order, so "newest first" is well defined even when a fake clock stands still


@dataclass
class Space:
    id: str
    name: str
    slug: str
    is_default: bool
    projects: list[dict[str, Any]] = field(default_factory=list)


class _Default(Enum):
    """Marks "argument not given" where None is a meaningful value (``expires=None`` = never expires)."""

    TOKEN = 0


_DEFAULT = _Default.TOKEN


@dataclass
class _Fault:
    kind: str  # "rate_limit" | "starting" | "error" | "drop"
    remaining: int | None  # None = until cleared
    path_suffix: str | None
    status: int = 0
    retry_after: int = 0


class Faults:
    """Per-test switches. Faults queue up in the order they are set; each request consumes the first one that matches.

    ``times`` counts how many requests a fault answers (None = until ``clear()``). ``path_suffix`` limits a fault to
    requests whose path ends with it, so a test can fail ``/api/users/me`` while ``/api`` still answers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Fault] = []
        self._latency = 0.0
        self._latency_suffix: str | None = None

    def rate_limit(self, *, retry_after: int = 2, times: int | None = 1, path_suffix: str | None = None) -> None:
        self._add(_Fault("rate_limit", times, path_suffix, status=429, retry_after=retry_after))

    def starting(self, *, times: int | None = 1, path_suffix: str | None = None) -> None:
        self._add(_Fault("starting", times, path_suffix, status=503))

    def error(self, status: int = 500, *, times: int | None = 1, path_suffix: str | None = None) -> None:
        self._add(_Fault("error", times, path_suffix, status=status))

    def drop(self, *, times: int | None = 1, path_suffix: str | None = None) -> None:
        self._add(_Fault("drop", times, path_suffix))

    def latency(self, seconds: float, *, path_suffix: str | None = None) -> None:
        with self._lock:
            self._latency = seconds
            self._latency_suffix = path_suffix

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._latency = 0.0
            self._latency_suffix = None

    def _add(self, fault: _Fault) -> None:
        if fault.remaining is not None and fault.remaining < 1:
            raise ValueError("times must be at least 1, or None for 'until cleared'")
        with self._lock:
            self._queue.append(fault)

    def _take(self, path: str) -> tuple[_Fault | None, float]:
        """Consume the fault for one request to ``path`` and return it with the latency to add."""
        with self._lock:
            delay = self._latency if self._latency_suffix is None or path.endswith(self._latency_suffix) else 0.0
            for fault in self._queue:
                if fault.path_suffix is not None and not path.endswith(fault.path_suffix):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._queue.remove(fault)
                return fault, delay
            return None, delay


class OctopusState:
    """Users, keys, spaces and the request log. Thread-safe: tests change it while the server thread reads it."""

    def __init__(self, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._lock = threading.Lock()
        self.clock = clock
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self._users: dict[str, User] = {}
        self._keys: dict[str, ApiKeyRecord] = {}  # by key value
        self._spaces: dict[str, Space] = {}
        self._next_key_number = 1
        self._next_project_number = 1
        self.add_user(DEFAULT_USER_ID, "admin", display_name="Octopus Admin", email="admin@example.com")
        self.add_user(SERVICE_ACCOUNT_ID, "octoconn", display_name="octoconn service account", is_service=True)
        default_space = self.add_space("Default", is_default=True)
        self.add_project(default_space, "Hello World")
        self.projects = ProjectStore(self)  # scope values, variable sets, per-project permissions

    # Users and keys

    def add_user(
        self,
        user_id: str,
        username: str,
        *,
        display_name: str | None = None,
        is_service: bool = False,
        email: str | None = None,
    ) -> None:
        with self._lock:
            self._users[user_id] = User(
                id=user_id,
                username=username,
                display_name=display_name if display_name is not None else username,
                is_service=is_service,
                email=email,
                created=self.clock(),
            )

    def issue_key(
        self,
        *,
        user_id: str = DEFAULT_USER_ID,
        expires: datetime | _Default | None = _DEFAULT,
        permissions: set[str] | None = None,
        purpose: str = "octoconn test",
        value: str | None = None,
        hint: bool = True,
    ) -> str:
        """Create a key for ``user_id`` and return its value (Octopus shows it once, at creation).

        ``value`` registers a chosen key (e.g. to make two keys share a Hint); ``hint=False`` mimics old keys that
        were stored without one.
        """
        with self._lock:
            if user_id not in self._users:
                raise KeyError(f"unknown user {user_id}")
            now = self.clock()
            if value is None:
                value = _new_key_value()
                while value in self._keys:
                    value = _new_key_value()
            elif value in self._keys:
                raise ValueError("that key value is already registered")
            record = ApiKeyRecord(
                id=f"APIKeys-{self._next_key_number}",
                value=value,
                user_id=user_id,
                purpose=purpose,
                created=now,
                expires=now + DEFAULT_KEY_LIFETIME if expires is _DEFAULT else expires,
                permissions=frozenset(permissions) if permissions is not None else None,
                hint=value[:HINT_LENGTH] if hint else None,
                sequence=self._next_key_number,
            )
            self._next_key_number += 1
            self._keys[value] = record
            return value

    def revoke_key(self, key: str) -> None:
        # Octopus deletes a revoked key: it stops working and leaves the user's key list.
        with self._lock:
            del self._keys[key]

    def expire_key(self, key: str) -> None:
        with self._lock:
            self._keys[key].expires = self.clock() - timedelta(minutes=1)

    def grant(self, key: str, permissions: set[str] | None) -> None:
        """Change what the key's user may do (None = everything), as an administrator editing its teams would."""
        with self._lock:
            self._keys[key].permissions = frozenset(permissions) if permissions is not None else None

    def key_record(self, key: str) -> ApiKeyRecord | None:
        with self._lock:
            return self._keys.get(key)

    def _valid_key(self, key: str) -> ApiKeyRecord | None:
        with self._lock:
            record = self._keys.get(key)
            if record is None:
                return None
            if record.expires is not None and record.expires <= self.clock():
                return None
            return record

    def _user(self, user_id: str) -> User:
        with self._lock:
            return self._users[user_id]

    def _keys_of(self, user_id: str) -> list[ApiKeyRecord]:
        with self._lock:
            keys = [k for k in self._keys.values() if k.user_id == user_id]
        return sorted(keys, key=lambda k: (k.created, k.sequence), reverse=True)

    # Spaces and projects

    def add_space(self, name: str, *, is_default: bool = False) -> str:
        with self._lock:
            space_id = f"Spaces-{len(self._spaces) + 1}"
            slug = name.lower().replace(" ", "-")
            self._spaces[space_id] = Space(id=space_id, name=name, slug=slug, is_default=is_default)
            return space_id

    def add_project(self, space_id: str, name: str) -> str:
        with self._lock:
            project_id = f"Projects-{self._next_project_number}"
            self._next_project_number += 1
            slug = name.lower().replace(" ", "-")
            self._spaces[space_id].projects.append({"Id": project_id, "Name": name, "Slug": slug})
            return project_id

    def _space_list(self) -> list[Space]:
        with self._lock:
            return list(self._spaces.values())

    def _space(self, space_id: str) -> Space | None:
        with self._lock:
            space = self._spaces.get(space_id)
            # A copy, so a test adding projects cannot change the list while a handler reads it.
            return replace(space, projects=list(space.projects)) if space is not None else None

    # Request log

    def _record(self, entry: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def requests_to(self, path_suffix: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith(path_suffix)]


def _new_key_value() -> str:
    length = KEY_LENGTHS[secrets.randbelow(len(KEY_LENGTHS))]
    return "API-" + "".join(secrets.choice(KEY_ALPHABET) for _ in range(length))


# --- HTTP ----------------------------------------------------------------------------------------------------------


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={"Content-Type": JSON_CONTENT_TYPE, **(headers or {})},
    )


def _error(status: int, message: str, **extra: object) -> web.Response:
    return _json(status, {"ErrorMessage": message, **extra})


def _forbidden(permission: str) -> web.Response:
    return _error(
        403,
        FORBIDDEN_MESSAGE.format(permission=permission),
        HelpText=FORBIDDEN_HELP_TEXT.format(permission=permission),
    )


def _presented_key(request: web.Request) -> str | None:
    for header in KEY_HEADERS:
        if request.headers.get(header):  # an empty header counts as no key
            return request.headers[header]
    return request.query.get("apikey") or None


class _Paging:
    """Octopus's paged collection: ``?skip&take`` in, ItemsPerPage/TotalResults/... and Page.* links out."""

    def __init__(self, request: web.Request) -> None:
        self.problem: str | None = None
        self.skip = self._int(request, "skip", 0)
        self.take = self._int(request, "take", DEFAULT_TAKE)

    def _int(self, request: web.Request, name: str, default: int) -> int:
        raw = request.query.get(name)
        if raw is None or raw == "":
            return default
        if not (raw.isascii() and raw.isdigit()):  # str.isdigit alone accepts '²', which int() rejects
            self.problem = f"The value '{raw}' is not valid for {name}."
            return default
        return int(raw)

    def page(self, item_type: str, items: list[dict[str, Any]], path: str, template: str) -> dict[str, Any]:
        total = len(items)
        pages = max(1, math.ceil(total / self.take)) if self.take else 1
        links = {
            "Self": f"{path}?skip={self.skip}&take={self.take}",
            "Template": template,
            "Page.All": f"{path}?skip=0&take={TAKE_ALL}",
            "Page.Current": f"{path}?skip={self.skip}&take={self.take}",
            "Page.Last": f"{path}?skip={(pages - 1) * self.take}&take={self.take}",
        }
        if self.skip + self.take < total:
            links["Page.Next"] = f"{path}?skip={self.skip + self.take}&take={self.take}"
        return {
            "ItemType": item_type,
            "TotalResults": total,
            "ItemsPerPage": self.take,
            "NumberOfPages": pages,
            "LastPageNumber": pages - 1,
            "Items": items[self.skip : self.skip + self.take],
            "Links": links,
        }


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OctopusServer(ThreadedServer):
    """The double on a real socket. ``with OctopusServer() as octopus: httpx.get(f"{octopus.url}/api")``."""

    def __init__(
        self,
        *,
        prefix: str = "",
        tls: bool = False,
        redirect_to: str | None = None,
        redirect_status: int = 301,
        version: str = DEFAULT_VERSION,
        api_version: str = API_VERSION,
        state: OctopusState | None = None,
        port: int = 0,
    ) -> None:
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.tls = tls
        self.redirect_to = redirect_to.rstrip("/") if redirect_to is not None else None
        self.redirect_status = redirect_status
        self.version = version
        self.api_version = api_version
        self.installation_id = str(uuid.uuid4())
        self.state = state if state is not None else OctopusState()
        self.ca_pem: str | None = None
        self._ssl_context: ssl.SSLContext | None = None
        if tls:
            self.ca_pem, self._ssl_context = _self_signed_tls()
        self._thread = ServerThread(self._make_app, port=port, ssl_context=self._ssl_context)
        self._started = False
        self._stopping = asyncio.Event()  # set on shutdown; cuts injected latency short

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.prefix}"

    # App

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._front_door])
        app.on_shutdown.append(self._on_shutdown)
        api = self.prefix + "/api"
        app.router.add_get(api, self._root)
        app.router.add_get(api + "/", self._root)
        app.router.add_get(api + "/users/me", self._me)
        app.router.add_get(api + "/users/{user_id}/apikeys", self._api_keys)
        app.router.add_get(api + "/spaces", self._spaces)
        app.router.add_get(api + "/spaces/all", self._spaces_all)
        app.router.add_get(api + "/{space_id}/projects", self._projects)
        ProjectRoutes(self).register(app, api)  # projects, variable sets, permissions: octopus_projects.py
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        self._stopping.set()

    @web.middleware
    async def _front_door(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Record the request, then apply latency, faults and redirect mode before routing or auth."""
        fault, delay = self.state.faults._take(request.path)
        self.state._record(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                fault=fault.kind if fault is not None else None,
                delay=delay,
            )
        )
        if delay:
            # aiohttp waits for running handlers on shutdown: wake early so a long latency never stalls teardown.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        if fault is not None:
            return self._fault_response(request, fault)
        if self.redirect_to is not None:
            return web.Response(status=self.redirect_status, headers={"Location": self.redirect_to + request.path_qs})
        try:
            return await handler(request)
        except web.HTTPException as exc:  # aiohttp's own 404/405 for unknown routes and methods, as JSON
            message = NOT_FOUND_MESSAGE if exc.status == 404 else exc.reason
            return _error(exc.status, message)

    def _fault_response(self, request: web.Request, fault: _Fault) -> web.StreamResponse:
        if fault.kind == "rate_limit":
            return _json(
                429,
                {"ErrorMessage": f"Rate limit exceeded. Please retry after {fault.retry_after} seconds."},
                headers={
                    "Retry-After": str(fault.retry_after),
                    "Octopus-RateLimit-Policy": RATE_LIMIT_POLICY,
                    "Octopus-RateLimit": f"r=0;t={fault.retry_after}",
                },
            )
        if fault.kind == "starting":
            return _error(503, "Octopus Server is starting. Please try again in a few moments.")
        if fault.kind == "error":
            return _error(fault.status, f"The test double was told to answer this request with HTTP {fault.status}.")
        # "drop": close the connection without a status line, like a crashed node or a reset from a proxy.
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)  # never reaches the client: the transport is gone

    # Auth

    def _authenticate(self, request: web.Request) -> ApiKeyRecord | web.Response:
        key = _presented_key(request)
        if key is None:
            return _error(401, MISSING_KEY_MESSAGE)
        record = self.state._valid_key(key)
        if record is None:  # unknown, revoked (deleted) or expired
            return _error(401, INVALID_KEY_MESSAGE)
        return record

    def _link(self, path: str) -> str:
        return self.prefix + path

    # Routes

    async def _root(self, request: web.Request) -> web.StreamResponse:
        # Anonymous on purpose: a 200 here says "this is Octopus", never "the key is good".
        return _json(
            200,
            {
                "Application": "Octopus Deploy",
                "Version": self.version,
                "ApiVersion": self.api_version,
                "InstallationId": self.installation_id,
                "IsEarlyAccessProgram": False,
                "HasLongTermSupport": False,
                "Links": {
                    "Self": self._link("/api"),
                    "CurrentUser": self._link("/api/users/me"),
                    "Users": self._link("/api/users{/id}{?skip,take,ids,filter}"),
                    "Spaces": self._link("/api/spaces{/id}{?skip,ids,take,partialName}"),
                    "SpaceHome": self._link("/api/{spaceId}"),
                    "Projects": self._link(
                        "/api/Spaces-1/projects{/id}{?name,skip,ids,clone,take,partialName,clonedFromProjectId}"
                    ),
                    "Web": self._link("/app"),
                },
            },
        )

    async def _me(self, request: web.Request) -> web.StreamResponse:
        auth = self._authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        return _json(200, self._user_document(self.state._user(auth.user_id)))

    def _user_document(self, user: User) -> dict[str, Any]:
        document: dict[str, Any] = {"Id": user.id, "Username": user.username, "DisplayName": user.display_name}
        if not user.is_service and user.email is not None:
            document["EmailAddress"] = user.email
        identities: list[dict[str, Any]] = []
        if not user.is_service:
            claims = {"dn": {"Value": user.display_name, "IsIdentifyingClaim": False}}
            if user.email is not None:
                claims["email"] = {"Value": user.email, "IsIdentifyingClaim": True}
            identities.append({"IdentityProviderName": "Usernames and passwords", "Claims": claims})
        user_link = self._link(f"/api/users/{user.id}")
        document.update(
            {
                "IsActive": True,
                "IsService": user.is_service,
                "CanPasswordBeEdited": not user.is_service,
                "IsRequestor": True,
                "Identities": identities,
                "Created": _iso(user.created),
                "ServiceAccountType": "Standard" if user.is_service else None,
                "Links": {
                    "Self": user_link,
                    "Permissions": user_link + "/permissions",
                    "ApiKeys": user_link + "/apikeys{/id}{?skip,take}",
                },
            }
        )
        return document

    async def _api_keys(self, request: web.Request) -> web.StreamResponse:
        auth = self._authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        user_id = request.match_info["user_id"]
        if user_id != auth.user_id:
            return _forbidden("UserEdit")
        paging = _Paging(request)
        if paging.problem is not None:
            return _error(400, "There was a problem with your request.", Errors=[paging.problem])
        path = self._link(f"/api/users/{user_id}/apikeys")
        items = [
            {
                "Id": k.id,
                "Purpose": k.purpose,
                "UserId": k.user_id,
                "Created": _iso(k.created),
                "Expires": _iso(k.expires) if k.expires is not None else None,
                "ApiKey": {"HasValue": True, "Hint": k.hint, "NewValue": None},
                "Links": {"Self": f"{path}/{k.id}"},
            }
            for k in self.state._keys_of(user_id)
        ]
        return _json(200, paging.page("ApiKey", items, path, path + "{?skip,take}"))

    def _space_document(self, space: Space) -> dict[str, Any]:
        return {
            "Id": space.id,
            "Name": space.name,
            "Slug": space.slug,
            "Description": None,
            "IsDefault": space.is_default,
            "IsPrivate": False,
            "TaskQueueStopped": False,
            "SpaceManagersTeams": ["teams-administrators", f"teams-spacemanagers-{space.id}"],
            "SpaceManagersTeamMembers": [],
            "Links": {
                "Self": self._link(f"/api/spaces/{space.id}"),
                "SpaceHome": self._link(f"/api/{space.id}"),
                "Web": self._link(f"/app#/spaces/{space.id}"),
            },
        }

    async def _spaces(self, request: web.Request) -> web.StreamResponse:
        auth = self._authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        paging = _Paging(request)
        if paging.problem is not None:
            return _error(400, "There was a problem with your request.", Errors=[paging.problem])
        items = [self._space_document(s) for s in self.state._space_list()]
        path = self._link("/api/spaces")
        return _json(200, paging.page("Space", items, path, path + "{/id}{?skip,ids,take,partialName}"))

    async def _spaces_all(self, request: web.Request) -> web.StreamResponse:
        auth = self._authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        return _json(200, [self._space_document(s) for s in self.state._space_list()])

    async def _projects(self, request: web.Request) -> web.StreamResponse:
        auth = self._authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        space = self.state._space(request.match_info["space_id"])
        if space is None:
            return _error(404, NOT_FOUND_MESSAGE)
        if auth.permissions is not None and "ProjectView" not in auth.permissions:
            return _forbidden("ProjectView")
        paging = _Paging(request)
        if paging.problem is not None:
            return _error(400, "There was a problem with your request.", Errors=[paging.problem])
        path = self._link(f"/api/{space.id}/projects")
        items = [
            {**p, "SpaceId": space.id, "IsDisabled": False, "Links": {"Self": f"{path}/{p['Id']}"}}
            for p in self.state.projects.visible(auth, space.projects, request.query)  # filters; per-project rights
        ]
        return _json(200, paging.page("Project", items, path, path + "{/id}{?name,skip,ids,take,partialName}"))


# --- TLS -----------------------------------------------------------------------------------------------------------


def _self_signed_tls() -> tuple[str, ssl.SSLContext]:
    """Make a throwaway CA and a server certificate for 127.0.0.1/localhost; return (CA PEM, server context).

    A separate CA (rather than one self-signed leaf) keeps Python's strict X.509 checks happy, the same way a
    company CA signs a self-hosted Octopus certificate.
    """
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "octoconn test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # load_cert_chain only reads files, so the key touches disk just long enough to be loaded.
    with tempfile.TemporaryDirectory() as directory:
        cert_file = Path(directory, "server.pem")
        key_file = Path(directory, "server.key")
        cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context.load_cert_chain(cert_file, key_file)
    return ca_pem, context


# --- Standalone --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.octopus", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (the chosen one is printed)")
    parser.add_argument("--prefix", default="", help="virtual directory, e.g. /octopus")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a throwaway CA (its file is printed)")
    parser.add_argument(
        "--seed-key",
        action="append",
        default=[],
        help="register this API key for Users-1 instead of generating one (repeatable: several valid keys)",
    )
    parser.add_argument("--redirect-to", help="answer every request with a redirect to this base URL")
    parser.add_argument("--redirect-status", type=int, default=301, choices=[301, 302, 307, 308])
    parser.add_argument("--seed-project", action="append", default=[], help="add a project to Spaces-1 (repeatable)")
    parser.add_argument("--seed-environment", action="append", default=[], help="add an environment to Spaces-1")
    args = parser.parse_args(argv)

    server = OctopusServer(
        prefix=args.prefix,
        tls=args.tls,
        redirect_to=args.redirect_to,
        redirect_status=args.redirect_status,
        port=args.port,
    )
    # Each seeded key is a separate valid key of Users-1, so a caller can rotate from the first to the second.
    keys = [server.state.issue_key(value=seed, purpose="standalone") for seed in args.seed_key]
    if not keys:
        keys.append(server.state.issue_key(purpose="standalone"))
    seeded = [(name, server.state.projects.add_project("Spaces-1", name)) for name in args.seed_project]
    seeded += [(name, server.state.projects.add_environment("Spaces-1", name)) for name in args.seed_environment]
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server, tempfile.TemporaryDirectory() as directory:
        print(f"octopus test server listening on {server.url}", flush=True)
        if not args.seed_key:
            # The one place a key is printed: a fake key for trying the double by hand.
            print(f"api-key: {keys[0]}", flush=True)
        for name, seeded_id in seeded:
            print(f"seeded: {seeded_id} {name}", flush=True)
        if server.ca_pem is not None:
            ca_file = Path(directory, "octopus-ca.pem")
            ca_file.write_text(server.ca_pem)
            print(f"ca-file: {ca_file}", flush=True)
        # A timeout keeps the main thread returning to Python so the signal handlers run promptly.
        while not stop.wait(timeout=1):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
