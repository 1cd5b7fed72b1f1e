"""Origin secrets over HTTP (the Sigwei secret API, with a grace period).

    GET   /api/v1/paygates/{id}/secret              {current, previous?, previous_valid_until?}
    POST  /api/v1/paygates/{id}/secret/regenerate   {grace_seconds?} -> a random secret
    PATCH /api/v1/paygates/{id}/secret              {secret, grace_seconds?} -> a custom one

The previous secret stays valid for `grace_seconds` (default: the paygate's
`origin_auth.rotation_grace_seconds`); a custom secret has at least
`admin.secret_min_length` characters. A rotation writes `secret.rotated` (without any
secret in it) in its own transaction. Other instances sign with the new secret within
5 s (their secret cache).
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin.common import Invalid, gw_of, json_body, ok
from gateway.admin.paygates_api import _own
from store.outbox import emit


def _grace(body: dict, default: int) -> int:
    grace = body.get("grace_seconds", default)
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
        raise Invalid(["grace_seconds: must be a non-negative integer"])
    return grace


def _shape(pg_id: str, mode: str, s) -> dict:
    return {"paygate": pg_id, "mode": mode, "current": s.current, "previous": s.previous,
            "previous_valid_until": s.previous_valid_until}


async def get_secret(request: web.Request) -> web.Response:
    row, gw = await _own(request), gw_of(request)
    pg = gw.config.paygate(row.id)
    grace = pg.origin_auth.rotation_grace_seconds if pg else 0
    s = await gw.secret_store.get(row.id) or await gw.secret_store.ensure(row.id, None, grace)
    now = gw.clock.now()
    if s.previous_valid_until is not None and s.previous_valid_until <= now:
        s = type(s)(s.current, None, None)  # the grace period is over
    return ok(_shape(row.id, pg.origin_auth.mode if pg else "request", s))


async def _rotate(request: web.Request, value: str | None, body: dict) -> web.Response:
    row, gw = await _own(request), gw_of(request)
    pg = gw.config.paygate(row.id)
    grace = _grace(body, pg.origin_auth.rotation_grace_seconds if pg else 3600)

    async def event(conn) -> None:
        await emit(conn, "secret.rotated", paygate_id=row.id, provider=row.provider,
                   data={"paygate": row.id, "previous_valid_seconds": grace})

    s = await gw.secret_store.rotate(row.id, value, grace, emit=event)
    gw.forget_secret(row.id)
    return ok(_shape(row.id, pg.origin_auth.mode if pg else "request", s))


async def regenerate(request: web.Request) -> web.Response:
    return await _rotate(request, None, await json_body(request))


async def set_custom(request: web.Request) -> web.Response:
    await _own(request)  # 404 before anything about the body
    body, gw = await json_body(request), gw_of(request)
    value, least = body.get("secret"), gw.config.admin.secret_min_length
    if not isinstance(value, str) or len(value) < least or not value.isprintable():
        raise Invalid([f"secret: must be a string of at least {least} printable characters"])
    return await _rotate(request, value, body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/paygates/{paygate_id}/secret", get_secret)
    app.router.add_post("/paygates/{paygate_id}/secret/regenerate", regenerate)
    app.router.add_patch("/paygates/{paygate_id}/secret", set_custom)
