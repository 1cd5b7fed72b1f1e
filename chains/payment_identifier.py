"""The x402 `payment-identifier` extension: a client-chosen id that makes a payment
idempotent (same id + same payment -> the cached response; same id + another payment ->
409). Pure functions."""

from __future__ import annotations

import re
from typing import Any

from chains.x402_errors import INVALID_PAYMENT_IDENTIFIER, X402Error

PAYMENT_IDENTIFIER = "payment-identifier"
_PAYMENT_ID = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def payment_identifier(extensions: dict[str, Any] | None) -> str | None:
    """The client's ``extensions["payment-identifier"]["info"]["id"]``, or None if absent.

    Raises ``invalid_payment_identifier`` when the extension is present but
    malformed or the id is not 16-128 characters of ``[A-Za-z0-9_-]``.
    """
    if not extensions or PAYMENT_IDENTIFIER not in extensions:
        return None
    ext = extensions[PAYMENT_IDENTIFIER]
    info = ext.get("info") if isinstance(ext, dict) else None
    if not isinstance(info, dict):
        raise X402Error(INVALID_PAYMENT_IDENTIFIER, "payment-identifier needs an 'info' object")
    pid = info.get("id")
    if pid is None:
        return None
    if not isinstance(pid, str) or not _PAYMENT_ID.match(pid):
        raise X402Error(INVALID_PAYMENT_IDENTIFIER, "payment id must be 16-128 chars of [A-Za-z0-9_-]")
    return pid


def declare_payment_identifier(required: bool = False) -> dict[str, Any]:
    """The server's ``extensions["payment-identifier"]`` declaration for a 402."""
    return {
        "info": {"required": required},
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "required": {"type": "boolean"},
                "id": {"type": "string", "minLength": 16, "maxLength": 128, "pattern": "^[a-zA-Z0-9_-]+$"},
            },
            "required": ["required"],
        },
    }
