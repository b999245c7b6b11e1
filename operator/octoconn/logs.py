"""Logging set-up on top of Kopf's: quiet the per-event noise that would drown the useful lines at scale.

Kopf logs "<handler> succeeded." at INFO for every object event. For the Secret watch and the index, that is one
line per Secret change in the whole cluster, so those lines move to DEBUG. httpx logs every request at INFO;
the operator's own lines already say what was called and why.
"""

from __future__ import annotations

import logging
import re

_ROUTINE = re.compile(r"^(Indexer|Handler) '(by_secret|by_connection|wake-on-secret|wake-on-change)' succeeded\.$")


class _RoutineSuccessFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and _ROUTINE.match(record.getMessage()))


def tame_noisy_loggers(*, debug: bool) -> None:
    if debug:
        return
    logging.getLogger("kopf.objects").addFilter(_RoutineSuccessFilter())
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
