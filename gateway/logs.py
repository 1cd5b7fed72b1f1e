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


# --- structured logs ----------------------------------------------------------------------
#
# `configure(config)` (called by `tollgate serve`) picks the format: `text` (the default,
# human-readable) or `json` (one object per line: ts, level, logger, message, request_id
# and, on access lines, method, path, status, outcome, duration_ms, paygate, rail, units,
# payer). TOLLGATE_LOG_FORMAT=json|text overrides `[logging] format`.
#
# What is never logged: origin secrets, the master key, settler/spender/facilitator keys
# (every value of an environment variable the config names is redacted from every line,
# should one ever reach a message), session tokens and payment headers (no code logs
# request headers; the access line has the path without its query string).

import datetime as _dt
import json as _json
import os as _os

_ACCESS_FIELDS = ("method", "path", "status", "outcome", "duration_ms", "paygate", "rail",
                  "units", "payer")
_REDACTED = "[redacted]"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        for name in _ACCESS_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _json.dumps(out, ensure_ascii=False, default=str)


class _Context(logging.Filter):
    """Adds the current request's id to every record written while serving it, and
    redacts the configured secrets from the rendered line."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            from gateway.request_context import current_request_id
            record.request_id = current_request_id.get()
        if self.secrets:
            message = record.getMessage()
            clean = self.redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return True

    def redact(self, text: str) -> str:
        """`text` with every configured secret replaced (the whole of what this filter
        changes in a line of the text format, which prints no request id)."""
        for secret in self.secrets:
            text = text.replace(secret, _REDACTED)
        return text


_CONTEXT = _Context()


def _secret_values(config) -> set[str]:
    names = {config.database.master_key_env}
    names |= {pg.origin_auth.secret_env for pg in config.paygates if pg.origin_auth.secret_env}
    for net in config.evm.values():
        names |= {net.settler_key_env, net.facilitator_api_key_env}
    if config.hedera is not None:
        names.add(config.hedera.private_key_env)
    names.add(config.facilitator.api_key_env)
    values = {_os.environ.get(n, "") for n in names if n}
    return {v for v in values if len(v) >= 8}  # a short value would redact common words


def configure(config) -> None:
    """Apply `[logging]` to the root logger's handlers (idempotent)."""
    fmt = (_os.environ.get("TOLLGATE_LOG_FORMAT") or config.logging.format).lower()
    root = logging.getLogger()
    root.setLevel(config.logging.level)
    _CONTEXT.secrets = _secret_values(config)
    for handler in root.handlers:
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
        if _CONTEXT not in handler.filters:
            handler.addFilter(_CONTEXT)
    # tollgate.access says more (request id, paygate, rail, outcome) and never logs the
    # query string: aiohttp's own access line would repeat it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("tollgate.access").setLevel(logging.INFO)


# Until `configure` runs (tests, the demo), the per-request access line stays quiet.
logging.getLogger("tollgate.access").setLevel(logging.WARNING)
