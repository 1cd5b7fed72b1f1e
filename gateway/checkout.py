"""Checkout: buy a plan's units on a prepaid token; revoke a token.

    GET    /checkout/{paygate}                 the checkout page (plans, how to buy)
    GET    /api/checkout/{paygate}             the plans, as JSON
    POST   /api/checkout/{paygate}/{plan}      paid with x402: one settlement for the plan,
                                               settled BEFORE the token is issued; with
                                               `Authorization: Bearer tg_live_…`, a top-up
                                               of that token instead of a new one
    POST   /api/checkout/{paygate}/{plan}/free {"email"}: a free plan's token
    DELETE /api/tokens/current                 the holder revokes its own token

The x402 payment goes through the paygate's own x402 rail (verify, claim, settle), priced
at the plan's price for one "unit" of checkout. A payment presented again never buys a
second token: it was recorded as served, so a replay is refused (409).
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from gateway import checkout_page
from gateway.challenge import challenge
from gateway.errors import BadRequest, Conflict, NotFound, RateLimited
from gateway.rails.base import Charge, PaidRequest, PaymentRejected, Priced, StoredResponse
from gateway.rails.token import bearer_token, checkout_url, invalid_token
from gateway.ratelimit import RateLimiter
from gateway.state import GATEWAY
from sessions.tokens import FreeRefused

log = logging.getLogger("tollgate.checkout")

X402_RAILS = ("x402-evm", "x402-hedera")
_LIMITER = web.AppKey("checkout_free_limiter", RateLimiter)


def _paygate(request: web.Request):
    gw = request.app[GATEWAY]
    pid = request.match_info["paygate"]
    pg = next((r.paygate for r in gw.router.routes if r.paygate.id == pid), None)
    if pg is None or not pg.plans:
        raise NotFound(f"paygate {pid!r} sells no plans")
    return gw, pg


def _plan(request: web.Request):
    gw, pg = _paygate(request)
    plan = pg.plan(request.match_info["plan"])
    if plan is None:
        raise NotFound(f"paygate {pg.id} has no plan {request.match_info['plan']!r}")
    return gw, pg, plan


def _warn_below(plan) -> int:
    return plan.warn_below or max(1, plan.units // 10)


def _plans_json(pg) -> list[dict]:
    return [{"id": p.id, "units": p.units, "free": p.free,
             "prices": {a: str(v) for a, v in p.prices.items()},
             "url": f"/api/checkout/{pg.id}/{p.id}" + ("/free" if p.free else "")}
            for p in pg.plans]


async def plans(request: web.Request) -> web.Response:
    _gw, pg = _paygate(request)
    return web.json_response({"paygate": pg.id, "plans": _plans_json(pg)})


async def buy(request: web.Request) -> web.StreamResponse:
    gw, pg, plan = _plan(request)
    if plan.free:
        raise BadRequest(f"plan {plan.id} is free: POST {request.path}/free with an email",
                         code="free_plan")
    tokens = gw.rails["prepaid-token"].tokens
    topping = None
    bearer = bearer_token(request.headers)
    if bearer is not None:
        topping = await tokens.identity(bearer)
        if topping is None or topping.paygate_id != pg.id or topping.state != "active":
            raise invalid_token("unknown or revoked token for this paygate; buy without it "
                                "for a new token")
    # The plan, sold as one x402 "unit" at the plan's price, settled before the token.
    sold = pg.model_copy(update={"prices": dict(plan.prices), "settlement": "before", "charge_below_status": 500,
                                 "description": f"{pg.id}: plan {plan.id} ({plan.units} units)"})
    priced = Priced(sold, 1, gw.resource_url(request), request.method, request.raw_path)
    rails = [gw.rails[n] for n in pg.rails if n in X402_RAILS]
    rail = next((r for r in rails if r.carries_payment(request.headers)), None)
    extra = {"checkout_url": checkout_url(pg.id), "plan": plan.id, "quotaIncluded": plan.units}
    if rail is None:
        return _challenge(priced, rails, None, extra)
    body = await request.read()
    paid = PaidRequest(request.method, request.raw_path, request.headers,
                       request.remote or "", _constant(body))
    try:
        outcome = await rail.accept(paid, priced)
    except PaymentRejected as rej:
        return _challenge(priced, rails, rej, extra)
    if isinstance(outcome, StoredResponse):
        raise Conflict("this payment already bought a plan", code="payment_already_used")
    charge: Charge = outcome
    try:
        if topping is not None:
            token, record = None, await tokens.top_up(topping.id, plan.id, plan.units)
            if record is None:
                raise Conflict("the token was revoked during checkout; the payment stays "
                               "good for a retry without the token", code="token_revoked")
        else:
            token, record = await tokens.issue(pg.id, plan.id, plan.units, _warn_below(plan))
    except BaseException:
        # Settled, no units given: the payment stays good for a retry of this request.
        await rail.complete(charge, 500)
        raise
    receipt = await rail.complete(charge, 200)
    # Recorded as served without its body: the answer holds the token, which is never
    # stored, so the same payment again is refused rather than replayed.
    await rail.record(charge, StoredResponse(200, [], b"", body_kept=False, body_size=0))
    answer = {"plan": plan.id, "billingType": "paid", "quotaIncluded": plan.units,
              "tokenId": record.id, "remaining": record.remaining, "paygate": pg.id,
              "payer": charge.payer}
    if token is not None:
        answer["token"] = token
    else:
        answer["topUp"] = True
    return web.json_response(answer, headers=receipt)


def _constant(body: bytes):
    async def read() -> bytes:
        return body
    return read


def _challenge(priced: Priced, rails, rej: PaymentRejected | None, extra: dict):
    if rej is not None:
        extra = {**extra, "message": rej.message, **rej.extra}
    body, headers = challenge(priced, [r.offer(priced) for r in rails],
                              rej.reason if rej else "payment required", extra)
    return web.json_response(body, status=402, headers=headers)


async def free(request: web.Request) -> web.Response:
    gw, pg, plan = _plan(request)
    if not plan.free:
        raise BadRequest(f"plan {plan.id} is not free", code="not_free")
    client = request.remote or ""
    request.app[_LIMITER].check(client)
    try:
        data = json.loads(await request.read() or b"{}")
    except ValueError:
        raise BadRequest("body must be JSON: {\"email\": \"...\"}") from None
    email = data.get("email") if isinstance(data, dict) else None
    if not isinstance(email, str) or not _looks_like_email(email):
        raise BadRequest("an email address is required: {\"email\": \"...\"}",
                         code="invalid_email")
    tokens = gw.rails["prepaid-token"].tokens
    try:
        token, record = await tokens.issue_free(pg.id, plan.id, plan.units, _warn_below(plan),
                                                email, client, plan.per_address_limit)
    except FreeRefused as exc:
        if exc.reason == "email_used":
            raise Conflict("this email already took a free plan on this paygate",
                           code="free_plan_email_used") from None
        raise RateLimited("this address took as many free plans as allowed",
                          code="free_plan_address_limit") from None
    return web.json_response({
        "token": token, "tokenId": record.id, "plan": plan.id, "billingType": "free",
        "quotaIncluded": plan.units, "paygate": pg.id,
        "message": f"{plan.units} free units on {pg.id}; send "
                   "`Authorization: Bearer <token>` with each call"})


def _looks_like_email(s: str) -> bool:
    local, at, domain = s.strip().partition("@")
    return bool(at and local and "." in domain and len(s) <= 254 and " " not in s.strip())


async def revoke_current(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rail = gw.rails.get("prepaid-token")
    bearer = bearer_token(request.headers)
    if rail is None or bearer is None:
        raise invalid_token("send the token: Authorization: Bearer tg_live_…")
    token = await rail.tokens.identity(bearer)
    if token is None or not await rail.tokens.revoke(token.id):
        raise invalid_token("unknown or already revoked token")
    return web.json_response({"tokenId": token.id, "state": "revoked"})


async def page(request: web.Request) -> web.Response:
    """The checkout page (gateway.checkout_page): the plans, each with a way to buy it
    from the browser (an EIP-1193 wallet, or an email for a free plan) and the request
    an x402 client makes."""
    gw, pg = _paygate(request)
    base = (gw.config.server.public_url or f"{request.scheme}://{request.host}").rstrip("/")
    return web.Response(text=checkout_page.render(gw, pg, _plans_json(pg), base),
                        content_type="text/html", headers=checkout_page.HEADERS)


def add_routes(app: web.Application) -> None:
    async def limiter(app: web.Application):
        gw = app[GATEWAY]
        app[_LIMITER] = RateLimiter(gw.config.server.session_api_per_minute, gw.clock)
        yield
    app.cleanup_ctx.append(limiter)
    app.router.add_get("/checkout/{paygate}", page)
    app.router.add_get("/api/checkout/{paygate}", plans)
    app.router.add_post("/api/checkout/{paygate}/{plan}", buy)
    app.router.add_post("/api/checkout/{paygate}/{plan}/free", free)
    app.router.add_delete("/api/tokens/current", revoke_current)
