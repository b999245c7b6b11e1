"""Text rules that clients and decisions share, so that neither has to import the other for them."""

from __future__ import annotations

import re

# JavaScript's String.prototype.trim, which Infisical's schemas apply: Unicode spaces and the byte-order mark.
_JS_TRIM = re.compile(r"^[\s\ufeff]+|[\s\ufeff]+$")


def js_trim(text: str) -> str:
    """``text`` trimmed as Infisical trims what it is given: an API key the operator sends matches what it stores."""
    return _JS_TRIM.sub("", text)
