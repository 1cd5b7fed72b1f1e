"""Paygates over HTTP, validated by the config file's own code.

    GET    /api/v1/paygates             the caller's paygates (operator: all)
    POST   /api/v1/paygates             a `[[paygates]]` table as JSON -> 201
    GET    /api/v1/paygates/{id}
    PUT    /api/v1/paygates/{id}        replace (API paygates only)
    PATCH  /api/v1/paygates/{id}        merge top-level keys (API paygates only)
    DELETE /api/v1/paygates/{id}        (API paygates only)

A bad body is 422 with one line per field (`errors`), the same text the config file gets.
Paygates of the config file are listed with `"source": "config"` and answer 409 to
changes: the file is their truth. A provider key's paygates belong to its provider
(`provider` is set from the key); only an operator may set `allow_private_target`.
Every change is in the store with a `paygate.changed` event, in one transaction; this
instance routes it at once, the others within `admin.poll_seconds`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.admin.common import (
    Invalid,
    Forbidden,
    admin_of,
    gw_of,
    json_body,
    key_of,
    not_found,
    ok,
    sees,
)
from gateway.admin.runtime import InvalidPaygate, reload, validate_paygate
from gateway.errors import Conflict
from store.api_keys import ApiKey
from store.outbox import emit
from store.paygates import PaygateExists, StoredPaygate


def view(row: StoredPaygate) -> dict[str, Any]:
    return {**row.body, "id": row.id, "provider": row.provider, "source": row.source,
            "created_at": row.created_at, "updated_at": row.updated_at}


def _changed(pg_id: str, provider: str | None, action: str):
    async def run(conn) -> None:
        await emit(conn, "paygate.changed", paygate_id=pg_id, provider=provider,
                   data={"paygate": pg_id, "action": action})
    return run


async def _own(request: web.Request) -> StoredPaygate:
    row = await admin_of(request).paygates.get(request.match_info["paygate_id"])
    if row is None or not sees(key_of(request), row.provider):
        raise not_found("paygate")
    return row


def _prepare(key: ApiKey, body: dict[str, Any], provider: str | None) -> dict[str, Any]:
    body = dict(body)
    for meta in ("source", "created_at", "updated_at"):
        body.pop(meta, None)
    if not key.operator:
        if body.get("provider", provider) != provider:
            raise Forbidden("a provider key manages its own provider's paygates only")
        if "allow_private_target" in body:
            raise Invalid(["allow_private_target: only an operator key may set this"])
    body["provider"] = body.get("provider", provider)
    if body["provider"] is None:
        body.pop("provider")
    return body


def _check(request: web.Request, body: dict[str, Any], replacing: str | None = None):
    gw = gw_of(request)
    others = [pg for pg in gw.config.paygates if pg.id != replacing]
    try:
        pg = validate_paygate(gw, body, others)
    except InvalidPaygate as exc:
        raise Invalid(exc.lines) from None
    # store what was validated, in the file's shape (prices as decimal strings)
    return pg.model_dump(mode="json", exclude_defaults=True) | {"id": pg.id}


async def list_paygates(request: web.Request) -> web.Response:
    key = key_of(request)
    rows = await admin_of(request).paygates.all()
    return ok({"paygates": [view(r) for r in rows if sees(key, r.provider)]})


async def get_paygate(request: web.Request) -> web.Response:
    return ok(view(await _own(request)))


async def create_paygate(request: web.Request) -> web.Response:
    key, admin, gw = key_of(request), admin_of(request), gw_of(request)
    body = _prepare(key, await json_body(request), key.provider)
    await reload(gw, admin)  # validate against what the store holds now
    if isinstance(body.get("id"), str) and await admin.paygates.get(body["id"]) is not None:
        raise Conflict(f"paygate id {body['id']!r} is taken", code="paygate_exists")
    clean = _check(request, body)
    provider = clean.get("provider")
    try:
        row = await admin.paygates.create(clean, provider,
                                          emit=_changed(clean["id"], provider, "created"))
    except PaygateExists:
        raise Conflict(f"paygate id {clean['id']!r} is taken", code="paygate_exists") from None
    pg = next(p for p in (await _reloaded(request)).paygates if p.id == row.id)
    await gw.secret_store.ensure(pg.id, None, pg.origin_auth.rotation_grace_seconds)
    return ok(view(row), status=201)


async def _reloaded(request: web.Request):
    gw = gw_of(request)
    await reload(gw, admin_of(request), force=True)
    return gw.config


def _api_only(row: StoredPaygate) -> None:
    if row.source != "api":
        raise Conflict(f"paygate {row.id!r} comes from the config file; change it there",
                       code="config_paygate")


async def _update(request: web.Request, merge: bool) -> web.Response:
    key, admin, gw = key_of(request), admin_of(request), gw_of(request)
    row = await _own(request)
    _api_only(row)
    incoming = await json_body(request)
    if "id" in incoming and incoming["id"] != row.id:
        raise Invalid(["id: cannot be changed"])
    body = {**row.body, **incoming} if merge else {**incoming, "id": row.id}
    body = _prepare(key, body, row.provider)
    await reload(gw, admin)
    clean = _check(request, body, replacing=row.id)
    if not await admin.paygates.replace(clean, emit=_changed(row.id, row.provider, "updated")):
        raise not_found("paygate")
    await _reloaded(request)
    return ok(view(await admin.paygates.get(row.id)))


async def put_paygate(request: web.Request) -> web.Response:
    return await _update(request, merge=False)


async def patch_paygate(request: web.Request) -> web.Response:
    return await _update(request, merge=True)


async def delete_paygate(request: web.Request) -> web.Response:
    row = await _own(request)
    _api_only(row)
    if not await admin_of(request).paygates.delete(
            row.id, emit=_changed(row.id, row.provider, "deleted")):
        raise not_found("paygate")
    await _reloaded(request)
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/paygates", list_paygates)
    app.router.add_post("/paygates", create_paygate)
    app.router.add_get("/paygates/{paygate_id}", get_paygate)
    app.router.add_put("/paygates/{paygate_id}", put_paygate)
    app.router.add_patch("/paygates/{paygate_id}", patch_paygate)
    app.router.add_delete("/paygates/{paygate_id}", delete_paygate)
