"""x402 envelope: wire models and pure functions, chain-agnostic.

Covers the parts of x402 v1 and v2 that do not depend on a chain: the 402
challenge body/header, the base64 JSON header codec, payment payload parsing
(``PAYMENT-SIGNATURE`` v2 and ``X-PAYMENT`` v1) into one normalized shape,
choosing which offered requirement a payment is for, settlement/verify
responses, reason codes, network ids and the ``payment-identifier`` extension.

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

# --- reason codes (x402 spec section 9, plus SDK / Tollgate additions) -------

INSUFFICIENT_FUNDS = "insufficient_funds"
INVALID_VALID_AFTER = "invalid_exact_evm_payload_authorization_valid_after"
INVALID_VALID_BEFORE = "invalid_exact_evm_payload_authorization_valid_before"
INVALID_VALUE = "invalid_exact_evm_payload_authorization_value"
INVALID_SIGNATURE = "invalid_exact_evm_payload_signature"
RECIPIENT_MISMATCH = "invalid_exact_evm_payload_recipient_mismatch"
INVALID_NETWORK = "invalid_network"
INVALID_PAYLOAD = "invalid_payload"
INVALID_PAYMENT_REQUIREMENTS = "invalid_payment_requirements"
INVALID_SCHEME = "invalid_scheme"
UNSUPPORTED_SCHEME = "unsupported_scheme"
INVALID_X402_VERSION = "invalid_x402_version"
INVALID_TRANSACTION_STATE = "invalid_transaction_state"
UNEXPECTED_VERIFY_ERROR = "unexpected_verify_error"
UNEXPECTED_SETTLE_ERROR = "unexpected_settle_error"
# Used by the reference SDKs, not listed in the spec:
NONCE_ALREADY_USED = "invalid_exact_evm_nonce_already_used"
SETTLEMENT_PENDING = "settlement_pending"
MISSING_EIP712_DOMAIN = "missing_eip712_domain"
# Tollgate's own (no spec code exists):
PAYMENT_EXPIRED = "payment_expired"  # authorization expired before it could be settled
INVALID_PAYMENT_IDENTIFIER = "invalid_payment_identifier"


class X402Error(Exception):
    """A payment rejected for ``reason`` (an x402 reason code); ``message`` is for humans."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message or reason


# --- networks -----------------------------------------------------------------

# v1 network names with a well-known CAIP-2 id (x402 v1 spec / reference SDKs).
V1_NETWORKS: dict[str, str] = {
    "base": "eip155:8453",
    "base-sepolia": "eip155:84532",
    "avalanche": "eip155:43114",
    "avalanche-fuji": "eip155:43113",
    "polygon": "eip155:137",
    "polygon-amoy": "eip155:80002",
    "ethereum": "eip155:1",
    "solana": "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
    "solana-devnet": "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1",
}
_CAIP2_TO_V1 = {v: k for k, v in V1_NETWORKS.items()}
_CAIP2 = re.compile(r"^[-a-z0-9]{3,8}:[-_a-zA-Z0-9]{1,32}$")
_EIP155_REF = re.compile(r"^[1-9][0-9]{0,18}$")


def normalize_network(network: str) -> str:
    """Return the CAIP-2 id for a v1 name or a CAIP-2 id; raise ``invalid_network``.

    Unknown v1 names are rejected; local chains use their CAIP-2 id in v1 too.
    ``eip155`` references must be canonical decimal (no leading zeros).
    """
    if not isinstance(network, str):
        raise X402Error(INVALID_NETWORK, "network must be a string")
    if network in V1_NETWORKS:
        return V1_NETWORKS[network]
    if not _CAIP2.match(network):
        raise X402Error(INVALID_NETWORK, f"unknown network {network[:64]!r}")
    namespace, ref = network.split(":", 1)
    if namespace == "eip155" and not _EIP155_REF.match(ref):
        raise X402Error(INVALID_NETWORK, f"bad eip155 chain id {ref[:32]!r}")
    return network


def v1_network_name(network: str) -> str:
    """The v1 name for a network if it has one, else its CAIP-2 id."""
    caip2 = normalize_network(network)
    return _CAIP2_TO_V1.get(caip2, caip2)


def evm_network(chain_id: int) -> str:
    """CAIP-2 id of an EVM chain."""
    return f"eip155:{int(chain_id)}"


def evm_chain_id(network: str) -> int:
    """Chain id of an ``eip155`` network (v1 name or CAIP-2); raise ``invalid_network``."""
    caip2 = normalize_network(network)
    namespace, ref = caip2.split(":", 1)
    if namespace != "eip155":
        raise X402Error(INVALID_NETWORK, f"{caip2} is not an EVM network")
    return int(ref)


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


# --- payment-identifier extension ---------------------------------------------------------

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
