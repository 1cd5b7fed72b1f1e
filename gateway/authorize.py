"""Middleware mode: the provider's own server asks the gateway whether a request is paid.

    POST /v1/authorize                  {paygate, method, path, headers, idempotency_key?, url?}
        -> {"allowed", "authorization_id", "units", "payer", "remaining", "challenge"?}
    POST /v1/authorize/{id}/complete    {status}  -> {"authorization_id", "status", "receipt"}

Both are signed like the admin API (X-PAY headers, `gateway.admin.auth`); a provider key
authorizes only its own provider's paygates (another's answers 404, like an absent one).

The same rail seam as the proxy drives the payment (carries_payment / accept / complete /
record), without forwarding: `path` is priced by the paygate's rules as the path below its
prefix. On `allowed: false`, `challenge` is `{"status", "body", "headers"}`: exactly what the
proxy would answer (402 with the x402 challenge; 409 for a payment already served; 400
for a session call without an idempotency key). `complete` applies the paygate's charging policy to the origin's
status (keep / reverse / settle); completing twice is 409, an unknown id 404.

An authorization is held by the instance that issued it (its rail handle is live state):
one never completed within `server.authorize_timeout_seconds` is completed by the sweep
as if the origin had timed out (504), which reverses or never settles the charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator

from aiohttp import web
from multidict import CIMultiDict

from gateway.admin.auth import authenticate
from gateway.admin.common import admin_of, gw_of, json_body, not_found, ok, sees
from gateway.challenge import challenge
from gateway.errors import BadRequest, Conflict, TollgateError
from gateway.rails.base import Charge, PaidRequest, PaymentRejected, Priced, StoredResponse
from gateway.state import Gateway
from store.ids import random_hex

log = logging.getLogger("tollgate.authorize")

_SWEEP_EVERY = 5.0  # seconds between sweeps for abandoned authorizations


@dataclass
class Authorization:
    id: str
    charge: Charge
    deadline: float  # gateway clock: completed as timed out (504) after this
    provider: str | None


class Authorizations:
    """The open authorizations of this instance. `take` removes one atomically, so two
    concurrent completes (or a complete racing the sweep) finish it once."""

    def __init__(self) -> None:
        self._open: dict[str, Authorization] = {}
        # ids taken once, so a second complete is told 409 rather than 404 (bounded)
        self._done: dict[str, None] = {}

    def add(self, auth: Authorization) -> None:
        self._open[auth.id] = auth

    def take(self, auth_id: str) -> Authorization | None:
        auth = self._open.pop(auth_id, None)
        if auth is not None:
            self._done[auth_id] = None
            while len(self._done) > 100_000:
                self._done.pop(next(iter(self._done)))
        return auth

    def peek(self, auth_id: str) -> Authorization | None:
        return self._open.get(auth_id)

    def open_ids(self) -> list[str]:
        return list(self._open)

    def was_done(self, auth_id: str) -> bool:
        return auth_id in self._done

    def expired(self, now: float) -> list[str]:
        return [a.id for a in self._open.values() if a.deadline <= now]


AUTHORIZATIONS = web.AppKey("authorizations", Authorizations)


def _text(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string", code="invalid_request")
    return value


def _headers(body: dict[str, Any]) -> CIMultiDict[str]:
    raw = body.get("headers", {})
    if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise BadRequest("headers must be an object of strings", code="invalid_request")
    return CIMultiDict(raw)


async def _signed_key(request: web.Request):
    gw = gw_of(request)
    return await authenticate(request, admin_of(request).keys, gw.engine, gw.clock.now())


async def authorize(request: web.Request) -> web.Response:
    key = await _signed_key(request)
    gw = gw_of(request)
    body = await json_body(request)
    pg_id, method, path = _text(body, "paygate"), _text(body, "method"), _text(body, "path")
    if not path.startswith("/"):
        raise BadRequest("path must start with /", code="invalid_request")
    headers = _headers(body)
    idem = _text(body, "idempotency_key", required=False)
    if idem is not None:
        headers["Idempotency-Key"] = idem
    pg = gw.config.paygate(pg_id)
    if pg is None or not sees(key, pg.provider):
        raise not_found("paygate")
    route = next((r for r in gw.router.routes if r.paygate.id == pg.id), None)
    if route is None:  # removed between the config read and the router's
        raise not_found("paygate")
    units = route.units_for(method.upper(), path)
    if units == 0:
        return ok({"allowed": True, "authorization_id": None, "units": 0, "payer": None,
                   "remaining": None})
    url = _text(body, "url", required=False) or _resource_url(gw, request, pg.prefix, path)
    priced = Priced(pg, units, url, method.upper(), path)
    rails = [gw.rails[name] for name in pg.rails]
    rail = next((r for r in rails if r.carries_payment(headers)), None)
    if rail is None:
        return _refused(priced, rails, None, units)

    async def no_body() -> bytes:
        return b""

    paid = PaidRequest(method.upper(), path, headers, request.remote or "", no_body)
    try:
        outcome = await rail.accept(paid, priced)
    except PaymentRejected as rej:
        return _refused(priced, rails, rej, units)
    except TollgateError as exc:
        if exc.status >= 500:
            raise
        # What the proxy would answer the caller (e.g. 409 for a payment already served,
        # 400 for a session call without an idempotency key), passed on as the answer.
        return ok({"allowed": False, "authorization_id": None, "units": units, "payer": None,
                   "remaining": None, "challenge": {"status": exc.status, "body": exc.body(),
                                                    "headers": dict(exc.headers)}})
    if isinstance(outcome, StoredResponse):
        # Already spent on an earlier authorization: there is no body here to replay.
        return _refused(priced, rails, PaymentRejected(
            "payment_already_used", "this payment was already used for an earlier request"),
            units)
    auth = Authorization("az_" + random_hex(), outcome,
                         gw.clock.now() + gw.config.server.authorize_timeout_seconds,
                         pg.provider)
    request.config_dict[AUTHORIZATIONS].add(auth)
    return ok({"allowed": True, "authorization_id": auth.id, "units": units,
               "payer": outcome.payer, "remaining": outcome.remaining})


def _resource_url(gw: Gateway, request: web.Request, prefix: str, path: str) -> str:
    base = gw.config.server.public_url or f"{request.scheme}://{request.host}"
    return base + prefix.rstrip("/") + path


def _refused(priced: Priced, rails, rej: PaymentRejected | None, units: int) -> web.Response:
    error = rej.reason if rej else "payment required"
    extra = {"message": rej.message, **rej.extra} if rej else None
    body, headers = challenge(priced, [r.offer(priced) for r in rails], error, extra)
    return ok({"allowed": False, "authorization_id": None, "units": units, "payer": None,
               "remaining": None,
               "challenge": {"status": 402, "body": body, "headers": headers}})


async def complete(request: web.Request) -> web.Response:
    key = await _signed_key(request)
    body = await json_body(request)
    status = body.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise BadRequest("status must be an HTTP status code (100-599)", code="invalid_request")
    auth_id = request.match_info["auth_id"]
    table = request.config_dict[AUTHORIZATIONS]
    auth = table.peek(auth_id)
    if auth is None or not sees(key, auth.provider):
        if table.was_done(auth_id):
            raise Conflict("this authorization is already completed", code="already_completed")
        raise not_found("authorization")
    if table.take(auth_id) is None:  # lost a race with another complete or the sweep
        raise Conflict("this authorization is already completed", code="already_completed")
    receipt = await _finish(gw_of(request), auth, status)
    return ok({"authorization_id": auth_id, "status": status, "receipt": receipt})


async def _finish(gw: Gateway, auth: Authorization, status: int, record: bool = True):
    rail = gw.rails[auth.charge.rail]
    try:
        receipt = await rail.complete(auth.charge, status)
    except PaymentRejected as rej:  # an `after` settlement failed
        return {"error": rej.reason, "message": rej.message}
    if record:
        # Shielded like the proxy's: what was served is remembered even if the caller leaves.
        await asyncio.shield(rail.record(auth.charge, StoredResponse(
            status, [], b"", complete=True, body_kept=False, body_size=0)))
    return receipt


async def sweep_once(gw: Gateway, table: Authorizations) -> int:
    """Complete every authorization past its deadline as timed out; returns how many."""
    done = 0
    for auth_id in table.expired(gw.clock.now()):
        auth = table.take(auth_id)
        if auth is None:
            continue
        try:
            await _finish(gw, auth, 504, record=False)
            done += 1
        except Exception:
            log.exception("could not reverse abandoned authorization %s", auth_id)
    return done


async def _sweep(app: web.Application) -> None:
    from gateway.state import GATEWAY
    while True:
        await asyncio.sleep(_SWEEP_EVERY)
        with contextlib.suppress(Exception):
            await sweep_once(app[GATEWAY], app[AUTHORIZATIONS])


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_sweep(app))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        from gateway.state import GATEWAY
        if GATEWAY in app:  # shutting down: nothing open may stay charged
            table = app[AUTHORIZATIONS]
            for auth_id in table.open_ids():
                auth = table.take(auth_id)
                if auth is not None:
                    with contextlib.suppress(Exception):
                        await _finish(app[GATEWAY], auth, 504, record=False)


def add_routes(app: web.Application) -> None:
    app[AUTHORIZATIONS] = Authorizations()
    app.router.add_post("/v1/authorize", authorize)
    app.router.add_post("/v1/authorize/{auth_id}/complete", complete)
    app.cleanup_ctx.append(_lifecycle)
