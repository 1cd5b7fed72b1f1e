"""x402-evm settlement under faults, against real anvil: outcomes not known in time, a
process that died mid-settlement, graceful shutdown, and the same flows on a real
PostgreSQL store shared by two gateway instances."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import contextmanager

import pytest
from aiohttp import web
from sqlalchemy import select, text

from chains.payments import PaymentStore
from chains.x402 import decode_header
from gateway.rails.base import PaidRequest, Priced, StoredResponse
from store import migrations
from store.clock import ManualClock
from store.db import create_engine, create_engine_unpooled
from store.schema import payments
from tests.gateway.x402_support import (
    PRICE,
    requirement_from,
    sign_payment,
    token_balance,
    x402_config,
)
from tests.support.postgres import start_postgres

NET_WAIT = 15.0  # bound on any wait for the chain or the gateway; never a pass criterion


pytestmark = pytest.mark.usefixtures("settler_key")


@contextmanager
def automine_off(devnet):
    """Transactions stay pending until `evm_mine`; automine is always restored."""
    devnet.request("evm_setAutomine", [False])
    try:
        yield
    finally:
        devnet.request("evm_setAutomine", [True])


async def stop_worker(g) -> None:
    """Stop a gateway's background settlement worker so the test drives `work_once`."""
    rail = g.gw.rails["x402-evm"]
    rail._worker.cancel()
    await asyncio.gather(rail._worker, return_exceptions=True)


async def challenge_req(http, url: str) -> dict:
    async with http.get(url) as r:
        assert r.status == 402
        return requirement_from(r.headers["PAYMENT-REQUIRED"])


async def only_row(store: PaymentStore):
    rows = await rows_of(store)
    assert len(rows) == 1, rows
    return rows[0]


async def rows_of(store: PaymentStore):
    async with store._engine.connect() as conn:
        ids = (await conn.execute(select(payments.c.id))).scalars().all()
    return [await store.get(i) for i in ids]


def store_of(g) -> PaymentStore:
    return PaymentStore(g.gw.engine, g.gw.clock)


async def wait_for(predicate, what: str, timeout: float = NET_WAIT):
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = await predicate()
                if value:
                    return value
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what}") from None


# -- outcome not known within the receipt wait ----------------------------------------


async def test_unmined_settlement_is_unknown_then_reconciled_once(gateway, origin, http,
                                                                  evm_devnet):
    clock = ManualClock()
    o = await origin()
    g = await gateway(x402_config(evm_devnet, o.url, settlement="after",
                                  evm_extra={"receipt_timeout_seconds": 0.2}), clock=clock)
    await stop_worker(g)
    rail, store = g.gw.rails["x402-evm"], store_of(g)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    payer = evm_devnet.payers[0]
    merchant = evm_devnet.merchant.address
    merchant_before = token_balance(evm_devnet, merchant)
    # (an identifier, so the replay at the end, after settlement, gets the response)
    header = sign_payment(evm_devnet, payer, req,
                          extensions={"payment-identifier": {"info": {"id": "unmined-0001-abcd"}}})

    with automine_off(evm_devnet):
        async with http.get(g.url + "/sky/v1/flights",
                            headers={"PAYMENT-SIGNATURE": header}) as r:
            assert r.status == 200  # served, never a fresh 402
            assert "PAYMENT-REQUIRED" not in r.headers
            receipt = r.headers["PAYMENT-RESPONSE"]
        row = await only_row(store)
        assert row.state == "unknown" and row.tx_hash and row.tx_hash.startswith("0x")
        assert decode_header(receipt)["transaction"] == row.tx_hash
        assert token_balance(evm_devnet, merchant) == merchant_before
        # Still pending: the worker leaves it unknown and does not send another one.
        clock.advance(10)
        await rail.work_once()
        assert (await store.get(row.id)).state == "unknown"
        assert int(evm_devnet.request("eth_getTransactionCount",
                                      [evm_devnet.settler.address, "pending"]), 16) == \
            int(evm_devnet.request("eth_getTransactionCount",
                                   [evm_devnet.settler.address, "latest"]), 16) + 1
        evm_devnet.request("evm_mine")

    clock.advance(10)
    assert await rail.work_once() == 1
    settled = await store.get(row.id)
    assert settled.state == "settled" and settled.tx_hash == row.tx_hash
    assert token_balance(evm_devnet, merchant) == merchant_before + PRICE
    # Nothing left to do, and the same payment again is a replay, not a second charge.
    clock.advance(10)
    assert await rail.work_once() == 0
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200 and r.headers["X-Tollgate-Replay"] == "true"
    assert len(o.requests) == 1
    assert token_balance(evm_devnet, merchant) == merchant_before + PRICE


# -- crash recovery ---------------------------------------------------------------------


