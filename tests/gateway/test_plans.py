"""Plans and prepaid tokens through a running gateway, on SQLite and PostgreSQL, with real
x402 payments on anvil: checkout (paid, free), spending, exhaustion, top-up, revocation,
and the attacks on each (bad, short and replayed payments, free-plan abuse, a token on
another paygate, quota races, origin failures)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from sqlalchemy import func, select

from store.schema import prepaid_tokens, webhook_events
from tests.gateway.admin_support import Signer, make_key, postgres_server, store_config  # noqa: F401
from tests.gateway.x402_support import requirement_from, sign_payment, token_balance, x402_config

pytestmark = pytest.mark.usefixtures("settler_key")

PLAN_PRICE = 50_000  # 0.05 test USDC, atomic
PLANS = [{"id": "starter", "units": 50, "prices": {"usdc": "0.05"}},
         {"id": "trial", "units": 50, "per_address_limit": 2}]


def config(devnet, origin_url: str, store: dict, **paygate) -> dict:
    return x402_config(devnet, origin_url, plans=PLANS, **paygate) | store


async def count_tokens(g) -> int:
    async with g.gw.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(prepaid_tokens))).scalar_one()


async def events(g, kind: str) -> list[dict]:
    async with g.gw.engine.connect() as conn:
        rows = (await conn.execute(select(webhook_events.c.data)
                                   .where(webhook_events.c.type == kind))).scalars().all()
    return [json.loads(r) for r in rows]


async def free_token(http, g, email: str = "a@example.com", paygate: str = "sky") -> dict:
    async with http.post(f"{g.url}/api/checkout/{paygate}/trial/free",
                         json={"email": email}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def bearer(token: str, **extra) -> dict:
    return {"Authorization": f"Bearer {token}", **extra}


async def test_checkout_pays_once_serves_tops_up_and_refuses_replays(
        gateway, origin, http, evm_devnet, store_config):
    o = await origin()
    g = await gateway(config(evm_devnet, o.url, store_config))
    url = g.url + "/api/checkout/sky/starter"
    async with http.post(url) as r:
        assert r.status == 402
        body = await r.json()
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    assert int(req["amount"]) == PLAN_PRICE
    assert body["checkout_url"] == "/checkout/sky" and body["quotaIncluded"] == 50
    payer, merchant = evm_devnet.payers[0], evm_devnet.merchant.address
    before = token_balance(evm_devnet, merchant)

    paid = sign_payment(evm_devnet, payer, req)
    async with http.post(url, headers={"PAYMENT-SIGNATURE": paid}) as r:
        assert r.status == 200, await r.text()
        bought = await r.json()
        assert "PAYMENT-RESPONSE" in r.headers
    token = bought["token"]
    assert token.startswith("tg_live_") and bought["quotaIncluded"] == 50
    assert bought["plan"] == "starter" and bought["billingType"] == "paid"
    # settled before the token was handed out: the merchant holds the money now
    assert token_balance(evm_devnet, merchant) == before + PLAN_PRICE

    async with http.get(g.url + "/sky/v1/x", headers=bearer(token)) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Tollgate-Remaining"] == "49"
    seen = o.requests[-1].headers
    assert seen["X-Tollgate-Payer"] == bought["tokenId"] and token not in str(dict(seen))
    assert seen["X-Tollgate-Plan"] == "starter" and seen["X-Tollgate-Remaining"] == "49"
    assert "Authorization" not in seen

    # the same payment again buys nothing, from anywhere
    for _ in range(2):
        async with http.post(url, headers={"PAYMENT-SIGNATURE": paid}) as r:
            assert r.status in (402, 409), await r.text()
            assert "token" not in await r.json()
    assert await count_tokens(g) == 1
    assert token_balance(evm_devnet, merchant) == before + PLAN_PRICE

    # top-up: buying with the token adds to it
    again = sign_payment(evm_devnet, payer, req)
    async with http.post(url, headers={"PAYMENT-SIGNATURE": again, **bearer(token)}) as r:
        assert r.status == 200, await r.text()
        topped = await r.json()
    assert topped["topUp"] is True and "token" not in topped and topped["remaining"] == 99
    assert await count_tokens(g) == 1
    async with http.get(g.url + "/sky/v1/x", headers=bearer(token)) as r:
        assert r.headers["X-Tollgate-Remaining"] == "98"

    # the holder revokes it: 401 from then on, and no top-up onto it either
    async with http.delete(g.url + "/api/tokens/current", headers=bearer(token)) as r:
        assert r.status == 200
    async with http.get(g.url + "/sky/v1/x", headers=bearer(token)) as r:
        assert r.status == 401 and (await r.json())["error"] == "invalid_token"
    third = sign_payment(evm_devnet, payer, req)
    paid_so_far = token_balance(evm_devnet, merchant)
    async with http.post(url, headers={"PAYMENT-SIGNATURE": third, **bearer(token)}) as r:
        assert r.status == 401
    assert token_balance(evm_devnet, merchant) == paid_so_far
    assert len([s for s in o.requests]) == 2


@pytest.mark.parametrize("problem", ["short", "per_call_price", "garbage", "other_payee"])
async def test_a_bad_or_short_checkout_payment_gets_no_token_and_moves_nothing(
        gateway, origin, http, evm_devnet, store_config, problem):
    o = await origin()
    g = await gateway(config(evm_devnet, o.url, store_config))
    url = g.url + "/api/checkout/sky/starter"
    async with http.post(url) as r:
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    payer = evm_devnet.payers[1]
    header = {
        "short": lambda: sign_payment(evm_devnet, payer, req, value=PLAN_PRICE - 1),
        "per_call_price": lambda: sign_payment(evm_devnet, payer, {**req, "amount": "1000"}),
        "garbage": lambda: "bm90IGEgcGF5bWVudA==",
        "other_payee": lambda: sign_payment(evm_devnet, payer, req, to=payer.address),
    }[problem]()
    before = token_balance(evm_devnet, payer.address)
    async with http.post(url, headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 402, await r.text()
        assert "token" not in await r.json()
    assert await count_tokens(g) == 0
    assert token_balance(evm_devnet, payer.address) == before


async def test_free_plan_once_per_email_and_limited_per_address(gateway, origin, http,
                                                                evm_devnet, store_config):
    o = await origin()
    g = await gateway(config(evm_devnet, o.url, store_config))
    first = await free_token(http, g, "Ann@Example.com")
    assert first["billingType"] == "free" and first["quotaIncluded"] == 50
    assert first["token"].startswith("tg_live_") and first["message"]
    url = g.url + "/api/checkout/sky/trial/free"
    async with http.post(url, json={"email": " ann@example.COM "}) as r:
        assert r.status == 409 and (await r.json())["error"] == "free_plan_email_used"
    await free_token(http, g, "bob@example.com")  # the address's second (limit 2)
    async with http.post(url, json={"email": "carol@example.com"}) as r:
        assert r.status == 429 and (await r.json())["error"] == "free_plan_address_limit"
    for bad in ({}, {"email": "nope"}, {"email": 3}):
        async with http.post(url, json=bad) as r:
            assert r.status == 400
    async with http.post(g.url + "/api/checkout/sky/starter/free", json={"email": "d@e.io"}) as r:
        assert r.status == 400  # a paid plan is not free
    assert await count_tokens(g) == 2


async def test_parallel_free_claims_of_one_address_respect_the_limit(gateway, origin, http,
                                                                     evm_devnet, store_config):
    o = await origin()
    g = await gateway(config(evm_devnet, o.url, store_config))
    url = g.url + "/api/checkout/sky/trial/free"

    async def claim(i: int) -> int:
        async with http.post(url, json={"email": f"u{i}@example.com"}) as r:
            return r.status
    statuses = await asyncio.gather(*(claim(i) for i in range(20)))
    assert sorted(statuses).count(200) == 2 and await count_tokens(g) == 2


async def test_a_token_of_one_paygate_is_401_on_another(gateway, origin, http, evm_devnet,
                                                        store_config):
    o = await origin()
    cfg = config(evm_devnet, o.url, store_config)
    cfg["paygates"].append({**cfg["paygates"][0], "id": "other", "prefix": "/other"})
    g = await gateway(cfg)
    token = (await free_token(http, g, paygate="other"))["token"]
    async with http.get(g.url + "/sky/v1/x", headers=bearer(token)) as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.get(g.url + "/sky/v1/x", headers=bearer("tg_live_forged")) as r:
        assert r.status == 401
    async with http.get(g.url + "/other/v1/x", headers=bearer(token)) as r:
        assert r.status == 200
    assert len(o.requests) == 1


async def test_200_parallel_calls_on_50_units_serve_exactly_50(gateway, origin, http,
                                                               evm_devnet, store_config):
    o = await origin()
    g = await gateway(config(evm_devnet, o.url, store_config))
    token = (await free_token(http, g))["token"]

    async def call(i: int) -> tuple[int, dict]:
        async with http.get(f"{g.url}/sky/v1/x?i={i}", headers=bearer(token)) as r:
            return r.status, await r.json()
    results = await asyncio.gather(*(call(i) for i in range(200)))
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 50 and statuses.count(402) == 150
    assert len(o.requests) == 50
    refused = next(b for s, b in results if s == 402)
    assert refused["error"] == "quota_exhausted" and refused["checkout_url"] == "/checkout/sky"
    assert refused["accepts"]  # the x402 challenge is there too
    remaining = sorted(int(r.headers["X-Tollgate-Remaining"]) for r in o.requests)
    assert remaining == list(range(50))
    # the events went into the outbox with the charges that crossed the thresholds
    assert [e["remaining"] for e in await events(g, "quota.warning")] == [4]
    assert [e["remaining"] for e in await events(g, "quota.exceeded")] == [0]


async def test_origin_failure_reverses_and_idempotency_keys_charge_once(
        gateway, origin, http, evm_devnet, store_config):
    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/fail"):
            return web.json_response({"down": True}, status=503)
        return web.json_response({"ok": request.path})
    o = await origin(handler)
    g = await gateway(config(evm_devnet, o.url, store_config))
    token = (await free_token(http, g))["token"]
    for _ in range(3):
        async with http.get(g.url + "/sky/v1/fail", headers=bearer(token)) as r:
            assert r.status == 503
    keyed = bearer(token, **{"Idempotency-Key": "k1"})
    async with http.get(g.url + "/sky/v1/ok", headers=keyed) as r:
        assert r.status == 200 and r.headers["X-Tollgate-Remaining"] == "49"
    async with http.get(g.url + "/sky/v1/ok", headers=keyed) as r:
        assert r.status == 200 and r.headers.get("X-Tollgate-Replay") == "true"
    async with http.get(g.url + "/sky/v1/other", headers=keyed) as r:
        assert r.status == 409  # the key names another request
    async with http.get(g.url + "/sky/v1/ok", headers=bearer(token)) as r:
        assert r.headers["X-Tollgate-Remaining"] == "48"  # failures and the replay: free


async def test_provider_revokes_through_the_admin_api(gateway, origin, http, evm_devnet,
                                                      store_config):
    o = await origin()
    g = await gateway(config(evm_devnet, o.url, store_config, provider="acme"))
    got = await free_token(http, g)
    other_id, other_secret = await make_key(g, provider="someone-else")
    stranger = Signer(http, g.url, other_id, other_secret)
    assert (await stranger.call("DELETE", f"/api/v1/tokens/{got['tokenId']}")).status == 404
    key_id, secret = await make_key(g, provider="acme")
    owner = Signer(http, g.url, key_id, secret)
    seen = await owner.call("GET", f"/api/v1/tokens/{got['tokenId']}")
    assert seen.status == 200 and seen.body["remaining"] == 50 and "token" not in seen.body
    gone = await owner.call("DELETE", f"/api/v1/tokens/{got['tokenId']}")
    assert gone.status == 200 and gone.body["state"] == "revoked"
    async with http.get(g.url + "/sky/v1/x", headers=bearer(got["token"])) as r:
        assert r.status == 401
    assert len(o.requests) == 0


async def test_checkout_page_lists_the_plans(gateway, origin, http, evm_devnet, store_config):
    o = await origin()
    g = await gateway(config(evm_devnet, o.url, store_config))
    async with http.get(g.url + "/checkout/sky") as r:
        assert r.status == 200 and "starter" in await r.text()
    async with http.get(g.url + "/api/checkout/sky") as r:
        plans = (await r.json())["plans"]
    assert [p["id"] for p in plans] == ["starter", "trial"]
    async with http.get(g.url + "/sky/v1/x") as r:  # the per-call 402 points to the plans
        assert r.status == 402
        assert (await r.json())["extensions"]["prepaid-token"]["checkout_url"] == "/checkout/sky"
    async with http.get(g.url + "/checkout/nothing") as r:
        assert r.status == 404


async def test_the_paying_client_buys_and_tops_up_a_plan(gateway, origin, http, evm_devnet,
                                                         store_config):
    from gateway.client import PayingClient

    o = await origin()
    g = await gateway(config(evm_devnet, o.url, store_config))
    url = g.url + "/api/checkout/sky/starter"
    async with PayingClient(evm_key=evm_devnet.payers[2].private_key) as client:
        bought = await client.post(url)
        assert bought.status_code == 200, bought.text
        token = bought.json()["token"]
        topped = await client.post(url, headers=bearer(token))
        assert topped.status_code == 200 and topped.json()["remaining"] == 100
    assert await count_tokens(g) == 1
