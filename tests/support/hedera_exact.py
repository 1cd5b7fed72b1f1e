"""Hand-built x402 `exact` Hedera payments for tests, good or deliberately bad.

Built with the SDK directly (not through `chains.hedera.exact_client`), so a test can
forge what a hostile payer would send: other transfer lists, another body type, another
transaction id account, a valid start in the past or future, the wrong signer.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

from chains.x402 import PaymentRequirements, build_payment_payload, encode_header


def forge_bytes(req: dict[str, Any], payer, *, transfers: list[tuple[str, int]] | None = None,
                approved: list[tuple[str, int]] | None = None,
                token: tuple[str, str, int] | None = None, kind: str = "transfer",
                tx_account: str | None = None, start: float | None = None, nanos: int | None = None,
                duration: int = 120, signers: list | None = None,
                nodes: list[str] | None = None, memo: str = "") -> bytes:
    """Transaction bytes as a payer's wallet would send them.

    ``payer`` is a devnet ``DevAccount``. Defaults make a correct payment:
    ``payer -amount / payTo +amount``, transaction id account = ``extra.feePayer``, valid
    start 5 s ago (random nanoseconds unless ``nanos``), frozen for node 0.0.3, signed by the payer only. ``transfers`` replaces
    the HBAR list; ``approved`` adds allowance debits; ``token`` adds
    ``(token id, account, amount)``; ``kind="approve"`` builds a cryptoApproveAllowance
    instead; ``signers`` replaces the payer's key with these ``DevAccount`` keys (``[]``:
    unsigned).
    """
    import hiero_sdk_python as sdk
    from hiero_sdk_python.hapi.services import timestamp_pb2

    acct = sdk.AccountId.from_string
    amount = int(req["amount"])
    valid_start = (time.time() - 5) if start is None else start
    tx_id = sdk.TransactionId(acct(tx_account or req["extra"]["feePayer"]),
                              timestamp_pb2.Timestamp(seconds=int(valid_start),
                                                      nanos=secrets.randbelow(10**9) if nanos is None
                                                      else nanos))
    if kind == "approve":
        tx = sdk.AccountAllowanceApproveTransaction().approve_hbar_allowance(
            acct(payer.account_id), acct(req["extra"]["feePayer"]), sdk.Hbar(1))
    else:
        tx = sdk.TransferTransaction()
        for account, value in (transfers if transfers is not None
                               else [(payer.account_id, -amount), (req["payTo"], amount)]):
            tx.add_hbar_transfer(acct(account), value)
        for account, value in approved or []:
            tx.add_approved_hbar_transfer(acct(account), value)
        if token is not None:
            tx.add_token_transfer(sdk.TokenId.from_string(token[0]), acct(token[1]), token[2])
    tx.set_transaction_id(tx_id)
    tx.set_transaction_valid_duration(duration)
    tx.set_transaction_memo(memo)
    tx.set_node_account_ids([acct(n) for n in (nodes or ["0.0.3"])])
    tx.freeze()
    for signer in ([payer] if signers is None else signers):
        tx.sign(signer.sdk_private_key())
    return tx.to_bytes()


def header_for(req: dict[str, Any], tx_bytes: bytes) -> str:
    """The v2 PAYMENT-SIGNATURE header value carrying ``tx_bytes``."""
    payload = {"transaction": base64.b64encode(tx_bytes).decode("ascii")}
    return encode_header(build_payment_payload(PaymentRequirements.model_validate(req), payload))


def forge(req: dict[str, Any], payer, **kw: Any) -> str:
    """``header_for(req, forge_bytes(req, payer, **kw))``."""
    return header_for(req, forge_bytes(req, payer, **kw))


def resign(tx_bytes: bytes, *signers) -> bytes:
    """The same transaction (same id, same body) with more signatures added."""
    import hiero_sdk_python as sdk

    tx = sdk.Transaction.from_bytes(tx_bytes)
    for signer in signers:
        tx.sign(signer.sdk_private_key())
    return tx.to_bytes()
