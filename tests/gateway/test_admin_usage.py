"""Usage and revenue through the signed admin API, from real x402 payments on the local
chain, on SQLite and PostgreSQL: calls, units, settled / pending / failed per asset and
rail, top payers; JSON and CSV; another provider sees none of it."""

from __future__ import annotations

import asyncio
import csv
import io
import time

import pytest

from chains.payments import NewPayment, PaymentStore
from tests.gateway.admin_support import Signer, make_key, postgres_server, store_config  # noqa: F401
from tests.gateway.x402_support import PRICE, requirement_from, sign_payment, x402_config

pytestmark = pytest.mark.usefixtures("settler_key")


async def pay(http, url: str, devnet, payer, method: str = "GET") -> None:
    async with http.request(method, url) as r:
        assert r.status == 402
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    # valid from a minute before the chain's own latest block (its clock may lag ours)
    latest = int(devnet.request("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
    header = sign_payment(devnet, payer, req, valid_after=min(latest, int(time.time())) - 60)
    async with http.request(method, url, headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200, await r.text()


async def test_usage_and_revenue(gateway, origin, http, evm_devnet, store_config):
    o = await origin()
    cfg = x402_config(evm_devnet, o.url, provider="acme")
    gw = await gateway({**cfg, **store_config})
    p1, p2 = evm_devnet.payers[0], evm_devnet.payers[1]
    for _ in range(3):
        await pay(http, gw.url + "/sky/v1/flights", evm_devnet, p1)
    await pay(http, gw.url + "/sky/v1/bookings", evm_devnet, p2, "POST")
    store = PaymentStore(gw.gw.engine, gw.gw.clock)
    async with asyncio.timeout(60):
        while (await store.counts()).get("settled", 0) < 4:
            await asyncio.sleep(0.1)
    # one more claimed payment that failed to settle (no money moved)
    failed = await store.claim(NewPayment(
        claim_key="x|y|z|1", payment_identifier=None, fingerprint="f", rail="x402-evm",
        paygate_id="sky", network=evm_devnet.network, asset=evm_devnet.token_address,
        payer=p2.address, pay_to=evm_devnet.merchant.address, amount=PRICE,
        settlement="after", payload={}))
    assert await store.transition(failed, "verified", "settling")
    assert await store.transition(failed, "settling", "failed", error="insufficient_funds")

    key_id, secret = await make_key(gw, provider="acme")
    client = Signer(http, gw.url, key_id, secret)
    answer = await client.call("GET", "/api/v1/usage?period=hour")
    assert answer.status == 200, answer.text
    [sky] = answer.body["paygates"]
    assert sky["paygate"] == "sky"
    [hour] = sky["periods"]
    assert hour["calls"] == 5 and hour["units"] == 3 + 25  # the failed call earned nothing
    assert hour["amounts"] == [{"rail": "x402-evm", "network": evm_devnet.network,
                                "asset": "usdc", "settled": str(28 * PRICE), "pending": "0",
                                "failed": str(PRICE)}]
    assert sky["top_payers"][0] == {"payer": p1.address, "calls": 3,
                                    "amounts": {"usdc": str(3 * PRICE)}}
    assert sky["top_payers"][1] == {"payer": p2.address, "calls": 2,
                                    "amounts": {"usdc": str(25 * PRICE)}}

    as_csv = await client.call("GET", "/api/v1/usage?period=day&format=csv&paygate=sky")
    assert as_csv.status == 200 and as_csv.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(rows) == 1 and rows[0]["settled"] == str(28 * PRICE)
    assert rows[0]["units"] == "28" and rows[0]["failed"] == str(PRICE)

    bad = await client.call("GET", "/api/v1/usage?period=week&top=-1")
    assert bad.status == 422
    assert bad.body["errors"] == ["period: must be hour or day",
                                  "top: must be an integer from 0 to 1000"]
    other_id, other_secret = await make_key(gw, provider="globex")
    other = Signer(http, gw.url, other_id, other_secret)
    assert (await other.call("GET", "/api/v1/usage")).body["paygates"] == []
    assert (await other.call("GET", "/api/v1/usage?paygate=sky")).status == 404
