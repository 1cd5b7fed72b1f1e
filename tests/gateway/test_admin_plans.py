"""Plans on paygates made through the signed admin API, on SQLite and PostgreSQL, paid with
real x402 payments on anvil: checkout, bearer calls, the 402 with `checkout_url` when the
quota runs out; plans added and removed by PATCH; bad plans refused field by field."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from store.schema import prepaid_tokens
from tests.gateway.admin_support import Signer, make_key, postgres_server, store_config  # noqa: F401
from tests.gateway.x402_support import requirement_from, sign_payment, token_balance, x402_config

pytestmark = pytest.mark.usefixtures("settler_key")

PLANS = [{"id": "starter", "units": 3, "prices": {"usdc": "0.02"}},
         {"id": "trial", "units": 2}]


def weather(devnet, origin_url: str, **extra) -> dict:
    """An API paygate selling plans, in the shape of a `[[paygates]]` table."""
    return {"id": "weather", "prefix": "/weather", "target": origin_url,
            "rails": ["x402-evm", "prepaid-token"], "prices": {"usdc": "0.001"},
            "pay_to": {"evm": devnet.merchant.address}, "plans": PLANS, **extra}


@pytest.fixture
async def setup(gateway, origin, http, evm_devnet, store_config):
    """A gateway whose config file sells no plans (an x402 paygate only), and a provider
    key of `acme`."""
    o = await origin()
    cfg = x402_config(evm_devnet, o.url, provider="acme")
    g = await gateway({**store_config, **cfg})
    key_id, secret = await make_key(g, provider="acme")
    return g, o, Signer(http, g.url, key_id, secret)


async def count_tokens(g) -> int:
    async with g.gw.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(prepaid_tokens))).scalar_one()


async def test_an_api_paygate_sells_plans_end_to_end(setup, http, evm_devnet):
    g, o, client = setup
    made = await client.call("POST", "/api/v1/paygates", weather(evm_devnet, o.url))
    assert made.status == 201, made.text
    assert [p["id"] for p in made.body["plans"]] == ["starter", "trial"]
    assert "prepaid-token" in made.body["rails"]

    async with http.get(g.url + "/api/checkout/weather") as r:
        assert r.status == 200 and [p["id"] for p in (await r.json())["plans"]] == [
            "starter", "trial"]
    url = g.url + "/api/checkout/weather/starter"
    async with http.post(url) as r:
        assert r.status == 402, await r.text()
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    assert int(req["amount"]) == 20_000
    merchant = evm_devnet.merchant.address
    before = token_balance(evm_devnet, merchant)
    # valid from a minute before the chain's own latest block (its clock may lag ours)
    latest = int(evm_devnet.request("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
    paid = sign_payment(evm_devnet, evm_devnet.payers[3], req,
                        valid_after=min(latest, int(time.time())) - 60)
    async with http.post(url, headers={"PAYMENT-SIGNATURE": paid}) as r:
        assert r.status == 200, await r.text()
        bought = await r.json()
    assert bought["quotaIncluded"] == 3 and bought["paygate"] == "weather"
    assert token_balance(evm_devnet, merchant) == before + 20_000

    bearer = {"Authorization": f"Bearer {bought['token']}"}
    for left in (2, 1, 0):
        async with http.get(g.url + "/weather/today", headers=bearer) as r:
            assert r.status == 200, await r.text()
            assert r.headers["X-Tollgate-Remaining"] == str(left)
    assert o.requests[-1].headers["X-Tollgate-Plan"] == "starter"
    assert o.requests[-1].headers["X-Tollgate-Payer"] == bought["tokenId"]
    async with http.get(g.url + "/weather/today", headers=bearer) as r:
        assert r.status == 402
        refused = await r.json()
    assert refused["error"] == "quota_exhausted"
    assert refused["checkout_url"] == "/checkout/weather" and refused["accepts"]
    assert len(o.requests) == 3
    # the token is for this paygate only: no means of payment on one selling no plans
    async with http.get(g.url + "/sky/v1/x", headers=bearer) as r:
        assert r.status == 402
    # the free plan of an API paygate
    async with http.post(url.replace("starter", "trial/free"), json={"email": "a@b.io"}) as r:
        assert r.status == 200 and (await r.json())["quotaIncluded"] == 2
    assert token_balance(evm_devnet, merchant) == before + 20_000


async def test_plans_added_and_removed_by_patch(setup, http, evm_devnet):
    g, o, client = setup
    bare = {k: v for k, v in weather(evm_devnet, o.url).items() if k != "plans"}
    bare["rails"] = ["x402-evm"]
    assert (await client.call("POST", "/api/v1/paygates", bare)).status == 201
    async with http.post(g.url + "/api/checkout/weather/trial/free",
                         json={"email": "a@b.io"}) as r:
        assert r.status == 404  # no plans yet
    added = await client.call("PATCH", "/api/v1/paygates/weather", {"plans": PLANS})
    assert added.status == 200, added.text
    async with http.post(g.url + "/api/checkout/weather/trial/free",
                         json={"email": "a@b.io"}) as r:
        assert r.status == 200, await r.text()
        token = (await r.json())["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    async with http.get(g.url + "/weather/today", headers=bearer) as r:
        assert r.status == 200 and r.headers["X-Tollgate-Remaining"] == "1"
    async with http.get(g.url + "/weather/today") as r:  # the per-call 402 names the plans
        offer = (await r.json())["extensions"]["prepaid-token"]
    assert offer["checkout_url"] == "/checkout/weather"

    # Without plans, the paygate sells none and its tokens pay nothing any more.
    removed = await client.call("PATCH", "/api/v1/paygates/weather",
                                {"plans": [], "rails": ["x402-evm"]})
    assert removed.status == 200, removed.text
    async with http.post(g.url + "/api/checkout/weather/trial/free",
                         json={"email": "c@d.io"}) as r:
        assert r.status == 404
    async with http.get(g.url + "/weather/today", headers=bearer) as r:
        assert r.status == 402  # the token is no means of payment here now
    assert len(o.requests) == 1
    assert await count_tokens(g) == 1


async def test_bad_plans_are_refused_field_by_field(setup, evm_devnet):
    g, o, client = setup
    cases = [
        ({"plans": [{"id": "a", "units": 0}]}, "plans[0].units: "),
        ({"plans": [{"id": "Big Plan", "units": 5}]}, "plans[0].id: must be lowercase"),
        ({"plans": [{"id": "a", "units": 5}, {"id": "a", "units": 6}]},
         "plans: each plan id may appear once"),
        ({"plans": [{"id": "a", "units": 5, "prices": {"hbar": "1"}}]},
         "plans[0].prices.hbar: the paygate has no price in this asset"),
        ({"plans": [{"id": "a", "units": 5, "prices": {"usdc": "0.0000001"}}]},
         "plans[0].prices.usdc: too many decimals"),
        ({"plans": [{"id": "a", "units": 5, "per_address_limit": 0}]},
         "plans[0].per_address_limit: "),
        ({"plans": [{"id": "a", "units": 5, "colour": "red"}]}, "plans[0].colour: unknown key"),
        ({"plans": "gold"}, "plans: "),
        ({"plans": [], "rails": ["prepaid-token"]}, "rails: prepaid-token needs plans"),
    ]
    for extra, line in cases:
        answer = await client.call("POST", "/api/v1/paygates",
                                   weather(evm_devnet, o.url, **extra))
        assert answer.status == 422, (extra, answer.text)
        assert answer.body["error"] == "invalid"
        assert any(e.startswith(line) for e in answer.body["errors"]), (line, answer.body)
    assert (await client.call("GET", "/api/v1/paygates/weather")).status == 404
    assert await count_tokens(g) == 0


async def test_openapi_describes_plans(setup):
    g, o, client = setup
    got = await client.call("GET", "/api/v1/openapi.json")
    assert got.status == 200, got.text
    schemas = got.body["components"]["schemas"]
    plan = schemas["Plan"]
    assert set(plan["required"]) == {"id", "units"}
    assert schemas["PaygateInput"]["properties"]["plans"]["items"] == {
        "$ref": "#/components/schemas/Plan"}
    assert "prepaid-token" in schemas["PaygateInput"]["properties"]["rails"]["items"]["enum"]
