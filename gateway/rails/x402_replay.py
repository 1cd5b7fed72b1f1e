"""Replays of x402 payments: who may have a payment's stored response, and until when.

A payment presented again (its claim conflicts, or the chain shows it used) is a replay.
It gets the stored response of the first call only if all of these hold; otherwise 409
`payment_already_used`, with the settlement receipt (transaction hash), never the body:

- it is the same request: method, path and query, body digest; and the same payment
  header (so the same `payment-identifier` when the payment carried one);
- the replay shows it did not come from public data: the payment carries a
  `payment-identifier` (it is never on chain), or the replay arrived while the payment
  was still unpublished (`verified`/`queued`, no settlement transaction sent, not used on
  chain). Once the settlement is sent, every field of the authorization is public
  calldata and the 402 is public, so without an identifier nothing tells the payer from
  an observer who rebuilt the header;
- the authorization is still valid (the rail's `verify` refuses an expired one before any
  of this), the response is within the retention limit and its body was small enough to
  keep (`replay.max_bytes`; a larger one is answered 409 on replay, never fetched again).

A stored response that the origin broke off is not replayed as a success (the proxy
answers 502). A `before` payment that settled while its origin call failed is forwarded
again to a retry of the same request (one call at a time, until one is served): with its
`payment-identifier` when it carried one, else only from the client address that first
presented it (the best that is left when the payer sent no secret).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Awaitable, Callable

from chains.payments import PaymentRow, PaymentStore, Stored
from chains.x402 import SettleResponse, encode_header
from gateway.errors import Conflict
from gateway.rails.base import Charge, PaidRequest, PaymentRejected, Priced, StoredResponse
from store.clock import Clock

DUPLICATE_WAIT_SECONDS = 30.0
# Beyond the paygate's origin timeout, how long one `before` forward owns the payment
# (a process that dies mid-call frees it after this).
FORWARD_MARGIN_SECONDS = 30.0
RETRY_NOTE = "the payment is settled; a retry with the same payment will be forwarded"

Reforward = Callable[[PaymentRow], Awaitable[Charge | None]]


def receipt_headers(resp: SettleResponse) -> dict[str, str]:
    value = encode_header(resp)
    return {"PAYMENT-RESPONSE": value, "X-PAYMENT-RESPONSE": value}


async def request_digest(request: PaidRequest) -> str:
    """What a payment is bound to: method, path with query (as sent), body digest."""
    body = hashlib.sha256(await request.body()).hexdigest()
    return hashlib.sha256(f"{request.method}\n{request.path_qs}\n{body}".encode()).hexdigest()


def client_digest(request: PaidRequest) -> str:
    return hashlib.sha256(request.client.encode()).hexdigest()


class Replays:
    """The replay rules above, over the payment store."""

    def __init__(self, store: PaymentStore, clock: Clock, *, retention: float,
                 max_bytes: int, used_reason: str) -> None:
        self.store = store
        self.clock = clock
        self.retention = retention
        self.max_bytes = max_bytes
        self.used_reason = used_reason  # the scheme's x402 code for a reused payment
        self._next_purge = 0.0

    def forward_lease(self, priced: Priced) -> float:
        return self.clock.now() + priced.paygate.timeout_seconds + FORWARD_MARGIN_SECONDS

    async def duplicate(self, row: PaymentRow, decoded: dict[str, Any], fp: str,
                        pid: str | None, digest: str, priced: Priced, *, public: bool,
                        reforward: Reforward) -> Charge | StoredResponse:
        """Answer a payment presented again. `public`: the chain shows it used.
        `reforward(row)` gives a Charge when a `before` payment is due another origin call."""
        if row.paygate_id != priced.paygate.id:
            raise PaymentRejected(self.used_reason, "this payment was already used")
        if row.fingerprint != fp:
            if pid and row.payment_identifier == pid:
                raise Conflict("payment identifier was already used with a different payment",
                               code="payment_identifier_conflict")
            if decoded.get("payload") != row.payload["payment"].get("payload"):
                raise PaymentRejected(self.used_reason, "this authorization nonce was already used")
            # The very authorization in another envelope (or with another identifier).
            raise self.already_used(row, "this payment was already used")
        if row.state in ("failed", "void") and await self.store.response(row.id) is None:
            # Never served (settlement failed, or the origin could not be reached): say
            # so again rather than wait for a response that will not come.
            raise self.not_served(row)
        if row.request_digest != digest:
            raise self.already_used(row, "this payment was made for another request (method, "
                                         "path or body); a payment pays for one request")
        if row.settlement == "before":
            charge = await reforward(row)
            if charge is not None:
                return charge
        proven = row.payment_identifier is not None or not (
            public or row.tx_hash is not None or row.state not in ("verified", "queued"))
        if not proven:
            raise self.already_used(
                row, "this payment was already served; its response is replayed only to a "
                     "retry that carries the payment's payment-identifier, or that arrives "
                     "before the payment settles (public chain data is not a ticket)")
        stored = await self._wait(row, reforward)
        if isinstance(stored, Charge):
            return stored
        if stored.created_at < self.clock.now() - self.retention:
            raise self.already_used(row, "this payment was served; its response is past the "
                                         f"replay retention ({self.retention:g} s)")
        if not stored.body_kept:
            raise self.already_used(
                row, f"this payment was served; its response ({stored.body_size} bytes) was "
                     f"larger than the replay limit ({self.max_bytes} bytes), so it was not "
                     "kept and is not served again")
        return StoredResponse(stored.status, stored.headers, stored.body, stored.complete)

    async def _wait(self, row: PaymentRow, reforward: Reforward) -> Stored | Charge:
        """The stored response of a payment another request is serving; or, should that
        request's `before` origin call fail meanwhile, a Charge to forward this one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DUPLICATE_WAIT_SECONDS
        interval = 0.05
        while True:
            stored, current = await self.store.progress(row.id)
            if stored is not None:
                return stored
            current = current or row
            if current.state in ("failed", "void"):
                raise self.not_served(current)
            if current.settlement == "before":
                charge = await reforward(current)
                if charge is not None:
                    return charge
            if loop.time() >= deadline:
                raise Conflict("this payment is still being served; retry shortly",
                               code="payment_in_flight", headers={"Retry-After": "1"})
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, 0.5)

    async def record(self, row_id: str, response: StoredResponse, *, queue: bool = False) -> None:
        """Keep what was served (the body only up to the size limit) and, with `queue`,
        queue the payment for settlement in the same write; now and then, delete what is
        past retention."""
        size = response.body_size if response.body_size is not None else len(response.body)
        kept = response.body_kept and size <= self.max_bytes
        await self.store.store_response(row_id, response.status, response.headers,
                                        response.body, response.complete, body_kept=kept,
                                        body_size=size, queue=queue)
        now = self.clock.now()
        if now >= self._next_purge:
            self._next_purge = now + min(60.0, self.retention)
            await self.store.purge_responses(now - self.retention)

    def already_used(self, row: PaymentRow, message: str) -> Conflict:
        receipt = {} if row.tx_hash is None else receipt_headers(SettleResponse(
            success=row.state != "failed", transaction=row.tx_hash, network=row.network,
            payer=row.payer))
        return Conflict(message, code="payment_already_used", headers=receipt,
                        extra={"transaction": row.tx_hash} if row.tx_hash else None)

    def not_served(self, row: PaymentRow) -> PaymentRejected:
        return PaymentRejected(row.error if row.state == "failed" and row.error
                               else "invalid_transaction_state",
                               f"this payment was not served ({row.state}); send a new payment")
