"""Talks to Octopus Deploy: proves that an API key works, says who it belongs to, and inspects a sync's destination.

The operator must tell users precisely why a key fails — wrong key, missing permission, wrong URL, untrusted
certificate, server down — because each one needs a different fix and a different retry pace. So this module turns
every way a request to Octopus can end into one of the typed errors in ``octoconn.errors``. It never lets the key
leave through anything but the ``X-Octopus-ApiKey`` header of a request to the configured server: not the query
string, not a redirect target, not a message, a log line or a repr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urljoin

import httpx

from octoconn import __version__, errors, metrics
from octoconn.httputil import describe, json_object, lean_pool, scrub
from octoconn.pacing import parse_retry_after
from octoconn.remote import (
    Named,
    OctopusDestination,
    OctopusIdentity,
    OctopusVariable,
    PermissionGrant,
    normalize_instance_url,
)
from octoconn.text import js_trim

log = logging.getLogger(__name__)

API_KEY_PATTERN = re.compile(r"^API-[A-Z0-9]+$")
_HINT_LENGTH = 8  # Octopus keeps the first 8 characters of a key ("API-ABCD") as its hint
_DEFAULT_RATE_LIMIT_WAIT = 60.0  # Octopus limits per minute; without Retry-After, one window is the safe wait


_SPACE_ID = re.compile(r"^Spaces-\d+$")
_PROJECT_ID = re.compile(r"^Projects-\d+$")
_MISSING_PERMISSION = re.compile(r"Missing permission: (?P<name>\w+)")


class OctopusClient:
    """Verifies Octopus API keys against any number of Octopus servers over one long-lived connection pool.

    It never retries: the caller's backoff policy owns the pace, and a retry here would hide it. It never follows
    redirects, because the key would travel with the request to wherever the redirect points.
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        allow_http: bool = False,
        ca_bundle: str | os.PathLike[str] | None = None,
        verify_tls: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``ca_bundle``: a PEM file path, or PEM text (a ConfigMap value), trusted in addition to the default CAs."""
        self._timeout = timeout
        self._allow_http = allow_http
        self._has_ca_bundle = ca_bundle is not None
        verify: ssl.SSLContext | bool
        if not verify_tls:
            verify = False
        elif ca_bundle is not None:
            verify = ssl_context(ca_bundle)
        else:
            verify = True
        self._http = lean_pool(
            httpx.AsyncClient(
                timeout=timeout,
                verify=verify,
                transport=transport,
                follow_redirects=False,
                headers={"Accept": "application/json", "User-Agent": f"octoconn/{__version__}"},
            )
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def verify(self, instance_url: str, api_key: str) -> OctopusIdentity:
        """Check ``api_key`` against ``GET {base}/api/users/me`` and return whom it belongs to.

        The anonymous ``/api`` root is read first: the key is only sent once the URL has proven to be an Octopus
        server, so a typo in instanceUrl never hands the key to some other service. The root also gives the server
        version, so a successful verification costs the same number of calls either way.

        Surrounding whitespace in the key is ignored (a Secret made with ``echo`` or ``--from-file`` often ends in a
        newline). Raises a subclass of ``errors.OctoconnError`` for every failure.
        """
        base = normalize_instance_url(instance_url)
        if base.startswith("http://") and not self._allow_http:
            raise errors.InsecureInstanceUrl(
                f"instanceUrl {base} uses plain http, which would send the API key unencrypted: use https, or, if this "
                "network is trusted, allow http (OCTOCONN_ALLOW_HTTP=true; --allow-http for octoconn check)"
            )
        key = api_key.strip()
        _check_key_shape(key)

        root = await self._octopus_root(base)
        response = await self._send(base, "/api/users/me", key=key)
        status = response.status_code
        if status == 200:
            user = json_object(response)
            if user is not None and isinstance(user.get("Id"), str) and user["Id"]:
                return await self._identity(base, key, user, root)
            raise self._unexpected(base, root, "answered /api/users/me with a 200 that is not an Octopus user")
        self._raise_for_status(base, response, what="/api/users/me")
        detail = _octopus_message(response)
        if status == 401:
            raise errors.InvalidApiKey(
                f"Octopus at {base} refused the API key (HTTP 401{detail}): it is wrong, revoked or expired. "
                "Create a new API key in Octopus and put it in the referenced Secret"
            )
        if status == 403:
            raise errors.OctopusPermissionDenied(
                f"Octopus at {base} accepted the API key but denied access to its user (HTTP 403{detail}): check that "
                "the user or service account is active and allowed to use the API"
            )
        raise self._unexpected(base, root, f"answered /api/users/me with HTTP {status}{detail}")

    async def inspect_destination(
        self, instance_url: str, api_key: str, *, space: str, project: str
    ) -> OctopusDestination:
        """Resolve a space and a project (each by id, name or slug) and read what a sync into them needs.

        Five GETs, never a write: the key's user, the spaces, the project, the project's variable set (its
        ``ScopeValues`` turn scope names into ids, and reading it proves ``VariableView``) and the user's permissions
        (``VariableEdit`` cannot be probed without writing). The caller has already verified the key and the URL
        through the connection. Raises ``DestinationNotFound``, ``OctopusPermissionMissing`` or another Octopus error,
        and ``MalformedApiKey`` before any request for a value that cannot be a key.

        The key is trimmed as Infisical trims it (a byte-order mark too), so it is the key Infisical will use.
        """
        base = normalize_instance_url(instance_url)
        key = js_trim(api_key)
        _check_key_shape(key)
        me = await self._get_json(base, "/api/users/me", key=key, what="read the key's user")
        if not isinstance(me, dict) or not isinstance(me.get("Id"), str):
            raise errors.OctopusUnexpectedResponse(f"Octopus at {base} answered /api/users/me without a user")
        user = Named(id=me["Id"], name=str(me.get("Username") or me["Id"]))

        found_space = await self._resolve_space(base, key, space)
        found_project, group_id = await self._resolve_project(base, key, found_space, project)
        where = f"project {found_project.name} ({found_project.id}) in space {found_space.name} ({found_space.id})"
        variables = await self._get_json(
            base,
            f"/api/{quote(found_space.id, safe='')}/projects/{quote(found_project.id, safe='')}/variables",
            key=key,
            what=f"read the variables of {where}",
        )
        scope_values = _scope_values(variables.get("ScopeValues") if isinstance(variables, dict) else None)
        listed = _variables(variables.get("Variables") if isinstance(variables, dict) else None)
        permissions = await self._get_json(
            base, f"/api/users/{quote(user.id, safe='')}/permissions", key=key, what="read the key's permissions"
        )
        return OctopusDestination(
            user=user,
            space=found_space,
            project=found_project,
            project_group_id=group_id,
            scope_values=scope_values,
            permissions=_permissions(permissions.get("SpacePermissions") if isinstance(permissions, dict) else None),
            variables=listed,
        )

    async def _resolve_space(self, base: str, key: str, ref: str) -> Named:
        spaces = await self._get_json(base, "/api/spaces/all", key=key, what="list the spaces")
        items = [s for s in spaces if isinstance(s, dict)] if isinstance(spaces, list) else []
        match = _match(items, ref, by_id=bool(_SPACE_ID.match(ref)))
        if match is None:
            raise errors.DestinationNotFound(
                f'Octopus at {base} has no space "{ref}" that this key can see ({_listing(items, "spaces")}). '
                "Set spec.destination.space to a space id (Spaces-1) or name"
            )
        return match

    async def _resolve_project(self, base: str, key: str, space: Named, ref: str) -> tuple[Named, str | None]:
        prefix = f"/api/{quote(space.id, safe='')}/projects"
        missing = f'Octopus space {space.name} ({space.id}) has no project "{ref}" that this key can see'
        if _PROJECT_ID.match(ref):
            try:
                doc = await self._get_json(base, f"{prefix}/{quote(ref, safe='')}", key=key, what=f"read {ref}")
            except errors.DestinationNotFound:
                raise errors.DestinationNotFound(
                    f"{missing}. Set spec.destination.project to a project id (Projects-1), name or slug"
                ) from None
            items = [doc] if isinstance(doc, dict) else []
        else:
            listed = await self._get_json(base, f"{prefix}/all", key=key, what=f"list the projects of {space.id}")
            items = [p for p in listed if isinstance(p, dict)] if isinstance(listed, list) else []
        match = _match(items, ref, by_id=bool(_PROJECT_ID.match(ref)))
        if match is None:
            raise errors.DestinationNotFound(
                f"{missing} ({_listing(items, 'projects')}). Set spec.destination.project to a project id "
                "(Projects-1), name or slug"
            )
        doc = next(p for p in items if p.get("Id") == match.id)
        group = doc.get("ProjectGroupId")
        return match, group if isinstance(group, str) and group else None

    async def _get_json(self, base: str, path: str, *, key: str, what: str) -> Any:
        """One authenticated GET whose 2xx body is JSON; every other answer becomes a typed error saying ``what``."""
        response = await self._send(base, path, key=key)
        status = response.status_code
        if status == 200:
            try:
                return response.json()
            except ValueError:
                raise errors.OctopusUnexpectedResponse(
                    f"Octopus at {base} answered the request to {what} with a body that is not JSON"
                ) from None
        self._raise_for_status(base, response, what=what)
        detail = _octopus_message(response)
        if status == 401:
            raise errors.InvalidApiKey(
                f"Octopus at {base} refused the connection's API key (HTTP 401{detail}) when trying to {what}"
            )
        if status == 403:
            body = json_object(response)
            text = str(body.get("ErrorMessage") or "") if body is not None else ""
            found = _MISSING_PERMISSION.search(text)
            permission = found["name"] if found else "a permission"
            raise errors.OctopusPermissionMissing(
                f"The connection's API key lacks the Octopus permission {permission}, needed to {what} (HTTP 403). "
                f"Grant {permission} to a team of the key's user in Octopus"
            )
        if status == 404:
            raise errors.DestinationNotFound(f"Octopus at {base} found nothing when trying to {what} (HTTP 404)")
        raise errors.OctopusUnexpectedResponse(
            f"Octopus at {base} answered HTTP {status} when trying to {what}{detail}"
        )

    async def _octopus_root(self, base: str) -> dict[str, Any]:
        """The anonymous ``/api`` root document, or the error that says why ``base`` is not a usable Octopus."""
        response = await self._send(base, "/api", key=None)
        root = json_object(response) if response.status_code == 200 else None
        if root is not None and _is_octopus_root(root):
            return root
        self._raise_for_status(base, response, what="/api")
        if root is not None and root.get("Application") == "Octopus Deploy":
            raise errors.NotAnOctopusServer(
                f"The server at {base} is Octopus Deploy with API version {root.get('ApiVersion')!r}, which octoconn "
                "does not support (it needs API version 3.x)"
            )
        raise errors.NotAnOctopusServer(
            f"The server at {base} is not an Octopus Deploy server: its /api root (HTTP {response.status_code}) is "
            "not an Octopus API root document, so the API key was not sent. Set instanceUrl to the Octopus base URL "
            "(the address of the portal without /app...)"
        )

    def _raise_for_status(self, base: str, response: httpx.Response, *, what: str) -> None:
        """Redirects, rate limits and server errors mean the same on every Octopus route."""
        status = response.status_code
        if 300 <= status < 400:
            raise self._redirected(base, response)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is None:
                retry_after = _DEFAULT_RATE_LIMIT_WAIT
            raise errors.OctopusRateLimited(
                f"Octopus at {base} is rate limiting this operator (HTTP 429): it asked to wait {retry_after:g} s",
                retry_after=retry_after,
            )
        detail = _octopus_message(response)
        if status == 503:
            raise errors.OctopusUnreachable(
                f"Octopus at {base} is unavailable (HTTP 503{detail}): it may be starting or under maintenance"
            )
        if status >= 500:
            raise errors.OctopusUnreachable(f"Octopus at {base} failed with HTTP {status} on {what}{detail}")

    @staticmethod
    def _unexpected(base: str, root: dict[str, Any], what: str) -> errors.OctopusUnexpectedResponse:
        return errors.OctopusUnexpectedResponse(
            f"Octopus at {base} {what}; its /api root looks like Octopus {root.get('Version') or ''}. A proxy in "
            "front of it may be rewriting paths: check instanceUrl and the proxy"
        )

    # --- requests ---------------------------------------------------------------------------------------------------
    async def _send(
        self, base: str, path: str, *, key: str | None, params: dict[str, str] | None = None
    ) -> httpx.Response:
        """One GET; transport failures become typed errors. Without ``key`` the request is anonymous."""
        headers = {"X-Octopus-ApiKey": key} if key is not None else None
        url = base + path
        try:
            response = await metrics.observe_request(
                "octopus", _operation(path), self._http.get(url, headers=headers, params=params)
            )
        except httpx.TimeoutException as exc:
            raise errors.OctopusUnreachable(
                f"Octopus at {base} did not answer within {self._timeout:g} s ({describe(exc)})"
            ) from None
        except UnicodeEncodeError:
            # httpx sends header values as ASCII; only the key can hold anything else. Never echo it.
            raise errors.MalformedApiKey(
                "The API key contains a character that cannot be sent to Octopus (not ASCII: a byte-order mark or a "
                "no-break space inside it, or a letter with an accent). Copy the whole key from Octopus again and "
                "write it as plain text"
            ) from None
        except httpx.TransportError as exc:
            tls = _ssl_error(exc)
            if tls is not None and "WRONG_VERSION_NUMBER" in str(tls):
                raise errors.OctopusTLSError(
                    f"Octopus at {base} does not speak TLS on that port: use its https port, or http:// if the "
                    "server only serves plain http"
                ) from None
            if tls is not None:
                hint = (
                    "check that the configured CA bundle (OCTOCONN_OCTOPUS_CA_BUNDLE; --ca-bundle for octoconn check) "
                    "contains the CA that signed it"
                    if self._has_ca_bundle
                    else "if it uses a private or self-signed CA, give that CA as a CA bundle "
                    "(OCTOCONN_OCTOPUS_CA_BUNDLE; --ca-bundle for octoconn check). Infisical checks the key itself "
                    "too, so it must trust that CA as well"
                )
                raise errors.OctopusTLSError(
                    f"The TLS certificate of Octopus at {base} could not be verified ({scrub(str(tls), [key])}): {hint}"
                ) from None
            raise errors.OctopusUnreachable(
                f"Could not reach Octopus at {base} ({scrub(describe(exc), [key])})"
            ) from None
        except httpx.HTTPError as exc:  # an answer httpx could not read (e.g. a body that fails to decompress)
            raise errors.OctopusUnexpectedResponse(
                f"Octopus at {base} sent an answer that could not be read ({type(exc).__name__}: "
                f"{scrub(str(exc), [key])}). A proxy in front of Octopus may be mangling it: check instanceUrl and "
                "the proxy"
            ) from None
        log.debug("GET %s -> %s", url, response.status_code)
        return response

    async def _identity(self, base: str, key: str, user: dict[str, Any], root: dict[str, Any]) -> OctopusIdentity:
        display_name = user.get("DisplayName")
        version = root.get("Version")
        return OctopusIdentity(
            user_id=str(user["Id"]),
            username=str(user.get("Username") or ""),
            display_name=display_name if isinstance(display_name, str) and display_name else None,
            is_service=user.get("IsService") is True,
            server_version=version if isinstance(version, str) and version else None,
            key_expires_at=await self._key_expiry(base, key, str(user["Id"])),
        )

    async def _key_expiry(self, base: str, key: str, user_id: str) -> datetime | None:
        """Best effort: Octopus never says which key is in use, so match the key's hint among the user's keys.

        The URL is built from the verified base rather than from the user's ``ApiKeys`` link: a path-rewriting proxy
        can make the server's own links miss the prefix, and a link could point at another origin, where the key
        must not go.
        """
        try:
            response = await self._send(
                base, f"/api/users/{quote(user_id, safe='')}/apikeys", key=key, params={"take": "100"}
            )
            page = json_object(response) if response.status_code == 200 else None
            items = page.get("Items") if page is not None else None
            if not isinstance(items, list):
                return None
            hint = key[:_HINT_LENGTH]
            matches = [
                item
                for item in items
                if isinstance(item, dict)
                and isinstance(item.get("ApiKey"), dict)
                and item["ApiKey"].get("Hint") == hint
            ]
            if len(matches) != 1:
                return None
            return _parse_datetime(matches[0].get("Expires"))
        except Exception:  # the expiry is a courtesy: verification has already succeeded
            log.debug("could not read the API key expiry from %s", base)
            return None

    def _redirected(self, base: str, response: httpx.Response) -> errors.OctopusRedirected:
        location = response.headers.get("location")
        if not location:
            return errors.OctopusRedirected(
                f"Octopus at {base} answered with a redirect (HTTP {response.status_code}) without a target; the API "
                "key was not sent on. Set instanceUrl to the server's final address"
            )
        target = urljoin(str(response.request.url), location)
        suggestion = ""
        with contextlib.suppress(errors.InvalidInstanceUrl):
            suggestion = f" (probably {normalize_instance_url(target)})"
        shown = target.split("?", 1)[0].split("#", 1)[0]  # a query string could carry anything; the path suffices
        return errors.OctopusRedirected(
            f"Octopus at {base} redirected to {shown} (HTTP {response.status_code}); the API key was not sent there. "
            f"Set instanceUrl to the server's final address{suggestion}"
        )


# --- helpers --------------------------------------------------------------------------------------------------------
def _check_key_shape(key: str) -> None:
    """Refuse values that cannot be Octopus keys before sending them anywhere, and say why without echoing them."""
    if API_KEY_PATTERN.match(key):
        return
    if not key:
        why = "it is empty"
    elif not key.startswith("API-"):
        why = "it does not start with 'API-'"
    elif len(key) == len("API-"):
        why = "nothing follows 'API-'"
    else:
        why = "after 'API-' it contains characters other than uppercase letters and digits"
    raise errors.MalformedApiKey(
        f"The value given as the API key is not an Octopus API key: {why}. An Octopus key looks like 'API-' followed "
        "by uppercase letters and digits; copy the whole key from Octopus (Profile > My API Keys)"
    )


def ssl_context(ca_bundle: str | os.PathLike[str]) -> ssl.SSLContext:
    """The default trust store plus the operator's bundle: Octopus Cloud must keep working when a private CA is set."""
    context = httpx.create_ssl_context()
    if isinstance(ca_bundle, str) and "-----BEGIN" in ca_bundle:
        context.load_verify_locations(cadata=ca_bundle)
    else:
        context.load_verify_locations(cafile=os.fspath(ca_bundle))
    return context


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _octopus_message(response: httpx.Response) -> str:
    """``": <ErrorMessage>"`` from an Octopus error body, or "" (Octopus error messages carry no secrets)."""
    body = json_object(response)
    message = body.get("ErrorMessage") if body is not None else None
    if not isinstance(message, str) or not message.strip():
        return ""
    message = " ".join(message.split())[:300].rstrip(".")
    return f": {message}"


