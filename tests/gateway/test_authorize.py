"""Middleware mode: a provider's own aiohttp app (examples/middleware_aiohttp.py) protected
through `/v1/authorize`, paid with real x402 payments on anvil, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestServer

from chains.payments import PaymentStore
from chains.x402 import decode_header
from examples.middleware_aiohttp import make_app
from gateway.authorize import AUTHORIZATIONS, sweep_once
from store.clock import ManualClock
from tests.gateway.admin_support import (  # noqa: F401
    Signer,
    make_key,
    postgres_server,
    store_config,
)
from tests.gateway.x402_support import PRICE, requirement_from, sign_payment, token_balance, x402_config

pytestmark = pytest.mark.usefixtures("settler_key")


class Setup:
    def __init__(self, g, app_url, signer, devnet):
        self.g, self.app_url, self.signer, self.devnet = g, app_url, signer, devnet

    async def challenge(self, http, path="/forecast") -> dict:
        async with http.get(self.app_url + path) as r:
            assert r.status == 402, await r.text()
            return requirement_from(r.headers["PAYMENT-REQUIRED"])

    def counts(self):
        return PaymentStore(self.g.gw.engine, self.g.gw.clock).counts()


@pytest.fixture
async def protected(gateway, origin, http, evm_devnet, store_config):
    servers = []

    async def make(clock=None) -> Setup:
        o = await origin()
        cfg = x402_config(evm_devnet, o.url, prefix="/weather", paygate_id="weather",
                          provider="acme",
                          rules=[{"method": "GET", "path": "/free", "units": 0}])
        g = await gateway({**store_config, **cfg}, clock=clock)
        key_id, secret = await make_key(g, provider="acme")
        app = make_app(g.url, "weather", key_id, secret)
        app.router.add_get("/free", lambda r: __import__("aiohttp").web.json_response({}))
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return Setup(g, f"http://127.0.0.1:{server.port}", Signer(http, g.url, key_id, secret),
                     evm_devnet)

    yield make
    for s in servers:
        await s.close()


async def test_unpaid_call_gets_the_gateways_exact_challenge(protected, http):
    s = await protected()
    async with http.get(s.app_url + "/forecast") as r:
        assert r.status == 402
        body, header = await r.json(), r.headers["PAYMENT-REQUIRED"]
    async with http.get(s.g.url + "/weather/forecast") as r:  # the proxy's own 402
        proxy_body = await r.json()
    assert decode_header(header)["accepts"][0]["amount"] == str(PRICE)
    money = ("scheme", "network", "amount", "asset", "payTo", "extra")
    assert [{k: a[k] for k in money} for a in body["accepts"]] == \
        [{k: a[k] for k in money} for a in proxy_body["accepts"]]
    assert body["error"] == proxy_body["error"]
    assert body["accepts"][0]["resource"] == s.app_url + "/forecast"  # the provider's URL
    assert await s.counts() == {}


async def test_paid_call_is_served_and_settled(protected, http, evm_devnet):
    s = await protected()
    req = await s.challenge(http)
    payer = evm_devnet.payers[5]
    before = token_balance(evm_devnet, payer.address)
    header = sign_payment(evm_devnet, payer, req)
    async with http.get(s.app_url + "/forecast", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
        receipt = decode_header(r.headers["PAYMENT-RESPONSE"])
    assert body == {"forecast": "sunny", "payer": payer.address, "units": 1}
    assert receipt["success"] is True
    assert token_balance(evm_devnet, payer.address) == before - PRICE
    # the same payment again is not a second call
    async with http.get(s.app_url + "/forecast", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 409
        assert (await r.json())["error"] == "payment_already_used"
    assert token_balance(evm_devnet, payer.address) == before - PRICE


async def test_origin_failure_is_not_charged(protected, http, evm_devnet):
    s = await protected()
    req = await s.challenge(http, "/broken")
    payer = evm_devnet.payers[5]
    before = token_balance(evm_devnet, payer.address)
    header = sign_payment(evm_devnet, payer, req)
    async with http.get(s.app_url + "/broken", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 503
        assert decode_header(r.headers["PAYMENT-RESPONSE"])["success"] is False
    assert token_balance(evm_devnet, payer.address) == before
    assert await s.counts() == {"void": 1}


async def test_malformed_payment_gets_a_challenge_with_the_reason(protected, http):
    s = await protected()
    async with http.get(s.app_url + "/forecast", headers={"PAYMENT-SIGNATURE": "bm90IGpzb24="}) as r:
        assert r.status == 402
        assert "PAYMENT-REQUIRED" in r.headers
        assert (await r.json())["error"] != "payment required"
    assert await s.counts() == {}


async def test_free_route_needs_no_payment(protected, http):
    s = await protected()
    async with http.get(s.app_url + "/free") as r:
        assert r.status == 200


async def test_complete_twice_unknown_and_foreign(protected, http, evm_devnet):
    s = await protected()
    req = await s.challenge(http)
    payer = evm_devnet.payers[5]
    before = token_balance(evm_devnet, payer.address)
    verdict = await s.signer.call("POST", "/v1/authorize", {
        "paygate": "weather", "method": "GET", "path": "/forecast",
        "headers": {"PAYMENT-SIGNATURE": sign_payment(evm_devnet, payer, req)}})
    assert verdict.status == 200 and verdict.body["allowed"] is True, verdict.text
    auth_id = verdict.body["authorization_id"]
    assert verdict.body["payer"] == payer.address and verdict.body["units"] == 1

    other_id, other_secret = await make_key(s.g, provider="other")
    other = Signer(s.signer.http, s.g.url, other_id, other_secret)
    done = await other.call("POST", f"/v1/authorize/{auth_id}/complete", {"status": 200})
    assert done.status == 404  # another provider's authorization does not exist for it
    refused = await other.call("POST", "/v1/authorize", {
        "paygate": "weather", "method": "GET", "path": "/forecast", "headers": {}})
    assert refused.status == 404

    done = await s.signer.call("POST", f"/v1/authorize/{auth_id}/complete", {"status": 500})
    assert done.status == 200, done.text
    again = await s.signer.call("POST", f"/v1/authorize/{auth_id}/complete", {"status": 200})
    assert again.status == 409
    unknown = await s.signer.call("POST", "/v1/authorize/az_nope/complete", {"status": 200})
    assert unknown.status == 404
    unsigned = await http.post(s.g.url + "/v1/authorize", data=json.dumps({"paygate": "weather"}))
    assert unsigned.status == 401
    assert token_balance(evm_devnet, payer.address) == before
    assert await s.counts() == {"void": 1}


async def test_never_completed_authorization_is_reversed_by_the_sweep(protected, http, evm_devnet):
    clock = ManualClock()
    s = await protected(clock)
    req = await s.challenge(http)
    payer = evm_devnet.payers[5]
    before = token_balance(evm_devnet, payer.address)
    verdict = await s.signer.call("POST", "/v1/authorize", {
        "paygate": "weather", "method": "GET", "path": "/forecast",
        "headers": {"PAYMENT-SIGNATURE": sign_payment(evm_devnet, payer, req)}})
    assert verdict.body["allowed"] is True, verdict.text
    table = s.g.app[AUTHORIZATIONS]
    assert await sweep_once(s.g.gw, table) == 0  # not yet due
    clock.advance(s.g.config.server.authorize_timeout_seconds + 1)
    assert await sweep_once(s.g.gw, table) == 1
    clock.set(__import__("time").time())
    late = await s.signer.call(
        "POST", f"/v1/authorize/{verdict.body['authorization_id']}/complete", {"status": 200})
    assert late.status == 409
    assert token_balance(evm_devnet, payer.address) == before
    assert await s.counts() == {"void": 1}