async def test_settling_without_tx_hash_is_settled_once_after_a_crash(gateway, origin, http,
                                                                      evm_devnet):
    o = await origin()
    g = await gateway(x402_config(evm_devnet, o.url, settlement="deferred"))
    await stop_worker(g)
    rail, store = g.gw.rails["x402-evm"], store_of(g)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    payer = evm_devnet.payers[1]
    payer_before = token_balance(evm_devnet, payer.address)
    async with http.get(g.url + "/sky/v1/flights",
                        headers={"PAYMENT-SIGNATURE": sign_payment(evm_devnet, payer, req)}) as r:
        assert r.status == 200
    row = await only_row(store)
    assert row.state == "queued"
    # The worker took it and the process died before anything was sent.
    assert await store.transition(row.id, "queued", "settling")
    assert (await store.get(row.id)).tx_hash is None

    assert await rail.work_once() == 1
    done = await store.get(row.id)
    assert done.state == "settled" and done.tx_hash
    tx = evm_devnet.request("eth_getTransactionReceipt", [done.tx_hash])
    assert int(tx["status"], 16) == 1
    assert token_balance(evm_devnet, payer.address) == payer_before - PRICE
    assert await rail.work_once() == 0
    assert token_balance(evm_devnet, payer.address) == payer_before - PRICE


async def test_abandoned_verified_payments_settle_if_served_else_void(gateway, origin, http,
                                                                      evm_devnet):
    """A process that died between claiming and settling: a payment whose response was
    stored (it was served) is settled; one never served is voided, and its money stays."""
    clock = ManualClock()
    o = await origin()
    g = await gateway(x402_config(evm_devnet, o.url, settlement="after"), clock=clock)
    await stop_worker(g)
    rail, store = g.gw.rails["x402-evm"], store_of(g)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    payer = evm_devnet.payers[2]
    payer_before = token_balance(evm_devnet, payer.address)
    pg = g.config.paygate("sky")
    priced = Priced(pg, 1, g.url + "/sky/v1/flights", "GET", "/sky/v1/flights")

    async def no_body() -> bytes:
        return b""

    charges = []
    for _ in range(2):
        header = sign_payment(evm_devnet, payer, req)
        paid = PaidRequest("GET", "/sky/v1/flights", {"PAYMENT-SIGNATURE": header},
                           "127.0.0.1", no_body)
        charges.append(await rail.accept(paid, priced))
    served, unserved = charges
    # The first was answered (the response is stored), then the process died.
    await rail.record(served, StoredResponse(200, [("Content-Type", "text/plain")], b"ok"))
    assert {r.state for r in await rows_of(store)} == {"verified"}

    assert await rail.work_once(abandoned_after=900) == 0  # too recent to call abandoned
    clock.advance(901)
    assert await rail.work_once(abandoned_after=900) == 2
    assert (await store.get(served.ref.row_id)).state == "settled"
    void = await store.get(unserved.ref.row_id)
    assert void.state == "void" and void.tx_hash is None
    assert token_balance(evm_devnet, payer.address) == payer_before - PRICE
    clock.advance(901)
    assert await rail.work_once(abandoned_after=900) == 0
    assert token_balance(evm_devnet, payer.address) == payer_before - PRICE


# -- graceful shutdown ------------------------------------------------------------------


async def test_shutdown_finishes_an_in_flight_settlement(gateway, origin, http, evm_devnet):
    """Closing the gateway while a settlement waits for its receipt: the close waits for
    it, and the outcome is recorded before the store goes away."""
    o = await origin()
    g = await gateway(x402_config(evm_devnet, o.url, settlement="after",
                                  evm_extra={"receipt_timeout_seconds": NET_WAIT}))
    await stop_worker(g)
    rail = g.gw.rails["x402-evm"]
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    payer = evm_devnet.payers[3]
    payer_before = token_balance(evm_devnet, payer.address)
    header = sign_payment(evm_devnet, payer, req)
    closing = asyncio.Event()
    real_aclose = rail.aclose

    async def aclose() -> None:
        closing.set()
        await real_aclose()

    rail.aclose = aclose
    # Read the store through an engine of our own: the gateway disposes of its engine.
    engine = create_engine(g.config.database.url)
    own_store = PaymentStore(engine, g.gw.clock)
    try:
        with automine_off(evm_devnet):
            async def pay():
                async with http.get(g.url + "/sky/v1/flights",
                                    headers={"PAYMENT-SIGNATURE": header}) as r:
                    return r.status

            request = asyncio.create_task(pay())
            row = await wait_for(lambda: _sent(own_store), "the settlement transaction")
            assert row.state == "settling"
            close = asyncio.create_task(g.server.close())
            async with asyncio.timeout(NET_WAIT):
                await closing.wait()  # the server stopped taking requests; rails closing
            assert not close.done()
            evm_devnet.request("evm_mine")
            async with asyncio.timeout(NET_WAIT):
                await close
        await asyncio.gather(request, return_exceptions=True)
        final = await own_store.get(row.id)
        assert final.state == "settled" and final.tx_hash == row.tx_hash
        assert token_balance(evm_devnet, payer.address) == payer_before - PRICE
    finally:
        await engine.dispose()


