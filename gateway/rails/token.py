"""The `prepaid-token` rail: calls paid from the quota of a token bought by plan.

A call carries `Authorization: Bearer tg_live_…` and, optionally, `Idempotency-Key` (or
`X-Idempotency-Key`): with a key, a retry of the same request is answered from the stored
response and charged once; without one, every call is a new charge. Neither header
reaches the origin, which sees `X-Tollgate-Payer` (the token's id, never the token),
`X-Tollgate-Plan` and `X-Tollgate-Remaining`.

An unknown or revoked token, or a token of another paygate, is 401: it is not a means of
payment here at all (a 402 would invite paying with it). A live token without enough
units left is 402 with the x402 challenge and `checkout_url`.

A charge is kept in `record`, in the write that stores its response. One still pending
long after any call could have ended (its gateway died between charge and answer, or
before recording) is reversed by the rail's background sweep on every instance: after
`abandon_after(config)` seconds, the longest paygate timeout or the `/v1/authorize`
timeout, whichever is longer, plus a margin (the session rail's rule, which an open
authorization must also fit in).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Mapping

from gateway.errors import BadRequest, Conflict, Unauthorized
from gateway.rails.base import (Charge, Offer, PaidRequest, PaymentRejected, Priced,
                                StoredResponse, abandon_after)
from sessions.lifecycle import request_fingerprint
from sessions.tokens import PREFIX, Charged, KeyConflict, Replay, Tokens
from store.ids import random_hex

log = logging.getLogger("tollgate.tokens")

KEY_HEADERS = ("Idempotency-Key", "X-Idempotency-Key")
_KEY = re.compile(r"[\x21-\x7e]{1,200}")
SWEEP_EVERY = 5.0  # seconds between sweeps for abandoned charges



def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The prepaid token of `Authorization: Bearer tg_live_…`, else None."""
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip().startswith(PREFIX):
        return auth[7:].strip()
    return None


def checkout_url(paygate_id: str) -> str:
    return f"/checkout/{paygate_id}"


def invalid_token(message: str) -> Unauthorized:
    return Unauthorized(message, code="invalid_token",
                        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class TokenRail:
    name = "prepaid-token"

    def __init__(self, gw) -> None:
        self.gw = gw
        self.tokens = Tokens(gw.engine, gw.clock)
        self._task: asyncio.Task | None = None

    def offer(self, priced: Priced) -> Offer:
        pg = priced.paygate
        return Offer(extensions={"prepaid-token": {
            "checkout_url": checkout_url(pg.id), "units": priced.units,
            "plans": [{"id": p.id, "units": p.units, "free": p.free,
                       "prices": {a: str(v) for a, v in p.prices.items()}} for p in pg.plans],
            "headers": {"token": "Authorization: Bearer tg_live_…",
                        "idempotency": KEY_HEADERS[0]},
        }})

    def carries_payment(self, headers: Mapping[str, str]) -> bool:
        return bearer_token(headers) is not None

    async def accept(self, request: PaidRequest, priced: Priced) -> Charge | StoredResponse:
        pg = priced.paygate
        key = next((request.headers[h] for h in KEY_HEADERS if h in request.headers), None)
        carriers = ("Authorization",) + tuple(h for h in KEY_HEADERS if h in request.headers)
        if key is not None and not _KEY.fullmatch(key):
            raise BadRequest("Idempotency-Key must be 1-200 visible ASCII characters",
                             code="invalid_idempotency_key")
        token = await self.tokens.identity(bearer_token(request.headers) or "")
        if token is None or token.paygate_id != pg.id:
            raise invalid_token("unknown token for this paygate")
        if token.state != "active":
            raise invalid_token("this token is revoked")
        if key is None:
            key, fingerprint = "auto-" + random_hex(), ""
        else:
            fingerprint = request_fingerprint(request.method, request.path_qs,
                                              await request.body())
        result = await self.tokens.charge(token.id, key, fingerprint, priced.units)
        if isinstance(result, Replay):
            return StoredResponse(result.status, result.headers, result.body)
        if isinstance(result, KeyConflict):
            if result.kind == "reused":
                raise Conflict("this Idempotency-Key was used for a different request",
                               code="idempotency_key_reused")
            raise Conflict("a call with this Idempotency-Key is still running; retry shortly",
                           code="idempotency_key_in_flight")
        if result is None:
            now = await self.tokens.get(token.id)
            if now is None or now.state != "active":
                raise invalid_token("this token is revoked")
            raise PaymentRejected(
                "quota_exhausted",
                f"this call costs {priced.units} units and the token has {now.remaining} "
                "left; buy a plan onto it (top-up) or pay per call",
                {"checkout_url": checkout_url(pg.id), "remaining": now.remaining,
                 "required": priced.units})
        assert isinstance(result, Charged)
        return Charge(rail=self.name, payer=token.id, x_payment="", x_payment_response="",
                      remaining=result.remaining,
                      ref=(result.charge_id, pg.charge_below_status), strip_headers=carriers,
                      origin_headers={"X-Tollgate-Plan": token.plan_id})

    async def complete(self, charge: Charge, status: int) -> dict[str, str]:
        """A failed origin call (status at or above `charge_below_status`) is reversed now;
        a served one is kept in `record`, in the write that stores its response."""
        charge_id, charge_below = charge.ref
        if status >= charge_below:
            await self.tokens.reverse(charge_id)
            return {}
        return {"X-Tollgate-Remaining": str(charge.remaining)}

    async def record(self, charge: Charge, response: StoredResponse) -> None:
        charge_id, charge_below = charge.ref
        await self.tokens.record_response(charge_id, response.status, response.headers,
                                          response.body, keep=response.status < charge_below)

    # -- background work -------------------------------------------------------------------

    async def sweep_once(self) -> int:
        """Reverse the charges abandoned by calls that died (here or on another
        instance); how many were reversed now."""
        done = 0
        older_than = self.gw.clock.now() - abandon_after(self.gw.config)
        while True:
            batch = await self.tokens.reverse_abandoned(older_than)
            done += batch
            if batch == 0:
                return done

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep(), name="token-abandoned-sweep")

    async def _sweep(self) -> None:
        while True:
            try:
                if await self.sweep_once():
                    log.warning("reversed prepaid-token charges abandoned by a call that died")
            except asyncio.CancelledError:
                raise
            except Exception:  # the store may be briefly down: the next pass retries
                log.exception("sweep of abandoned token charges failed")
            await asyncio.sleep(SWEEP_EVERY)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
