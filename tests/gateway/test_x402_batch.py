"""Batched settlement through the gateway (`batch_contract`), on real anvil, SQLite and
PostgreSQL: concurrent `after` requests share one transaction, the batch is persisted
(once, linked to every payment) before it is sent, and each request is answered only
once its own transfer is mined."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from chains.payments import PaymentStore
from chains.x402 import decode_header
from store.schema import payments, settlement_txs
from tests.gateway.test_x402_settlement import automine_off, challenge_req
from tests.gateway.test_x402_settlement_recovery import db_url, postgres_server  # noqa: F401
from tests.gateway.x402_support import PRICE, sign_payment, token_balance, x402_config

pytestmark = pytest.mark.usefixtures("settler_key")

NET_WAIT = 15.0  # bound on any wait; never a pass criterion
REQUESTS = 6


def pending_txs(devnet) -> int:
    address = devnet.settler.address
    return (int(devnet.request("eth_getTransactionCount", [address, "pending"]), 16)
            - int(devnet.request("eth_getTransactionCount", [address, "latest"]), 16))


async def test_concurrent_after_requests_settle_in_one_batch(gateway, origin, http, evm_devnet,
                                                             db_url, tmp_path):  # noqa: F811
    o = await origin()
    # The batch goes when it is full: every request's settlement is in it, deterministically.
    config = x402_config(evm_devnet, o.url, settlement="after",
                         evm_extra={"batch_contract": evm_devnet.batch_address,
                                    "batch_max_items": REQUESTS, "batch_linger_seconds": NET_WAIT})
    config["database"] = {"url": db_url}
    g = await gateway(config)
    store = PaymentStore(g.gw.engine, g.gw.clock)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    merchant = evm_devnet.merchant.address
    merchant_before = token_balance(evm_devnet, merchant)
    headers = [sign_payment(evm_devnet, evm_devnet.payers[i % 3], req) for i in range(REQUESTS)]

    async def call(header: str):
        async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            return r.status, r.headers.get("PAYMENT-RESPONSE"), await r.read()

    with automine_off(evm_devnet):
        calls = [asyncio.ensure_future(call(h)) for h in headers]
        async with asyncio.timeout(NET_WAIT):
            while pending_txs(evm_devnet) < 1:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # room for a wrong early answer to show up
        assert pending_txs(evm_devnet) == 1  # one transaction for every request
        assert not any(c.done() for c in calls)  # nobody answered before the transfer is mined
        async with g.gw.engine.connect() as conn:
            rows = (await conn.execute(select(payments.c.state, payments.c.tx_hash))).all()
            stored = (await conn.execute(select(settlement_txs))).all()
        assert len(rows) == REQUESTS and {r.state for r in rows} == {"settling"}
        (tx_hash,) = {r.tx_hash for r in rows}
        # Persisted once, before it was sent: the pooled transaction is those very bytes.
        assert [s.tx_hash for s in stored] == [tx_hash]
        pooled = evm_devnet.request("eth_getTransactionByHash", [tx_hash])
        assert pooled is not None
        raw = evm_devnet.request("eth_getRawTransactionByHash", [tx_hash])
        assert raw[2:] == stored[0].raw_tx
        evm_devnet.request("evm_mine")
        async with asyncio.timeout(NET_WAIT):
            answers = await asyncio.gather(*calls)

    assert [status for status, _, _ in answers] == [200] * REQUESTS
    for _, receipt, _ in answers:
        assert decode_header(receipt)["success"] is True
        assert decode_header(receipt)["transaction"] == tx_hash
    assert (await store.counts()) == {"settled": REQUESTS}
    assert token_balance(evm_devnet, merchant) == merchant_before + REQUESTS * PRICE
    assert len(o.requests) == REQUESTS
