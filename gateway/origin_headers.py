"""The headers the gateway adds to a forwarded request so the origin can tell it is
paid traffic from this gateway. The recipes themselves live in `gateway.origin` (the
library providers use to verify), so both sides share one definition."""

from __future__ import annotations

from gateway.origin import (
    CONTEXT_HEADERS,
    DEFAULT_HEADER_PREFIX,
    HEADER_CONTEXT,
    HEADER_PLAN,
    OPTIONAL_CONTEXT_HEADERS,
    context_signature,
    hmac_signature,
    request_canonical_from_digest,
    request_header_names,
    request_signature_from_digest,
    signature_of_canonical,
)
from store.ids import random_hex


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
    sign_request: bool = True,
    header_prefix: str = DEFAULT_HEADER_PREFIX,
    legacy_path_line: bool = False,
    plan: str | None = None,
) -> dict[str, str]:
    """The payment context, the mode's own header (Sigwei recipes), and, in `request`
    mode or when `sign_request` is set, the `request`-mode signature under
    `header_prefix` plus X-Tollgate-Context binding the context to this request.
    `path_qs` is the request target exactly as sent to the origin; `body_sha256_hex`
    the digest of the body sent (ignored when nothing is signed). `plan`, the plan of a
    call paid from a prepaid token, is sent as X-Tollgate-Plan and bound in the context
    (a call without one keeps the context it always had)."""
    headers = {
        "X-Tollgate-Payer": payer,
        "X-Tollgate-Paygate": paygate_id,
        "X-Tollgate-Units": str(units),
    }
    if remaining is not None:
        headers["X-Tollgate-Remaining"] = str(remaining)
    if plan:
        headers[HEADER_PLAN] = plan
    if x_payment:
        headers["X-Payment"] = x_payment
    if x_payment_response:
        headers["X-Payment-Response"] = x_payment_response
    if mode == "hmac":
        headers["Sigwei-Auth-Signature"] = hmac_signature(secret, x_payment, x_payment_response)
    elif mode == "plaintext":
        headers["Sigwei-Secret"] = secret
    elif mode != "request":  # config validation makes this unreachable
        raise ValueError(f"unknown origin auth mode {mode!r}")
    if mode != "request" and not sign_request:
        return headers
    context = {name: headers[name] for name in CONTEXT_HEADERS + OPTIONAL_CONTEXT_HEADERS
               if name in headers}
    ts = str(int(now))
    request_id = random_hex()
    sig_name, ts_name, id_name = request_header_names(header_prefix)
    headers[ts_name] = ts
    headers[id_name] = request_id
    canonical = request_canonical_from_digest(method, path_qs, ts, request_id, body_sha256_hex)
    if legacy_path_line:  # the signature's canonical string differs from the context's
        headers[sig_name] = request_signature_from_digest(
            secret, method, path_qs, ts, request_id, body_sha256_hex, legacy_path_line=True)
    else:  # the same canonical string: built (and checked) once
        headers[sig_name] = signature_of_canonical(secret, canonical)
    headers[HEADER_CONTEXT] = context_signature(secret, canonical, context)
    return headers