def _match(items: list[dict[str, Any]], ref: str, *, by_id: bool) -> Named | None:
    """The item whose Id (for an id-shaped ``ref``), else Name (any case) or Slug, is ``ref``."""
    wanted = ref.strip()
    for item in items:
        item_id, name, slug = item.get("Id"), item.get("Name"), item.get("Slug")
        if not isinstance(item_id, str):
            continue
        hit = (
            item_id == wanted
            if by_id
            else (isinstance(name, str) and name.casefold() == wanted.casefold()) or slug == wanted
        )
        if hit:
            return Named(id=item_id, name=name if isinstance(name, str) and name else item_id)
    return None


def _listing(items: list[dict[str, Any]], what: str, limit: int = 10) -> str:
    names = [f"{i.get('Name')} ({i.get('Id')})" for i in items[:limit]]
    if not names:
        return f"it sees no {what}"
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{what} it sees: {', '.join(names)}{more}"


def _scope_values(raw: object) -> dict[str, tuple[Named, ...]]:
    out: dict[str, tuple[Named, ...]] = {}
    if not isinstance(raw, dict):
        return out
    for kind, values in raw.items():
        if not isinstance(values, list):
            continue
        out[str(kind)] = tuple(
            Named(id=v["Id"], name=str(v.get("Name") or v["Id"]))
            for v in values
            if isinstance(v, dict) and isinstance(v.get("Id"), str)
        )
    return out


