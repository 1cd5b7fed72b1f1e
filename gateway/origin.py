"""Origin auth: how the gateway signs forwarded requests and how origins verify them.

This module is the single source of truth for the three origin-auth recipes. The
gateway calls the signing functions; providers call the verifiers (or use the
ready-made middleware). It uses the Python standard library only, so a provider
may import it or copy this one file; aiohttp is imported lazily, and only by
``aiohttp_middleware``.

Provider quick start (aiohttp)::

    from aiohttp import web
    from gateway.origin import aiohttp_middleware

    async def flights(request):
        paid = request["tollgate"]          # a GatewayPayment
        return web.json_response({"payer": paid.payer, "units": paid.units})

    app = web.Application(middlewares=[aiohttp_middleware(["<current>", "<previous>"])])
    app.router.add_get("/flights", flights)
    web.run_app(app)

ASGI apps: ``app = ASGIMiddleware(app, secrets)``; the payment is then in
``scope["state"]["tollgate"]`` (``request.state.tollgate`` in Starlette). The
middlewares default to ``request`` mode and keep a per-process cache of request ids
to refuse replays. Anything else: call ``verify(mode, method, path_qs, headers, body,
secrets, replay_cache=cache)`` and answer 403 when it raises ``OriginAuthError``.

Recipes (secrets are strings; the HMAC key is ``secret.encode("utf-8")``):

* ``hmac``: ``Sigwei-Auth-Signature: base64(HMAC-SHA256(secret,
  X-Payment + "|" + X-Payment-Response))``, standard base64, a missing payment
  header counting as the empty string.
* ``plaintext``: ``Sigwei-Secret: <secret>``.
* ``request``: canonical = ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nREQUEST_ID\\n
  sha256hex(body)`` (METHOD upper-cased; the ``?`` is there even when the query is
  empty, as PayFence builds it), sent as ``X-Tollgate-Timestamp`` (unix seconds),
  ``X-Tollgate-Request-Id`` and ``X-Tollgate-Signature: v1=<hex HMAC-SHA256(secret,
  canonical)>``. Origins reject ``|now - timestamp| > tolerance`` (300 s by default)
  and may refuse a request id seen before (``ReplayCache``). ``header_prefix =
  "X-PayFence"`` renames the three headers (``X-PayFence-Signature`` ...). For a
  transition period the verifier also accepts the first release's path line (the path
  alone when the query is empty).
* Payment context: ``X-Tollgate-Payer``, ``X-Tollgate-Paygate``, ``X-Tollgate-Units``,
  ``X-Tollgate-Remaining`` (sessions), ``X-Payment`` and ``X-Payment-Response`` are
  bound to the request by ``X-Tollgate-Context: v1=<hex HMAC-SHA256(secret,
  "tollgate-context-v1\\n" + canonical + "\\n" + six lines)>``, canonical being the
  ``request`` string above (with the ``?``) and the lines, in that header order,
  ``name:value`` (lower-case name) or just ``name`` when the header is absent or
  empty. A call paid from a prepaid token also carries ``X-Tollgate-Plan``, bound by a
  seventh line ``x-tollgate-plan:<plan id>`` appended only when that header is sent
  (non-empty): the context of a call without a plan is the six lines, unchanged.
  ``X-Tollgate-Signature`` itself is unchanged, so earlier copies of this verifier
  still accept it. The verifier requires ``X-Tollgate-Context`` whenever a context
  header is present.

In ``hmac`` and ``plaintext`` modes the gateway sends the ``request``-mode headers and
the context binding too (the Sigwei recipes have no timestamp: a captured header set
would verify forever), and ``verify`` requires them unless
``require_request_headers=False`` (for origins behind a Sigwei-only gateway; they then
check the headers only when present, and the unsigned ``X-Tollgate-*`` claims are
reported as None).

``PATH?QUERY`` is the request target exactly as it travels on the wire to the
origin (still percent-encoded), so the gateway must sign the path the origin will
see, including any base path of the upstream URL.

Webhook receivers: ``verify_webhook(secrets, header, body, tolerance=300)`` checks
``X-Tollgate-Webhook-Signature: t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`` over
the raw body, with one secret or several (current and previous during a rotation);
deliveries also carry ``X-Tollgate-Webhook-Id`` (the event id, the same on every retry:
use it to ignore a repeat) and ``X-Tollgate-Webhook-Event``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, Sequence, Union
from urllib.parse import quote

__all__ = [
    "verify_webhook",
    "sign_webhook",
    "WebhookSignatureError",
    "WEBHOOK_SIGNATURE_HEADER",
    "WEBHOOK_ID_HEADER",
    "WEBHOOK_EVENT_HEADER",
    "MODES",
    "HEADER_PAYMENT",
    "HEADER_PAYMENT_RESPONSE",
    "HEADER_HMAC_SIGNATURE",
    "HEADER_PLAINTEXT_SECRET",
    "HEADER_TIMESTAMP",
    "HEADER_REQUEST_ID",
    "HEADER_SIGNATURE",
    "HEADER_PAYER",
    "HEADER_PAYGATE",
    "HEADER_UNITS",
    "HEADER_REMAINING",
    "HEADER_CONTEXT",
    "CONTEXT_HEADERS",
    "DEFAULT_HEADER_PREFIX",
    "DEFAULT_TOLERANCE",
    "OriginAuthError",
    "GatewayPayment",
    "ReplayCache",
    "request_header_names",
    "context_signature",
    "hmac_signature",
    "request_canonical",
    "request_canonical_from_digest",
    "request_signature",
    "request_signature_from_digest",
    "decode_payment_header",
    "verify_hmac",
    "verify_plaintext",
    "verify_request",
    "verify",
    "aiohttp_middleware",
    "ASGIMiddleware",
]

MODES = ("hmac", "plaintext", "request")

HEADER_PAYMENT = "X-Payment"
HEADER_PAYMENT_RESPONSE = "X-Payment-Response"
HEADER_HMAC_SIGNATURE = "Sigwei-Auth-Signature"
HEADER_PLAINTEXT_SECRET = "Sigwei-Secret"
HEADER_TIMESTAMP = "X-Tollgate-Timestamp"
HEADER_REQUEST_ID = "X-Tollgate-Request-Id"
HEADER_SIGNATURE = "X-Tollgate-Signature"
HEADER_PAYER = "X-Tollgate-Payer"
HEADER_PAYGATE = "X-Tollgate-Paygate"
HEADER_UNITS = "X-Tollgate-Units"
HEADER_REMAINING = "X-Tollgate-Remaining"
HEADER_CONTEXT = "X-Tollgate-Context"
HEADER_PLAN = "X-Tollgate-Plan"
# The payment context bound by HEADER_CONTEXT, in the order its lines are signed.
CONTEXT_HEADERS = (HEADER_PAYER, HEADER_PAYGATE, HEADER_UNITS, HEADER_REMAINING,
                   HEADER_PAYMENT, HEADER_PAYMENT_RESPONSE)
# Bound after those, each as one more line only when sent, so that the context of a call
# without them is what it always was (verifiers from before them still accept it).
OPTIONAL_CONTEXT_HEADERS = (HEADER_PLAN,)
CONTEXT_DOMAIN = "tollgate-context-v1"
DEFAULT_HEADER_PREFIX = "X-Tollgate"

DEFAULT_TOLERANCE = 300
SIGNATURE_VERSION = "v1="

SecretsArg = Union[str, Sequence[str]]
SecretsSource = Union[SecretsArg, Callable[[], SecretsArg]]

_MESSAGES = {
    "missing_secret": "the origin has no secret configured",
    "missing_signature": "the request carries no gateway signature",
    "bad_signature": "the gateway signature does not match",
    "missing_timestamp": "X-Tollgate-Timestamp is missing",
    "bad_timestamp": "X-Tollgate-Timestamp is not unix seconds",
    "timestamp_out_of_range": "X-Tollgate-Timestamp is too far from the current time",
    "missing_request_id": "X-Tollgate-Request-Id is missing",
    "bad_request_id": "X-Tollgate-Request-Id is malformed",
    "missing_context": "payment context headers came without X-Tollgate-Context",
    "bad_context": "the payment context does not match X-Tollgate-Context",
    "replayed_request": "this request id was already used",
}


class OriginAuthError(Exception):
    """A request failed origin auth. ``reason`` is a stable machine-readable code:
    ``missing_secret``, ``missing_signature``, ``bad_signature``,
    ``missing_timestamp``, ``bad_timestamp``, ``timestamp_out_of_range``,
    ``missing_request_id``, ``bad_request_id``, ``missing_context``, ``bad_context`` or
    ``replayed_request``."""

    def __init__(self, reason: str, message: str | None = None):
        self.reason = reason
        self.message = message or _MESSAGES.get(reason, reason)
        super().__init__(f"{reason}: {self.message}")


@dataclass(frozen=True)
class GatewayPayment:
    """What the gateway told the origin about a verified call.

    ``payment`` / ``payment_response`` are the decoded ``X-Payment`` /
    ``X-Payment-Response`` JSON objects (None when absent or undecodable);
    ``units`` / ``remaining`` are None when absent or not integers; ``plan`` is the
    plan id of a call paid from a prepaid token (None otherwise); ``request_id``
    is set whenever the ``request``-mode headers were verified (origins may use it to
    refuse replays).
    """

    payer: str | None
    paygate: str | None
    units: int | None
    remaining: int | None
    payment: dict | None
    payment_response: dict | None
    mode: str
    request_id: str | None = None
    plan: str | None = None  # the prepaid-token plan of the call, when bound


# --------------------------------------------------------------------------- signing


def _key(secret: str) -> bytes:
    return secret.encode("utf-8")


def hmac_signature(secret: str, x_payment: str, x_payment_response: str) -> str:
    """``hmac`` mode: standard base64 of HMAC-SHA256(secret, x_payment + "|" +
    x_payment_response). Pass "" for a header that is not sent."""
    message = f"{x_payment or ''}|{x_payment_response or ''}".encode("utf-8")
    digest = hmac.digest(_key(secret), message, "sha256")
    return base64.b64encode(digest).decode("ascii")


def _path_line(path_qs: str, legacy: bool = False) -> str:
    # PayFence's recipe: path + "?" + query, the "?" there even for an empty query. The
    # first release signed the path alone then (``legacy``).
    path, _, query = path_qs.partition("?")
    if legacy:
        return f"{path}?{query}" if query else path
    return f"{path}?{query}"


def request_header_names(prefix: str = DEFAULT_HEADER_PREFIX) -> tuple[str, str, str]:
    """(signature, timestamp, request id) header names under ``prefix``."""
    return f"{prefix}-Signature", f"{prefix}-Timestamp", f"{prefix}-Request-Id"


def request_canonical_from_digest(
    method: str, path_qs: str, timestamp: int | str, request_id: str, body_sha256_hex: str,
    *, legacy_path_line: bool = False,
) -> bytes:
    """``request`` mode canonical string from an already computed body digest.

    ``path_qs`` is the percent-encoded request target (path, and ``?query``); the
    path line always has the ``?``, unless ``legacy_path_line`` asks for the first
    release's form (the path alone when the query is empty). ``timestamp`` is unix
    seconds; a string is used verbatim. Raises ValueError when a component contains
    a newline or the digest is not 64 hex digits."""
    ts = str(int(timestamp)) if isinstance(timestamp, int) else str(timestamp)
    digest = body_sha256_hex.lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("body_sha256_hex must be 64 hex digits")
    parts = (method.upper(), _path_line(path_qs, legacy_path_line), ts, request_id, digest)
    if any("\n" in p or "\r" in p for p in parts):
        raise ValueError("canonical request components may not contain newlines")
    return "\n".join(parts).encode("utf-8")


def request_canonical(
    method: str, path_qs: str, timestamp: int | str, request_id: str, body: bytes
) -> bytes:
    """``request`` mode canonical string; see ``request_canonical_from_digest``."""
    return request_canonical_from_digest(
        method, path_qs, timestamp, request_id, hashlib.sha256(body).hexdigest()
    )


def request_signature_from_digest(
    secret: str, method: str, path_qs: str, timestamp: int | str, request_id: str,
    body_sha256_hex: str, *, legacy_path_line: bool = False,
) -> str:
    """``X-Tollgate-Signature`` value ("v1=<hex>") for a body given by its digest."""
    canonical = request_canonical_from_digest(method, path_qs, timestamp, request_id,
                                              body_sha256_hex, legacy_path_line=legacy_path_line)
    return signature_of_canonical(secret, canonical)


def signature_of_canonical(secret: str, canonical: bytes) -> str:
    """``X-Tollgate-Signature`` value ("v1=<hex>") of a canonical string built by
    ``request_canonical_from_digest``."""
    return SIGNATURE_VERSION + hmac.digest(_key(secret), canonical, "sha256").hex()


def _context_message(canonical: bytes, context: Mapping[str, str]) -> bytes:
    h = _lookup(context)
    lines = []
    for name in CONTEXT_HEADERS:
        key = name.lower()
        # empty counts as absent (some proxies drop empty headers; both mean "none")
        lines.append(f"{key}:{h[key]}" if h.get(key) else key)
    for name in OPTIONAL_CONTEXT_HEADERS:
        key = name.lower()
        if h.get(key):  # absent or empty: no line, as before the header existed
            lines.append(f"{key}:{h[key]}")
    text = "\n".join(lines)
    if "\r" in text or text.count("\n") != len(lines) - 1:
        raise ValueError("context header values may not contain newlines")
    return f"{CONTEXT_DOMAIN}\n".encode() + canonical + ("\n" + text).encode("utf-8")


def context_signature(secret: str, canonical: bytes, context: Mapping[str, str]) -> str:
    """``X-Tollgate-Context`` value ("v1=<hex>"): binds the payment context headers in
    ``context`` (any of CONTEXT_HEADERS and OPTIONAL_CONTEXT_HEADERS; others are
    ignored) to the request whose
    ``request`` canonical string (with the ``?`` path line) is ``canonical``."""
    message = _context_message(canonical, context)
    return SIGNATURE_VERSION + hmac.digest(_key(secret), message, "sha256").hex()


def request_signature(
    secret: str, method: str, path_qs: str, timestamp: int | str, request_id: str, body: bytes
) -> str:
    """``X-Tollgate-Signature`` value ("v1=<hex>") for ``body``."""
    return request_signature_from_digest(
        secret, method, path_qs, timestamp, request_id, hashlib.sha256(body).hexdigest()
    )


# --------------------------------------------------------------------------- decoding


def decode_payment_header(value: str) -> dict:
    """Decode an ``X-Payment`` / ``X-Payment-Response`` value: standard base64 of a
    JSON object, missing ``=`` padding tolerated. Raises ValueError otherwise."""
    text = (value or "").strip()
    if not text:
        raise ValueError("empty payment header")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
        data = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"payment header is not base64 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("payment header JSON is not an object")
    return data


# --------------------------------------------------------------------------- verifying


def _lookup(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased header map; the first value wins for repeated names. Accepts a
    plain dict (any case), a multidict, or an iterable of (name, value) pairs."""
    items = headers.items() if hasattr(headers, "items") else headers
    out: dict[str, str] = {}
    for name, value in items:
        out.setdefault(name.lower(), value)
    return out


