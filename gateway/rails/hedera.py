"""x402 `exact` on Hedera (HBAR) as a scheme of the generic x402 rail.

The payer sends a `TransferTransaction` it froze with the gateway's account as the
transaction id's account (the fee payer) and signed with its own key. The gateway checks
it (`chains.hedera.exact`), checks the payer's signature against the key the mirror node
shows, co-signs as fee payer and submits the stored bytes.

Exactly once: the claim key is the network and the transaction id. Hedera runs a
transaction id at most once, so the same bytes, a re-signed copy or any other body under
the same id all land on one claim and are served once; resubmitting the stored bytes is
harmless (the node answers DUPLICATE_TRANSACTION with the first receipt). A transaction id
the mirror already knows is refused at verification: only a body the gateway co-signed can
use its account's ids, and none of them is accepted twice.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from chains.hedera import exact
from chains.hedera.exact import ExactTransfer
from chains.hedera.ids import AccountId
from chains.payments import SettleOutcome
from chains.x402 import (
    INSUFFICIENT_FUNDS,
    INVALID_PAYMENT_REQUIREMENTS,
    INVALID_TRANSACTION_STATE,
    PAYMENT_EXPIRED,
    SETTLEMENT_PENDING,
    PaymentPayload,
    PaymentRequirements,
    X402Error,
)
from gateway.config import Config, HbarAsset, price_atomic
from gateway.errors import Unavailable
from gateway.rails.base import Priced
from gateway.rails.x402 import VerifiedPayment
from store.clock import Clock

log = logging.getLogger("tollgate.hedera.exact")

MAX_TIMEOUT_SECONDS = 180
MIRROR_LAG_MARGIN = 60.0  # seconds after the window before "no record" means "never ran"
RESUBMIT_MARGIN = 5.0  # do not resubmit in the last seconds of the window

# Receipt / precheck statuses with an x402 code of their own; anything else is
# `transaction_failed` (the reference facilitator's code) with the status as detail.
_STATUS_REASONS = {
    "INSUFFICIENT_ACCOUNT_BALANCE": INSUFFICIENT_FUNDS,
    "INVALID_SIGNATURE": exact.SIGNATURE_INVALID,
    "TRANSACTION_EXPIRED": exact.TRANSACTION_EXPIRED,
    "INVALID_TRANSACTION_START": exact.VALID_START_IN_FUTURE,
    "INVALID_NODE_ACCOUNT": exact.NODE_ACCOUNT,
}
TRANSACTION_FAILED = "transaction_failed"



class HederaExact:
    """The `Scheme` of the `x402-hedera` rail. `link` is `gateway.rails.registry.HederaLink`
    (`.network`: the gateway's account on the consensus nodes, `.mirror`: mirror client)."""

    rail_name = "x402-hedera"
    duplicate_reason = exact.ALREADY_USED

    def __init__(self, config: Config, link: Any, clock: Clock) -> None:
        assert config.hedera is not None
        self.config = config
        self.hedera = config.hedera
        self.network = config.hedera.network
        self.fee_payer = str(AccountId.parse(config.hedera.account_id))
        self.link = link
        self.clock = clock
        self._nodes = ({str(AccountId.parse(n)) for n in config.hedera.nodes.values()}
                       if config.hedera.nodes else None)

    # -- offer and verification ------------------------------------------------------

    def requirements(self, priced: Priced) -> list[PaymentRequirements]:
        pg = priced.paygate
        if self.rail_name not in pg.rails or "hedera" not in pg.pay_to:
            return []
        out = []
        for asset_id in pg.prices:
            asset = self.config.assets[asset_id]
            if not isinstance(asset, HbarAsset) or asset.network != self.network:
                continue
            amount = price_atomic(self.config, pg, asset_id) * priced.units
            out.append(PaymentRequirements.model_validate({
                "scheme": "exact", "network": self.network, "asset": exact.HBAR_ASSET,
                "amount": str(amount), "payTo": pg.pay_to["hedera"],
                "maxTimeoutSeconds": MAX_TIMEOUT_SECONDS,
                "extra": {"feePayer": self.fee_payer}}))
        return out

    def verify(self, payment: PaymentPayload, req: PaymentRequirements, now: float) -> VerifiedPayment:
        """Everything that needs no chain state; the signature is checked in `check_chain`."""
        if req.asset != exact.HBAR_ASSET or req.extra.get("feePayer") != self.fee_payer:
            raise X402Error(INVALID_PAYMENT_REQUIREMENTS, "not an HBAR requirement of this gateway")
        accepted_fee_payer = payment.accepted.extra.get("feePayer") if payment.accepted else None
        if accepted_fee_payer not in (None, self.fee_payer):
            raise X402Error(exact.FEE_PAYER_MISMATCH, "accepted.extra.feePayer is not this gateway")
        t = exact.check_transfer(exact.transaction_b64(payment.payload), pay_to=req.pay_to,
                                 amount=req.amount_int, fee_payer=self.fee_payer, now=now)
        if self._nodes is not None and not set(t.nodes) <= self._nodes:
            raise X402Error(exact.NODE_ACCOUNT, f"frozen for nodes {sorted(set(t.nodes) - self._nodes)} "
                            f"this gateway does not submit to")
        return VerifiedPayment(
            payer=t.payer, pay_to=t.pay_to, asset=exact.HBAR_ASSET, network=self.network,
            amount=t.amount, claim_key=f"{self.network}|{exact.HBAR_ASSET}|{t.mirror_tx_id}",
            detail=t, valid_before=float(t.valid_until))

    async def check_chain(self, vp: VerifiedPayment) -> None:
        """The payer's signature (key from the mirror), its balance, and that the
        transaction id has not run yet. Mirror down -> 503 `mirror_unavailable`."""
        from chains.hedera.mirror import MirrorNotFound, MirrorUnavailable

        t = vp.detail
        try:
            account = await self.link.mirror.account(t.payer)
            seen = await self.link.mirror.transaction(t.mirror_tx_id)
        except MirrorNotFound:
            raise X402Error(exact.SIGNATURE_INVALID,
                            f"payer {t.payer} is unknown to the mirror node") from None
        except MirrorUnavailable as exc:
            raise Unavailable("the Hedera mirror node is unavailable",
                              code="mirror_unavailable") from exc
        if account.deleted:
            raise X402Error(exact.SIGNATURE_INVALID, f"payer {t.payer} is deleted")
        exact.verify_payer_signature(t, account.key_type, account.key_hex)
        if seen:
            raise X402Error(exact.ALREADY_USED, f"transaction {t.tx_id} already ran")
        if account.balance < t.amount:
            raise X402Error(INSUFFICIENT_FUNDS, f"payer {t.payer} holds {account.balance} tinybars")

    # -- settlement ------------------------------------------------------------------

    async def settle(self, stored: dict[str, Any], on_submitted: Callable[[str], Awaitable[None]],
                     ) -> SettleOutcome:
        """Co-sign and submit the stored bytes. SUCCESS -> settled (`tx_hash` is the
        transaction id); another status -> failed; node unreachable -> unknown."""
        from chains.hedera.network import HederaUnavailable

        t, raw = self._from_stored(stored)
        await on_submitted(t.tx_id)  # known before sending: a crash leaves it recorded
        try:
            sub = await self.link.network.submit(raw, cosign=True)
        except HederaUnavailable as exc:
            return SettleOutcome("unknown", t.tx_id, SETTLEMENT_PENDING, str(exc))
        if sub.status == "SUCCESS":
            return SettleOutcome("settled", t.tx_id)
        return SettleOutcome("failed", t.tx_id if sub.reached_consensus else None,
                             _STATUS_REASONS.get(sub.status, TRANSACTION_FAILED), sub.status)

    async def reconcile(self, stored: dict[str, Any], tx_hash: str | None) -> SettleOutcome:
        """Decide a settlement whose outcome is unknown from the mirror node's record."""
        from chains.hedera.mirror import MirrorUnavailable, pick_record

        t, _raw = self._from_stored(stored)
        try:
            records = await self.link.mirror.transaction(t.mirror_tx_id)
        except MirrorUnavailable as exc:
            return SettleOutcome("unknown", t.tx_id, SETTLEMENT_PENDING, str(exc))
        record = pick_record(records or [])
        if record is None:
            now = self.clock.now()
            if self.still_valid(stored, now):
                # Maybe never reached a node, maybe not ingested yet: either way resubmitting
                # the same signed bytes is safe (a node that saw them answers
                # DUPLICATE_TRANSACTION), and the rail resubmits a `failed` attempt while
                # the authorization is still valid.
                return SettleOutcome("failed", t.tx_id, SETTLEMENT_PENDING,
                                     "no record yet; resubmit the same bytes")
            if now < t.valid_until + MIRROR_LAG_MARGIN:
                return SettleOutcome("unknown", t.tx_id, SETTLEMENT_PENDING, "no record yet")
            return SettleOutcome("failed", None, PAYMENT_EXPIRED,
                                 "the validity window passed without a record")
        if not record.succeeded:
            return SettleOutcome("failed", t.tx_id,
                                 _STATUS_REASONS.get(record.result, TRANSACTION_FAILED), record.result)
        if record.net_amount(t.pay_to) != t.amount or record.net_amount(t.payer) != -t.amount:
            log.error("transaction %s succeeded but does not pay %s %d tinybars from %s",
                      t.tx_id, t.pay_to, t.amount, t.payer)
            return SettleOutcome("failed", t.tx_id, INVALID_TRANSACTION_STATE,
                                 "the recorded transfers are not this payment")
        return SettleOutcome("settled", t.tx_id)

    def still_valid(self, stored: dict[str, Any], now: float) -> bool:
        """Could the stored bytes still be submitted (inside the validity window)?"""
        t, _raw = self._from_stored(stored)
        return t.valid_until > now + RESUBMIT_MARGIN

    def exposure_limit(self, network: str) -> int | None:
        """No Hedera-specific limit: the rail's default of ten prices applies."""
        return None

    def _from_stored(self, stored: dict[str, Any]) -> tuple[ExactTransfer, bytes]:
        req = PaymentRequirements.model_validate(stored["requirement"])
        b64 = exact.transaction_b64(stored["payment"]["payload"])
        t = exact.check_transfer(b64, pay_to=req.pay_to, amount=req.amount_int,
                                 fee_payer=req.extra["feePayer"], now=None)
        return t, exact.transaction_bytes(b64)
