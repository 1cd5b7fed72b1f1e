"""Buying a plan with x402 `exact` on Hedera (HBAR), against the local Hedera network, on
SQLite and PostgreSQL: one settlement for the whole plan, a token with its quota, and a
payment presented again buys nothing more."""

from __future__ import annotations

import secrets
import time

from sqlalchemy import func, select

from chains.hedera import exact
from chains.hedera.devnet import HBAR
from chains.payments import PaymentStore
from store.schema import prepaid_tokens
from tests.gateway.admin_support import postgres_server, store_config  # noqa: F401
from tests.gateway.hedera.test_x402_hedera import (  # noqa: F401
    balances,
    challenge_req,
    fee_payer_key,
    hedera_config,
)
from tests.support.hedera_exact import forge, forge_bytes, header_for

PLAN_PRICE = 2 * HBAR  # tinybars: the whole plan, in one transfer


async def count_tokens(g) -> int:
    async with g.gw.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(prepaid_tokens))).scalar_one()


async def test_a_plan_bought_with_hbar_is_one_settlement_and_a_replay_buys_nothing(
        gateway, origin, http, hedera_devnet, hedera_account, store_config):  # noqa: F811
    o = await origin()
    cfg = hedera_config(hedera_devnet, o.url)
    cfg["paygates"][0]["plans"] = [{"id": "starter", "units": 40, "prices": {"hbar": "2"}}]
    g = await gateway(cfg | store_config)
    url = g.url + "/api/checkout/sky/starter"
    async with http.post(url) as r:
        assert r.status == 402
        body = await r.json()
    assert body["checkout_url"] == "/checkout/sky" and body["quotaIncluded"] == 40
    req = body["accepts"][0]
    assert req["scheme"] == "exact" and req["network"] == hedera_devnet.network
    assert int(req["amount"]) == PLAN_PRICE
    payer, stranger = hedera_account(), hedera_account()
    start, nanos = int(time.time()) - 5, secrets.randbelow(10**9)
    header = header_for(req, forge_bytes(req, payer, start=start, nanos=nanos))
    before = balances(hedera_devnet, payer)

    async with http.post(url, headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200, await r.text()
        bought = await r.json()
        assert "PAYMENT-RESPONSE" in r.headers
    assert bought["token"].startswith("tg_live_") and bought["quotaIncluded"] == 40
    assert bought["billingType"] == "paid" and bought["payer"] == payer.account_id
    # settled before the token was handed out: one transfer of the whole plan's price
    after = balances(hedera_devnet, payer)
    assert after["payer"] == before["payer"] - PLAN_PRICE
    assert after["merchant"] == before["merchant"] + PLAN_PRICE
    assert after["spender"] == before["spender"] - hedera_devnet.fee  # one submission
    payments = PaymentStore(g.gw.engine, g.gw.clock)
    assert await payments.counts() == {"settled": 1}

    bearer = {"Authorization": f"Bearer {bought['token']}"}
    async with http.get(g.url + "/sky/v1/flights", headers=bearer) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Tollgate-Remaining"] == "39"
    assert o.requests[-1].headers["X-Tollgate-Plan"] == "starter"

    # The same payment again, as is or with the bearer token for a top-up: 409, nothing.
    for extra in ({}, bearer):
        async with http.post(url, headers={"PAYMENT-SIGNATURE": header, **extra}) as r:
            assert r.status == 409, await r.text()
            answer = await r.json()
        assert answer["error"] == "payment_already_used" and "token" not in answer
    # The same transaction id re-signed by someone else: refused as already used.
    async with http.post(url, headers={"PAYMENT-SIGNATURE": forge(
            req, stranger, start=start, nanos=nanos)}) as r:
        assert r.status == 402, await r.text()
        assert (await r.json())["error"] == exact.ALREADY_USED
    assert await count_tokens(g) == 1
    assert balances(hedera_devnet, payer) == after
    assert await payments.counts() == {"settled": 1}
    async with http.get(g.url + "/sky/v1/flights", headers=bearer) as r:
        assert r.headers["X-Tollgate-Remaining"] == "38"  # no units were added by replays

