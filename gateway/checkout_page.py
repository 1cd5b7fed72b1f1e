"""The checkout page of a paygate's plans (static/checkout.html, its script web/checkout.js).

Server-rendered and pure: every value from the configuration or the request is escaped
for where it lands (HTML text and attributes, or JSON inside a <script> element), so no
paygate, plan or asset name can add markup. Per plan the page offers:

- a price in an EIP-3009 asset sold by the x402-evm rail: a "Buy with browser wallet"
  button; the script pays `POST /api/checkout/{paygate}/{plan}` with the injected
  EIP-1193 wallet (x402 `exact`, EIP-3009) and shows the token;
- a price in HBAR sold by the x402-hedera rail: the request an x402 client makes, and a
  link to the wallet page;
- a free plan: an email form the script posts to `/api/checkout/{paygate}/{plan}/free`.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from gateway.config import Eip3009Asset, HbarAsset, format_atomic, price_atomic

_TEMPLATE = Path(__file__).resolve().parent.parent / "static" / "checkout.html"

# Scripts only from this gateway and requests only to it: the page talks to the wallet
# through `window.ethereum`, never to a remote service.
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def script_json(data: Any) -> str:
    """JSON safe inside <script>: no "<" at all ("</script>" would end it, "<!--" can stop
    the closing tag from doing so); JSON's \\u escapes keep the data identical."""
    return (json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def _offers(cfg, pg, plan) -> list[dict[str, Any]]:
    """How each of the plan's prices can be paid at checkout (a price no x402 rail of the
    paygate sells is listed without a way to pay it)."""
    priced = pg.model_copy(update={"prices": dict(plan.prices)})
    out = []
    for asset_id in plan.prices:
        asset = cfg.assets[asset_id]
        atomic = price_atomic(cfg, priced, asset_id)
        offer = {"asset": asset_id, "network": asset.network, "amount": str(atomic),
                 "price": format_atomic(atomic, asset.decimals), "kind": None}
        if isinstance(asset, Eip3009Asset) and "x402-evm" in pg.rails:
            offer |= {"kind": "evm", "address": asset.address, "name": asset.eip712_name}
        elif isinstance(asset, HbarAsset) and "x402-hedera" in pg.rails:
            offer["kind"] = "hedera"
        out.append(offer)
    return out


def _plan_item(pg, plan: dict, base: str) -> str:
    pid, url = _esc(plan["id"]), base + plan["url"]
    parts = [f'<li class="plan" data-plan="{pid}"><h2>{pid}</h2>']
    if plan["free"]:
        parts.append(
            f"<p>{plan['units']} units, free (one token per email address).</p>"
            f'<form class="free" data-plan="{pid}"><label>Email <input type="email" '
            'name="email" required autocomplete="email"></label> '
            '<button type="submit" disabled>Get the free token</button></form>'
            '<p class="hint">Or: <code>'
            + _esc(f"curl -X POST -H 'Content-Type: application/json' -d "
                   f"'{{\"email\": \"you@example.com\"}}' {url}")
            + "</code></p></li>")
        return "".join(parts)
    prices = ", ".join(f"{o['price']} {o['asset']}" for o in plan["offers"])
    parts.append(f"<p>{plan['units']} units for {_esc(prices)}</p>")
    for o in plan["offers"]:
        if o["kind"] == "evm":
            parts.append(
                f'<p><button type="button" class="buy" data-plan="{pid}" '
                f'data-asset="{_esc(o["asset"])}" disabled>Buy with browser wallet: '
                f'{_esc(o["price"])} {_esc(o["asset"])} on {_esc(o["network"])}</button></p>'
                '<p class="hint">Or with an x402 client: <code>'
                + _esc(f"TOLLGATE_PAYER_KEY=0x… tollgate pay --method POST {url}")
                + "</code></p>")
        elif o["kind"] == "hedera":
            parts.append(
                f'<p class="hedera">Pay {_esc(o["price"])} {_esc(o["asset"])} on '
                f'{_esc(o["network"])} (Hedera) with an x402 client that pays '
                "<code>exact</code> in HBAR: <code>"
                + _esc(f"POST {url}") + "</code> (unpaid, it answers 402 with what to "
                "sign; <code>Authorization: Bearer</code> with it tops a token up). Your "
                f'Hedera account and its sessions: <a class="wallet-link" '
                f'href="/?paygate={_esc(pg.id)}">the wallet page</a>.</p>')
    parts.append("</li>")
    return "".join(parts)


def render(gw, pg, plans_json: list[dict[str, Any]], base: str) -> str:
    """The page for paygate `pg`. `plans_json` is the plans as `GET /api/checkout/{id}`
    lists them; `base` the gateway's public origin (for the instructions' URLs)."""
    cfg = gw.config
    plans = []
    for p in plans_json:
        plan = pg.plan(p["id"])
        plans.append({**p, "offers": [] if plan.free else _offers(cfg, pg, plan)})
    call_base = f"{base.split('://')[0]}://{pg.host}" if pg.host else base
    data = {"paygate": pg.id, "plans": plans,
            "callUrl": call_base + pg.prefix.rstrip("/") + "/"}
    values = {
        "paygate": _esc(pg.id),
        "description": _esc(pg.description),
        "plans": "\n".join(_plan_item(pg, p, base) for p in plans),
        "checkout_json": script_json(data),
    }
    template = _TEMPLATE.read_text(encoding="utf-8")
    # One pass, so a placeholder spelled inside a value is never substituted.
    return re.sub(r"\{\{(paygate|description|plans|checkout_json)\}\}",
                  lambda m: values[m.group(1)], template)
