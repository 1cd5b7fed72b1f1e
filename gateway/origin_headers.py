"""The headers the gateway adds to a forwarded request so the origin can tell it is
paid traffic from this gateway. The recipes themselves live in `gateway.origin` (the
library providers use to verify), so both sides share one definition."""

from __future__ import annotations

import secrets as _random

from gateway.origin import hmac_signature, request_signature_from_digest


def origin_auth_headers(
    *,
    mode: str,
    secret: str,
    paygate_id: str,
    units: int,
    payer: str,
    x_payment: str,
    x_payment_response: str,
    remaining: int | None,
    method: str,
    path_qs: str,
    body_sha256_hex: str,
    now: float,
) -> dict[str, str]:
    headers = {
        "X-Tollgate-Payer": payer,
        "X-Tollgate-Paygate": paygate_id,
        "X-Tollgate-Units": str(units),
    }
    if remaining is not None:
        headers["X-Tollgate-Remaining"] = str(remaining)
    if x_payment:
        headers["X-Payment"] = x_payment
    if x_payment_response:
        headers["X-Payment-Response"] = x_payment_response
    if mode == "hmac":
        headers["Sigwei-Auth-Signature"] = hmac_signature(secret, x_payment, x_payment_response)
    elif mode == "plaintext":
        headers["Sigwei-Secret"] = secret
    elif mode == "request":
        ts = str(int(now))
        request_id = _random.token_hex(16)
        headers["X-Tollgate-Timestamp"] = ts
        headers["X-Tollgate-Request-Id"] = request_id
        headers["X-Tollgate-Signature"] = request_signature_from_digest(
            secret, method, path_qs, ts, request_id, body_sha256_hex)
    else:  # config validation makes this unreachable
        raise ValueError(f"unknown origin auth mode {mode!r}")
    return headers
