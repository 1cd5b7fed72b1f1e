"""The Hedera side of the wallet page: the approval transaction the gateway prepares for a
wallet to sign, and the check of what a wallet sends back before the gateway submits it.

The gateway never holds the owner's key. It freezes `AccountAllowanceApproveTransaction`
(owner pays, spender = the gateway's account, memo = the activation nonce) into bytes; the
wallet signs those bytes; the gateway submits them only if they still are exactly such an
approval (one HBAR allowance, to its own spender, paid by the owner), so the submit
endpoint cannot be used to relay any other transaction.

Imports the Hedera SDK: call only when a Hedera rail is configured.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from chains.hedera.ids import AccountId, TransactionId

MAX_TINYBARS = 50_000_000_000 * 100_000_000  # the whole HBAR supply
MAX_SIGNED_BYTES = 8 * 1024


class ApprovalRejected(ValueError):
    """The bytes are not an approval the gateway will submit; the message says why."""


@dataclass(frozen=True)
class Approval:
    owner: str
    spender: str
    amount: int  # tinybars; 0 revokes
    memo: str
    tx_id: str  # SDK form, 0.0.123@1700000000.000000001


def build_approval(*, owner: str, spender: str, amount: int, memo: str,
                   node: str) -> tuple[bytes, str]:
    """Freeze an unsigned approval of `amount` tinybars from `owner` to `spender`, paid by
    `owner`, for `node` (a node account id). Returns (bytes, SDK transaction id)."""
    import hiero_sdk_python as sdk

    owner_id = sdk.AccountId.from_string(owner)
    tx_id = sdk.TransactionId.generate(owner_id)
    tx = (sdk.AccountAllowanceApproveTransaction()
          .approve_hbar_allowance(owner_id, sdk.AccountId.from_string(spender),
                                  sdk.Hbar.from_tinybars(amount))
          .set_transaction_memo(memo)
          .set_transaction_id(tx_id)
          .set_node_account_id(sdk.AccountId.from_string(node)))
    tx.freeze()
    start = tx_id.valid_start
    return tx.to_bytes(), TransactionId(AccountId.parse(owner), start.seconds, start.nanos).to_sdk()


async def prepare_approval(**kw) -> tuple[bytes, str]:
    """`build_approval` off the event loop (the SDK import and protobuf work block)."""
    return await asyncio.to_thread(build_approval, **kw)


def check_approval(raw: bytes, *, spender: str) -> Approval:
    """What a wallet sent back, if it is a signed HBAR approval to `spender` only."""
    from chains.hedera.exact import decode_transaction
    from chains.x402 import X402Error

    if not raw or len(raw) > MAX_SIGNED_BYTES:
        raise ApprovalRejected("the signed transaction is empty or too large")
    try:
        decoded = decode_transaction(raw)
    except X402Error as exc:
        raise ApprovalRejected(f"not a transaction: {exc}") from None
    body = decoded.body
    if body.WhichOneof("data") != "cryptoApproveAllowance":
        raise ApprovalRejected("only an HBAR allowance approval can be submitted here")
    approve = body.cryptoApproveAllowance
    if approve.nftAllowances or approve.tokenAllowances or len(approve.cryptoAllowances) != 1:
        raise ApprovalRejected("the approval must carry exactly one HBAR allowance")
    allowance = approve.cryptoAllowances[0]
    payer = _account(body.transactionID.accountID)
    owner = _account(allowance.owner) if allowance.HasField("owner") else payer
    if _account(allowance.spender) != spender:
        raise ApprovalRejected(f"the allowance must go to this gateway's spender {spender}")
    if owner != payer:
        raise ApprovalRejected("the owner must pay for its own approval")
    if not decoded.bodies or not all(b.signatures for b in decoded.bodies):
        raise ApprovalRejected("the transaction is not signed")
    valid = body.transactionID.transactionValidStart
    tx_id = TransactionId(AccountId.parse(payer), valid.seconds, valid.nanos).to_sdk()
    return Approval(owner, spender, int(allowance.amount), body.memo, tx_id)


def _account(pb) -> str:
    return f"{pb.shardNum}.{pb.realmNum}.{pb.accountNum}"
