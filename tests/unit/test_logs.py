"""The operator's log stays about its resources: Kopf's routine per-event success lines are dropped at INFO."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from octoconn.logs import tame_noisy_loggers


@pytest.fixture
def kopf_objects() -> Iterator[list[str]]:
    logger = logging.getLogger("kopf.objects")
    seen: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    level, filters = logger.level, list(logger.filters)
    logger.setLevel(logging.DEBUG)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.filters[:] = filters


def test_routine_handler_success_is_not_logged_at_info(kopf_objects: list[str]) -> None:
    tame_noisy_loggers(debug=False)
    logger = logging.getLogger("kopf.objects")
    logger.info("Handler 'wake-on-secret' succeeded.")
    logger.info("Indexer 'by_secret' succeeded.")
    logger.info("Handler 'finalize' succeeded.")  # not routine: a deletion finished
    logger.error("Handler 'wake-on-secret' failed with an exception.")
    assert kopf_objects == ["Handler 'finalize' succeeded.", "Handler 'wake-on-secret' failed with an exception."]
