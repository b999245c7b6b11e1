"""The operator's own Kubernetes calls: read a Secret, patch status, mint a ServiceAccount token.

Kopf does the watching; these are the few direct calls. They use the official ``kubernetes`` client (which
knows every kubeconfig and in-cluster auth flavour, including refreshing projected tokens) through one
long-lived ``ApiClient``, run in worker threads so the event loop never blocks on HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from octoconn.models import GROUP, PLURAL, VERSION
from octoconn.reconcile import SecretData


class KubeError(Exception):
    """A Kubernetes API call failed; the message carries the status and reason, never object data."""


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster config when running in a Pod, else the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    except config.ConfigException:
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)


def _describe(exc: ApiException) -> str:
    # Never include exc.body for Secrets: it could echo data. Status and reason are enough to act on.
    return f"HTTP {exc.status} {exc.reason}"


class KubeClient:
    """The ``SecretReader``, ``StatusWriter`` and ``ConnectionReader`` ports of ``reconcile`` and ``sync``."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        try:
            secret = await asyncio.to_thread(self._core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubeError(f"reading Secret {namespace}/{name} failed: {_describe(exc)}") from None
        meta = secret.metadata
        text, undecodable = decode_secret_data({k: str(v) for k, v in (secret.data or {}).items()})
        return SecretData(
            resource_version=(meta.resource_version if meta else None) or "",
            data=text,
            undecodable=undecodable,
        )

    async def read_connection(self, namespace: str, name: str) -> dict[str, Any] | None:
        """An OctopusDeployConnection as the API server has it now (the ``ConnectionReader`` port of ``sync``)."""
        try:
            body = await asyncio.to_thread(
                self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubeError(f"reading OctopusDeployConnection {namespace}/{name} failed: {_describe(exc)}") from None
        return dict(body) if isinstance(body, dict) else None

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, plural: str = PLURAL
    ) -> dict[str, Any] | None:
        """Merge-patch the status; return the object as stored afterwards (None when it is gone)."""
        try:
            stored = await asyncio.to_thread(
                self._custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                {"status": dict(status)},
                field_manager="octoconn",
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status == 404:
                return None  # deleted meanwhile: nothing left to record
            raise KubeError(f"patching status of {namespace}/{name} failed: {_describe(exc)}") from None
        return stored if isinstance(stored, dict) else None

    async def service_account_token(self, namespace: str, name: str, *, audience: str | None, ttl_seconds: int) -> str:
        """A short-lived token for the ServiceAccount (TokenRequest), as Infisical's own operator sends."""
        body = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[audience] if audience else [],
                expiration_seconds=ttl_seconds,
            )
        )
        try:
            result = await asyncio.to_thread(self._core.create_namespaced_service_account_token, name, namespace, body)
        except ApiException as exc:
            raise KubeError(f"TokenRequest for ServiceAccount {namespace}/{name} failed: {_describe(exc)}") from None
        if result.status is None or not result.status.token:
            raise KubeError(f"TokenRequest for ServiceAccount {namespace}/{name} returned no token")
        return str(result.status.token)

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]


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
