"""Prepaid tokens in the admin API: a provider looks at and revokes its paygates' tokens.

    GET    /tokens/{token_id}   the token's plan, quota and state (never the token itself)
    DELETE /tokens/{token_id}   revoke: no later call is served (401); charges stand
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin.common import gw_of, key_of, not_found, ok, sees


async def _visible(request: web.Request):
    """The token rail and the token, if the key may see its paygate; else 404."""
    gw = gw_of(request)
    rail = gw.rails.get("prepaid-token")
    if rail is None:
        raise not_found("token")
    token = await rail.tokens.get(request.match_info["token_id"])
    pg = token and next((r.paygate for r in gw.router.routes
                         if r.paygate.id == token.paygate_id), None)
    if token is None or not sees(key_of(request), pg.provider if pg else None):
        raise not_found("token")
    return rail, token


def _view(token) -> dict:
    return {"id": token.id, "paygate": token.paygate_id, "plan": token.plan_id,
            "billing": token.billing, "units_total": token.units_total,
            "remaining": token.remaining, "state": token.state}


async def get_token(request: web.Request) -> web.Response:
    _rail, token = await _visible(request)
    return ok(_view(token))


async def revoke_token(request: web.Request) -> web.Response:
    rail, token = await _visible(request)
    await rail.tokens.revoke(token.id)
    return ok(_view(await rail.tokens.get(token.id)))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/tokens/{token_id}", get_token)
    app.router.add_delete("/tokens/{token_id}", revoke_token)
