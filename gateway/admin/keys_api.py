"""Admin API keys over HTTP.

    GET    /api/v1/keys                 the caller's provider's keys (operator: all)
    POST   /api/v1/keys                 {provider?, operator?} -> 201 {id, secret, ...}
    POST   /api/v1/keys/{id}/rotate     {grace_seconds?} -> {id, secret}
    DELETE /api/v1/keys/{id}            revoke

A provider key may create keys for its own provider only; operator keys are made by
operator keys (or `tollgate keys create --operator` on the host).
"""

from __future__ import annotations

import re

from aiohttp import web

from gateway.admin.common import (
    Invalid,
    Forbidden,
    admin_of,
    json_body,
    key_of,
    not_found,
    ok,
    sees,
)

_PROVIDER = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def valid_provider(value) -> str:
    if not isinstance(value, str) or not _PROVIDER.fullmatch(value):
        raise Invalid(["provider: must be lowercase letters, digits, - or _ (at most 63)"])
    return value


async def list_keys(request: web.Request) -> web.Response:
    key = key_of(request)
    keys = await admin_of(request).keys.list(None if key.operator else key.provider)
    return ok({"keys": [k.public() for k in keys]})


async def create_key(request: web.Request) -> web.Response:
    key, body = key_of(request), await json_body(request)
    operator = body.get("operator", False)
    if not isinstance(operator, bool):
        raise Invalid(["operator: must be true or false"])
    provider = body.get("provider", None if key.operator else key.provider)
    if provider is not None:
        provider = valid_provider(provider)
    if not key.operator and (operator or provider != key.provider):
        raise Forbidden("a provider key can only create keys of its own provider")
    if not operator and provider is None:
        raise Invalid(["provider: required unless operator is true"])
    made, secret = await admin_of(request).keys.create(provider, operator)
    return ok({**made.public(), "secret": secret}, status=201)


async def _visible(request: web.Request):
    key = key_of(request)
    found = await admin_of(request).keys.get(request.match_info["key_id"])
    if found is None or not (key.operator or (not found.operator and sees(key, found.provider))):
        raise not_found("key")
    return found


async def revoke_key(request: web.Request) -> web.Response:
    found = await _visible(request)
    await admin_of(request).keys.revoke(found.id)
    return ok((await admin_of(request).keys.get(found.id)).public())


async def rotate_key(request: web.Request) -> web.Response:
    found, body = await _visible(request), await json_body(request)
    grace = body.get("grace_seconds", 3600)
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
        raise Invalid(["grace_seconds: must be a non-negative integer"])
    secret = await admin_of(request).keys.rotate(found.id, grace)
    if secret is None:
        raise not_found("key")
    return ok({"id": found.id, "secret": secret, "previous_valid_seconds": grace})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/keys", list_keys)
    app.router.add_post("/keys", create_key)
    app.router.add_post("/keys/{key_id}/rotate", rotate_key)
    app.router.add_delete("/keys/{key_id}", revoke_key)
