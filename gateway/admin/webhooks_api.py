"""Webhook endpoints over HTTP.

    GET    /api/v1/webhooks
    POST   /api/v1/webhooks          {url, events?, low_threshold?, secret?, provider?}
                                     -> 201, with the signing secret (shown once)
    GET    /api/v1/webhooks/{id}
    PATCH  /api/v1/webhooks/{id}     {url?, events?, low_threshold?, enabled?}
    DELETE /api/v1/webhooks/{id}
    GET    /api/v1/webhooks/{id}/deliveries[?state=pending|delivered|failed]
    POST   /api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver

`events` lists event types (default `["*"]`: all). `low_threshold` (atomic units) is
where `allowance.low` fires for this endpoint. A provider key's endpoints hear its own
paygates' events; an operator's endpoint (no provider) hears every event. URLs to
loopback/private/metadata addresses are refused unless `server.allow_private_targets`.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway.admin.common import Invalid, admin_of, gw_of, json_body, key_of, not_found, ok, sees
from gateway.admin.keys_api import valid_provider
from gateway.ssrf import is_private_host
from store import outbox
from store.webhooks import WebhookStore



def store_of(request: web.Request) -> WebhookStore:
    admin, gw = admin_of(request), gw_of(request)
    return WebhookStore(gw.engine, admin.box, gw.clock)


def _check(request: web.Request, body: dict[str, Any], partial: bool) -> dict[str, Any]:
    out, errors = {}, []
    allow = gw_of(request).config.server.allow_private_targets
    if "url" in body or not partial:
        url = body.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            errors.append(f"url: {url!r} is not an http(s) URL")
        elif not allow and is_private_host(parts.hostname):
            errors.append(f"url: {parts.hostname} is a loopback/private/metadata address; "
                          "set server.allow_private_targets to allow it")
        else:
            out["url"] = url
    if "events" in body or not partial:
        events = body.get("events", ["*"])
        if not isinstance(events, list) or not events or not all(
                e == "*" or e in outbox.EVENT_TYPES for e in events):
            errors.append("events: must be a non-empty list of event types ("
                          + ", ".join(outbox.EVENT_TYPES) + ") or [\"*\"]")
        else:
            out["events"] = sorted(set(events))
    if "low_threshold" in body:
        t = body["low_threshold"]
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t <= 0
                              or t >= 2**63):
            errors.append("low_threshold: must be a positive integer (atomic units) or null")
        else:
            out["low_threshold"] = t
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            errors.append("enabled: must be true or false")
        else:
            out["enabled"] = body["enabled"]
    if "secret" in body and not partial:
        s, least = body["secret"], gw_of(request).config.admin.secret_min_length
        if not isinstance(s, str) or len(s) < least or not s.isprintable():
            errors.append(f"secret: must be a string of at least {least} printable characters")
        else:
            out["secret"] = s
    unknown = set(body) - {"url", "events", "low_threshold", "enabled", "secret", "provider"}
    errors += [f"{k}: unknown key" for k in sorted(unknown)]
    if errors:
        raise Invalid(errors)
    return out


async def _own(request: web.Request):
    ep = await store_of(request).endpoint(request.match_info["webhook_id"])
    if ep is None or not sees(key_of(request), ep.provider):
        raise not_found("webhook")
    return ep


async def _thresholds(request: web.Request) -> None:
    outbox.set_low_thresholds(await store_of(request).low_thresholds())


async def list_webhooks(request: web.Request) -> web.Response:
    key = key_of(request)
    eps = await store_of(request).endpoints(key.provider, everyone=key.operator)
    return ok({"webhooks": [e.public() for e in eps]})


async def create_webhook(request: web.Request) -> web.Response:
    key, body = key_of(request), await json_body(request)
    clean = _check(request, body, partial=False)
    provider = key.provider
    if key.operator and "provider" in body:
        provider = None if body["provider"] is None else valid_provider(body["provider"])
    secret = clean.pop("secret", None) or "whsec_" + secrets.token_hex(24)
    ep = await store_of(request).create(provider, clean["url"], secret, clean["events"],
                                        clean.get("low_threshold"))
    await _thresholds(request)
    return ok({**ep.public(), "secret": secret}, status=201)


async def get_webhook(request: web.Request) -> web.Response:
    return ok((await _own(request)).public())


async def patch_webhook(request: web.Request) -> web.Response:
    ep, body = await _own(request), await json_body(request)
    clean = _check(request, body, partial=True)
    clean.pop("secret", None)
    if clean:
        await store_of(request).update(ep.id, **clean)
    await _thresholds(request)
    return ok((await store_of(request).endpoint(ep.id)).public())


async def delete_webhook(request: web.Request) -> web.Response:
    ep = await _own(request)
    await store_of(request).delete(ep.id)
    await _thresholds(request)
    return web.Response(status=204)


async def list_deliveries(request: web.Request) -> web.Response:
    ep = await _own(request)
    state = request.query.get("state")
    if state is not None and state not in ("pending", "delivered", "failed"):
        raise Invalid(["state: must be pending, delivered or failed"])
    return ok({"deliveries": await store_of(request).deliveries(ep.id, state)})


async def redeliver(request: web.Request) -> web.Response:
    ep = await _own(request)
    if not await store_of(request).redeliver(ep.id, request.match_info["delivery_id"]):
        raise not_found("delivery (or it is still pending)")
    return ok({"id": request.match_info["delivery_id"], "state": "pending"}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/webhooks", list_webhooks)
    app.router.add_post("/webhooks", create_webhook)
    app.router.add_get("/webhooks/{webhook_id}", get_webhook)
    app.router.add_patch("/webhooks/{webhook_id}", patch_webhook)
    app.router.add_delete("/webhooks/{webhook_id}", delete_webhook)
    app.router.add_get("/webhooks/{webhook_id}/deliveries", list_deliveries)
    app.router.add_post("/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", redeliver)
