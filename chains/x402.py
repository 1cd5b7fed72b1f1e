"""x402 envelope: wire models and pure functions, chain-agnostic.

Covers the parts of x402 v1 and v2 that do not depend on a chain: the 402
challenge body/header, the base64 JSON header codec, payment payload parsing
(``PAYMENT-SIGNATURE`` v2 and ``X-PAYMENT`` v1) into one normalized shape,
choosing which offered requirement a payment is for, settlement/verify
responses. Reason codes (``chains.x402_errors``), network ids (``chains.networks``) and
the ``payment-identifier`` extension (``chains.payment_identifier``) live in their own
modules and are re-exported here.

Contracts: no I/O; every rejection of client input raises :class:`X402Error`
carrying an x402 reason code; amounts are decimal strings on the wire and
``int`` atomic units in code, never floats.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

# --- headers and versions ---------------------------------------------------

HEADER_PAYMENT_REQUIRED = "PAYMENT-REQUIRED"
HEADER_PAYMENT_SIGNATURE = "PAYMENT-SIGNATURE"  # v2 client payment
HEADER_X_PAYMENT = "X-PAYMENT"  # v1 client payment
HEADER_PAYMENT_RESPONSE = "PAYMENT-RESPONSE"  # v2 receipt
HEADER_X_PAYMENT_RESPONSE = "X-PAYMENT-RESPONSE"  # v1 receipt
MAX_HEADER_LEN = 8192
SCHEME_EXACT = "exact"

# Reason codes and network ids live in their own modules; re-exported here so
# `from chains.x402 import ...` stays the one place callers import from.
from chains.networks import (  # noqa: F401
    V1_NETWORKS,
    evm_chain_id,
    evm_network,
    normalize_network,
    v1_network_name,
)
from chains.payment_identifier import (  # noqa: F401
    PAYMENT_IDENTIFIER,
    declare_payment_identifier,
    payment_identifier,
)
from chains.x402_errors import (  # noqa: F401
    INSUFFICIENT_FUNDS,
    INVALID_NETWORK,
    INVALID_PAYLOAD,
    INVALID_PAYMENT_IDENTIFIER,
    INVALID_PAYMENT_REQUIREMENTS,
    INVALID_SCHEME,
    INVALID_SIGNATURE,
    INVALID_TRANSACTION_STATE,
    INVALID_VALID_AFTER,
    INVALID_VALID_BEFORE,
    INVALID_VALUE,
    INVALID_X402_VERSION,
    MISSING_EIP712_DOMAIN,
    NONCE_ALREADY_USED,
    PAYMENT_EXPIRED,
    RECIPIENT_MISMATCH,
    SETTLEMENT_PENDING,
    UNEXPECTED_SETTLE_ERROR,
    UNEXPECTED_VERIFY_ERROR,
    UNSUPPORTED_SCHEME,
    X402Error,
)

# --- models ---------------------------------------------------------------------

_UINT_STR = re.compile(r"^(0|[1-9][0-9]{0,77})$")


class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    def to_wire(self) -> dict[str, Any]:
        """camelCase JSON-ready dict, None fields omitted."""
        return self.model_dump(by_alias=True, exclude_none=True)


class PaymentRequirements(_Wire):
    """One v2 ``accepts`` entry. ``amount`` is a decimal string of atomic units."""

    scheme: str = Field(min_length=1, max_length=32)
    network: str = Field(min_length=1, max_length=64)
    amount: str
    asset: str = Field(min_length=1, max_length=128)
    pay_to: str = Field(alias="payTo", min_length=1, max_length=128)
    max_timeout_seconds: StrictInt = Field(alias="maxTimeoutSeconds", ge=0)
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("amount")
    @classmethod
    def _amount(cls, v: str) -> str:
        if not _UINT_STR.match(v):
            raise ValueError("amount must be a decimal string of a non-negative integer")
        return v

    @field_validator("extra", mode="before")
    @classmethod
    def _extra(cls, v: Any) -> Any:
        return {} if v is None else v

    @property
    def amount_int(self) -> int:
        return int(self.amount)

    def to_v1(self, resource_url: str, description: str, mime_type: str) -> dict[str, Any]:
        """The v1 ``accepts`` entry for this requirement.

        The network becomes its v1 name when it has one (``base-sepolia``),
        otherwise stays CAIP-2 (local chains). ``outputSchema`` is omitted
        rather than sent as null: strict v1 validators reject a null there.
        """
        return {
            "scheme": self.scheme,
            "network": v1_network_name(self.network),
            "maxAmountRequired": self.amount,
            "resource": resource_url,
            "description": description,
            "mimeType": mime_type,
            "payTo": self.pay_to,
            "maxTimeoutSeconds": self.max_timeout_seconds,
            "asset": self.asset,
            "extra": dict(self.extra),
        }


class SettleResponse(_Wire):
    """Settlement receipt (``PAYMENT-RESPONSE`` / ``X-PAYMENT-RESPONSE`` and ``/settle``)."""

    success: bool
    transaction: str = ""
    network: str
    payer: str | None = None
    error_reason: str | None = Field(default=None, alias="errorReason")


class VerifyResponse(_Wire):
    """Facilitator ``/verify`` answer."""

    is_valid: bool = Field(alias="isValid")
    invalid_reason: str | None = Field(default=None, alias="invalidReason")
    payer: str | None = None


# --- base64 JSON headers ------------------------------------------------------------


def encode_header(obj: Any) -> str:
    """Standard base64 of compact UTF-8 JSON (pydantic models are dumped by alias)."""
    if isinstance(obj, _Wire):
        obj = obj.to_wire()
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def decode_header(value: str, max_len: int = MAX_HEADER_LEN) -> dict[str, Any]:
    """Decode a base64 JSON header into a dict; raise ``invalid_payload`` on any fault.

    Standard alphabet; missing ``=`` padding is tolerated, any other stray
    character is not. Longer than ``max_len`` characters is rejected before decoding.
    """
    if not isinstance(value, str):
        raise X402Error(INVALID_PAYLOAD, "header must be a string")
    value = value.strip()
    if len(value) > max_len:
        raise X402Error(INVALID_PAYLOAD, f"header longer than {max_len} characters")
    if not value:
        raise X402Error(INVALID_PAYLOAD, "empty header")
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise X402Error(INVALID_PAYLOAD, "header is not valid base64") from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # deep nesting fits in 8 KiB
        raise X402Error(INVALID_PAYLOAD, "header is not valid JSON") from None
    if not isinstance(obj, dict):
        raise X402Error(INVALID_PAYLOAD, "header JSON is not an object")
    return obj


def encode_settle_response(resp: SettleResponse) -> str:
    """Header value for ``PAYMENT-RESPONSE`` / ``X-PAYMENT-RESPONSE``."""
    return encode_header(resp.to_wire())


# --- 402 challenge ---------------------------------------------------------------------


def build_payment_required(
    resource_url: str,
    description: str,
    mime_type: str,
    accepts: list[PaymentRequirements],
    extensions: dict[str, Any],
    error: str = "payment required",
) -> dict[str, Any]:
    """The v2 PaymentRequired object (base64 it for the ``PAYMENT-REQUIRED`` header)."""
    return {
        "x402Version": 2,
        "error": error,
        "resource": {"url": resource_url, "description": description, "mimeType": mime_type},
        "accepts": [r.to_wire() for r in accepts],
        "extensions": dict(extensions),
    }


def payment_required_body(
    resource_url: str,
    description: str,
    mime_type: str,
    accepts: list[PaymentRequirements],
    extensions: dict[str, Any],
    error: str = "payment required",
) -> dict[str, Any]:
    """JSON body of a 402: the v2 object, readable by v1 clients as well.

    Choice: the body is exactly :func:`build_payment_required` except that each
    ``accepts`` entry *also* carries the v1 fields ``maxAmountRequired``,
    ``resource``, ``description`` and ``mimeType``. v2 parsers ignore unknown
    entry fields (the reference x402 models do), so the body still parses as
    v2; a v1 parser finds every field it needs in each entry. Kept as-is:
    ``x402Version`` is 2 and ``network`` is CAIP-2, because one field cannot
    hold both spellings. v1 clients that echo ``x402Version: 2`` in a v1-shaped
    ``X-PAYMENT`` are accepted by :func:`parse_payment_payload`; v1 clients
    that only know the fixed v1 network names can be served the pure v1 body
    from :func:`build_payment_required_v1`.
    """
    body = build_payment_required(resource_url, description, mime_type, accepts, extensions, error)
    merged = []
    for req, entry in zip(accepts, body["accepts"]):
        v1 = req.to_v1(resource_url, description, mime_type)
        merged.append({**entry, **{k: v1[k] for k in ("maxAmountRequired", "resource", "description", "mimeType")}})
    body["accepts"] = merged
    return body


def build_payment_required_v1(
    resource_url: str,
    description: str,
    mime_type: str,
    accepts: list[PaymentRequirements],
    error: str = "payment required",
) -> dict[str, Any]:
    """A pure v1 402 body (v1 network names where they exist)."""
    return {
        "x402Version": 1,
        "error": error,
        "accepts": [r.to_v1(resource_url, description, mime_type) for r in accepts],
    }


# --- payment payloads --------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentPayload:
    """A client payment, normalized over v1 and v2.

    ``version`` is 2 when the payload names its ``accepted`` requirement, 1 for
    the v1 shape (top-level ``scheme``/``network``). ``network`` is as sent;
    ``network_id`` is its CAIP-2 form. ``raw`` is the header value as received.
    """

    version: int
    scheme: str
    network: str
    accepted: PaymentRequirements | None
    payload: dict[str, Any]
    extensions: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] | None = None
    raw: str = ""

    @property
    def network_id(self) -> str:
        return normalize_network(self.network)


def parse_payment_header(value: str, max_len: int = MAX_HEADER_LEN) -> PaymentPayload:
    """Decode a ``PAYMENT-SIGNATURE`` or ``X-PAYMENT`` header value."""
    return parse_payment_payload(decode_header(value, max_len), raw=value)


def parse_payment_payload(obj: dict[str, Any], raw: str = "") -> PaymentPayload:
    """Normalize a decoded payment payload (v2 or v1 shape).

    v2: ``{"x402Version": 2, "accepted": {...}, "payload": {...}, "resource"?, "extensions"?}``.
    v1: ``{"x402Version": 1, "scheme", "network", "payload"}``. A v1-shaped
    object declaring ``x402Version: 2`` (legacy clients echo the challenge
    body's version) is read as v1. Raises ``invalid_x402_version`` or ``invalid_payload``.
    """
    if not isinstance(obj, dict):
        raise X402Error(INVALID_PAYLOAD, "payment payload is not an object")
    version = obj.get("x402Version")
    if type(version) is not int or version not in (1, 2):
        raise X402Error(INVALID_X402_VERSION, f"unsupported x402Version {str(version)[:16]!r}")
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise X402Error(INVALID_PAYLOAD, "payload must be an object")
    extensions = obj.get("extensions")
    extensions = {} if extensions is None else extensions
    if not isinstance(extensions, dict):
        raise X402Error(INVALID_PAYLOAD, "extensions must be an object")
    resource = obj.get("resource")
    if resource is not None and not isinstance(resource, dict):
        raise X402Error(INVALID_PAYLOAD, "resource must be an object")

    if "accepted" in obj:
        if version != 2:
            raise X402Error(INVALID_X402_VERSION, "'accepted' requires x402Version 2")
        if not isinstance(obj["accepted"], dict):
            raise X402Error(INVALID_PAYLOAD, "accepted must be an object")
        try:
            accepted = PaymentRequirements.model_validate(obj["accepted"])
        except ValidationError as exc:
            raise X402Error(INVALID_PAYLOAD, f"bad accepted: {_first_error(exc)}") from None
        return PaymentPayload(2, accepted.scheme, accepted.network, accepted, payload, extensions, resource, raw)

    scheme, network = obj.get("scheme"), obj.get("network")
    if not isinstance(scheme, str) or not scheme or not isinstance(network, str) or not network:
        raise X402Error(INVALID_PAYLOAD, "missing scheme/network (v1) or accepted (v2)")
    return PaymentPayload(1, scheme, network, None, payload, extensions, resource, raw)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg', '')}"[:200]


def _same_address(a: str, b: str) -> bool:
    """Hex addresses compare case-insensitively; other ids (Hedera 0.0.x) exactly."""
    if a.startswith(("0x", "0X")) and b.startswith(("0x", "0X")):
        return a.lower() == b.lower()
    return a == b


def _net(network: str) -> str | None:
    try:
        return normalize_network(network)
    except X402Error:
        return None


def select_requirement(payment: PaymentPayload, offered: list[PaymentRequirements]) -> PaymentRequirements:
    """The offered requirement this payment is for.

    v2 (``accepted`` present): the first offered entry equal on scheme,
    network (CAIP-2 normalized), asset, payTo, amount and, when the offer has
    them, ``extra.name`` / ``extra.version``. v1: the first entry matching
    scheme and network. Raises ``invalid_scheme`` if no offer has the scheme,
    ``invalid_network`` if none has the network, else ``invalid_payment_requirements``.
    """
    net = _net(payment.network)
    if net is None:
        raise X402Error(INVALID_NETWORK, f"unknown network {payment.network[:64]!r}")
    same_scheme = [r for r in offered if r.scheme == payment.scheme]
    if not same_scheme:
        raise X402Error(INVALID_SCHEME, f"scheme {payment.scheme[:32]!r} not offered")
    candidates = [r for r in same_scheme if _net(r.network) == net]
    if not candidates:
        raise X402Error(INVALID_NETWORK, f"network {payment.network[:64]!r} not offered")
    acc = payment.accepted
    if acc is None:
        return candidates[0]
    for r in candidates:
        if (
            _same_address(r.asset, acc.asset)
            and _same_address(r.pay_to, acc.pay_to)
            and r.amount_int == acc.amount_int
            and all(acc.extra.get(k) == r.extra[k] for k in ("name", "version") if k in r.extra)
        ):
            return r
    raise X402Error(INVALID_PAYMENT_REQUIREMENTS, "accepted matches no offered requirement")


def build_payment_payload(
    accepted: PaymentRequirements,
    payload: dict[str, Any],
    resource: dict[str, Any] | None = None,
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Client side: the v2 PaymentPayload object (base64 it for ``PAYMENT-SIGNATURE``)."""
    out: dict[str, Any] = {"x402Version": 2, "accepted": accepted.to_wire(), "payload": payload}
    if resource is not None:
        out["resource"] = resource
    out["extensions"] = dict(extensions or {})
    return out
