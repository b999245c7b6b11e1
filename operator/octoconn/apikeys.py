"""Reading an Octopus API key out of a Kubernetes Secret: one function for every caller, so a connection and the
secret syncs that use it never disagree about what the key is.

Trimmed the way Infisical trims (JavaScript's ``String.prototype.trim``, which also drops a UTF-8 byte-order mark):
an editor's mark or a trailing newline is not part of the key, and a key Infisical would store differently must not
be compared or sent as it was typed. Decisions only: the Secret is read by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from octoconn import errors
from octoconn.text import js_trim


@dataclass(frozen=True)
class SecretData:
    resource_version: str
    data: Mapping[str, str]  # decoded values
    # Keys whose value is not UTF-8 text -> a guess at what it is ("UTF-16", "binary"); never the value itself.
    undecodable: Mapping[str, str] = field(default_factory=dict)


def api_key_from(secret: SecretData, *, namespace: str, name: str, key: str) -> str:
    """The trimmed key; raises ``MalformedApiKey`` or ``SecretKeyMissing`` with what to fix."""
    undecodable = secret.undecodable.get(key)
    if undecodable is not None:
        raise errors.MalformedApiKey(not_text_message(namespace, name, key, undecodable))
    api_key = js_trim(secret.data.get(key, ""))
    if not api_key:
        keys = ", ".join(sorted({*secret.data, *secret.undecodable})) or "none"
        raise errors.SecretKeyMissing(
            f'Secret {namespace}/{name} has no non-empty key "{key}" (keys present: {keys}). '
            "Add the API key there or set spec.apiKeySecretRef.key."
        )
    return api_key


def not_text_message(namespace: str, secret: str, key: str, looks_like: str) -> str:
    message = (
        f'Secret {namespace}/{secret} has the key "{key}", but its value is not UTF-8 text (it looks like '
        f"{looks_like}). Save the API key as plain UTF-8 or ASCII text and put it in the Secret again"
    )
    if looks_like == "UTF-16":
        message += (
            ", e.g. iconv -f UTF-16 -t UTF-8 key.txt > key-utf8.txt, then kubectl create secret generic "
            f"{secret} -n {namespace} --from-file={key}=key-utf8.txt --dry-run=client -o yaml | kubectl apply -f -"
        )
    return message + "."
