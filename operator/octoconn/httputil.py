"""Small helpers shared by the HTTP clients (``octopus``, ``infisical``, ``kube``): reading error bodies and keeping
secrets out of the messages built from them."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from typing import Any

import httpx

if importlib.util.find_spec("sniffio") is None:
    # httpcore imports sniffio each time it sets up a lock, and a missing module is looked for again on every try: a
    # scan of sys.path per request, 15 % of the operator's CPU in the benchmark's profile. None in sys.modules makes
    # the import fail at once, and httpcore then assumes asyncio, which is what runs here.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

# A value this short is no credential worth hiding, and replacing it would shred the message.
_MIN_SCRUBBED_LENGTH = 6


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (HTML error pages, empty bodies, arrays)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def describe(exc: BaseException) -> str:
    """``"ConnectError: ..."``: the exception's type and text, for transport failures."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every secret that occurs in ``text`` with ``***``."""
    for secret in secrets:
        secret = (secret or "").strip()
        if len(secret) >= _MIN_SCRUBBED_LENGTH:
            text = text.replace(secret, "***")
    return text