async def _sent(store: PaymentStore):
    rows = await rows_of(store)
    return rows[0] if rows and rows[0].tx_hash else None


# -- deferred exposure under concurrent claims --------------------------------------------


async def concurrent_deferred_claims(http, urls: list[str], devnet, payer, count: int):
    req = await challenge_req(http, urls[0] + "/sky/v1/flights")
    headers = [sign_payment(devnet, payer, req) for _ in range(count)]

    async def call(url, header):
        async with http.get(url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            return r.status, (await r.json()).get("error")

    async with asyncio.timeout(NET_WAIT):
        return await asyncio.gather(*(call(urls[i % len(urls)], h)
                                      for i, h in enumerate(headers)))


async def test_sqlite_deferred_exposure_holds_under_concurrent_claims(gateway, origin, http,
                                                                      evm_devnet):
    o = await origin()
    g = await gateway(x402_config(evm_devnet, o.url, settlement="deferred",
                                  evm_extra={"deferred_exposure_limit": 2 * PRICE}))
    await stop_worker(g)
    results = await concurrent_deferred_claims(http, [g.url], evm_devnet, evm_devnet.payers[5],
                                               12)
    assert sorted(results, key=str) == [(200, None)] * 2 + \
        [(402, "deferred_exposure_exceeded")] * 10
    assert len(o.requests) == 2
    assert await store_of(g).counts() == {"queued": 2}


# -- PostgreSQL: several gateway instances on one database ------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    with start_postgres(database="tollgate") as server:
        yield server


@pytest.fixture
async def pg_url(postgres_server):
    """A fresh, migrated database on the session's PostgreSQL server."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine_unpooled(postgres_server.url)
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = postgres_server.url.rsplit("/", 1)[0] + "/" + name
    engine = create_engine_unpooled(url)
    try:
        await migrations.migrate(engine)
    finally:
        await engine.dispose()
    return url


async def two_gateways_on(pg_url, gateway, evm_devnet, tmp_path, origin_url, **cfg):
    """Two gateway instances sharing one PostgreSQL database (and its master key)."""
    shared = {"database": {"url": pg_url, "master_key_file": str(tmp_path / "shared.key")}}
    config = x402_config(evm_devnet, origin_url, **cfg) | shared
    gws = [await gateway(config), await gateway(config)]
    for g in gws:
        assert g.gw.engine.dialect.name == "postgresql"
        await stop_worker(g)
    return gws


async def test_postgres_concurrent_duplicates_across_instances_served_and_settled_once(
        gateway, origin, http, evm_devnet, pg_url, tmp_path):
    release = asyncio.Event()
    calls = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await release.wait()
        return web.json_response({"call": calls})

    o = await origin(slow)
    g1, g2 = await two_gateways_on(pg_url, gateway, evm_devnet, tmp_path, o.url)
    req = await challenge_req(http, g1.url + "/sky/v1/flights")
    # (an identifier: a duplicate that arrives after settlement still gets the response)
    header = sign_payment(evm_devnet, evm_devnet.payers[4], req,
                          extensions={"payment-identifier": {"info": {"id": "pg-dup-0001-abcd"}}})
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)

    async def call(g):
        async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            return r.status, await r.json(), r.headers.get("PAYMENT-RESPONSE")

    tasks = [asyncio.create_task(call(g)) for g in (g1, g2) * 4]
    async with asyncio.timeout(NET_WAIT):
        while calls == 0:
            await asyncio.sleep(0.01)
    release.set()
    async with asyncio.timeout(NET_WAIT):
        results = await asyncio.gather(*tasks)
    assert {(status, tuple(body.items())) for status, body, _ in results} == {(200, (("call", 1),))}
    assert len({receipt for _, _, receipt in results}) == 1
    assert calls == 1
    assert await store_of(g1).counts() == {"settled": 1}
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PRICE


async def test_postgres_deferred_exposure_holds_under_concurrent_claims(
        gateway, origin, http, evm_devnet, pg_url, tmp_path):
    o = await origin()
    g1, g2 = await two_gateways_on(pg_url, gateway, evm_devnet, tmp_path, o.url,
                                   settlement="deferred",
                                   evm_extra={"deferred_exposure_limit": 2 * PRICE})
    payer = evm_devnet.payers[5]
    payer_before = token_balance(evm_devnet, payer.address)
    results = await concurrent_deferred_claims(http, [g1.url, g2.url], evm_devnet, payer, 8)
    served = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert len(served) == 2, results
    assert refused == [(402, "deferred_exposure_exceeded")] * 6
    assert len(o.requests) == 2
    assert await store_of(g1).counts() == {"queued": 2}
    # Settling frees the exposure again; the money moves once per served payment.
    assert await g2.gw.rails["x402-evm"].work_once() == 2
    assert await store_of(g1).counts() == {"settled": 2}
    assert token_balance(evm_devnet, payer.address) == payer_before - 2 * PRICE
