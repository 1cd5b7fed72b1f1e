"""x402 `exact` on Hedera, HBAR: decode and check the payer's partially signed transfer.

Pure: no I/O, no clock (callers pass ``now``). The payload is
``{"transaction": "<base64 of the SDK's transaction bytes>"}``: a ``TransactionList`` with
one ``Transaction`` per node the payer froze it for (what ``Transaction.to_bytes()`` of the
Hedera SDKs writes), or a single ``Transaction``. Every entry carries a
``SignedTransaction`` (``bodyBytes`` + ``sigMap``); the bodies must be the same transfer and
differ at most in ``nodeAccountID``.

What :func:`check_transfer` enforces (the x402 Hedera spec's facilitator rules, kept
strict: this is HBAR only and exactly one payer):

* the body is a ``cryptoTransfer`` of HBAR and nothing else: no token transfers, no
  allowance (``is_approval``) entries, no hooks, no batch key, custom-fee limits or fields
  this build does not know;
* the transaction id's account is ``feePayer`` (the gateway), not scheduled, no nonce;
* the window is current: valid start at most ``MAX_CLOCK_SKEW`` seconds ahead of ``now``,
  ``valid start + validDuration > now``, ``validDuration <= MAX_VALID_DURATION``;
* the HBAR list sums to zero, no account is listed twice, the fee payer is never debited;
* ``payTo`` is credited exactly ``amount`` tinybars and is the only account credited;
* exactly one account is debited: the payer;
* memo at most ``MAX_MEMO_BYTES`` bytes, max fee at most ``MAX_TRANSACTION_FEE``.

The payer's signature needs the payer's public key (from the mirror node), so it is a
separate step, :func:`verify_payer_signature`: ED25519 over the raw ``bodyBytes``, ECDSA
secp256k1 (64-byte ``r || s``) over ``keccak256(bodyBytes)``, for every node body.

Every rejection raises :class:`chains.x402.X402Error` with one of the reason codes below.
Money is integer tinybars throughout.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from chains.hedera.ids import NANOS_PER_SECOND, AccountId, TransactionId
from chains.x402 import INVALID_PAYLOAD, X402Error

__all__ = [
    "HBAR_ASSET", "ExactTransfer", "NodeBody", "check_transfer", "decode_transaction",
    "public_key_bytes", "transaction_b64", "transaction_bytes", "verify_payer_signature",
]

HBAR_ASSET = "0.0.0"
MAX_CLOCK_SKEW = 10  # seconds a valid start may lie ahead of our clock
MAX_VALID_DURATION = 180  # the network's own maximum
MAX_MEMO_BYTES = 100  # the network's limit
MAX_TRANSACTION_FEE = 2 * 10**8  # tinybars (2 HBAR): the most the fee payer agrees to risk
MAX_NODE_BODIES = 64
MAX_TRANSACTION_BYTES = 6 * 1024  # the network refuses transactions over 6 KiB

# Reason codes. From the x402 reference Hedera facilitator (@x402/hedera):
DECODE_FAILED = "invalid_exact_hedera_payload_transaction_could_not_be_decoded"
INVALID_SHAPE = "invalid_exact_hedera_payload_transaction_invalid_shape"
FEE_PAYER_MISMATCH = "invalid_exact_hedera_payload_fee_payer_mismatch"
NON_TRANSFER_OPS = "invalid_exact_hedera_payload_contains_non_transfer_ops"
HBAR_SUM_NON_ZERO = "invalid_exact_hedera_payload_hbar_sum_non_zero"
FEE_PAYER_TRANSFERRING = "invalid_exact_hedera_payload_fee_payer_transferring_hbar"
ASSET_MISMATCH = "invalid_exact_hedera_payload_asset_mismatch"
AMOUNT_MISMATCH = "invalid_exact_hedera_payload_amount_mismatch"
EXTRA_POSITIVE_TRANSFERS = "invalid_exact_hedera_payload_extra_positive_transfers"
SIGNATURE_INVALID = "invalid_exact_hedera_payload_signature_invalid"  # also in the spec
# Tollgate's own (no code exists for these):
RECIPIENT_MISMATCH = "invalid_exact_hedera_payload_recipient_mismatch"
MULTIPLE_PAYERS = "invalid_exact_hedera_payload_multiple_payers"
APPROVED_TRANSFER = "invalid_exact_hedera_payload_approved_transfer"
VALID_START_IN_FUTURE = "invalid_exact_hedera_payload_valid_start_in_future"
TRANSACTION_EXPIRED = "invalid_exact_hedera_payload_transaction_expired"
VALID_DURATION = "invalid_exact_hedera_payload_valid_duration"
MEMO_TOO_LONG = "invalid_exact_hedera_payload_memo_too_long"
FEE_TOO_HIGH = "invalid_exact_hedera_payload_transaction_fee_too_high"
NODE_ACCOUNT = "invalid_exact_hedera_payload_node_account"
ALREADY_USED = "invalid_exact_hedera_payload_transaction_already_used"

_BODY_FIELDS = {"transactionID", "nodeAccountID", "transactionFee", "transactionValidDuration",
                "memo", "cryptoTransfer"}
_TX_ID_FIELDS = {"accountID", "transactionValidStart"}
_AMOUNT_FIELDS = {"accountID", "amount"}
_SIG_KINDS = {"ed25519": "ED25519", "ECDSA_secp256k1": "ECDSA_SECP256K1"}


@dataclass(frozen=True)
class NodeBody:
    """One node's copy of the transaction: the exact signed bytes and their signatures
    as ``(pubKeyPrefix, key type, signature)``."""

    node: str
    body_bytes: bytes
    signatures: tuple[tuple[bytes, str, bytes], ...]


@dataclass(frozen=True)
class ExactTransfer:
    """A checked payment. ``tx_id`` is the SDK form (``0.0.9@1700000000.5``),
    ``mirror_tx_id`` the mirror form; ``valid_until`` is the unix time (seconds) after which
    the network refuses the transaction."""

    payer: str
    pay_to: str
    amount: int
    fee_payer: str
    tx_id: str
    mirror_tx_id: str
    valid_start: float
    valid_until: float
    max_fee: int
    memo: str
    nodes: tuple[str, ...]
    bodies: tuple[NodeBody, ...]


@dataclass(frozen=True)
class _Decoded:
    body: Any  # transaction_pb2.TransactionBody of the first node
    bodies: tuple[NodeBody, ...]


def transaction_b64(payload: Any) -> str:
    """The ``transaction`` string of an exact-Hedera ``payload`` object."""
    if not isinstance(payload, dict):
        raise X402Error(INVALID_PAYLOAD, "payload must be an object")
    tx = payload.get("transaction")
    if not isinstance(tx, str) or not tx:
        raise X402Error(DECODE_FAILED, "payload.transaction must be a base64 string")
    return tx


def transaction_bytes(b64: str) -> bytes:
    """Standard base64 (padding optional) -> bytes; raises ``DECODE_FAILED``."""
    text = b64.strip()
    if len(text) > MAX_TRANSACTION_BYTES * 4 // 3 + 4:
        raise X402Error(DECODE_FAILED, "transaction is larger than the network accepts")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise X402Error(DECODE_FAILED, "transaction is not valid base64") from None
    if not raw:
        raise X402Error(DECODE_FAILED, "transaction is empty")
    return raw


def decode_transaction(raw: bytes) -> _Decoded:
    """Parse the SDK bytes into node bodies. Raises ``DECODE_FAILED`` for anything that is
    not a transaction, ``INVALID_SHAPE`` when node copies disagree or use old layouts."""
    from google.protobuf.message import DecodeError
    from hiero_sdk_python.hapi.sdk import transaction_list_pb2
    from hiero_sdk_python.hapi.services import transaction_contents_pb2, transaction_pb2

    try:
        entries = list(transaction_list_pb2.TransactionList.FromString(raw).transaction_list)
        if not entries or not all(e.signedTransactionBytes for e in entries):
            entries = [transaction_pb2.Transaction.FromString(raw)]
    except (DecodeError, RecursionError):
        try:
            entries = [transaction_pb2.Transaction.FromString(raw)]
        except (DecodeError, RecursionError):
            raise X402Error(DECODE_FAILED, "transaction bytes do not parse") from None
    if len(entries) > MAX_NODE_BODIES:
        raise X402Error(INVALID_SHAPE, f"more than {MAX_NODE_BODIES} node copies")
    bodies: list[NodeBody] = []
    first = None
    canonical = None
    for entry in entries:
        if entry.HasField("body") or entry.HasField("sigs") or entry.bodyBytes \
                or not entry.signedTransactionBytes:
            raise X402Error(DECODE_FAILED, "expected signedTransactionBytes (SDK layout)")
        try:
            signed = transaction_contents_pb2.SignedTransaction.FromString(entry.signedTransactionBytes)
            body = transaction_pb2.TransactionBody.FromString(signed.bodyBytes)
        except (DecodeError, RecursionError):
            raise X402Error(DECODE_FAILED, "signed transaction or body does not parse") from None
        if not signed.bodyBytes:
            raise X402Error(DECODE_FAILED, "empty transaction body")
        node = _account(body.nodeAccountID, "nodeAccountID")
        sigs = []
        for pair in signed.sigMap.sigPair:
            kind = pair.WhichOneof("signature")
            if kind in _SIG_KINDS and pair.pubKeyPrefix:
                sigs.append((bytes(pair.pubKeyPrefix), _SIG_KINDS[kind], bytes(getattr(pair, kind))))
        bodies.append(NodeBody(node, bytes(signed.bodyBytes), tuple(sigs)))
        same = transaction_pb2.TransactionBody()
        same.CopyFrom(body)
        same.ClearField("nodeAccountID")
        key = same.SerializeToString(deterministic=True)
        if canonical is None:
            first, canonical = body, key
        elif key != canonical:
            raise X402Error(INVALID_SHAPE, "node copies of the transaction differ")
    if len({b.node for b in bodies}) != len(bodies):
        raise X402Error(INVALID_SHAPE, "a node appears twice")
    return _Decoded(first, tuple(bodies))


def check_transfer(b64: str, *, pay_to: str, amount: int, fee_payer: str,
                   now: float | None) -> ExactTransfer:
    """Decode and check the payment (everything but the payer's signature; see the module
    docstring). ``now=None`` skips the time window (re-reading a stored payment)."""
    from google.protobuf import unknown_fields

    decoded = decode_transaction(transaction_bytes(b64))
    body = decoded.body
    kind = body.WhichOneof("data")
    if kind != "cryptoTransfer":
        raise X402Error(NON_TRANSFER_OPS, f"expected a cryptoTransfer, got {kind or 'nothing'}")
    xfer = body.cryptoTransfer
    if len(xfer.tokenTransfers):
        raise X402Error(ASSET_MISMATCH, "token transfers in an HBAR payment")
    set_fields = {f.name for f, _ in body.ListFields()}
    if set_fields - _BODY_FIELDS or len(unknown_fields.UnknownFieldSet(body)) \
            or {f.name for f, _ in xfer.ListFields()} - {"transfers"}:
        raise X402Error(NON_TRANSFER_OPS, "the transaction carries fields other than a plain "
                        f"transfer: {sorted(set_fields - _BODY_FIELDS) or 'unknown fields'}")

    tid = body.transactionID
    if not body.HasField("transactionID") or not tid.HasField("transactionValidStart") \
            or not tid.HasField("accountID"):
        raise X402Error(INVALID_SHAPE, "the transaction id is incomplete")
    if {f.name for f, _ in tid.ListFields()} - _TX_ID_FIELDS:
        raise X402Error(FEE_PAYER_MISMATCH, "scheduled or nonce transaction ids are not accepted")
    tx_account = _account(tid.accountID, "transaction id account")
    fee_payer = str(AccountId.parse(fee_payer))
    if tx_account != fee_payer:
        raise X402Error(FEE_PAYER_MISMATCH,
                        f"transaction id account is {tx_account}, not the fee payer {fee_payer}")
    start = tid.transactionValidStart
    tx_id = TransactionId(AccountId.parse(tx_account), start.seconds, start.nanos)
    duration = body.transactionValidDuration.seconds
    if not 0 < duration <= MAX_VALID_DURATION:
        raise X402Error(VALID_DURATION, f"valid duration {duration}s is not 1..{MAX_VALID_DURATION}")
    valid_start = tx_id.valid_start_ns / NANOS_PER_SECOND
    valid_until = valid_start + duration
    if now is not None:
        if valid_start > now + MAX_CLOCK_SKEW:
            raise X402Error(VALID_START_IN_FUTURE, "the valid start lies in the future")
        if valid_until <= now:
            raise X402Error(TRANSACTION_EXPIRED, "the transaction's valid window has passed")
    memo = body.memo
    if len(memo.encode()) > MAX_MEMO_BYTES or "\x00" in memo:
        raise X402Error(MEMO_TOO_LONG, f"memo over {MAX_MEMO_BYTES} bytes or with a zero byte")
    if body.transactionFee > MAX_TRANSACTION_FEE:
        raise X402Error(FEE_TOO_HIGH, f"max transaction fee {body.transactionFee} tinybars "
                        f"is over {MAX_TRANSACTION_FEE}")

    payer = _check_amounts(xfer.transfers.accountAmounts, pay_to=str(AccountId.parse(pay_to)),
                           amount=amount, fee_payer=fee_payer)
    return ExactTransfer(
        payer=payer, pay_to=str(AccountId.parse(pay_to)), amount=amount, fee_payer=fee_payer,
        tx_id=tx_id.to_sdk(), mirror_tx_id=tx_id.to_mirror(), valid_start=valid_start,
        valid_until=valid_until, max_fee=body.transactionFee, memo=memo,
        nodes=tuple(b.node for b in decoded.bodies), bodies=decoded.bodies)


def _check_amounts(entries, *, pay_to: str, amount: int, fee_payer: str) -> str:
    """Check the HBAR list; return the payer."""
    from google.protobuf import unknown_fields

    net: dict[str, int] = {}
    for entry in entries:
        if entry.is_approval:
            raise X402Error(APPROVED_TRANSFER, "allowance (approved) transfers are not accepted")
        if {f.name for f, _ in entry.ListFields()} - _AMOUNT_FIELDS \
                or len(unknown_fields.UnknownFieldSet(entry)):
            raise X402Error(NON_TRANSFER_OPS, "transfer entries may not carry hooks or extras")
        account = _account(entry.accountID, "transfer account")
        if account in net:
            raise X402Error(INVALID_SHAPE, f"account {account} is listed twice")
        net[account] = entry.amount
    if sum(net.values()) != 0:
        raise X402Error(HBAR_SUM_NON_ZERO, "HBAR transfers do not sum to zero")
    if net.get(fee_payer, 0) < 0:
        raise X402Error(FEE_PAYER_TRANSFERRING, "the transaction debits the fee payer")
    credited = net.get(pay_to, 0)
    if credited <= 0:
        raise X402Error(RECIPIENT_MISMATCH, f"payTo {pay_to} is not credited")
    if credited != amount:
        raise X402Error(AMOUNT_MISMATCH, f"payTo is credited {credited} tinybars, not {amount}")
    others = sorted(a for a, v in net.items() if v > 0 and a != pay_to)
    if others:
        raise X402Error(EXTRA_POSITIVE_TRANSFERS, f"accounts other than payTo are credited: {others}")
    debited = [a for a, v in net.items() if v < 0]
    if len(debited) != 1:
        raise X402Error(MULTIPLE_PAYERS, f"exactly one account must pay, found {len(debited)}")
    return debited[0]


def _account(proto, what: str) -> str:
    if proto.WhichOneof("account") != "accountNum":
        raise X402Error(INVALID_SHAPE, f"{what} must be a shard.realm.num id, not an alias")
    try:
        return str(AccountId.parse(f"{proto.shardNum}.{proto.realmNum}.{proto.accountNum}"))
    except ValueError:
        raise X402Error(INVALID_SHAPE, f"{what} is out of range") from None


# -- the payer's signature ----------------------------------------------------------------

_ED25519_DER = bytes.fromhex("302a300506032b6570032100")


def public_key_bytes(key_type: str | None, key_hex: str | None) -> bytes:
    """The raw public key the signature map names (ED25519: 32 bytes; ECDSA: 33-byte
    compressed), from the mirror's ``key`` (raw or DER hex). Raises ``SIGNATURE_INVALID``
    for keys this scheme cannot check (none, key lists, thresholds, contracts)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        data = bytes.fromhex(key_hex or "")
    except ValueError:
        raise X402Error(SIGNATURE_INVALID, "the payer's key is not hex") from None
    if key_type == "ED25519":
        if len(data) == 44 and data.startswith(_ED25519_DER):
            data = data[12:]
        if len(data) == 32:
            return data
    elif key_type == "ECDSA_SECP256K1":
        try:
            if data[:1] == b"\x30":  # SubjectPublicKeyInfo DER
                point = serialization.load_der_public_key(data)
            else:
                point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data)
            if isinstance(point, ec.EllipticCurvePublicKey) and isinstance(point.curve, ec.SECP256K1):
                return point.public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.CompressedPoint)
        except ValueError:
            pass
    raise X402Error(SIGNATURE_INVALID,
                    f"the payer's key ({key_type or 'none'}) is not a single ED25519 or ECDSA key")


def verify_payer_signature(transfer: ExactTransfer, key_type: str | None,
                           key_hex: str | None) -> None:
    """Raise ``SIGNATURE_INVALID`` unless every node body carries a valid signature by the
    payer's key (``key_type``/``key_hex`` as the mirror node reports them)."""
    public = public_key_bytes(key_type, key_hex)
    for body in transfer.bodies:
        if not any(kind == key_type and public.startswith(prefix)
                   and _verify(kind, public, sig, body.body_bytes)
                   for prefix, kind, sig in body.signatures):
            raise X402Error(SIGNATURE_INVALID,
                            f"no valid signature by payer {transfer.payer} for node {body.node}")


def _verify(key_type: str, public: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

    try:
        if key_type == "ED25519":
            ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
            return True
        if len(signature) != 64:
            return False
        from Crypto.Hash import keccak

        digest = keccak.new(digest_bits=256, data=message).digest()
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), public)
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                   int.from_bytes(signature[32:], "big"))
        key.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return True
    except (InvalidSignature, ValueError):
        return False
