"""Talks to Infisical: machine-identity login, the Octopus Deploy app-connection calls and the secret-sync calls.

One client serves every resource the operator manages, so it owns the things that must be shared: the access
token (one login for everybody, renewed before it expires), the write pacer (Infisical Cloud counts writes per
client IP), and the mapping of Infisical's error bodies to the typed errors the reconcile logic decides on. Secrets
(client secret, ServiceAccount JWT, access token, Octopus API key) only ever travel in request bodies or the
``Authorization`` header; they never reach a message, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import quote

import httpx

from octoconn import __version__, errors, metrics
from octoconn.httputil import describe, json_object, lean_pool, scrub
from octoconn.pacing import WritePacer, parse_retry_after
from octoconn.remote import AppConnection, SecretSync

log = logging.getLogger(__name__)

_CONNECTIONS = "/api/v1/app-connections/octopus-deploy"
_SYNCS = "/api/v1/secret-syncs/octopus-deploy"
_SECRETS = "/api/v3/secrets/raw"
_DUPLICATE_NAME = re.compile(r'An App Connection with the name "(?P<name>.*)" already exists')
# A lookup by name under our app's path finds another app's connection: names are unique across all apps.
_OTHER_APP = re.compile(r'App Connection with name (?P<name>.*) is not for App "(?P<app>[^"]*)"')
# Infisical (Fastify) itself answering that it has no route for exactly our path: the app connection is missing.
# A wrong base path shows up in the message as a different path and is reported as a URL problem instead.
_NO_OCTOPUS_ROUTES = re.compile(rf"^Route [A-Z]+:{re.escape(_CONNECTIONS)}(/\S*)? not found")
_DUPLICATE_SYNC_NAME = re.compile(r'A Secret Sync with the name "(?P<name>.*)" already exists')
_SYNC_BUSY = re.compile(r"already in progress", re.IGNORECASE)
_TRY_AGAIN_IN = re.compile(r"try again in (?P<seconds>\d+(?:\.\d+)?) seconds?", re.IGNORECASE)
_DEFAULT_RATE_LIMIT_WAIT = 60.0  # Infisical's limits are per minute: without a hint, wait out one window
# Infisical's own Kubernetes operator re-logs in after 70% of expiresIn; the margin covers clock skew and slow calls.
_TOKEN_REFRESH_FRACTION = 0.7
# Infisical locks an identity out for 5 minutes after 3 failed logins, and a lockout also refuses the RIGHT secret.
# Hundreds of resources retrying on their own would trip it at once, so a refused login is remembered this long.
_LOGIN_FAILURE_HOLD = 60.0


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET
"""Marks an ``update`` argument that was not given (``None`` is a value: it clears the description)."""


@dataclass(frozen=True)
class UniversalAuth:
    """Machine identity credentials for Universal Auth. The secret is left out of repr."""

    client_id: str
    client_secret: str = field(repr=False)


@dataclass(frozen=True)
class KubernetesAuth:
    """Kubernetes Auth: ``token_source`` mints a short-lived ServiceAccount JWT for every login."""

    identity_id: str
    token_source: Callable[[], Awaitable[str]] = field(repr=False)


@dataclass
class _Token:
    value: str = field(repr=False)
    refresh_at: float  # monotonic time after which a new login is due


class InfisicalClient:
    """The operator's single, shared Infisical client.

    Retries: a call refused with 401 is retried once after a fresh login (the token expired or was revoked
    server-side); nothing else is retried here, because the reconcile loop owns backoff and a blind retry of a
    create could register the connection twice.
    """

    def __init__(
        self,
        *,
        base_url: str,
        auth: UniversalAuth | KubernetesAuth,
        pacer: WritePacer | None = None,
        read_pacer: WritePacer | None = None,
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        identity: Literal["operator", "resource"] = "operator",
    ) -> None:
        """``base_url``: the Infisical host (``https://app.infisical.com``); a trailing ``/api`` is tolerated.

        ``identity`` labels this client's logins in the metrics: the operator's own, or a per-resource identity.
        """
        self._identity = identity
        base = base_url.strip().rstrip("/")
        base = base.removesuffix("/api")
        self.base_url = base
        self._auth = auth
        self._pacer = pacer
        self._read_pacer = read_pacer  # Infisical Cloud counts reads separately (about 60 a minute per client)
        self._timeout = timeout
        self._clock = clock
        self._token: _Token | None = None
        self._login_failure: tuple[float, errors.InfisicalError] | None = None
        self._login_lock = asyncio.Lock()
        # No client-wide Content-Type: Infisical answers 500 to a body-less request that declares JSON; httpx adds
        # the header itself to requests that do carry a JSON body.
        self._http = lean_pool(
            httpx.AsyncClient(
                base_url=base,
                timeout=timeout,
                transport=transport,
                follow_redirects=False,
                headers={"Accept": "application/json", "User-Agent": f"octoconn/{__version__}"},
            )
        )

    def __repr__(self) -> str:
        return f"InfisicalClient(base_url={self.base_url!r}, auth={self._auth!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- app connections --------------------------------------------------------------------------------------------
    async def get(self, connection_id: str) -> AppConnection | None:
        """The connection, or None when Infisical has no connection with this id."""
        response = await self._call(
            "GET", f"{_CONNECTIONS}/{_segment(connection_id)}", what="read the app connection", missing_ok=True
        )
        if response.status_code == 404:
            return None
        return self._connection(response, what="read the app connection")

    async def get_by_name(self, name: str, *, project_id: str | None) -> AppConnection | None:
        """The connection named ``name`` (org-level when ``project_id`` is None), or None when there is none."""
        params = {"projectId": project_id} if project_id is not None else None
        what = f'look up the app connection "{name}"'
        response = await self._call(
            "GET", f"{_CONNECTIONS}/connection-name/{_segment(name)}", params=params, what=what, missing_ok=True
        )
        if response.status_code == 404:
            return None
        return self._connection(response, what=what)

    async def create(
        self, *, name: str, description: str | None, project_id: str | None, instance_url: str, api_key: str
    ) -> AppConnection:
        """Register a connection; Infisical checks the key against Octopus itself before it stores anything.

        Not retried on a timeout: the connection may exist anyway, which the caller detects by looking up the name.
        """
        body: dict[str, Any] = {
            "name": name,
            "method": "api-key",
            "credentials": {"instanceUrl": instance_url, "apiKey": api_key},
        }
        if description is not None:
            body["description"] = description
        if project_id is not None:
            body["projectId"] = project_id
        what = f'create the app connection "{name}"'
        response = await self._call("POST", _CONNECTIONS, json=body, what=what, secrets=(api_key,))
        return self._connection(response, what=what)

    async def update(
        self,
        connection_id: str,
        *,
        name: str | None = None,
        description: str | _Unset | None = UNSET,
        credentials: tuple[str, str] | None = None,
    ) -> AppConnection:
        """PATCH only the given fields; ``credentials`` is ``(instance_url, api_key)``.

        Every write that carries credentials gives the connection a new ``credentialsHash`` even when the values are
        unchanged, so pass them only when the key or the URL really changed.
        """
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if not isinstance(description, _Unset):
            body["description"] = description
        secrets: tuple[str, ...] = ()
        if credentials is not None:
            instance_url, api_key = credentials
            body["credentials"] = {"instanceUrl": instance_url, "apiKey": api_key}
            secrets = (api_key,)
        what = "update the app connection"
        response = await self._call(
            "PATCH", f"{_CONNECTIONS}/{_segment(connection_id)}", json=body, what=what, secrets=secrets
        )
        return self._connection(response, what=what)

    async def delete(self, connection_id: str) -> bool:
        """Delete the connection; False when it was already gone."""
        response = await self._call(
            "DELETE", f"{_CONNECTIONS}/{_segment(connection_id)}", what="delete the app connection", missing_ok=True
        )
        return response.status_code != 404

    # --- secret syncs -----------------------------------------------------------------------------------------------
    async def get_sync(self, sync_id: str) -> SecretSync | None:
        """The sync, or None when Infisical has no sync with this id."""
        what = "read the secret sync"
        response = await self._call("GET", f"{_SYNCS}/{_segment(sync_id)}", what=what, missing_ok=True)
        return None if response.status_code == 404 else self._sync(response, what=what)

    async def get_sync_by_name(self, name: str, *, project_id: str) -> SecretSync | None:
        """The sync named ``name`` in the Infisical project, or None."""
        what = f'look up the secret sync "{name}"'
        with _project_scoped(project_id):
            response = await self._call(
                "GET",
                f"{_SYNCS}/sync-name/{_segment(name)}",
                params={"projectId": project_id},
                what=what,
                missing_ok=True,
            )
        return None if response.status_code == 404 else self._sync(response, what=what)

    async def create_sync(self, body: dict[str, Any]) -> SecretSync:
        """Create a sync (Infisical answers at once, before any call to Octopus). ``body`` is the whole create body."""
        what = f'create the secret sync "{body.get("name")}"'
        with _project_scoped(str(body.get("projectId") or "")):
            response = await self._call("POST", _SYNCS, json=body, what=what)
        return self._sync(response, what=what)

    async def update_sync(self, sync_id: str, body: dict[str, Any]) -> SecretSync:
        """PATCH a sync. Every PATCH makes Infisical run a full sync, so send one only when something changed."""
        what = "update the secret sync"
        response = await self._call("PATCH", f"{_SYNCS}/{_segment(sync_id)}", json=body, what=what)
        return self._sync(response, what=what)

    async def trigger_sync(self, sync_id: str) -> SecretSync | None:
        """Ask for a sync now; None when one is already running (Infisical refuses a second one meanwhile)."""
        what = "start a sync of the secret sync"
        try:
            response = await self._call("POST", f"{_SYNCS}/{_segment(sync_id)}/sync-secrets", what=what)
        except errors.InfisicalRejected as exc:
            if _SYNC_BUSY.search(exc.message):
                return None
            raise
        return self._sync(response, what=what)

    async def delete_sync(self, sync_id: str, *, remove_secrets: bool) -> SecretSync | None:
        """Delete the sync; None when it was already gone.

        With ``remove_secrets`` Infisical first removes the sync's variables from Octopus in the background and
        answers with the sync still there: it disappears only once the removal succeeded (``removeStatus``).
        """
        what = "delete the secret sync" + (" and remove its secrets" if remove_secrets else "")
        response = await self._call(
            "DELETE",
            f"{_SYNCS}/{_segment(sync_id)}",
            params={"removeSecrets": "true" if remove_secrets else "false"},
            what=what,
            missing_ok=True,
        )
        return None if response.status_code == 404 else self._sync(response, what=what)

    # --- secrets (names only) ------------------------------------------------------------------------------------
    async def list_secret_keys(self, *, project_id: str, environment: str, secret_path: str) -> list[str]:
        """The keys a sync of this folder writes: the folder's own secrets, then those of its imports.

        Only names: ``viewSecretValue=false`` makes Infisical leave every value out, so none reaches this process.
        """
        what = f"list the secret names at {environment}:{secret_path}"
        params = {
            "workspaceId": project_id,
            "environment": environment,
            "secretPath": secret_path,
            "viewSecretValue": "false",
            "include_imports": "true",
        }
        with _project_scoped(project_id):
            response = await self._call("GET", _SECRETS, params=params, what=what)
        body = json_object(response) or {}
        own, imports = body.get("secrets"), body.get("imports")
        if not isinstance(own, list):
            raise errors.InfisicalUnavailable(
                f"Infisical at {self.base_url} answered the request to {what} with HTTP {response.status_code} but "
                f"not with a list of secrets{_ref(response)}: check that the Infisical URL points at the API"
            )
        imported = (
            [s for i in imports if isinstance(i, dict) for s in i.get("secrets") or ()]
            if isinstance(imports, list)
            else []
        )
        keys = (s.get("secretKey") for s in [*own, *imported] if isinstance(s, dict))
        return list(dict.fromkeys(k for k in keys if isinstance(k, str) and k))

    def _sync(self, response: httpx.Response, *, what: str) -> SecretSync:
        body = json_object(response)
        data = body.get("secretSync") if body is not None else None
        try:
            if not isinstance(data, dict):
                raise ValueError("no secretSync object")
            return SecretSync.from_api(data)
        except ValueError as exc:
            raise errors.InfisicalUnavailable(
                f"Infisical at {self.base_url} answered the request to {what} with HTTP {response.status_code} but "
                f"not with a secret sync ({exc}){_ref(response)}: check that the Infisical URL points at the API"
            ) from None

    # --- plumbing ---------------------------------------------------------------------------------------------------
    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        secrets: Iterable[str] = (),
        missing_ok: bool = False,
    ) -> httpx.Response:
        """Send one authenticated call; return a 2xx response (or Infisical's own 404 when ``missing_ok``)."""
        secrets = tuple(secrets)
        write = method != "GET"
        for attempt in (1, 2):
            token = await self._access_token()
            pacer = self._pacer if write else self._read_pacer
            if pacer is not None:
                await pacer.acquire()
            response = await self._send(
                method,
                path,
                json=json,
                params=params,
                headers={"Authorization": f"Bearer {token.value}"},
                what=what,
            )
            if attempt == 1 and _token_refused(response):
                # Expired or revoked server-side before our own schedule said so: log in again, once.
                log.info("Infisical refused the access token (%s); logging in again", _req_id(response) or "no reqId")
                self._forget_token(token)
                continue
            if response.is_success or (missing_ok and _is_infisical_not_found(response)):
                self._note_auth(refused=False)
                return response
            error = self._error(response, what=what, write=write, secrets=(*secrets, token.value))
            if isinstance(error, errors.InfisicalAuthFailed):
                self._note_auth(refused=True)
            raise error
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = await metrics.observe_request(
                "infisical",
                _operation(method, path),
                self._http.request(method, path, json=json, params=params, headers=headers),
            )
        except httpx.TimeoutException as exc:
            raise errors.InfisicalUnavailable(
                f"Infisical at {self.base_url} did not answer within {self._timeout:g} s when trying to {what} "
                f"({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise errors.InfisicalUnavailable(
                f"Could not reach Infisical at {self.base_url} to {what} ({describe(exc)})"
            ) from None
        log.debug("%s %s -> %s %s", method, path, response.status_code, _req_id(response) or "")
        return response

    def _connection(self, response: httpx.Response, *, what: str) -> AppConnection:
        body = json_object(response)
        data = body.get("appConnection") if body is not None else None
        try:
            if not isinstance(data, dict):
                raise ValueError("no appConnection object")
            return AppConnection.from_api(data)
        except ValueError as exc:
            raise errors.InfisicalUnavailable(
                f"Infisical at {self.base_url} answered the request to {what} with HTTP {response.status_code} but "
                f"not with an app connection ({exc}){_ref(response)}: check that the Infisical URL points at the API"
            ) from None

    # --- authentication ---------------------------------------------------------------------------------------------
    async def _access_token(self) -> _Token:
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return token
        # One login for everyone: callers queue on the lock and take the token (or the failure) the first one got.
        async with self._login_lock:
            now = self._clock()
            token = self._token
            if token is not None and now < token.refresh_at:
                return token
            if self._login_failure is not None:
                until, failure = self._login_failure
                if now < until:
                    # A fresh instance: re-raising the shared one would pile every caller's traceback onto it.
                    raise type(failure)(failure.message, status_code=failure.status_code)
                self._login_failure = None
            try:
                self._token = await self._login()
            except errors.InfisicalAuthFailed as exc:
                self._login_failure = (self._clock() + _LOGIN_FAILURE_HOLD, exc)
                metrics.observe_login(self._identity, "refused")
                self._note_auth(refused=True)
                raise
            except errors.OctoconnError:
                metrics.observe_login(self._identity, "error")
                raise
            metrics.observe_login(self._identity, "success")
            return self._token

    def _note_auth(self, *, refused: bool) -> None:
        if self._identity == "operator":
            metrics.OPERATOR_IDENTITY_REFUSED.set(1 if refused else 0)

    def _forget_token(self, token: _Token) -> None:
        # Only the token that was refused: another caller may already have logged in again meanwhile.
        if self._token is token:
            self._token = None

    async def _login(self) -> _Token:
        """Re-login instead of ``/auth/token/renew``: renewal stops at the token's max TTL so a login path is needed
        anyway, a Kubernetes Auth renewal would outlive the short JWT it was based on, and a renew costs the same
        write budget as a login. Infisical's own operator does the same."""
        auth = self._auth
        if isinstance(auth, UniversalAuth):
            path = "/api/v1/auth/universal-auth/login"
            body = {"clientId": auth.client_id, "clientSecret": auth.client_secret}
            who = f"Universal Auth client ID {auth.client_id}"
            secrets: tuple[str, ...] = (auth.client_secret,)
        else:
            try:
                jwt = await auth.token_source()
            except errors.OctoconnError:
                raise
            except Exception as exc:
                raise errors.InfisicalAuthFailed(
                    f"Could not obtain a ServiceAccount token for Infisical Kubernetes Auth ({type(exc).__name__}); "
                    "check the operator's RBAC for serviceaccounts/token"
                ) from None
            path = "/api/v1/auth/kubernetes-auth/login"
            body = {"identityId": auth.identity_id, "jwt": jwt}
            who = f"Kubernetes Auth identity {auth.identity_id}"
            secrets = (jwt,)
        if self._pacer is not None:
            await self._pacer.acquire()
        started = self._clock()
        response = await self._send("POST", path, json=body, what=f"log in ({who})")
        if not response.is_success:
            raise self._login_error(response, who=who, secrets=secrets)
        data = json_object(response)
        access_token = data.get("accessToken") if data is not None else None
        if not isinstance(access_token, str) or not access_token:
            raise errors.InfisicalUnavailable(
                f"Infisical at {self.base_url} accepted the login ({who}) but returned no access token"
                f"{_ref(response)}: check that the Infisical URL points at the API"
            )
        expires_in = data.get("expiresIn") if data is not None else None
        if isinstance(expires_in, int | float) and expires_in > 0:
            refresh_at = started + _TOKEN_REFRESH_FRACTION * float(expires_in)
        else:
            refresh_at = math.inf  # no stated lifetime: keep it until Infisical refuses it (401 → login again)
        log.info("Logged in to Infisical at %s (%s)", self.base_url, who)
        return _Token(value=access_token, refresh_at=refresh_at)

    def _login_error(self, response: httpx.Response, *, who: str, secrets: tuple[str, ...]) -> errors.InfisicalError:
        status = response.status_code
        message = scrub(_message(response), secrets)
        ref = _ref(response)
        if status == 429:
            return self._rate_limited(response, what=f"log in ({who})", message=message, write=True)
        if status >= 500:
            return errors.InfisicalUnavailable(
                f"Infisical at {self.base_url} failed the login ({who}) with HTTP {status}: {message}{ref}",
                status_code=status,
            )
        if 300 <= status < 400:
            return self._redirect_error(response, what=f"log in ({who})")
        if status == 404 and not _is_infisical_not_found(response):
            return errors.InfisicalUnavailable(
                f"{self.base_url} has no such API route ({message}) for the login ({who}){ref}: check the Infisical "
                "URL and any proxy in front of it",
                status_code=status,
            )
        return errors.InfisicalAuthFailed(
            f"Infisical refused the login ({who}) with HTTP {status}: {message}{ref}. Check the identity's "
            "credentials and that this auth method is configured for it in Infisical",
            status_code=status,
        )

    # --- errors -----------------------------------------------------------------------------------------------------
    def _error(
        self, response: httpx.Response, *, what: str, write: bool, secrets: tuple[str, ...]
    ) -> errors.InfisicalError:
        status = response.status_code
        message = scrub(_message(response), secrets)
        ref = _ref(response)
        if status in (400, 422):
            return _refusal(status, message, ref, what=what)
        if _token_refused(response):
            return errors.InfisicalAuthFailed(
                f"Infisical refused a fresh access token when trying to {what}: {message}{ref}. Check that the "
                "machine identity is still active",
                status_code=status,
            )
        if status == 403:
            managed = (
                "Secret Syncs in the project"
                if "secret sync" in what
                else "App Connections in this organization or project"
            )
            return errors.InfisicalForbidden(
                f"The Infisical machine identity is not allowed to {what}: {message}{ref}. Give it a role with "
                f"permission to manage {managed}",
                status_code=status,
            )
        if status == 404:
            return self._not_found(response, message, ref, what=what)
        if status == 429:
            return self._rate_limited(response, what=what, message=message, write=write)
        if 300 <= status < 400:
            return self._redirect_error(response, what=what)
        if status >= 500:
            return errors.InfisicalUnavailable(
                f"Infisical failed to {what} with HTTP {status}: {message}{ref}",
                status_code=status,
            )
        return errors.InfisicalRejected(
            f"Infisical answered HTTP {status} when trying to {what}: {message}{ref}", status_code=status
        )

    def _not_found(self, response: httpx.Response, message: str, ref: str, *, what: str) -> errors.InfisicalError:
        """A 404: a row that is gone, a route this Infisical does not have, or no Infisical at all."""
        status = response.status_code
        if _NO_OCTOPUS_ROUTES.match(message) and _is_infisical_body(response):
            # Infisical itself answered, but has no such route: a release without Octopus Deploy connections.
            return errors.InfisicalUnsupported(
                f"Infisical at {self.base_url} has no Octopus Deploy app connections (it answered {message!r} "
                f"when asked to {what}){ref}. They exist in Infisical releases from December 2025 on: upgrade "
                "Infisical, or point the operator at one that has them",
                status_code=status,
            )
        if not _is_infisical_not_found(response):
            # A route, not a row, is missing (wrong URL, a proxy): reading it as "gone" would make the caller
            # recreate a connection that may still exist.
            return errors.InfisicalUnavailable(
                f"{self.base_url} has no such API route ({message}) for the request to {what}{ref}: check the "
                "Infisical URL and any proxy in front of it",
                status_code=status,
            )
        return errors.InfisicalNotFound(f"Infisical could not {what}: {message}{ref}", status_code=status)

    def _rate_limited(
        self, response: httpx.Response, *, what: str, message: str, write: bool
    ) -> errors.InfisicalRateLimited:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is None:
            match = _TRY_AGAIN_IN.search(message)
            retry_after = float(match["seconds"]) if match else _DEFAULT_RATE_LIMIT_WAIT
        pacer = self._pacer if write else self._read_pacer
        if pacer is not None:
            # The window is full for the whole operator, not only for this resource.
            pacer.penalize(retry_after)
        return errors.InfisicalRateLimited(
            f"Infisical is rate limiting this operator (HTTP 429 when trying to {what}): it asked to wait "
            f"{retry_after:g} s{_ref(response)}",
            status_code=429,
            retry_after=retry_after,
        )

    def _redirect_error(self, response: httpx.Response, *, what: str) -> errors.InfisicalUnavailable:
        location = (response.headers.get("location") or "").split("?", 1)[0]
        target = f" to {location}" if location else ""
        return errors.InfisicalUnavailable(
            f"Infisical at {self.base_url} redirected the request to {what}{target} (HTTP {response.status_code}); "
            "the request was not sent on. Set the Infisical URL to the final address",
            status_code=response.status_code,
        )


# --- helpers --------------------------------------------------------------------------------------------------------
def _operation(method: str, path: str) -> str:
    """The metrics label for a request: what it does, never the id or name in its path."""
    if "/auth/" in path:
        return "login"
    if path.startswith(_SYNCS):
        # Secret syncs get operations of their own, so the connection series keep their meaning.
        if path.endswith("/sync-secrets"):
            return "sync_trigger"
        if method == "GET":
            return "sync_get_by_name" if "/sync-name/" in path else "sync_get"
        return {"POST": "sync_create", "PATCH": "sync_update", "DELETE": "sync_delete"}.get(method, method.lower())
    if path.startswith(_SECRETS):
        return "secrets_list"
    if method == "GET":
        return "get_by_name" if "/connection-name/" in path else "get"
    return {"POST": "create", "PATCH": "update", "DELETE": "delete"}.get(method, method.lower())


def _segment(value: str) -> str:
    """One path segment: an id or name from status or spec must not be able to walk to another route."""
    if not value:
        raise errors.InvalidSpec("An empty app connection id or name cannot be looked up in Infisical")
    return quote(value, safe="")


def _token_refused(response: httpx.Response) -> bool:
    """401, or the 403 ``TokenError`` that real Infisical gives a token past its JWT ``exp``."""
    if response.status_code == 401:
        return True
    if response.status_code != 403:
        return False
    body = json_object(response)
    return body is not None and body.get("error") == "TokenError"


def _is_infisical_body(response: httpx.Response) -> bool:
    """An error body in Infisical's own shape (``statusCode``/``error``), not a proxy's page."""
    body = json_object(response)
    return body is not None and (body.get("statusCode") == response.status_code or body.get("error") == "NotFound")


def _is_infisical_not_found(response: httpx.Response) -> bool:
    """Infisical's own "no such row" 404, as opposed to a proxy's 404 or Infisical's "Route ... not found"."""
    if response.status_code != 404 or not _is_infisical_body(response):
        return False
    body = json_object(response) or {}
    message = body.get("message")
    return not (isinstance(message, str) and message.startswith("Route "))


def _req_id(response: httpx.Response) -> str | None:
    body = json_object(response)
    req_id = body.get("reqId") if body is not None else None
    return req_id if isinstance(req_id, str) and req_id else None


def _ref(response: httpx.Response) -> str:
    req_id = _req_id(response)
    return f" (Infisical reqId {req_id})" if req_id else ""


def _message(response: httpx.Response) -> str:
    """Infisical's ``message``, readable: a 422 issue list becomes ``path: message; ...``."""
    body = json_object(response)
    message = body.get("message") if body is not None else None
    if isinstance(message, list):
        return "; ".join(_issue(item) for item in message) or f"HTTP {response.status_code}"
    if isinstance(message, str) and message.strip():
        return " ".join(message.split())[:500]
    return f"HTTP {response.status_code} without an Infisical error message"


def _issue(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    text = str(item.get("message") or item.get("code") or "invalid")
    path = item.get("path")
    if isinstance(path, list) and path:
        return f"{'.'.join(str(part) for part in path)}: {text}"
    return text


@contextlib.contextmanager
def _project_scoped(project_id: str) -> Iterator[None]:
    """A 403 on a request naming a project is about that project first: Infisical refuses an identity that is no
    member of it, and answers the same whether the project exists or not."""
    try:
        yield
    except errors.InfisicalForbidden as exc:
        raise errors.InfisicalProjectUnavailable(
            f"Infisical project {project_id} does not exist, or the operator's machine identity cannot see it (it is "
            f"no member of that project): {exc.message}. Check spec.source.projectId, or add the identity to that "
            "project with a role that may manage secret syncs",
            status_code=exc.status_code,
        ) from None


def _refusal(status: int, message: str, ref: str, *, what: str) -> errors.InfisicalError:
    """A 400 or 422: a name that is taken (said so the user can act on it), or a request refused for good."""
    duplicate_sync = _DUPLICATE_SYNC_NAME.search(message)
    if status == 400 and duplicate_sync:
        return errors.NameConflict(
            f'Infisical already has a secret sync named "{duplicate_sync["name"]}" in this project{ref} that '
            "this resource did not create: set spec.syncName to another name, or delete that sync",
            status_code=status,
        )
    duplicate = _DUPLICATE_NAME.search(message)
    if status == 400 and duplicate:
        return errors.NameConflict(
            f'Infisical already has an app connection named "{duplicate["name"]}" in this scope{ref}: '
            "choose another spec.connectionName, or rename or delete that connection in Infisical",
            status_code=status,
        )
    other_app = _OTHER_APP.search(message)
    if status == 400 and other_app:
        # Adopting cannot help: the operator can only manage Octopus Deploy connections.
        return errors.NameConflict(
            f'The name "{other_app["name"]}" is taken in Infisical by a connection of another app (not Octopus '
            f"Deploy){ref}; connection names are unique across all apps, and a connection of another app "
            "cannot be adopted. Choose another spec.connectionName, or rename or delete that connection in "
            "Infisical",
            status_code=status,
        )
    return errors.InfisicalRejected(f"Infisical refused to {what}: {message}{ref}", status_code=status)
