"""Two steps of `tollgate demo`: a plan bought with x402 onto a prepaid token and spent
with `Authorization: Bearer` until it runs out; and middleware mode, where a provider's
own small app asks the gateway (`POST /v1/authorize`) before serving each call."""

from __future__ import annotations

import socket
from typing import Any

import httpx
from aiohttp import web

PLAN = {"id": "starter", "units": 5, "prices": {"usdc": "0.004"}}
MIDDLEWARE_PAYGATE = "forecasts"


def middleware_paygate(devnet, origin_url: str) -> dict[str, Any]:
    """The paygate pricing the provider's own app: never forwarded to (its target is
    unused), only asked about through `/v1/authorize` with the provider's admin key."""
    return {"id": MIDDLEWARE_PAYGATE, "prefix": "/forecasts", "target": origin_url,
            "provider": "skyroute", "description": "SkyRoute Weather on its own domain",
            "rails": ["x402-evm"], "prices": {"usdc": "0.002"},
            "pay_to": {"evm": devnet.merchant.address}, "default_units": 1}


async def plan_walkthrough(steps, gw: str, client, token: str) -> None:
    """Buy the plan with x402 (one settlement), then spend the token call by call."""
    url = f"{gw}/api/checkout/skyroute/{PLAN['id']}"
    before = client.spent.total(token)
    bought = await client.post(url)
    got = bought.json()
    receipt = client.last_receipt or {}
    steps.say("A plan on a prepaid token, bought with x402", (
        f"POST /api/checkout/skyroute/{PLAN['id']} -> {bought.status_code}, paid "
        f"{client.spent.total(token) - before} atomic units in one settlement "
        f"(tx {str(receipt.get('transaction'))[:18]}...)\n"
        f"token {got['token'][:16]}... ({got['tokenId']}), {got['quotaIncluded']} units"))
    bearer = {"Authorization": f"Bearer {got['token']}"}
    statuses, left = [], []
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(PLAN["units"]):
            r = await http.get(gw + "/skyroute/v1/flights", headers=bearer)
            statuses.append(str(r.status_code))
            left.append(r.headers.get("X-Tollgate-Remaining", "?"))
        r = await http.get(gw + "/skyroute/v1/flights", headers=bearer)
        refused = r.json()
    steps.say("Spending from the token with Authorization: Bearer (1 unit per call)", (
        f"GET /skyroute/v1/flights x{PLAN['units']} -> {', '.join(statuses)}; "
        f"remaining {', '.join(left)}\n"
        f"GET /skyroute/v1/flights -> {r.status_code} {refused.get('error')}, "
        f"checkout_url {refused.get('checkout_url')} (and the x402 challenge)"))


async def middleware_walkthrough(steps, gw: str, app: web.Application, devnet,
                                 client) -> None:
    """The provider's app, protected by `authorize_middleware`, called unpaid, paid, and
    paid on a route that fails (the authorization is completed with 503: not settled)."""
    from gateway.admin.common import ADMIN
    from gateway.middleware_client import authorize_middleware

    key, secret = await app[ADMIN].keys.create("skyroute", False)

    async def forecast(request: web.Request) -> web.Response:
        return web.json_response({"forecast": "sunny"})

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "down"}, status=503)

    provider = web.Application(middlewares=[
        authorize_middleware(gw, MIDDLEWARE_PAYGATE, key.id, secret)])
    provider.router.add_get("/forecast", forecast)
    provider.router.add_get("/broken", broken)
    runner = web.AppRunner(provider, access_log=None)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    payer = client.address
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            unpaid = await http.get(base + "/forecast")
        paid = await client.get(base + "/forecast")
        receipt = client.last_receipt or {}
        before = _usdc(devnet, payer)
        failed = await client.get(base + "/broken")
        kept = _usdc(devnet, payer) - before
    finally:
        await runner.cleanup()
    steps.say("Middleware mode: the provider's own app asks the gateway", (
        f"SkyRoute Weather {base}, every route behind authorize_middleware "
        f"(paygate {MIDDLEWARE_PAYGATE}, POST /v1/authorize)\n"
        f"GET /forecast unpaid -> {unpaid.status_code} (the gateway's challenge, "
        f"answered by the app)\n"
        f"GET /forecast paid with x402 -> {paid.status_code} {paid.json()}; completed "
        f"with {paid.status_code}: settled, tx {str(receipt.get('transaction'))[:18]}...\n"
        f"GET /broken paid with x402 -> {failed.status_code}; completed with "
        f"{failed.status_code}: " + ("not settled, the payer paid nothing" if kept == 0
                                     else f"the payer's balance moved by {kept}")))


def _usdc(devnet, address: str) -> int:
    """The test USDC balance of `address`, read from the chain."""
    data = "0x70a08231" + address.lower().removeprefix("0x").rjust(64, "0")  # balanceOf
    return int(devnet.request("eth_call", [{"to": devnet.token_address, "data": data},
                                           "latest"]), 16)