def _variables(raw: object) -> tuple[OctopusVariable, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple(
        OctopusVariable(
            name=v["Name"],
            type=v["Type"] if isinstance(v.get("Type"), str) else None,
            is_sensitive=v.get("IsSensitive") is True,
        )
        for v in raw
        if isinstance(v, dict) and isinstance(v.get("Name"), str)
    )


def _permissions(raw: object) -> dict[str, tuple[PermissionGrant, ...]]:
    out: dict[str, tuple[PermissionGrant, ...]] = {}
    if not isinstance(raw, dict):
        return out

    def ids(entry: dict[str, Any], field: str) -> frozenset[str]:
        values = entry.get(field)
        return frozenset(v for v in values if isinstance(v, str)) if isinstance(values, list) else frozenset()

    for name, entries in raw.items():
        if not isinstance(entries, list):
            continue
        out[str(name)] = tuple(
            PermissionGrant(
                space_id=e.get("SpaceId") if isinstance(e.get("SpaceId"), str) else None,
                project_ids=ids(e, "RestrictedToProjectIds"),
                environment_ids=ids(e, "RestrictedToEnvironmentIds"),
                project_group_ids=ids(e, "RestrictedToProjectGroupIds"),
            )
            for e in entries
            if isinstance(e, dict)
        )
    return out


def _operation(path: str) -> str:
    """The metrics label for a request path; never the path itself, which carries ids."""
    if path == "/api":
        return "root"
    if path == "/api/users/me":
        return "users_me"
    for suffix, label in (("/apikeys", "api_keys"), ("/permissions", "permissions"), ("/variables", "variables")):
        if path.endswith(suffix):
            return label
    if path == "/api/spaces/all":
        return "spaces"
    return "projects" if "/projects" in path else "other"


def _is_octopus_root(root: dict[str, Any]) -> bool:
    api_version = root.get("ApiVersion")
    if not (isinstance(api_version, str) and api_version.startswith("3.")):
        return False
    if root.get("Application") == "Octopus Deploy":
        return True
    installation_id = root.get("InstallationId")
    try:
        uuid.UUID(str(installation_id))
    except ValueError:
        return False
    return True


def _parse_datetime(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
