"""The remote objects as values: what Octopus and Infisical answered, parsed once, with no I/O attached.

The clients (``octopus``, ``infisical``) build these; the decisions (``reconcile``, ``sync``, ``ownership``) read them.
Living apart from the clients, they let a decision module use a connection or an identity without importing httpx,
which the import contract in ``.importlinter`` checks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from octoconn import errors

_MAX_URL_LENGTH = 255  # Infisical stores instanceUrl in a 255-character column and refuses longer ones
_HOST_PATTERN = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$")


def normalize_instance_url(raw: str) -> str:
    """Return the Octopus base URL (``scheme://host[:port][/prefix]``) for what a user pasted.

    Users paste the portal address (``https://host/app#/Spaces-1/...``), the API root (``.../api/``) or the base
    with a trailing slash; Infisical appends ``/api/users/me`` to exactly what it is given, so only the bare base
    works there. A path prefix (``https://host/octopus``) is kept. The raw input is never echoed in the error,
    because a pasted URL can carry a key in its query string or a password in its userinfo.
    """
    text = raw.strip()
    example = "e.g. https://example.octopus.app or https://octopus.example.com/prefix"
    if not text:
        raise errors.InvalidInstanceUrl(f"instanceUrl is empty: set it to the Octopus server's base URL, {example}")
    if "://" not in text:
        raise errors.InvalidInstanceUrl(f"instanceUrl has no scheme: write it as an http(s) URL, {example}")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise errors.InvalidInstanceUrl(
            f"instanceUrl is not a valid URL (check the host and port): use the server's base URL, {example}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f" '{scheme}'" if re.fullmatch(r"[a-z][a-z0-9+.-]{0,15}", scheme) else ""
        raise errors.InvalidInstanceUrl(
            f"instanceUrl must use https (or http where allowed), not the scheme{shown}: {example}"
        )
    if "@" in parts.netloc:
        raise errors.InvalidInstanceUrl(
            "instanceUrl must not contain a user name or password (user:pass@host): Octopus authenticates with the "
            "API key from the Secret; remove the userinfo part"
        )
    host = (parts.hostname or "").lower()
    if not host:
        raise errors.InvalidInstanceUrl(f"instanceUrl has no host name: {example}")
    if ":" in host:  # an IPv6 literal; urlsplit has already checked the brackets
        netloc_host = f"[{host}]"
    elif _HOST_PATTERN.match(host):
        netloc_host = host
    else:
        raise errors.InvalidInstanceUrl(
            "instanceUrl's host name contains characters that are not allowed (spaces, or non-ASCII: use the "
            f"punycode xn-- form): {example}"
        )
    netloc = netloc_host if port is None else f"{netloc_host}:{port}"

    # Everything from a "/api" or "/app" segment on is an API route or a portal page, never part of the base.
    segments = parts.path.split("/")
    for index, segment in enumerate(segments):
        if segment.lower() in ("api", "app"):
            segments = segments[:index]
            break
    path = "/".join(segments).rstrip("/")
    url = f"{scheme}://{netloc}{path}"
    if len(url) > _MAX_URL_LENGTH:
        raise errors.InvalidInstanceUrl(
            f"instanceUrl is longer than {_MAX_URL_LENGTH} characters once normalised, which Infisical does not "
            "accept: use the server's base URL"
        )
    return url


@dataclass(frozen=True)
class OctopusIdentity:
    """Who an API key belongs to, as Octopus reported it."""

    user_id: str
    username: str
    display_name: str | None
    is_service: bool
    server_version: str | None
    key_expires_at: datetime | None


@dataclass(frozen=True)
class Named:
    """An Octopus object as the operator needs it: its id and its display name."""

    id: str
    name: str


@dataclass(frozen=True)
class PermissionGrant:
    """One ``UserPermissionRestriction`` of a permission: where it applies (an empty set = not restricted)."""

    space_id: str | None
    project_ids: frozenset[str]
    environment_ids: frozenset[str]
    project_group_ids: frozenset[str]


@dataclass(frozen=True)
class OctopusVariable:
    """One variable of a project's variable set, as far as a sync's checks need it (never its value)."""

    name: str
    type: str | None  # String, Sensitive, Certificate, ...
    is_sensitive: bool


@dataclass(frozen=True)
class OctopusDestination:
    """What a secret sync's destination looks like to the connection's key."""

    user: Named
    space: Named
    project: Named
    project_group_id: str | None
    # ScopeValues of the project's variable set: "Environments", "Roles", "Machines", "Channels", "Processes",
    # "Actions" -> the values Octopus offers there.
    scope_values: Mapping[str, tuple[Named, ...]]
    # Permission name -> where the key's user holds it.
    permissions: Mapping[str, tuple[PermissionGrant, ...]]
    # The project's variables as the variable set lists them (Infisical keeps every one it does not manage).
    variables: tuple[OctopusVariable, ...] = ()


@dataclass(frozen=True)
class AppConnection:
    """An Octopus Deploy app connection as Infisical returned it (Infisical never returns the API key)."""

    id: str
    name: str
    description: str | None
    version: int
    org_id: str
    project_id: str | None
    credentials_hash: str
    instance_url: str
    created_at: str
    updated_at: str

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> AppConnection:
        """Build from Infisical's ``appConnection`` object; raises ValueError when a required field is missing."""
        try:
            credentials = data.get("credentials") or {}
            return cls(
                id=required_str(data, "id"),
                name=required_str(data, "name"),
                description=optional_str(data.get("description")),
                version=int(data["version"]),
                org_id=required_str(data, "orgId"),
                project_id=optional_str(data.get("projectId")),
                credentials_hash=required_str(data, "credentialsHash"),
                instance_url=str(credentials.get("instanceUrl") or "") if isinstance(credentials, dict) else "",
                created_at=str(data.get("createdAt") or ""),
                updated_at=str(data.get("updatedAt") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an app connection object ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class SecretSync:
    """An Octopus Deploy secret sync as Infisical returned it."""

    id: str
    name: str
    description: str | None
    project_id: str
    connection_id: str
    is_auto_sync_enabled: bool
    environment: str | None  # slug; None once the source folder is gone
    secret_path: str | None
    sync_options: dict[str, Any]
    destination_config: dict[str, Any]
    sync_status: str | None
    last_sync_message: str | None
    last_synced_at: str | None
    remove_status: str | None
    last_remove_message: str | None
    created_at: str
    updated_at: str

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> SecretSync:
        """Build from Infisical's ``secretSync`` object; raises ValueError when a required field is missing."""
        try:
            environment = data.get("environment")
            folder = data.get("folder")
            options = data.get("syncOptions")
            destination = data.get("destinationConfig")
            return cls(
                id=required_str(data, "id"),
                name=required_str(data, "name"),
                description=optional_str(data.get("description")),
                project_id=required_str(data, "projectId"),
                connection_id=required_str(data, "connectionId"),
                is_auto_sync_enabled=data.get("isAutoSyncEnabled") is not False,
                environment=optional_str(environment.get("slug")) if isinstance(environment, dict) else None,
                secret_path=optional_str(folder.get("path")) if isinstance(folder, dict) else None,
                sync_options=dict(options) if isinstance(options, dict) else {},
                destination_config=dict(destination) if isinstance(destination, dict) else {},
                sync_status=optional_str(data.get("syncStatus")),
                last_sync_message=optional_str(data.get("lastSyncMessage")),
                last_synced_at=optional_str(data.get("lastSyncedAt")),
                remove_status=optional_str(data.get("removeStatus")),
                last_remove_message=optional_str(data.get("lastRemoveMessage")),
                created_at=str(data.get("createdAt") or ""),
                updated_at=str(data.get("updatedAt") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a secret sync object ({type(exc).__name__}: {exc})") from None


def required_str(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} is not a non-empty string")
    return value


def optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
