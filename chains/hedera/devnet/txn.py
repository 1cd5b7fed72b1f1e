"""Decoding a submitted ``proto.Transaction`` and checking its signatures.

Shared by the processor (flow) and the handlers (per-type rules).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from hiero_sdk_python.hapi.services import (
    basic_types_pb2,
    response_code_pb2,
    transaction_contents_pb2,
    transaction_pb2,
)

from . import keys
from .ledger import Transfer, TxKey

Code = response_code_pb2.ResponseCodeEnum

# Transaction body field -> mirror node transaction type name. Anything else is
# NOT_SUPPORTED by this node.
NAMES = {
    "cryptoTransfer": "CRYPTOTRANSFER",
    "cryptoApproveAllowance": "CRYPTOAPPROVEALLOWANCE",
    "cryptoCreateAccount": "CRYPTOCREATEACCOUNT",
}


class Rejected(Exception):
    """A precheck or handle failure carrying its ResponseCodeEnum value."""

    def __init__(self, code: int):
        super().__init__(Code.Name(code))
        self.code = code


@dataclass
class Submission:
    """A parsed transaction: the body, the exact bytes that were signed, the signatures."""

    body: transaction_pb2.TransactionBody
    body_bytes: bytes
    sig_pairs: list[basic_types_pb2.SignaturePair]
    tx_hash: bytes
    kind: str
    key: TxKey

    def signed_by(self, key_type: str | None, public_key: bytes | None) -> bool:
        """True when some signature pair whose prefix matches ``public_key`` verifies.

        A prefix may be shorter than the key (the protocol allows it); the SDK sends the
        whole raw key (ED25519: 32 bytes, ECDSA: 33-byte compressed)."""
        if key_type is None or public_key is None:
            return False
        wanted = "ed25519" if key_type == keys.ED25519 else "ECDSA_secp256k1"
        for pair in self.sig_pairs:
            if pair.WhichOneof("signature") != wanted or not public_key.startswith(pair.pubKeyPrefix):
                continue
            if keys.verify(key_type, public_key, getattr(pair, wanted), self.body_bytes):
                return True
        return False


def account_num(account_id: basic_types_pb2.AccountID) -> int | None:
    """The number of a plain ``0.0.N`` account id, or None (alias, other shard/realm)."""
    if account_id.shardNum or account_id.realmNum or account_id.WhichOneof("account") != "accountNum":
        return None
    return account_id.accountNum


def parse(request: transaction_pb2.Transaction) -> Submission:
    """Decode a ``proto.Transaction`` (current ``signedTransactionBytes`` or the deprecated
    ``bodyBytes`` + ``sigMap`` layout). Raises Rejected with the node's parse codes."""
    try:
        if request.signedTransactionBytes:
            signed = transaction_contents_pb2.SignedTransaction.FromString(request.signedTransactionBytes)
            body_bytes, sig_map = signed.bodyBytes, signed.sigMap
            tx_hash = hashlib.sha384(request.signedTransactionBytes).digest()
        elif request.bodyBytes:
            body_bytes, sig_map = request.bodyBytes, request.sigMap
            tx_hash = hashlib.sha384(request.SerializeToString()).digest()
        else:
            raise Rejected(Code.INVALID_TRANSACTION_BODY)
    except DecodeError:
        raise Rejected(Code.INVALID_TRANSACTION) from None
    try:
        body = transaction_pb2.TransactionBody.FromString(body_bytes)
    except DecodeError:
        raise Rejected(Code.INVALID_TRANSACTION_BODY) from None
    if not body.HasField("transactionID") or not body.transactionID.HasField("transactionValidStart"):
        raise Rejected(Code.INVALID_TRANSACTION_ID)
    payer = account_num(body.transactionID.accountID)
    if not payer:
        raise Rejected(Code.INVALID_PAYER_ACCOUNT_ID)
    kind = body.WhichOneof("data")
    if kind is None:
        raise Rejected(Code.EMPTY_TRANSACTION_BODY)
    if kind not in NAMES:
        raise Rejected(Code.NOT_SUPPORTED)
    start = body.transactionID.transactionValidStart
    key = TxKey(payer, start.seconds, start.nanos, body.transactionID.scheduled, body.transactionID.nonce)
    return Submission(body, body_bytes, list(sig_map.sigPair), tx_hash, kind, key)


def net_transfers(moves: list[Transfer]) -> tuple[Transfer, ...]:
    """Net HBAR per account (zero nets dropped), ordered by account like a record's list;
    ``is_approval`` is set on an account debited through an allowance."""
    totals: dict[int, int] = {}
    approvals: set[int] = set()
    for move in moves:
        totals[move.account] = totals.get(move.account, 0) + move.amount
        if move.is_approval:
            approvals.add(move.account)
    return tuple(Transfer(num, amount, num in approvals)
                 for num, amount in sorted(totals.items()) if amount)
