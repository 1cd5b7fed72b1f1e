"""X-PAY request signing for the admin API (`/api/v1/`).

Every request carries `X-PAY-Key: pk_<24 hex>`, `X-PAY-Timestamp` (unix seconds) and
`X-PAY-Signature` = lowercase hex HMAC-SHA256(secret, `<ts>.<METHOD>.<path>.<sha256hex(body)>`)
where path is the request path as sent, without the query, and body the exact bytes sent.
Header names are matched without regard to case (HTTP says so; HTTP/2 lowercases them).

Refusals are 401 with exactly: `missing auth headers`, `timestamp out of range` (|now - ts|
> 300 s, or not a number), `invalid signature` (unknown, revoked or wrong key or secret:
which one is not said). A valid signature is accepted once: a second use inside the
window is refused with `signature already used`; the record is shared by every instance
on the database and kept until the timestamp leaves the window.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from aiohttp import web

from gateway.errors import Unauthorized
from store.api_keys import ApiKey, first_use

WINDOW_SECONDS = 300
_KEY_ID = re.compile(r"pk_[0-9a-f]{24}")
_TIMESTAMP = re.compile(r"\d{1,12}")

ADMIN_KEY = web.RequestKey("admin_key", ApiKey)
PUBLIC_PATHS = frozenset({"/api/v1/openapi.json"})


def signing_string(timestamp: str, method: str, path: str, body: bytes,
                   body_sha256: str | None = None) -> bytes:
    digest = body_sha256 or hashlib.sha256(body).hexdigest()
    return f"{timestamp}.{method.upper()}.{path}.{digest}".encode()


def sign(secret: str, timestamp: str, method: str, path: str, body: bytes,
         body_sha256: str | None = None) -> str:
    """The X-PAY-Signature of a request (what a client computes)."""
    return hmac.new(secret.encode(), signing_string(timestamp, method, path, body, body_sha256),
                    hashlib.sha256).hexdigest()


def _refuse(text: str) -> Unauthorized:
    return Unauthorized(text, headers={"WWW-Authenticate": 'X-PAY realm="admin"'})


def check_headers(request: web.Request, now: float) -> None:
    """The signature headers are present and the timestamp in the window (before a
    streamed body is read at all)."""
    timestamp = request.headers.get("X-PAY-Timestamp", "").strip()
    if not request.headers.get("X-PAY-Key", "").strip() or not timestamp or \
            not request.headers.get("X-PAY-Signature", "").strip():
        raise _refuse("missing auth headers")
    if not _TIMESTAMP.fullmatch(timestamp) or abs(now - int(timestamp)) > WINDOW_SECONDS:
        raise _refuse("timestamp out of range")


async def check_key(request: web.Request, keys) -> None:
    """The signing key exists and is active: checked before a large body is streamed in,
    so only a key holder's uploads reach the disk (the signature is checked after)."""
    key_id = request.headers.get("X-PAY-Key", "").strip()
    if not _KEY_ID.fullmatch(key_id) or await keys.active(key_id) is None:
        raise _refuse("invalid signature")


async def authenticate(request: web.Request, keys, engine, now: float,
                       body_sha256: str | None = None) -> ApiKey:
    """The key that signed `request`, or Unauthorized with the documented text.
    `body_sha256`: the digest of a body the caller has already streamed elsewhere (the
    body is then not read here)."""
    key_id = request.headers.get("X-PAY-Key", "").strip()
    timestamp = request.headers.get("X-PAY-Timestamp", "").strip()
    signature = request.headers.get("X-PAY-Signature", "").strip().lower()
    if not key_id or not timestamp or not signature:
        raise _refuse("missing auth headers")
    if not _TIMESTAMP.fullmatch(timestamp) or abs(now - int(timestamp)) > WINDOW_SECONDS:
        raise _refuse("timestamp out of range")
    body = b"" if body_sha256 else await request.read()
    found = await keys.active(key_id) if _KEY_ID.fullmatch(key_id) else None
    path = request.raw_path.split("?", 1)[0]
    ok = False
    for secret in (found.secrets if found else ["\0"]):  # same work for unknown keys
        expected = sign(secret, timestamp, request.method, path, body, body_sha256)
        ok |= hmac.compare_digest(expected, signature)
    if found is None or not ok:
        raise _refuse("invalid signature")
    if not await first_use(engine, signature, int(timestamp) + WINDOW_SECONDS + 1):
        raise _refuse("signature already used")
    return found.key
