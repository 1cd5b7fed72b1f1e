"""Middleware mode through the ASGI wrapper (examples/middleware_starlette.py), paid with
Hedera allowance sessions on the local devnet; the gateway is reached over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from examples.middleware_starlette import make_app
from tests.gateway.admin_support import make_key
from tests.gateway.session_support import KEY_ENV, UNIT_PRICE, call_headers, open_session, session_config


@pytest.fixture(autouse=True)
def spender_key(monkeypatch, hedera_devnet):
    monkeypatch.setenv(KEY_ENV, hedera_devnet.account("spender").private_key)


@pytest.fixture
async def protected(gateway, origin, hedera_devnet):
    o = await origin()
    cfg = session_config(hedera_devnet, o.url)
    cfg["paygates"][0]["provider"] = "acme"
    g = await gateway(cfg)
    key_id, secret = await make_key(g, provider="acme")
    app = make_app(g.url, "sky", key_id, secret)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://provider.test") as client:
        yield g, client


async def test_unpaid_call_gets_the_session_offer(protected):
    g, client = protected
    r = await client.get("/forecast")
    assert r.status_code == 402 and "PAYMENT-REQUIRED" in r.headers
    assert r.json()["extensions"]["hedera-session"]["price_tinybars"] == UNIT_PRICE


async def test_session_pays_served_calls_only(protected, http, hedera_devnet, hedera_account):
    g, client = protected
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=5 * UNIT_PRICE)
    r = await client.get("/forecast", headers=call_headers(token, "k1"))
    assert r.status_code == 200, r.text
    assert r.json()["units"] == 1 and r.headers["X-Tollgate-Remaining"] == str(4 * UNIT_PRICE)
    r = await client.get("/broken", headers=call_headers(token, "k2"))
    assert r.status_code == 503  # not charged: the policy reverses a failed call
    # the same idempotency key again is not a second charge
    r = await client.get("/forecast", headers=call_headers(token, "k1"))
    assert r.status_code != 200
    r = await client.get("/forecast", headers={"X-Hedera-Session-Id": token})
    assert r.status_code == 400  # a session call needs an idempotency key, as on the proxy
    session = await g.gw.rails["hedera-session"].records.by_token(token)
    assert (session.spent, session.calls) == (UNIT_PRICE, 1)
