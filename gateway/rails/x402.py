"""The x402 rail, for any chain scheme (EVM exact, Hedera exact).

Per request: decode the payment header (v2 `PAYMENT-SIGNATURE` or v1 `X-PAYMENT`), match
it to an offered requirement, verify it locally, check chain state, then claim it in the
store. The first request to claim a payment serves it: one origin call, one settlement.

The same payment again (the claim conflicts, or the chain shows it used) is a replay:
`gateway.rails.x402_replay` decides whether it gets the stored response (same request,
not rebuilt from public chain data, within validity and retention) or 409.

Settlement per paygate: `before` (settle, then forward), `after` (forward; settle when the
origin answered below `charge_below_status`; if settlement fails the caller gets a 402
instead of the origin's answer), `deferred` (forward; a background worker settles; the
payer's unsettled total is bounded).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from chains.payments import NewPayment, PaymentRow, PaymentStore, SettleOutcome, TxPersist
from chains.x402 import (
    NONCE_ALREADY_USED,
    PAYMENT_IDENTIFIER,
    SettleResponse,
    VerifyResponse,
    X402Error,
    declare_payment_identifier,
    decode_header,
    encode_header,
    parse_payment_payload,
    payment_identifier,
    select_requirement,
)
from gateway.errors import Conflict
from gateway.rails.base import (
    RETRY_HEADER,
    Charge,
    Offer,
    PaidRequest,
    PaymentRejected,
    Priced,
    StoredResponse,
)
from gateway.rails.x402_replay import RETRY_NOTE, Replays, client_digest, request_digest
from gateway.rails.x402_replay import receipt_headers as _receipt_headers
from store.clock import Clock

log = logging.getLogger("tollgate.x402")

PAYMENT_HEADERS = ("PAYMENT-SIGNATURE", "X-PAYMENT")
LEASE_SECONDS = 5.0  # a worker's hold on a payment; renewed every third of it while working
UNKNOWN_RECHECK_SECONDS = 2.0  # an unresolved settlement is asked about again after this
# Payments one instance works on at once in the background. Settlements are pipelined (and
# batched where the chain has a batch contract): none waits for another's receipt, so this
# bounds throughput at about WORKER_BATCH per receipt wait (one or two blocks).
WORKER_BATCH = 1000
GATHER_SECONDS = 0.2  # a worker that drained the queue waits this long before the next pass


@dataclass
class VerifiedPayment:
    """What a scheme tells the rail about a payment that passed its checks."""

    payer: str
    pay_to: str
    asset: str
    network: str
    amount: int  # atomic units
    claim_key: str  # unique per payment on its chain: the replay guard's key
    detail: Any  # the scheme's own verification result
    valid_before: float | None = None  # the authorization expires then (unix s), if it says


class Scheme(Protocol):
    rail_name: str
    # Optional `duplicate_reason: str`: the reason code for a payment used before
    # (default: the EVM nonce code).

    def requirements(self, priced: Priced) -> list: ...
    def verify(self, payment, req, now: float): ...
    async def check_chain(self, verified) -> None: ...
    # `on_submitted(tx_hash, raw=None)` persists the transaction before it is sent.
    async def settle(self, stored: dict[str, Any], on_submitted) -> SettleOutcome: ...
    # Optional keyword `raw_tx`: the persisted signed bytes, passed when there are some.
    async def reconcile(self, stored: dict[str, Any], tx_hash: str | None) -> SettleOutcome: ...
    def still_valid(self, stored: dict[str, Any], now: float) -> bool: ...
    def exposure_limit(self, network: str) -> int | None: ...


class _Handle:
    """The rail's reference to a claimed payment during one request."""

    def __init__(self, row_id: str, priced: Priced | None, network: str, payer: str,
                 stored: dict[str, Any]) -> None:
        self.row_id = row_id
        self.priced = priced
        self.network = network
        self.payer = payer
        self.stored = stored
        self.receipt: dict[str, str] = {}
        self.retry = False  # `before`, origin failed: nothing to store, a retry forwards
        self.queue = False  # `deferred`, served: queued for settlement with its record


