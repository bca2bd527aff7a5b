"""One log line for a malformed HTTP request, on the device's page and the district
dashboard alike (both serve with aiohttp)."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError


class OneLineBadRequests(logging.Filter):
    """aiohttp logs a malformed request (a client's doing, already answered 400) at ERROR
    with its traceback, some twenty lines a request: a client could fill journald's rate
    limit and hide the server's own messages. One WARNING line says the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | ConnectionError):
            what = str(getattr(exc, "message", "") or exc).strip().splitlines() or [""]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {what[0][:100]}"
            record.args, record.exc_info, record.exc_text = None, None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def one_line_bad_requests() -> None:
    """Put the filter on aiohttp's server logger, once however many servers start."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, OneLineBadRequests) for f in logger.filters):
        logger.addFilter(OneLineBadRequests())
