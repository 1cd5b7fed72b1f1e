"""Public discovery of the paygates, in the x402 `bazaar` extension's list shape.

    GET /discovery/resources[?type=http][&network=][&scheme=][&payTo=][&limit=][&offset=]

    {"x402Version": 2,
     "items": [{"resource": "<public url><prefix>", "type": "http", "x402Version": 2,
                "accepts": [<PaymentRequirements for one unit>...],
                "lastUpdated": "<ISO 8601>", "description", "mimeType",
                "extensions": {"bazaar": {"info": {"input": {"type": "http",
                                                             "method": "GET"}}}},
                "metadata": {"paygate", "rails", "networks", "assets",
                             "defaultUnits", "unitPrices": {asset: atomic},
                             "rules": [{"method", "path", "units",
                                        "prices": {asset: atomic}}],
                             "session": {...}?}}],
     "pagination": {"limit", "offset", "total"}}

No authentication: it lists what any caller could learn from 402 challenges. Paygates
with `discoverable = false`, and free ones, are left out. The reference SDK's
`with_bazaar(HTTPFacilitatorClient(url=<gateway>)).extensions.bazaar.list_resources()`
reads it.
"""

from __future__ import annotations

from datetime import datetime, timezone

from aiohttp import web

from gateway.admin.common import Invalid, gw_of
from gateway.config import Config, PaygateConfig, price_atomic
from gateway.rails.base import Priced


def _prices(cfg: Config, pg: PaygateConfig, units: int) -> dict[str, str]:
    return {a: str(price_atomic(cfg, pg, a) * units) for a in pg.prices if a in cfg.assets}


def item(request: web.Request, pg: PaygateConfig, updated: str) -> dict:
    gw = gw_of(request)
    base = gw.config.server.public_url or f"{request.scheme}://{request.host}"
    url = base + (pg.prefix if pg.prefix != "/" else "")
    priced = Priced(pg, 1, url, "GET", pg.prefix)
    accepts, session = [], None
    for name in pg.rails:
        rail = gw.rails.get(name)
        if rail is None:
            continue
        offer = rail.offer(priced)
        accepts += [a.to_wire() for a in offer.accepts]
        session = offer.extensions.get("hedera-session", session)
    networks = sorted({a["network"] for a in accepts} |
                      ({session["network"]} if session else set()))
    meta = {"paygate": pg.id, "rails": list(pg.rails), "networks": networks,
            "assets": sorted(pg.prices), "defaultUnits": pg.default_units,
            "unitPrices": _prices(gw.config, pg, 1),
            "rules": [{"method": r.method, "path": r.path, "units": r.units,
                       "prices": _prices(gw.config, pg, r.units)} for r in pg.rules]}
    if session:
        meta["session"] = {k: session[k] for k in
                           ("network", "spender", "unit_price_tinybars", "wallet_url")}
    return {"resource": url, "type": "http", "x402Version": 2, "accepts": accepts,
            "lastUpdated": updated, "description": pg.description, "mimeType": pg.mime_type,
            "extensions": {"bazaar": {"info": {"input": {"type": "http", "method": "GET"}}}},
            "metadata": meta}


def _int(value: str | None, default: int, name: str, top: int) -> int:
    try:
        n = default if value is None else int(value)
        if not 0 <= n <= top:
            raise ValueError
        return n
    except ValueError:
        raise Invalid([f"{name}: must be an integer from 0 to {top}"]) from None


async def resources(request: web.Request) -> web.Response:
    gw, q = gw_of(request), request.query
    limit = _int(q.get("limit"), 100, "limit", 1000)
    offset = _int(q.get("offset"), 0, "offset", 10**9)
    updated = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    items = []
    for pg in sorted(gw.config.paygates, key=lambda p: p.id):
        if not pg.discoverable or not pg.rails:
            continue
        entry = item(request, pg, updated)
        acc = entry["accepts"]
        if q.get("type") not in (None, "http"):
            continue
        if "network" in q and q["network"] not in entry["metadata"]["networks"]:
            continue
        if "scheme" in q and not any(a["scheme"] == q["scheme"] for a in acc):
            continue
        if "payTo" in q and not any(a["payTo"].lower() == q["payTo"].lower() for a in acc):
            continue
        items.append(entry)
    return web.json_response({"x402Version": 2, "items": items[offset:offset + limit],
                              "pagination": {"limit": limit, "offset": offset,
                                             "total": len(items)}})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/discovery/resources", resources)
