"""The `hedera-session` rail: calls paid from an HBAR allowance session, charged per call
in the gateway's ledger with idempotency keys, pulled on chain in batches later.

A call carries `X-Hedera-Session-Id: <token>` (or `Authorization: Bearer <token>`) and
`Idempotency-Key` (or `X-Idempotency-Key`). Neither header reaches the origin.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Mapping

from chains.x402 import encode_header
from gateway.config import HbarAsset, price_atomic
from gateway.errors import Conflict, MissingIdempotencyKey, BadRequest, Unavailable
from gateway.rails.base import (Charge, Offer, PaidRequest, PaymentRejected, Priced,
                                StoredResponse, abandon_after)
from gateway.ratelimit import RateLimiter
from sessions.activation import Activation, Terms
from sessions.ledger import Charged, KeyConflict, Ledger, Refused, Replay
from sessions.lifecycle import request_fingerprint
from sessions.pulls import PullWorker
from sessions.records import SessionRecords
from sessions.refresh import Refresher

log = logging.getLogger("tollgate.sessions")

SESSION_HEADER = "X-Hedera-Session-Id"
KEY_HEADERS = ("Idempotency-Key", "X-Idempotency-Key")
_KEY = re.compile(r"[\x21-\x7e]{1,200}")


def session_token(headers: Mapping[str, str]) -> tuple[str | None, tuple[str, ...]]:
    """The session token and the headers that carried it (to strip before forwarding)."""
    if SESSION_HEADER in headers:
        return headers[SESSION_HEADER].strip(), (SESSION_HEADER,)
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip().startswith("hs_"):
        return auth[7:].strip(), ("Authorization",)
    return None, ()


class SessionRail:
    name = "hedera-session"

    def __init__(self, gw, link) -> None:
        self.gw = gw
        cfg = gw.config.hedera
        self.cfg = cfg
        self.records = SessionRecords(gw.engine, gw.clock)
        self.ledger = Ledger(gw.engine, gw.clock)
        self.activation = Activation(self.records, link.mirror, gw.clock)
        self.refresher = Refresher(self.records, link.mirror, gw.clock, self.unit_price,
                                   ttl=cfg.mirror_ttl_seconds)
        # a charge is abandoned only once no proxied call and no open /v1/authorize
        # authorization can still hold it (read at each sweep: paygates change at run time)
        self.puller = PullWorker(self.records, link.network, link.mirror, gw.clock,
                                 destination=self.destination, window=cfg.pull_interval_seconds,
                                 ledger=self.ledger, abandon_after=lambda: abandon_after(gw.config))
        self.limiter = RateLimiter(gw.config.server.session_api_per_minute, gw.clock)
        if gw.config.server.public_url is None:
            log.warning("server.public_url is not set: signed session activations name %s, "
                        "which wallets will show to people", self.gateway_url())
        self._tasks: list[asyncio.Task] = []

    # -- terms ---------------------------------------------------------------------------

    def _hbar_asset(self, paygate_id: str) -> str:
        pg = self.gw.config.paygate(paygate_id)
        return next(a for a in pg.prices if isinstance(self.gw.config.assets[a], HbarAsset))

    def unit_price(self, paygate_id: str) -> int:
        pg = self.gw.config.paygate(paygate_id)
        return price_atomic(self.gw.config, pg, self._hbar_asset(paygate_id))

    def destination(self, paygate_id: str) -> str:
        pg = self.gw.config.paygate(paygate_id)
        return pg.pay_to.get("hedera") or self.cfg.account_id

    def gateway_url(self) -> str:
        """The URL the signed activation message names: `server.public_url`, else the
        address the gateway listens on. From configuration only, never from a request's
        Host header, which whoever relays a signature could set to anything."""
        server = self.gw.config.server
        return (server.public_url or f"http://{server.host}:{server.port}").rstrip("/")

    def terms(self, paygate_id: str) -> Terms:
        return Terms(paygate_id=paygate_id, network=self.cfg.network, spender=self.cfg.account_id,
                     unit_price=self.unit_price(paygate_id),
                     session_ttl=self.cfg.session_ttl_seconds, gateway_url=self.gateway_url())

    def top_up(self, paygate_id: str, account: str | None = None) -> dict[str, str]:
        url = f"/?paygate={paygate_id}" + (f"&account={account}" if account else "")
        return {"top_up_url": url, "activate_url": "/api/sessions/activate"}

    # -- the rail --------------------------------------------------------------------------

    def offer(self, priced: Priced) -> Offer:
        pg = priced.paygate
        return Offer(extensions={"hedera-session": {
            "network": self.cfg.network, "spender": self.cfg.account_id,
            "price_tinybars": self.unit_price(pg.id) * priced.units,
            "unit_price_tinybars": self.unit_price(pg.id),
            "challenge_endpoint": "/api/sessions/challenge",
            "activation_endpoint": "/api/sessions/activate",
            "wallet_url": f"/?paygate={pg.id}",
            "headers": {"session": SESSION_HEADER, "idempotency": KEY_HEADERS[0]},
        }})

    def carries_payment(self, headers: Mapping[str, str]) -> bool:
        return session_token(headers)[0] is not None

    async def accept(self, request: PaidRequest, priced: Priced) -> Charge | StoredResponse:
        token, carriers = session_token(request.headers)
        pg = priced.paygate
        key = next((request.headers[h] for h in KEY_HEADERS if h in request.headers), None)
        if key is None:
            raise MissingIdempotencyKey(
                "session calls need an Idempotency-Key header (any unique string per call)")
        if not _KEY.fullmatch(key):
            raise BadRequest("Idempotency-Key must be 1-200 visible ASCII characters",
                             code="invalid_idempotency_key")
        session = await self.records.identity(token or "")
        if session is None:
            raise PaymentRejected("session_unknown", "unknown session token",
                                  self.top_up(pg.id))
        if session.paygate_id != pg.id:
            raise PaymentRejected("session_wrong_paygate",
                                  f"this session is for paygate {session.paygate_id}",
                                  self.top_up(pg.id))
        amount = self.unit_price(pg.id) * priced.units
        fingerprint = request_fingerprint(request.method, request.path_qs, await request.body())
        now = self.gw.clock.now()
        result = await self.ledger.charge(session.id, key, fingerprint, amount,
                                          fresh_after=now - self.cfg.mirror_ttl_seconds)
        if isinstance(result, Replay):
            return StoredResponse(result.status, result.headers, result.body)
        if isinstance(result, KeyConflict):
            if result.kind == "reused":
                raise Conflict("this Idempotency-Key was used for a different request",
                               code="idempotency_key_reused")
            raise Conflict("a call with this Idempotency-Key is still running; retry shortly",
                           code="idempotency_key_in_flight", headers={"Retry-After": "1"})
        if isinstance(result, Refused):
            await self._refused(result.session, amount, now)
        assert isinstance(result, Charged)
        network = self.cfg.network
        x_payment = encode_header({"x402Version": 2, "scheme": "hedera-session",
                                   "network": network, "payload": {
                                       "session": session.id, "charge": result.charge_id,
                                       "owner": session.owner, "amount": str(amount)}})
        receipt = encode_header({"success": True, "transaction": "", "network": network,
                                 "payer": session.owner, "session": session.id,
                                 "remaining": str(result.remaining)})
        return Charge(rail=self.name, payer=session.owner, x_payment=x_payment,
                      x_payment_response=receipt, remaining=result.remaining,
                      ref=(result.charge_id, pg.charge_below_status), strip_headers=carriers)

    async def _refused(self, row, amount: int, now: float) -> None:
        pg_id = row.paygate_id
        if row.state in ("revoked", "expired", "ended"):
            raise PaymentRejected(f"session_{row.state}", f"this session is {row.state}",
                                  self.top_up(pg_id, row.owner))
        if row.expires_at <= now:
            await self.records.move(row.id, "expired")
            raise PaymentRejected("session_expired", "this session has expired",
                                  self.top_up(pg_id, row.owner))
        if row.mirror_at <= now - self.cfg.mirror_ttl_seconds:
            raise Unavailable("the mirror node has not confirmed this session's allowance "
                              "recently; retry shortly", code="mirror_unavailable")
        left = row.available  # the owner's, shared by all their sessions here
        extra = {**self.top_up(pg_id, row.owner), "remaining": left, "required": amount}
        if left >= self.unit_price(pg_id):
            # Cheaper calls still fit: refuse this call, not the session.
            raise PaymentRejected("insufficient_allowance",
                                  f"this call costs {amount} tinybars and the allowance has "
                                  f"{left} left; cheaper calls still fit, or approve more",
                                  extra)
        await self.records.move(row.id, "exhausted", only_from=("active",))
        raise PaymentRejected("session_exhausted",
                              f"the allowance left ({left} tinybars) does not cover this "
                              f"call ({amount}); approve more to go on", extra)

    async def complete(self, charge: Charge, status: int) -> dict[str, str]:
        """A failed origin call is reversed now. A served one is kept in `record`, in the
        same durable write as its stored response (one write per call after the charge):
        if the gateway dies before that, the charge stays pending and is reversed as
        abandoned, so the caller is never charged for a response never recorded."""
        charge_id, charge_below = charge.ref
        if status >= charge_below:
            await self.ledger.reverse(charge_id)
            return {}
        return {"X-Tollgate-Remaining": str(charge.remaining)}

    async def record(self, charge: Charge, response: StoredResponse) -> None:
        charge_id, charge_below = charge.ref
        await self.ledger.record_response(charge_id, response.status, response.headers,
                                          response.body, keep=response.status < charge_below)

    # -- background work -------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(self.refresher.work_once,
                                           self.cfg.mirror_ttl_seconds / 3), name="session-refresh"),
            asyncio.create_task(self._loop(self.puller.work_once,
                                           min(self.cfg.pull_interval_seconds / 2, 5)),
                                name="session-pulls"),
        ]

    async def _loop(self, work, interval: float) -> None:
        while True:
            try:
                busy = await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session worker pass failed")
                busy = 0
            if not busy:
                await asyncio.sleep(interval)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
