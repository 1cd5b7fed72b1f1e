"""Who used an EIP-3009 authorization, from the token's logs.

``authorizationState(from, nonce) == true`` only says the nonce is spent: by a transfer that
pays this payment, by another transfer the payer signed with the same nonce, or by the payer
cancelling it (``cancelAuthorization``). Only the first is a settlement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from chains.evm.eip712 import address_bytes
from chains.evm.rpc import RpcClient, RpcError, from_hex, to_hex
from chains.payments import SettleOutcome

if TYPE_CHECKING:
    from chains.evm.settle import TransferAuthorization

__all__ = ["used_outcome", "item_paid", "paid_authorizations", "payment_key", "NONCE_ALREADY_USED", "SETTLEMENT_PENDING"]

TOPIC_TRANSFER = keccak(text="Transfer(address,address,uint256)")
TOPIC_AUTHORIZATION_USED = keccak(text="AuthorizationUsed(address,bytes32)")
TOPIC_AUTHORIZATION_CANCELED = keccak(text="AuthorizationCanceled(address,bytes32)")
NONCE_ALREADY_USED = "invalid_exact_evm_nonce_already_used"
SETTLEMENT_PENDING = "settlement_pending"
LOG_LOOKBACK_BLOCKS = 10_000  # public nodes refuse wider log queries


def _topic_address(address: str) -> str:
    return to_hex(abi_encode(["address"], [to_checksum_address(address)]))


def _pays(receipt: dict, token: str, auth: "TransferAuthorization") -> bool:
    return item_paid(receipt.get("logs") or [], token, auth)


def item_paid(logs: list[dict], token: str, auth: "TransferAuthorization") -> bool:
    """Do these receipt logs show the token using this authorization to pay it?

    True only for the token's ``AuthorizationUsed(auth.from_, auth.nonce)`` immediately
    followed (next log of the token) by its ``Transfer(auth.from_ -> auth.to, auth.value)``:
    the token emits that pair for one transferWithAuthorization. Pairing the two matters in
    a batch transaction, where another item may move the same value between the same
    accounts under another nonce.
    """
    return payment_key(auth) in paid_authorizations(logs, token)


def payment_key(auth: "TransferAuthorization") -> tuple[str, str, str, int]:
    # Lowercase hex of the validated 20 bytes (no checksum: one keccak less per item).
    return ("0x" + address_bytes(auth.from_).hex(), to_hex(auth.nonce),
            "0x" + address_bytes(auth.to).hex(), auth.value)


def paid_authorizations(logs: list[dict], token: str) -> set[tuple[str, str, str, int]]:
    """(payer, nonce, payee, value) of every authorization these logs show the token using
    for a transfer (see :func:`item_paid`); one pass over a batch receipt's logs."""
    used_topic, transfer_topic = to_hex(TOPIC_AUTHORIZATION_USED), to_hex(TOPIC_TRANSFER)
    mine = [e for e in sorted(logs, key=lambda e: int(str(e.get("logIndex") or "0x0"), 16))
            if str(e.get("address", "")).lower() == token.lower()]
    out = set()
    for entry, nxt in zip(mine, mine[1:]):
        used = [str(t).lower() for t in entry.get("topics") or []]
        paid = [str(t).lower() for t in nxt.get("topics") or []]
        if len(used) != 3 or used[0] != used_topic or len(paid) != 3 or paid[0] != transfer_topic:
            continue
        if paid[1] != used[1]:
            continue
        value = abi_decode(["uint256"], from_hex(nxt["data"]))[0]
        out.add(("0x" + used[1][-40:], used[2], "0x" + paid[2][-40:], value))
    return out


async def used_outcome(
    rpc: RpcClient, token: str, auth: "TransferAuthorization", tx_hash: str | None
) -> SettleOutcome:
    """The authorization is used or cancelled on chain (``authorizationState`` is true): which,
    and by what? ``settled`` only if the AuthorizationUsed log's transaction moved
    ``auth.value`` from the payer to ``auth.to``; cancelled, or the nonce spent on another
    transfer the payer signed: ``failed``. Log queries refused: ``unknown``. RpcUnavailable
    escapes."""
    try:
        used = await _auth_log_tx(rpc, token, auth, TOPIC_AUTHORIZATION_USED)
        if used is not None:
            receipt = await rpc.get_transaction_receipt(used)
            if receipt and _pays(receipt, token, auth):
                return SettleOutcome("settled", used, detail="authorization is used on chain",
                                     block_number=int(receipt["blockNumber"], 16),
                                     gas_used=int(receipt["gasUsed"], 16))
            return SettleOutcome("failed", tx_hash, NONCE_ALREADY_USED,
                                 f"the authorization's nonce was used by another transfer ({used})")
        if await _auth_log_tx(rpc, token, auth, TOPIC_AUTHORIZATION_CANCELED) is not None:
            return SettleOutcome("failed", tx_hash, NONCE_ALREADY_USED, "the payer cancelled the authorization")
    except RpcError as exc:
        # Used or cancelled cannot be told apart without logs: keep it open.
        return SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING, f"log lookup refused: {exc}")
    return SettleOutcome("failed", tx_hash, NONCE_ALREADY_USED,
                         f"used or cancelled; no AuthorizationUsed log in the last {LOG_LOOKBACK_BLOCKS} blocks")


async def _auth_log_tx(rpc: RpcClient, token: str, auth: "TransferAuthorization", topic: bytes) -> str | None:
    latest = await rpc.block_number()
    logs = await rpc.call("eth_getLogs", [{
        "address": to_checksum_address(token),
        "fromBlock": to_hex(max(0, latest - LOG_LOOKBACK_BLOCKS)),
        "toBlock": to_hex(latest),
        "topics": [to_hex(topic), _topic_address(auth.from_), to_hex(auth.nonce)],
    }])
    return str(logs[0]["transactionHash"]).lower() if logs else None
