"""Webhook signatures, for the gateway that sends them and the receiver that checks them.
Standard library only (re-exported by `gateway.origin`), so a provider can copy it.

    X-Tollgate-Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

A receiver calls `verify_webhook(secrets, header, body)` with the raw body bytes and one
secret or several (current and previous, during a rotation); it returns the timestamp or
raises `WebhookSignatureError`. Deliveries also carry `X-Tollgate-Webhook-Id` (the event
id, the same on every retry: use it to ignore a repeat) and `X-Tollgate-Webhook-Event`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Iterable

SIGNATURE_HEADER = "X-Tollgate-Webhook-Signature"
ID_HEADER = "X-Tollgate-Webhook-Id"
EVENT_HEADER = "X-Tollgate-Webhook-Event"
DEFAULT_WEBHOOK_TOLERANCE = 300


class WebhookSignatureError(Exception):
    """The delivery is not from the gateway, or too old/new to accept."""


def _mac(secret: str | bytes, timestamp: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign_webhook(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body` sent at `timestamp` (default: now)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={ts},v1={_mac(secret, ts, body)}"


def verify_webhook(secrets: str | bytes | Iterable[str | bytes], header: str | None,
                   body: bytes, tolerance: int = DEFAULT_WEBHOOK_TOLERANCE,
                   now: float | None = None) -> int:
    """Check a delivery: the header's timestamp within `tolerance` seconds of `now` and
    one of its `v1` signatures made with one of `secrets` over `"<t>.<body>"`. Returns
    the timestamp; raises WebhookSignatureError otherwise."""
    keys = [secrets] if isinstance(secrets, (str, bytes)) else list(secrets)
    if not keys:
        raise WebhookSignatureError("no secret to verify with")
    ts_text, given = None, []
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            ts_text = value
        elif name == "v1":
            given.append(value.lower())
    if not ts_text or not given:
        raise WebhookSignatureError("malformed signature header")
    if not (ts_text.isascii() and ts_text.isdigit()):
        raise WebhookSignatureError("malformed timestamp")
    ts = int(ts_text)
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        raise WebhookSignatureError("timestamp outside the tolerance")
    expected = [_mac(k, ts, body) for k in keys]
    if not any([hmac.compare_digest(e, g) for e in expected for g in given]):
        raise WebhookSignatureError("signature does not match")
    return ts
