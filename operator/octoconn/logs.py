"""Logging set-up on top of Kopf's: quiet the per-event noise that would drown the useful lines at scale.

Kopf logs "<handler> succeeded." at INFO for every object event it hands to a handler. For the Secret watch (only
Secrets that a resource references reach it, see handlers.py) and the indexes, those lines are routine, so they are
dropped below DEBUG. httpx logs every request at INFO;
the operator's own lines already say what was called and why.
"""

from __future__ import annotations

import logging
import re

_ROUTINE = re.compile(r"^(Indexer|Handler) '(by_secret|by_connection|wake-on-secret|watch-connections)' succeeded\.$")


class _RoutineSuccessFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and _ROUTINE.match(record.getMessage()))


def tame_noisy_loggers(*, debug: bool) -> None:
    if debug:
        return
    logging.getLogger("kopf.objects").addFilter(_RoutineSuccessFilter())
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
