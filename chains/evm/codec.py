"""Wire codec for the EVM ``exact`` (EIP-3009) payload.

Accepted encodings follow the public scheme spec (``scheme_exact_evm.md``):
addresses ``0x`` + 40 hex (lowercase, uppercase or a correct EIP-55
checksum); ``value``/``validAfter``/``validBefore``/``nonce`` are decimal
strings, or hex when prefixed ``0x``, each at most 256 bits (the nonce is
left-padded to 32 bytes); ``signature`` ``0x`` + 130 hex.

Errors: any defect of the ``signature`` value raises
``invalid_exact_evm_payload_signature``; every other malformed field raises
``invalid_payload``. Pure; the random nonce of :func:`build_exact_evm_payload`
can be injected.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chains.evm.eip712 import address_of, sign_transfer_authorization, to_checksum_address
from chains.x402 import INVALID_PAYLOAD, INVALID_SIGNATURE, PaymentRequirements, X402Error, evm_chain_id

_ADDRESS = re.compile(r"^0[xX][0-9a-fA-F]{40}$")
_DEC = re.compile(r"^[0-9]{1,78}$")
_HEX = re.compile(r"^0[xX][0-9a-fA-F]{1,64}$")
_SIG = re.compile(r"^0[xX][0-9a-fA-F]{130}$")
_UINT256_MAX = (1 << 256) - 1
DEFAULT_VALID_AFTER_SLACK = 600  # clients backdate validAfter against clock skew


def _uint256(v: Any) -> int:
    if type(v) is int:
        n = v
    elif isinstance(v, str) and _DEC.match(v):
        n = int(v)
    elif isinstance(v, str) and _HEX.match(v):
        n = int(v[2:], 16)
    else:
        raise ValueError("must be a decimal string, or 0x hex, of an unsigned integer")
    if not 0 <= n <= _UINT256_MAX:
        raise ValueError("out of uint256 range")
    return n


def _address(v: Any) -> str:
    if not isinstance(v, str) or not _ADDRESS.match(v):
        raise ValueError("must be 0x followed by 40 hex digits")
    checksummed = to_checksum_address(v)
    body = v[2:]
    if body != checksummed[2:] and body != body.lower() and body != body.upper():
        raise ValueError("bad EIP-55 checksum")
    return checksummed


class Authorization(BaseModel):
    """EIP-3009 authorization; addresses stored checksummed, numbers as ``int``, nonce as 32 bytes."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    from_: str = Field(alias="from")
    to: str
    value: int
    valid_after: int = Field(alias="validAfter")
    valid_before: int = Field(alias="validBefore")
    nonce: bytes

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _addr(cls, v: Any) -> str:
        return _address(v)

    @field_validator("value", "valid_after", "valid_before", mode="before")
    @classmethod
    def _nums(cls, v: Any) -> int:
        return _uint256(v)

    @field_validator("nonce", mode="before")
    @classmethod
    def _nonce(cls, v: Any) -> bytes:
        if isinstance(v, (bytes, bytearray)) and len(v) == 32:
            return bytes(v)
        return _uint256(v).to_bytes(32, "big")

    def to_wire(self) -> dict[str, str]:
        return {
            "from": self.from_,
            "to": self.to,
            "value": str(self.value),
            "validAfter": str(self.valid_after),
            "validBefore": str(self.valid_before),
            "nonce": "0x" + self.nonce.hex(),
        }


class ExactEvmPayload(BaseModel):
    """The ``payload`` object of an EVM ``exact`` payment: 65-byte signature + authorization."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    signature: bytes
    authorization: Authorization

    @field_validator("signature", mode="before")
    @classmethod
    def _sig(cls, v: Any) -> bytes:
        if isinstance(v, (bytes, bytearray)) and len(v) == 65:
            return bytes(v)
        if not isinstance(v, str) or not _SIG.match(v):
            raise ValueError("signature must be 0x followed by 130 hex digits (65 bytes)")
        return bytes.fromhex(v[2:])

    def to_wire(self) -> dict[str, Any]:
        return {"signature": "0x" + self.signature.hex(), "authorization": self.authorization.to_wire()}


def parse_exact_evm_payload(payload: dict[str, Any]) -> ExactEvmPayload:
    """Validate a payment's ``payload`` dict; raise X402Error (see module docstring for codes)."""
    if not isinstance(payload, dict):
        raise X402Error(INVALID_PAYLOAD, "payload must be an object")
    if not isinstance(payload.get("authorization"), dict):
        raise X402Error(INVALID_PAYLOAD, "payload.authorization must be an object")
    try:
        return ExactEvmPayload.model_validate(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        reason = INVALID_SIGNATURE if loc == "signature" else INVALID_PAYLOAD
        msg = err.get("msg", "invalid")
        raise X402Error(reason, f"payload.{loc}: {msg}"[:200]) from None


def build_exact_evm_payload(
    private_key: bytes | str,
    req: PaymentRequirements,
    *,
    now: int,
    from_: str | None = None,
    value: int | None = None,
    valid_after: int | None = None,
    valid_before: int | None = None,
    nonce: bytes | None = None,
    chain_id: int | None = None,
) -> ExactEvmPayload:
    """Client side: sign an authorization paying ``req`` (call ``.to_wire()`` for JSON).

    Defaults: value = ``req.amount``, validAfter = now - 600, validBefore =
    now + ``req.maxTimeoutSeconds``, a random 32-byte nonce, chain id from
    ``req.network``, domain name/version from ``req.extra``.
    """
    from_ = to_checksum_address(from_) if from_ else address_of(private_key)
    auth = Authorization(
        from_=from_,
        to=req.pay_to,
        value=req.amount_int if value is None else value,
        valid_after=max(0, now - DEFAULT_VALID_AFTER_SLACK) if valid_after is None else valid_after,
        valid_before=now + req.max_timeout_seconds if valid_before is None else valid_before,
        nonce=os.urandom(32) if nonce is None else nonce,
    )
    signature = sign_transfer_authorization(
        private_key,
        name=str(req.extra["name"]),
        version=str(req.extra["version"]),
        chain_id=evm_chain_id(req.network) if chain_id is None else chain_id,
        verifying_contract=req.asset,
        from_=auth.from_,
        to=auth.to,
        value=auth.value,
        valid_after=auth.valid_after,
        valid_before=auth.valid_before,
        nonce=auth.nonce,
    )
    return ExactEvmPayload(signature=signature, authorization=auth)
