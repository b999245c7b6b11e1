"""The operator's own Kubernetes calls: read a Secret, patch status and annotations, mint a ServiceAccount token.

Kopf does the watching; these are the few direct calls, made with one long-lived ``httpx.AsyncClient`` on the event
loop. The official ``kubernetes`` client is not imported for them: its models cost start-up time and memory, and
its synchronous calls need worker threads. Credentials come from the same place as Kopf's (``load_connection``,
also registered as Kopf's login handler): the in-cluster ServiceAccount, else the kubeconfig. A kubeconfig whose
user needs an exec plugin or an auth provider is read through the official client, imported only then. A 401 makes
the client read its credentials again once (projected ServiceAccount tokens rotate).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import ssl
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
import kopf

from octoconn import __version__, httputil
from octoconn.apikeys import SecretData
from octoconn.models import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

_SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
_TIMEOUT = 30.0


class KubeError(Exception):
    """A Kubernetes API call failed; the message carries the status and reason, never object data."""


def load_connection(
    logger: logging.Logger | logging.LoggerAdapter[Any] = log, *, kubeconfig: str | None = None
) -> kopf.ConnectionInfo:
    """In-cluster credentials when running in a Pod, else the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``).

    ``kubeconfig``: this file instead (tests and tools; the operator itself never passes one)."""
    settings = kopf.OperatorSettings()
    if kubeconfig is not None:
        previous = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = kubeconfig
        try:
            found = kopf.login_with_kubeconfig(settings=settings)
        finally:
            if previous is None:
                del os.environ["KUBECONFIG"]
            else:
                os.environ["KUBECONFIG"] = previous
        if found is None:
            raise kopf.LoginError(f"No credentials in {kubeconfig}")
        return found
    if os.path.exists(_SERVICE_ACCOUNT_TOKEN):
        info = kopf.login_with_service_account(settings=settings)
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if info is not None and host and port:
            # As client-go does: the service's address from the environment, no cluster DNS needed.
            host = f"[{host}]" if ":" in host else host
            info = dataclasses.replace(info, server=f"https://{host}:{port}")
        if info is not None:
            return info
    info = kopf.login_with_kubeconfig(settings=settings)
    if info is not None and (info.token or info.certificate_path or info.certificate_data or info.username):
        return info
    # exec plugins and auth providers: only the official client knows them all (the CLI hides it until now).
    if "kubernetes" in sys.modules and sys.modules["kubernetes"] is None:
        del sys.modules["kubernetes"]
    info = kopf.login_via_client(logger=logger, settings=settings)
    if info is None:
        raise kopf.LoginError("No Kubernetes credentials: neither a ServiceAccount token nor a usable kubeconfig")
    return info


@kopf.on.login(id="kubernetes-credentials")
def login(logger: kopf.Logger, **_: Any) -> kopf.ConnectionInfo:
    """Kopf's own login, from the same source as ours (Kopf would otherwise import the official client for it)."""
    return load_connection(logger)


