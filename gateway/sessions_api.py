"""The session API: open a Hedera allowance session, look at it, end it.

    POST   /api/sessions/challenge  {account_id, paygate}            -> nonce, memo, message
    POST   /api/sessions/activate   {account_id, paygate, nonce,
                                     transaction_id | signature
                                     [+ message]}                    -> 201 token + session
    GET    /api/sessions/current    (X-Hedera-Session-Id or Bearer)  -> remaining, spent, calls
    DELETE /api/sessions/current                                     -> the session ends

Field names are accepted in snake_case or camelCase (`accountId`, `paygateId`,
`transactionId`), so HashToll-style clients work unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import hashtoll
from gateway.errors import BadRequest, NotFound, TollgateError, Unauthorized
from gateway.state import GATEWAY

if TYPE_CHECKING:  # the session modules load with the rail, not with every gateway
    from gateway.rails.session import SessionRail
    from sessions.activation import ActivationError
    from sessions.records import Session

_ALIASES = {
    "account_id": ("account_id", "accountId", "account"),
    "paygate": ("paygate", "paygate_id", "paygateId"),
    "nonce": ("nonce",),
    "transaction_id": ("transaction_id", "transactionId"),
    "signature": ("signature",),
    "message": ("message", "signedMessage"),
}


class _ActivationFailed(TollgateError):
    def __init__(self, exc: ActivationError) -> None:
        super().__init__(exc.message, code=exc.code)
        self.status = exc.status  # type: ignore[misc]


def _rail(request: web.Request) -> SessionRail:
    rail = request.app[GATEWAY].rails.get("hedera-session")
    if rail is None:
        raise NotFound("Hedera sessions are not enabled on this gateway")
    return rail  # type: ignore[return-value]


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise BadRequest("body must be a JSON object", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object", code="invalid_json")
    data = hashtoll.request_fields(data)
    out = {}
    for field, names in _ALIASES.items():
        out[field] = next((data[n] for n in names if n in data), None)
    return out


def _paygate(rail: SessionRail, request: web.Request, value: Any) -> str:
    gw = request.app[GATEWAY]
    pg = gw.config.paygate(value) if isinstance(value, str) else None
    if pg is None or rail.name not in pg.rails:
        raise BadRequest("paygate must name a paygate that accepts hedera-session",
                         code="invalid_paygate")
    return pg.id


def session_view(s: Session) -> dict[str, Any]:
    return {"id": s.id, "paygate": s.paygate_id, "account_id": s.owner, "spender": s.spender,
            "state": s.state, "remaining": s.available, "allowance": s.allowance,
            "spent": s.spent, "calls": s.calls, "expires_at": int(s.expires_at),
            "created_at": int(s.created_at)}


def _limit(request: web.Request, rail: SessionRail) -> None:
    rail.limiter.check(request.remote or "")


async def challenge(request: web.Request) -> web.Response:
    rail = _rail(request)
    from sessions.activation import ActivationError  # loaded with the rail already
    _limit(request, rail)
    body = await _body(request)
    terms = rail.terms(_paygate(rail, request, body["paygate"]))
    try:
        return web.json_response(await rail.activation.challenge(terms, body["account_id"]))
    except ActivationError as exc:
        raise _ActivationFailed(exc) from None


async def activate(request: web.Request) -> web.Response:
    rail = _rail(request)
    from sessions.activation import ActivationError  # loaded with the rail already
    _limit(request, rail)
    body = await _body(request)
    terms = rail.terms(_paygate(rail, request, body["paygate"]))
    terms = replace(terms, session_ttl=hashtoll.session_ttl(await request.json(), terms.session_ttl))
    try:
        token, session = await rail.activation.activate(
            terms, account_id=body["account_id"], nonce=body["nonce"],
            transaction_id=body["transaction_id"], signature=body["signature"],
            message=body["message"])
    except ActivationError as exc:
        raise _ActivationFailed(exc) from None
    return web.json_response(hashtoll.activation_answer(
        {"token": token, "session": session_view(session),
         "expires_at": int(session.expires_at)}, token), status=201)


async def _current(request: web.Request) -> tuple[SessionRail, Session]:
    rail = _rail(request)
    from gateway.rails.session import session_token  # loaded with the rail already
    token, _ = session_token(request.headers)
    if not token:
        raise Unauthorized("send the session token in X-Hedera-Session-Id or Authorization: Bearer",
                           code="missing_session")
    session = await rail.records.by_token(token)
    if session is None:
        raise Unauthorized("unknown session token", code="session_unknown")
    return rail, session


async def current(request: web.Request) -> web.Response:
    _rail_, session = await _current(request)
    return web.json_response(session_view(session))


async def end(request: web.Request) -> web.Response:
    rail, session = await _current(request)
    await rail.records.move(session.id, "ended")
    ended = await rail.records.get(session.id)
    return web.json_response(session_view(ended))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/sessions/challenge", challenge)
    app.router.add_post("/api/sessions/activate", activate)
    app.router.add_get("/api/sessions/current", current)
    app.router.add_delete("/api/sessions/current", end)
