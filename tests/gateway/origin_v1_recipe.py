"""Reference: the v1 `request`-mode verifier, as providers copied it from the first
release of gateway.origin (standard library only, trimmed to that one function).

Kept verbatim in behaviour, independent of today's gateway.origin, so tests can show that
an origin still running this copy accepts what the gateway signs now. Note the v1 recipe:
the path line is the path alone when the query is empty.
"""

from __future__ import annotations

import hashlib
import hmac
import time


class V1AuthError(Exception):
    pass


def _normalize_path_qs(path_qs: str) -> str:
    return path_qs[:-1] if path_qs.endswith("?") else path_qs


def _canonical(method: str, path_qs: str, ts: str, request_id: str, digest: str) -> bytes:
    parts = (method.upper(), _normalize_path_qs(path_qs), ts, request_id, digest)
    if any("\n" in p or "\r" in p for p in parts):
        raise ValueError("canonical request components may not contain newlines")
    return "\n".join(parts).encode("utf-8")


def verify_request(method: str, path_qs: str, headers, body: bytes, secrets: list[str],
                   now: float | None = None, tolerance: int = 300) -> str:
    """Returns the request id; raises V1AuthError(reason)."""
    h: dict[str, str] = {}
    for name, value in headers.items():
        h.setdefault(name.lower(), value)
    given = (h.get("x-tollgate-signature") or "").strip()
    if not given:
        raise V1AuthError("missing_signature")
    ts = (h.get("x-tollgate-timestamp") or "").strip()
    if not ts:
        raise V1AuthError("missing_timestamp")
    if not (ts.isascii() and ts.isdigit()):
        raise V1AuthError("bad_timestamp")
    current = time.time() if now is None else now
    if abs(current - int(ts)) > tolerance:
        raise V1AuthError("timestamp_out_of_range")
    request_id = h.get("x-tollgate-request-id") or ""
    if not request_id:
        raise V1AuthError("missing_request_id")
    if not given.startswith("v1="):
        raise V1AuthError("bad_signature")
    digest = hashlib.sha256(body or b"").hexdigest()
    expected = ["v1=" + hmac.new(k.encode("utf-8"), _canonical(method, path_qs, ts, request_id,
                                                               digest), hashlib.sha256).hexdigest()
                for k in secrets if k]
    if not any(hmac.compare_digest(e.encode(), given.lower().encode()) for e in expected):
        raise V1AuthError("bad_signature")
    return request_id