def _data(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    # kubeconfig *-data fields are base64; a login handler may hand over PEM as it is.
    return raw if raw.startswith(b"-----BEGIN ") else base64.b64decode(raw)


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context()
    if info.ca_path:
        ctx.load_verify_locations(cafile=os.fsdecode(info.ca_path))
    elif info.ca_data:
        ctx.load_verify_locations(cadata=_data(info.ca_data).decode())
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data or info.private_key_data:
        # ssl only loads a certificate chain from files: write them for the call, then remove them.
        with tempfile.TemporaryDirectory(prefix="octoconn-") as tmp:
            cert_file, key_file = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
            with open(cert_file, "wb") as handle:
                handle.write(_data(info.certificate_data) if info.certificate_data else b"")
            with open(key_file, "wb") as handle:
                handle.write(_data(info.private_key_data) if info.private_key_data else b"")
            ctx.load_cert_chain(
                cert_file if info.certificate_data else os.fsdecode(cert or ""),
                key_file if info.private_key_data else os.fsdecode(key or ""),
            )
    elif cert:
        ctx.load_cert_chain(os.fsdecode(cert), os.fsdecode(key) if key else None)
    return ctx


def _http_client(info: kopf.ConnectionInfo) -> httpx.AsyncClient:
    headers = {"Accept": "application/json", "User-Agent": f"octoconn/{__version__}"}
    if info.token:
        headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
    auth = httpx.BasicAuth(info.username, info.password or "") if info.username else None
    client = httpx.AsyncClient(
        base_url=info.server.rstrip("/"),
        headers=headers,
        auth=auth,
        verify=_ssl_context(info),
        timeout=_TIMEOUT,
        trust_env=info.trust_env,
    )
    return httputil.lean_pool(client)


def _describe(response: httpx.Response) -> str:
    # Never include the body: for Secrets it could echo data. Status and reason are enough to act on.
    return f"HTTP {response.status_code} {response.reason_phrase}"


class KubeClient:
    """The ``SecretReader``, ``StatusWriter`` and ``ConnectionReader`` ports of ``reconcile`` and ``sync``."""

    def __init__(self, connect: Callable[[], kopf.ConnectionInfo] = load_connection) -> None:
        self._connect = connect
        self._http: httpx.AsyncClient | None = None
        self._retired: list[httpx.AsyncClient] = []

    async def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        for attempt in (1, 2):
            if self._http is None:
                try:
                    self._http = _http_client(self._connect())
                except (OSError, ssl.SSLError, ValueError, binascii.Error, kopf.LoginError) as exc:
                    raise KubeError(f"{what} failed: no usable Kubernetes credentials ({type(exc).__name__})") from None
            http = self._http
            try:
                response = await http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise KubeError(f"{what} failed: {type(exc).__name__}") from None
            if response.status_code == 401 and attempt == 1:
                # The token may have rotated: read the credentials again, once.
                self._http = None
                self._retired.append(http)
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        what = f"reading Secret {namespace}/{name}"
        response = await self._request("GET", f"/api/v1/namespaces/{_seg(namespace)}/secrets/{_seg(name)}", what)
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise KubeError(f"{what} failed: {_describe(response)}")
        secret = response.json()
        text, undecodable = decode_secret_data({k: str(v) for k, v in (secret.get("data") or {}).items()})
        return SecretData(
            resource_version=str((secret.get("metadata") or {}).get("resourceVersion") or ""),
            data=text,
            undecodable=undecodable,
        )

    async def read_connection(self, namespace: str, name: str) -> dict[str, Any] | None:
        """An OctopusDeployConnection as the API server has it now (the ``ConnectionReader`` port of ``sync``)."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{_seg(namespace)}/{PLURAL}/{_seg(name)}"
        what = f"reading OctopusDeployConnection {namespace}/{name}"
        response = await self._request("GET", path, what)
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise KubeError(f"{what} failed: {_describe(response)}")
        body = response.json()
        return body if isinstance(body, dict) else None

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, plural: str = PLURAL
    ) -> dict[str, Any] | None:
        """Merge-patch the status; return the object as stored afterwards (None when it is gone)."""
        return await self._patch(namespace, name, "/status", {"status": dict(status)}, "status", plural=plural)

    async def patch_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None], *, plural: str = PLURAL
    ) -> None:
        """Set (or, with None, remove) the operator's own annotations on the resource."""
        body = {"metadata": {"annotations": dict(annotations)}}
        await self._patch(namespace, name, "", body, "annotations", plural=plural)

    async def _patch(
        self, namespace: str, name: str, sub: str, body: dict[str, Any], what: str, *, plural: str = PLURAL
    ) -> dict[str, Any] | None:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{_seg(namespace)}/{plural}/{_seg(name)}{sub}"
        response = await self._request(
            "PATCH",
            path,
            f"patching {what} of {namespace}/{name}",
            json=body,
            params={"fieldManager": "octoconn"},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if response.status_code == 404:
            return None  # deleted meanwhile: nothing left to record
        if not response.is_success:
            raise KubeError(f"patching {what} of {namespace}/{name} failed: {_describe(response)}")
        stored = response.json()
        return stored if isinstance(stored, dict) else None

    async def service_account_token(self, namespace: str, name: str, *, audience: str | None, ttl_seconds: int) -> str:
        """A short-lived token for the ServiceAccount (TokenRequest), as Infisical's own operator sends."""
        what = f"TokenRequest for ServiceAccount {namespace}/{name}"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience] if audience else [], "expirationSeconds": ttl_seconds},
        }
        path = f"/api/v1/namespaces/{_seg(namespace)}/serviceaccounts/{_seg(name)}/token"
        response = await self._request("POST", path, what, json=body)
        if not response.is_success:
            raise KubeError(f"{what} failed: {_describe(response)}")
        token = (response.json().get("status") or {}).get("token")
        if not isinstance(token, str) or not token:
            raise KubeError(f"{what} returned no token")
        return token

    async def aclose(self) -> None:
        for http in [*self._retired, *([self._http] if self._http else [])]:
            await http.aclose()
        self._http, self._retired = None, []


def _seg(value: str) -> str:
    return quote(value, safe="")


def decode_secret_data(data: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Base64-decode a Secret's ``data``: (UTF-8 text values, {key: what each other value looks like}).

    A key is text, but the ones that are not UTF-8 are still reported by name, so a message can say "the key exists
    but is saved as UTF-16" instead of "there is no such key". Only a label describes them, never their content.
    """
    text: dict[str, str] = {}
    undecodable: dict[str, str] = {}
    for key, value in data.items():
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            undecodable[key] = "not base64"
            continue
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            undecodable[key] = _describe_bytes(raw)
            continue
        if "\x00" in value and _describe_bytes(raw) == "UTF-16":
            # ASCII saved as UTF-16 without a byte-order mark is valid UTF-8, full of NULs: still not the text.
            undecodable[key] = "UTF-16"
            continue
        text[key] = value
    return text, undecodable


def _describe_bytes(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    # ASCII text saved as UTF-16 without a byte-order mark: every other byte is zero.
    if len(raw) >= 4 and (not any(raw[1::2]) or not any(raw[0::2])):
        return "UTF-16"
    return "binary data or text in another encoding"
