"""Payer side of x402 `exact` on Hedera (HBAR): build the partially signed transfer.

The payer freezes ``payer -amount / payTo +amount`` with the transaction id of the
requirement's ``extra.feePayer`` (the gateway pays the network fee and signs last) and
signs it with its own key only. The result goes into ``payload.transaction`` as base64.

Imports hiero-sdk-python (slow, 1-2 s): import this module only when paying on Hedera.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

from chains.x402 import PaymentRequirements, build_payment_payload, encode_header

DEFAULT_NODE = "0.0.3"  # a consensus node on mainnet, testnet and the local devnet
VALID_DURATION = 120  # seconds, the SDK's default
START_BACKDATE = 5  # seconds: a valid start slightly in the past survives clock skew


def build_transfer_bytes(req: PaymentRequirements | dict[str, Any], payer_account: str,
                         payer_key: Any, *, client: Any = None,
                         node_account_ids: list[str] | None = None, now: float | None = None,
                         valid_duration: int = VALID_DURATION, memo: str = "") -> bytes:
    """The payer's partially signed ``TransferTransaction`` bytes (SDK ``to_bytes()``).

    ``payer_key`` is a ``hiero_sdk_python.PrivateKey`` or its DER/hex string. The body is
    frozen for ``client``'s nodes when a client is given, else for ``node_account_ids``
    (default ``["0.0.3"]``). The valid start is ``now - 5 s`` with random nanoseconds, so
    two payments never share a transaction id by accident.
    """
    import hiero_sdk_python as sdk
    from hiero_sdk_python.hapi.services import timestamp_pb2

    req = req if isinstance(req, PaymentRequirements) else PaymentRequirements.model_validate(req)
    if req.asset != "0.0.0":
        raise ValueError(f"only HBAR (asset 0.0.0) is supported, not {req.asset}")
    fee_payer = (req.extra or {}).get("feePayer")
    if not isinstance(fee_payer, str):
        raise ValueError("the requirement has no extra.feePayer")
    amount = req.amount_int
    if amount <= 0:
        raise ValueError("amount must be positive")
    key = payer_key if isinstance(payer_key, sdk.PrivateKey) else sdk.PrivateKey.from_string(payer_key)
    start = (time.time() if now is None else now) - START_BACKDATE
    tx_id = sdk.TransactionId(sdk.AccountId.from_string(fee_payer),
                              timestamp_pb2.Timestamp(seconds=int(start),
                                                      nanos=secrets.randbelow(10**9)))
    tx = (sdk.TransferTransaction()
          .add_hbar_transfer(sdk.AccountId.from_string(payer_account), -amount)
          .add_hbar_transfer(sdk.AccountId.from_string(req.pay_to), amount)
          .set_transaction_id(tx_id)
          .set_transaction_valid_duration(valid_duration)
          .set_transaction_memo(memo))
    if client is not None:
        tx.freeze_with(client)
    else:
        tx.set_node_account_ids([sdk.AccountId.from_string(n)
                                 for n in (node_account_ids or [DEFAULT_NODE])])
        tx.freeze()
    tx.sign(key)
    return tx.to_bytes()


def build_exact_hedera_payload(req: PaymentRequirements | dict[str, Any], payer_account: str,
                               payer_key: Any, **kw: Any) -> dict[str, str]:
    """``{"transaction": base64}``: the scheme's ``payload`` object."""
    raw = build_transfer_bytes(req, payer_account, payer_key, **kw)
    return {"transaction": base64.b64encode(raw).decode("ascii")}


def payment_header(req: PaymentRequirements | dict[str, Any], payer_account: str, payer_key: Any,
                   *, resource: dict[str, Any] | None = None,
                   extensions: dict[str, Any] | None = None, **kw: Any) -> str:
    """A v2 ``PAYMENT-SIGNATURE`` header value paying ``req`` from ``payer_account``."""
    req = req if isinstance(req, PaymentRequirements) else PaymentRequirements.model_validate(req)
    payload = build_exact_hedera_payload(req, payer_account, payer_key, **kw)
    return encode_header(build_payment_payload(req, payload, resource, extensions))
