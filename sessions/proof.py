"""Proof that a caller controls a Hedera account. Pure functions, no I/O.

Two proofs open a session:

- **memo**: the owner's allowance approval carries the gateway's nonce in its memo
  (`tollgate:<nonce>`); the mirror record must be SUCCESS, an allowance approval, paid
  by the owner (the transaction id's account), with that exact memo.
- **signature**: the owner signs the challenge message with the account key, the way
  wallets implement `hedera_signMessage`: the bytes
  `"\\x19Hedera Signed Message:\\n" + len(message) + message`, signed with ED25519
  directly, or with ECDSA secp256k1 over their keccak256 (64-byte r || s; high s is
  accepted, as the SDK produces it: a nonce is single-use, so malleability buys nothing).
  The key comes from the mirror.

The challenge message follows CAIP-122 ("Sign-In with X", the chain-agnostic form of
EIP-4361): it names the gateway (its public URL and host), the account, the spender the
allowance goes to, the network (CAIP-2), the nonce and when it was issued and expires. The
gateway rebuilds it from its own configuration and the stored nonce, never from the
request, so a signature collected by another site (another URL, spender or network) does
not verify here.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

from Crypto.Hash import keccak
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

MEMO_PREFIX = "tollgate:"
APPROVE_NAMES = ("CRYPTOAPPROVEALLOWANCE",)


class ProofError(Exception):
    """The proof does not hold; `code` says which part failed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def memo_for(nonce: str) -> str:
    return MEMO_PREFIX + nonce


def _iso(t: float) -> str:
    return datetime.fromtimestamp(int(t), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Challenge:
    """Everything the signed activation message names."""

    gateway_url: str
    account_id: str
    spender: str
    network: str  # CAIP-2, e.g. hedera:testnet
    paygate: str
    nonce: str
    issued_at: float
    expires_at: float

    def message(self) -> str:
        host = urlsplit(self.gateway_url).netloc or self.gateway_url
        return "\n".join([
            f"{host} wants you to sign in with your Hedera account:",
            self.account_id,
            "",
            f"Open an allowance session at {self.gateway_url} for paygate {self.paygate}, "
            f"spending from your HBAR allowance to {self.spender}.",
            "",
            f"URI: {self.gateway_url}",
            "Version: 1",
            f"Chain ID: {self.network}",
            f"Nonce: {self.nonce}",
            f"Issued At: {_iso(self.issued_at)}",
            f"Expiration Time: {_iso(self.expires_at)}",
            "Resources:",
            f"- {self.network}:{self.spender}",
        ])

    def check_message(self, claimed: str) -> None:
        """A client that says what it signed learns which part is not this gateway's."""
        if claimed == self.message():
            return
        for name, value in (("URI", self.gateway_url), ("spender", self.spender),
                            ("Chain ID", self.network), ("Nonce", self.nonce)):
            if value not in claimed:
                raise ProofError("proof_wrong_message", (
                    f"the signed message is not this gateway's activation message: its "
                    f"{name} is not {value}. {self.expected()}"))
        raise ProofError("proof_wrong_message",
                         f"the signed message is not this gateway's activation message. "
                         f"{self.expected()}")

    def expected(self) -> str:
        return (f"Sign the message POST /api/sessions/challenge gives (for {self.gateway_url}, "
                f"spender {self.spender}, {self.network}), unchanged.")


def signed_bytes(message: str) -> bytes:
    data = message.encode("utf-8")
    return b"\x19Hedera Signed Message:\n" + str(len(data)).encode() + data


def check_memo_record(record, *, owner: str, nonce: str) -> None:
    """`record` is the mirror's TransactionRecord of the approval."""
    if record is None:
        raise ProofError("proof_not_found", "the approval transaction is not on the mirror")
    if not record.succeeded:
        raise ProofError("proof_failed_transaction", f"the approval ended {record.result}")
    if record.name not in APPROVE_NAMES:
        raise ProofError("proof_wrong_type", f"{record.name} is not an allowance approval")
    if record.payer != owner:
        raise ProofError("proof_wrong_payer", f"the approval was paid by {record.payer}, not {owner}")
    if record.memo_text != memo_for(nonce):
        raise ProofError("proof_wrong_memo", "the approval's memo is not this activation's nonce")


def decode_signature(value: str) -> bytes:
    value = value.strip()
    try:
        if value.startswith(("0x", "0X")):
            return bytes.fromhex(value[2:])
        if len(value) in (128, 130) and all(c in "0123456789abcdefABCDEF" for c in value):
            return bytes.fromhex(value)
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (ValueError, binascii.Error):
        raise ProofError("proof_bad_signature", "signature is neither hex nor base64") from None


def check_signature(key_type: str | None, key_hex: str | None, message: str,
                    signature: bytes) -> None:
    """Raise ProofError unless `signature` is the account key's signature of `message`."""
    if not key_type or not key_hex:
        raise ProofError("proof_unsupported_key", "the account has no single public key")
    try:
        public = bytes.fromhex(key_hex)
    except ValueError:
        raise ProofError("proof_unsupported_key", "the account key is not hex") from None
    data = signed_bytes(message)
    try:
        if key_type == "ED25519":
            if len(signature) != 64:
                raise InvalidSignature
            ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
        elif key_type == "ECDSA_SECP256K1":
            if len(signature) != 64:
                raise InvalidSignature
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            digest = keccak.new(digest_bits=256, data=data).digest()
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), public)
            key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        else:
            raise ProofError("proof_unsupported_key", f"{key_type} keys are not supported")
    except (InvalidSignature, ValueError):
        raise ProofError("proof_bad_signature", "the signature does not verify with the "
                         "account's key") from None