def fingerprint(decoded: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(decoded, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


class X402Rail:
    def __init__(self, scheme: Scheme, store: PaymentStore, clock: Clock,
                 shutdown_grace: float = 30.0, *, replay_retention: float = 600.0,
                 lease_seconds: float = LEASE_SECONDS,
                 replay_max_bytes: int = 1024**2) -> None:
        self.replay_max_bytes = replay_max_bytes  # the proxy keeps no more than this
        self.replays = Replays(store, clock, retention=replay_retention,
                               max_bytes=replay_max_bytes,
                               used_reason=getattr(scheme, "duplicate_reason", NONCE_ALREADY_USED))
        self.shutdown_grace = shutdown_grace
        # Leases name this instance: a restarted process is a new owner, and takes over
        # what its predecessor held as soon as those short leases lapse.
        self.instance = secrets.token_hex(8)
        self.lease_seconds = lease_seconds
        self._working: set[str] = set()  # payments whose lease the heartbeat renews
        self._worker_tasks: set[asyncio.Task] = set()
        self.name = scheme.rail_name
        self.scheme = scheme
        self.store = store
        self.clock = clock
        self._inflight: set[asyncio.Task] = set()

    def offer(self, priced: Priced) -> Offer:
        # Advertise the payment-identifier extension: clients may send an id that makes
        # a retry with a fresh signature idempotent too.
        return Offer(accepts=self.scheme.requirements(priced),
                     extensions={PAYMENT_IDENTIFIER: declare_payment_identifier()})

    def carries_payment(self, headers: Mapping[str, str]) -> bool:
        return any(h in headers for h in PAYMENT_HEADERS)

    async def accept(self, request: PaidRequest, priced: Priced) -> Charge | StoredResponse:
        raw = next(request.headers[h] for h in PAYMENT_HEADERS if h in request.headers)
        try:
            decoded = decode_header(raw)  # once: the payment and its fingerprint share it
            payment = parse_payment_payload(decoded, raw=raw)
            req = select_requirement(payment, self.scheme.requirements(priced))
            pid = payment_identifier(payment.extensions)
            vp = self.scheme.verify(payment, req, self.clock.now())
        except X402Error as exc:
            raise PaymentRejected(exc.reason, exc.message) from None
        fp = fingerprint({k: v for k, v in decoded.items() if k != "resource"})
        pg = priced.paygate
        digest = await request_digest(request)
        client = client_digest(request)
        try:
            await self.scheme.check_chain(vp)
        except X402Error as exc:
            # A payment served here before is used on chain by now: it is a replay, not a
            # bad payment. (Looked up only on this path: the first try needs no extra read.)
            existing = await self.store.find(vp.claim_key, pg.id, pid)
            if existing is not None:
                return await self._duplicate(existing, decoded, fp, pid, digest, priced,
                                             raw, client, public=True)
            raise PaymentRejected(exc.reason, exc.message) from None
        stored = {"payment": decoded, "requirement": req.to_wire()}
        deferred = pg.settlement == "deferred"
        limit = (self.scheme.exposure_limit(vp.network) or 10 * int(req.amount)) if deferred else None
        row_id = await self.store.claim(NewPayment(
            valid_before=vp.valid_before,
            claim_key=vp.claim_key, payment_identifier=pid, fingerprint=fp, rail=self.name,
            paygate_id=pg.id, network=vp.network, asset=vp.asset, payer=vp.payer,
            pay_to=vp.pay_to, amount=vp.amount, settlement=pg.settlement, payload=stored,
            request_digest=digest, client_digest=client,
            forward_until=self.replays.forward_lease(priced) if pg.settlement == "before" else None),
            limit)
        if row_id is None:
            existing = await self.store.find(vp.claim_key, pg.id, pid)
            if existing is not None:
                return await self._duplicate(existing, decoded, fp, pid, digest, priced, raw,
                                             client, public=False)
            raise PaymentRejected("deferred_exposure_exceeded",
                                  "this payer has too much unsettled value; retry once it settles")
        handle = _Handle(row_id, priced, vp.network, vp.payer, stored)
        charge = Charge(rail=self.name, payer=vp.payer, x_payment=raw, x_payment_response="",
                        ref=handle)
        if pg.settlement == "before":
            outcome = await self._settle(handle, ("verified",))
            if outcome.state == "failed":
                raise PaymentRejected(outcome.reason or "unexpected_settle_error",
                                      f"settlement failed: {outcome.detail or outcome.reason}")
            charge.x_payment_response = handle.receipt["PAYMENT-RESPONSE"]
        else:
            charge.x_payment_response = encode_header(VerifyResponse.model_validate(
                {"isValid": True, "payer": vp.payer}))
        return charge

    async def _duplicate(self, row: PaymentRow, decoded: dict[str, Any], fp: str,
                         pid: str | None, digest: str, priced: Priced, raw: str,
                         client: str, *, public: bool) -> Charge | StoredResponse:
        async def reforward(current: PaymentRow) -> Charge | None:
            return await self._reforward(current, priced, raw, client)

        return await self.replays.duplicate(row, decoded, fp, pid, digest, priced,
                                            public=public, reforward=reforward)

    async def _reforward(self, row: PaymentRow, priced: Priced, raw: str,
                         client: str) -> Charge | None:
        """`before`: the payment settled and its last origin call failed; this retry (of
        the same request) owns the next call if nobody else took it. Without an
        identifier (the header is public once settled), only from the first client's
        address: an observer elsewhere who rebuilt the header gets no forward."""
        if row.forward_until is None or row.state not in ("settling", "settled", "unknown"):
            return None
        if row.payment_identifier is None and row.client_digest != client:
            return None
        if not await self.store.take_forward(row.id, self.replays.forward_lease(priced)):
            return None
        h = _Handle(row.id, priced, row.network, row.payer, row.payload)
        h.receipt = _receipt_headers(SettleResponse(
            success=True, transaction=row.tx_hash or "", network=row.network, payer=row.payer))
        return Charge(rail=self.name, payer=row.payer, x_payment=raw,
                      x_payment_response=h.receipt["PAYMENT-RESPONSE"], ref=h)

    async def complete(self, charge: Charge, status: int) -> dict[str, str]:
        h: _Handle = charge.ref
        pg = h.priced.paygate
        if pg.settlement == "before":
            if status >= pg.charge_below_status:
                # Settled, but the origin failed: the caller must not be left paid with
                # nothing. Nothing is stored; a retry of the same request forwards again.
                h.retry = True
                await self.store.set_forward(h.row_id, self.clock.now())
                return {**h.receipt, RETRY_HEADER: RETRY_NOTE}
            return h.receipt
        if status >= pg.charge_below_status:
            await self.store.transition(h.row_id, "verified", "void",
                                        error=f"origin answered {status}")
            return _receipt_headers(SettleResponse(
                success=False, network=h.network, payer=h.payer,
                error_reason="not_settled_origin_failed"))
        if pg.settlement == "deferred":
            # Queued in the same durable write as the record of what was served (`record`),
            # which the caller's last bytes wait for: a call that dies before it leaves the
            # payment `verified`, unserved, and the worker voids it.
            h.queue = True
            return _receipt_headers(SettleResponse(success=True, network=h.network, payer=h.payer))
        outcome = await self._settle(h, ("verified",))
        if outcome.state == "failed":
            raise PaymentRejected(outcome.reason or "unexpected_settle_error",
                                  f"settlement failed: {outcome.detail or outcome.reason}")
        return h.receipt

    async def record(self, charge: Charge, response: StoredResponse) -> None:
        h: _Handle = charge.ref
        if h.retry:
            return  # not served: nothing to replay, a retry forwards again
        await self.replays.record(h.row_id, response, queue=h.queue)
        if h.priced is not None and h.priced.paygate.settlement == "before":
            await self.store.set_forward(h.row_id, None)  # served: no more forwards

    async def _settle(self, h: _Handle, from_states: tuple[str, ...], *,
                      started: bool = False) -> SettleOutcome:
        """Settle now, recording each step so a crash leaves a state the worker resolves.

        The row is leased to this instance while it settles (renewed by the heartbeat), and
        the signed transaction is persisted before it is sent. `started`: the caller has
        already moved the row to `settling` under this instance's lease (the worker does
        that for a whole pass in one write)."""
        if not started and not await self.store.transition(
                h.row_id, from_states, "settling", lease=(self.instance, self.lease_seconds)):
            row = await self.store.get(h.row_id)
            raise Conflict(f"payment is already {row.state if row else 'gone'}",
                           code="payment_in_flight")

        # A batch settler groups these: one write persists the batch for all its payments.
        persist = TxPersist(self.store, h.row_id)

        async def settle_and_record() -> SettleOutcome:
            self._working.add(h.row_id)
            try:
                outcome = await self.scheme.settle(h.stored, persist)
                await self._record_outcome(h.row_id, "settling", outcome)
                return outcome
            finally:
                self._working.discard(h.row_id)

        # The outcome is recorded inside the task: if the request is cancelled (client gone,
        # server shutting down), the task still records it and `aclose` waits for it.
        task = asyncio.ensure_future(settle_and_record())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        # Shielded: a client that goes away must not abandon a sent transaction.
        outcome = await asyncio.shield(task)
        h.receipt = _receipt_headers(SettleResponse(
            success=outcome.state != "failed", transaction=outcome.tx_hash or "",
            network=h.network, payer=h.payer,
            error_reason=outcome.reason if outcome.state == "failed" else None))
        return outcome

    async def _record_outcome(self, row_id: str, old: str, outcome: SettleOutcome) -> None:
        if outcome.state == "unknown":
            log.warning("settlement of %s is unknown (%s); the worker will reconcile it",
                        row_id, outcome.detail or outcome.reason)
        # Outcomes of settlements that finish together (a batch) commit together: the
        # store group-commits them.
        await self.store.record_outcome(
            row_id, old, outcome.state, tx_hash=outcome.tx_hash,
            error=outcome.reason if outcome.state != "settled" else None,
            retry_after=UNKNOWN_RECHECK_SECONDS if outcome.state == "unknown" else None)

    # -- background settlement: deferred queue, unknown outcomes, crashed attempts --------

    async def work_once(self, *, abandoned_after: float = 900.0) -> int:
        """One pass of the settlement worker, waiting for what it started; returns how
        many payments it touched."""
        tasks = await self._dispatch(WORKER_BATCH, abandoned_after)
        if tasks:
            await asyncio.wait(tasks)
        return len(tasks)

    async def _dispatch(self, limit: int, abandoned_after: float = 900.0) -> list[asyncio.Task]:
        """Lease up to `limit` payments that need work and start one task per payment.

        Taken: `queued` (deferred), `unknown` due for a recheck and `settling` whose lease
        lapsed (its instance died or stalled), soonest-expiring first; and `verified` long
        after its request would have ended (the process died between serving and settling:
        served -> settle, else void)."""
        if limit <= 0:
            return []
        rows = await self.store.lease(["verified"], self.lease_seconds, limit,
                                      older_than=abandoned_after, owner=self.instance)
        rows += await self.store.lease(["queued", "unknown", "settling"], self.lease_seconds,
                                       limit - len(rows), owner=self.instance)
        # Queued payments start settling in one write (not one each): a pass can be a whole
        # batch transaction's worth.
        queued = [r.id for r in rows if r.state == "queued"]
        started = await self.store.start_settling(queued, "queued", self.instance,
                                                  self.lease_seconds) if queued else set()
        rows = [r for r in rows if r.state != "queued" or r.id in started]
        tasks = []
        for row in rows:
            self._working.add(row.id)
            task = asyncio.ensure_future(self._work(row, started=row.id in started))
            for tracked in (self._inflight, self._worker_tasks):
                tracked.add(task)
                task.add_done_callback(tracked.discard)
            tasks.append(task)
        return tasks

    async def _work(self, row: PaymentRow, *, started: bool = False) -> None:
        h = _Handle(row.id, None, row.network, row.payer, row.payload)
        try:
            if row.state == "verified":
                if await self.store.response(row.id) is not None:
                    await self._settle(h, ("verified",))
                else:
                    await self.store.transition(row.id, "verified", "void", error="abandoned")
            elif row.state == "queued":
                await self._settle(h, ("queued",), started=started)
            else:
                await self._resolve(row, h)
        except Exception:  # one bad payment must not stop the others; its lease lapses
            log.exception("settlement worker failed on payment %s", row.id)
        finally:
            self._working.discard(row.id)

    async def _resolve(self, row: PaymentRow, h: _Handle) -> None:
        """An `unknown` settlement, or one whose instance died: ask the chain (which re-sends
        persisted bytes that never got out) before anything new is sent."""
        extra = {"raw_tx": row.raw_tx} if row.raw_tx else {}
        outcome = await self.scheme.reconcile(row.payload, row.tx_hash, **extra)
        if outcome.state == "failed" and self.scheme.still_valid(row.payload, self.clock.now()):
            # The attempt is dead (never mined and never will be, or a crash before
            # signing) and the authorization is still unused and valid: settle it again.
            # The token refuses a used nonce, so this can never pay twice.
            if row.state == "settling":
                await self.store.transition(row.id, "settling", "unknown")
            await self._settle(h, ("unknown",))
        elif outcome.state != "unknown":
            await self._record_outcome(row.id, row.state, outcome)
        elif row.state == "settling":
            await self._record_outcome(row.id, "settling", outcome)
        else:
            await self.store.release(row.id, retry_after=UNKNOWN_RECHECK_SECONDS)

    def start(self, interval: float = 1.0) -> None:
        """Run the settlement worker and the lease heartbeat in the background until
        `aclose`. The worker keeps up to WORKER_BATCH payments in flight, never waiting for
        one payment's receipt before taking the next."""
        async def loop() -> None:
            while True:
                try:
                    limit = WORKER_BATCH - len(self._worker_tasks)
                    started = await self._dispatch(limit)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bad pass must not kill the worker; it retries
                    log.exception("settlement worker pass failed")
                    started = []
                if not started:
                    await asyncio.sleep(interval)
                elif len(started) < limit:
                    # The queue is drained: let it fill a moment, so that the next pass
                    # settles many payments in one batch rather than a few in many.
                    await asyncio.sleep(min(interval, GATHER_SECONDS))

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(self.lease_seconds / 3)
                try:
                    await self.store.renew(list(self._working), self.instance, self.lease_seconds)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the next beat retries; a lapsed lease is only taken over
                    log.exception("settlement lease heartbeat failed")

        self._worker = asyncio.create_task(loop(), name=f"{self.name}-settlement")
        self._heartbeat = asyncio.create_task(heartbeat(), name=f"{self.name}-leases")

    async def aclose(self) -> None:
        """Stop the worker, then let settlements already sent finish (graceful shutdown);
        the heartbeat keeps their leases until then."""
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=self.shutdown_grace)
        heartbeat = getattr(self, "_heartbeat", None)
        if heartbeat is not None:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