def _secret_list(secrets: SecretsArg) -> list[str]:
    if isinstance(secrets, str):
        secrets = [secrets]
    usable = [s for s in (secrets or ()) if s]
    if not usable:
        raise OriginAuthError("missing_secret")
    return usable


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8", "replace"))


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _decode_or_none(value: str | None) -> dict | None:
    if not value:
        return None
    try:
        return decode_payment_header(value)
    except ValueError:
        return None


def _payment(h: dict[str, str], mode: str, request_id: str | None = None,
             context_trusted: bool = True) -> GatewayPayment:
    trusted = h if context_trusted else {}
    return GatewayPayment(
        payer=trusted.get(HEADER_PAYER.lower()) or None,
        paygate=trusted.get(HEADER_PAYGATE.lower()) or None,
        units=_int_or_none(trusted.get(HEADER_UNITS.lower())),
        remaining=_int_or_none(trusted.get(HEADER_REMAINING.lower())),
        plan=trusted.get(HEADER_PLAN.lower()) or None,
        payment=_decode_or_none(h.get(HEADER_PAYMENT.lower())),
        payment_response=_decode_or_none(h.get(HEADER_PAYMENT_RESPONSE.lower())),
        mode=mode,
        request_id=request_id,
    )


class ReplayCache:
    """The request ids this process accepted whose timestamps are still inside the
    window, so a captured request replayed within it is refused (``replayed_request``).

    Bounded: past ``capacity`` ids the oldest is forgotten (size it for your peak rate
    times twice the tolerance; the default holds 100 000). Per process: origins running
    several processes or hosts need a shared store to refuse replays across them.
    Thread-safe."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()  # request id -> expiry
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, request_id: str, timestamp: int, now: float, tolerance: int) -> None:
        """Record ``request_id``; raise OriginAuthError("replayed_request") if it was
        recorded before and its timestamp could still pass the window check."""
        with self._lock:
            while self._seen:  # ids that can no longer pass the timestamp check
                oldest = next(iter(self._seen))
                if self._seen[oldest] >= now:
                    break
                del self._seen[oldest]
            expiry = self._seen.get(request_id)
            if expiry is not None and expiry >= now:
                raise OriginAuthError("replayed_request")
            self._seen[request_id] = timestamp + tolerance
            self._seen.move_to_end(request_id)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)


def _sigwei_hmac(h: dict[str, str], keys: list[str]) -> None:
    given = h.get(HEADER_HMAC_SIGNATURE.lower())
    if not given:
        raise OriginAuthError("missing_signature")
    xp = h.get(HEADER_PAYMENT.lower(), "")
    xpr = h.get(HEADER_PAYMENT_RESPONSE.lower(), "")
    # Evaluate every key so timing does not reveal which one matched.
    matches = [_same(hmac_signature(k, xp, xpr), given.strip()) for k in keys]
    if not any(matches):
        raise OriginAuthError("bad_signature")


def _sigwei_plaintext(h: dict[str, str], keys: list[str]) -> None:
    given = h.get(HEADER_PLAINTEXT_SECRET.lower())
    if not given:
        raise OriginAuthError("missing_signature")
    # Compare digests so neither timing nor length reveals the secret.
    given_digest = hashlib.sha256(given.encode("utf-8", "replace")).digest()
    matches = [hmac.compare_digest(hashlib.sha256(_key(k)).digest(), given_digest) for k in keys]
    if not any(matches):
        raise OriginAuthError("bad_signature")


def _sigwei_mode(mode, check, headers, secrets, method, path_qs, body, now, tolerance,
                 replay_cache, header_prefix, require_request_headers) -> GatewayPayment:
    keys = _secret_list(secrets)
    h = _lookup(headers)
    check(h, keys)
    carried = any(name.lower() in h for name in request_header_names(header_prefix))
    if not (carried or require_request_headers):
        # A Sigwei-only request: its recipe signs the payment headers and nothing else,
        # so the X-Tollgate-* claims beside it are not believed.
        return _payment(h, mode, context_trusted=False)
    if method is None or path_qs is None:
        raise ValueError("pass method and path_qs to check the request-mode headers")
    paid = verify_request(method, path_qs, headers, body, keys, now=now, tolerance=tolerance,
                          replay_cache=replay_cache, header_prefix=header_prefix)
    return replace(paid, mode=mode)


def verify_hmac(
    headers: Mapping[str, str],
    secrets: SecretsArg,
    method: str | None = None,
    path_qs: str | None = None,
    body: bytes = b"",
    *,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE,
    replay_cache: "ReplayCache | None" = None,
    header_prefix: str = DEFAULT_HEADER_PREFIX,
    require_request_headers: bool = True,
) -> GatewayPayment:
    """Verify ``hmac`` mode against any of ``secrets`` (current, then previous): the
    Sigwei signature, then the ``request``-mode headers and the context binding (see
    ``verify_request``; ``method``, ``path_qs`` and ``body`` are needed for them).
    ``require_request_headers=False`` accepts a request without them (checking them
    when present); the payer, paygate, units and remaining are then None."""
    return _sigwei_mode("hmac", _sigwei_hmac, headers, secrets, method, path_qs, body, now,
                        tolerance, replay_cache, header_prefix, require_request_headers)


def verify_plaintext(
    headers: Mapping[str, str],
    secrets: SecretsArg,
    method: str | None = None,
    path_qs: str | None = None,
    body: bytes = b"",
    *,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE,
    replay_cache: "ReplayCache | None" = None,
    header_prefix: str = DEFAULT_HEADER_PREFIX,
    require_request_headers: bool = True,
) -> GatewayPayment:
    """Verify ``plaintext`` mode: ``Sigwei-Secret`` equals one of ``secrets``; then as
    ``verify_hmac``. (Whoever sees one forwarded request holds the secret itself.)"""
    return _sigwei_mode("plaintext", _sigwei_plaintext, headers, secrets, method, path_qs,
                        body, now, tolerance, replay_cache, header_prefix,
                        require_request_headers)


def _check_context(h: dict[str, str], keys: list[str], canonical: bytes) -> None:
    given = (h.get(HEADER_CONTEXT.lower()) or "").strip()
    if not given:
        if any(name.lower() in h for name in CONTEXT_HEADERS + OPTIONAL_CONTEXT_HEADERS):
            raise OriginAuthError("missing_context")
        return
    try:
        expected = [context_signature(k, canonical, h) for k in keys]
    except ValueError:
        raise OriginAuthError("bad_context") from None
    if not any([_same(e, given.lower()) for e in expected]):
        raise OriginAuthError("bad_context")


def verify_request(
    method: str,
    path_qs: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: SecretsArg,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE,
    *,
    replay_cache: "ReplayCache | None" = None,
    header_prefix: str = DEFAULT_HEADER_PREFIX,
) -> GatewayPayment:
    """Verify ``request`` mode. ``path_qs`` is the raw (percent-encoded) request
    target as received; ``body`` the complete request body; ``now`` defaults to
    ``time.time()``. The timestamp must lie within ``tolerance`` seconds of now. The
    signature may use either path line (with ``?``, or the first release's). When a
    payment context header is present, ``X-Tollgate-Context`` must bind it. With a
    ``replay_cache``, a request id accepted before is refused."""
    keys = _secret_list(secrets)
    h = _lookup(headers)
    sig_name, ts_name, id_name = (n.lower() for n in request_header_names(header_prefix))
    given = (h.get(sig_name) or "").strip()
    if not given:
        raise OriginAuthError("missing_signature")
    ts = (h.get(ts_name) or "").strip()
    if not ts:
        raise OriginAuthError("missing_timestamp")
    if not (ts.isascii() and ts.isdigit()):
        raise OriginAuthError("bad_timestamp")
    current = time.time() if now is None else now
    if abs(current - int(ts)) > tolerance:
        raise OriginAuthError("timestamp_out_of_range")
    request_id = h.get(id_name) or ""
    if not request_id:
        raise OriginAuthError("missing_request_id")
    if not given.startswith(SIGNATURE_VERSION):
        raise OriginAuthError("bad_signature", "unsupported signature version")
    digest = hashlib.sha256(body or b"").hexdigest()
    try:
        canonical = request_canonical_from_digest(method, path_qs, ts, request_id, digest)
        legacy = request_canonical_from_digest(method, path_qs, ts, request_id, digest,
                                               legacy_path_line=True)
    except ValueError:
        raise OriginAuthError("bad_request_id") from None
    expected = [SIGNATURE_VERSION + hmac.digest(_key(k), c, "sha256").hex()
                for k in keys for c in {canonical, legacy}]
    if not any([_same(e, given.lower()) for e in expected]):
        raise OriginAuthError("bad_signature")
    _check_context(h, keys, canonical)
    if replay_cache is not None:  # only once everything verified: forgeries record nothing
        replay_cache.check_and_add(request_id, int(ts), current, tolerance)
    return _payment(h, "request", request_id)


def verify(
    mode: str,
    method: str,
    path_qs: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: SecretsArg,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE,
    *,
    replay_cache: "ReplayCache | None" = None,
    header_prefix: str = DEFAULT_HEADER_PREFIX,
    require_request_headers: bool = True,
) -> GatewayPayment:
    """Verify a request in ``mode`` ("hmac", "plaintext" or "request"); raises
    OriginAuthError on failure and ValueError for an unknown mode.
    ``require_request_headers`` only matters in ``hmac`` and ``plaintext`` modes."""
    opts = {"now": now, "tolerance": tolerance, "replay_cache": replay_cache,
            "header_prefix": header_prefix}
    if mode == "hmac":
        return verify_hmac(headers, secrets, method, path_qs, body,
                           require_request_headers=require_request_headers, **opts)
    if mode == "plaintext":
        return verify_plaintext(headers, secrets, method, path_qs, body,
                                require_request_headers=require_request_headers, **opts)
    if mode == "request":
        return verify_request(method, path_qs, headers, body, secrets, **opts)
    raise ValueError(f"unknown origin auth mode {mode!r}; expected one of {MODES}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown origin auth mode {mode!r}; expected one of {MODES}")


def _resolve(secrets: SecretsSource) -> SecretsArg:
    return secrets() if callable(secrets) else secrets


def _error_body(err: OriginAuthError) -> dict[str, str]:
    return {"error": err.reason, "message": err.message}


def _cache(replay_cache: "ReplayCache | bool | None") -> "ReplayCache | None":
    if replay_cache is True:
        return ReplayCache()
    return replay_cache or None


# --------------------------------------------------------------------------- middleware


def aiohttp_middleware(
    secrets: SecretsSource, mode: str = "request", tolerance: int = DEFAULT_TOLERANCE, *,
    replay_cache: "ReplayCache | bool" = True, header_prefix: str = DEFAULT_HEADER_PREFIX,
    require_request_headers: bool = True,
):
    """aiohttp middleware verifying every request. ``secrets`` is a sequence or a
    zero-argument callable returning one (read on each request, for rotation).
    Failures get 403 JSON ``{"error": reason, "message": ...}``; on success the
    GatewayPayment is stored at ``request["tollgate"]``. The body is read (and stays
    readable by the handler, aiohttp caches it). ``replay_cache``: True (default) keeps
    a per-process ``ReplayCache``; pass your own, or False to keep none.

    The plain string key "tollgate" is part of the contract, so aiohttp's advice
    to use ``web.RequestKey`` (NotAppKeyWarning) is silenced for this module only."""
    from aiohttp import web

    _check_mode(mode)
    cache = _cache(replay_cache)
    not_app_key = getattr(web, "NotAppKeyWarning", None)
    if not_app_key is not None:
        warnings.filterwarnings("ignore", category=not_app_key, module=re.escape(__name__) + "$")

    @web.middleware
    async def tollgate_origin_auth(request, handler):
        body = await request.read()
        try:
            paid = verify(mode, request.method, request.raw_path, request.headers, body,
                          _resolve(secrets), tolerance=tolerance, replay_cache=cache,
                          header_prefix=header_prefix,
                          require_request_headers=require_request_headers)
        except OriginAuthError as err:
            return web.json_response(_error_body(err), status=403)
        request["tollgate"] = paid
        return await handler(request)

    return tollgate_origin_auth


class ASGIMiddleware:
    """ASGI middleware verifying every HTTP request; other scope types (lifespan,
    websocket) pass through untouched. The body is buffered, verified, then replayed
    to the app as one ``http.request`` message. On success the GatewayPayment is put
    at ``scope["state"]["tollgate"]``; failures get 403 JSON ``{"error": reason,
    "message": ...}``. Options as ``aiohttp_middleware``."""

    def __init__(self, app, secrets: SecretsSource, mode: str = "request",
                 tolerance: int = DEFAULT_TOLERANCE, *,
                 replay_cache: "ReplayCache | bool" = True,
                 header_prefix: str = DEFAULT_HEADER_PREFIX,
                 require_request_headers: bool = True):
        _check_mode(mode)
        self.app = app
        self.secrets = secrets
        self.mode = mode
        self.tolerance = tolerance
        self.replay_cache = _cache(replay_cache)
        self.header_prefix = header_prefix
        self.require_request_headers = require_request_headers

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        receive = _replay(body, receive)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        try:
            paid = verify(self.mode, scope.get("method", "GET"), _asgi_path_qs(scope), headers,
                          body, _resolve(self.secrets), tolerance=self.tolerance,
                          replay_cache=self.replay_cache, header_prefix=self.header_prefix,
                          require_request_headers=self.require_request_headers)
        except OriginAuthError as err:
            await _send_json(send, 403, _error_body(err))
            return
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["tollgate"] = paid
        await self.app(scope, receive, send)


def _asgi_path_qs(scope: Mapping[str, Any]) -> str:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(scope.get("path", "/"), safe="/:@!$&'()*+,;=-._~%")
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(send, status: int, data: dict) -> None:
    payload = json.dumps(data).encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode("ascii"))],
    })
    await send({"type": "http.response.body", "body": payload})


# --- webhooks ----------------------------------------------------------------------------

WEBHOOK_SIGNATURE_HEADER = "X-Tollgate-Webhook-Signature"
WEBHOOK_ID_HEADER = "X-Tollgate-Webhook-Id"
WEBHOOK_EVENT_HEADER = "X-Tollgate-Webhook-Event"
DEFAULT_WEBHOOK_TOLERANCE = 300


class WebhookSignatureError(Exception):
    """The delivery is not from the gateway, or too old/new to accept."""


def _webhook_mac(secret: str | bytes, timestamp: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign_webhook(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body` sent at `timestamp` (default: now)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={ts},v1={_webhook_mac(secret, ts, body)}"


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
    expected = [_webhook_mac(k, ts, body) for k in keys]
    if not any([hmac.compare_digest(e, g) for e in expected for g in given]):
        raise WebhookSignatureError("signature does not match")
    return ts
