"""Logging the gateway sets up for itself.

aiohttp logs every request its HTTP parser refuses (bad request line, bad header bytes,
oversize headers) at ERROR with a traceback, before any gateway code runs. Those are the
client's fault and answered 400 already; at ERROR they would let anyone flood the logs and
drown real errors, so they go to DEBUG.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError


class _MalformedRequestsToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_FILTER = _MalformedRequestsToDebug()


def quiet_malformed_requests() -> None:
    """Idempotent: install the filter on aiohttp's server logger once."""
    server = logging.getLogger("aiohttp.server")
    if _FILTER not in server.filters:
        server.addFilter(_FILTER)
