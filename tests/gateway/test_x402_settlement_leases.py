"""The settlement worker's leases and order, on SQLite and PostgreSQL: payments settle in
order of their authorization's expiry, a settlement in flight keeps its lease alive (no
takeover while its instance lives), and deferred paygates ask for a validity with room
for recovery."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from store.clock import ManualClock
from store.schema import payments
from tests.gateway.test_x402_settlement import automine_off, challenge_req, only_row, stop_worker, store_of
from tests.gateway.test_x402_settlement_recovery import db_url, postgres_server, shared  # noqa: F401
from tests.gateway.x402_support import sign_payment, x402_config

pytestmark = pytest.mark.usefixtures("settler_key")

NET_WAIT = 15.0  # bound on any wait; never a pass criterion


async def test_deferred_paygates_ask_for_room_to_recover(gateway, origin, http, evm_devnet):
    o = await origin()
    deferred = await gateway(x402_config(evm_devnet, o.url, settlement="deferred"))
    after = await gateway(x402_config(evm_devnet, o.url, settlement="after"))
    tuned = await gateway(x402_config(evm_devnet, o.url, settlement="deferred",
                                      evm_extra={"deferred_max_timeout_seconds": 900}))
    assert (await challenge_req(http, after.url + "/sky/v1/flights"))["maxTimeoutSeconds"] == 60
    assert (await challenge_req(http, deferred.url + "/sky/v1/flights"))["maxTimeoutSeconds"] == 300
    assert (await challenge_req(http, tuned.url + "/sky/v1/flights"))["maxTimeoutSeconds"] == 900


async def test_worker_takes_the_soonest_expiring_payment_first(
        gateway, origin, http, evm_devnet, db_url, tmp_path):  # noqa: F811
    o = await origin()
    g = await gateway(shared(x402_config(evm_devnet, o.url, settlement="deferred"), db_url,
                             tmp_path))
    await stop_worker(g)
    store = store_of(g)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    now = int(time.time())
    lifetimes = [280, 100, 200]
    for i, lifetime in enumerate(lifetimes):
        header = sign_payment(evm_devnet, evm_devnet.payers[i], req, valid_before=now + lifetime)
        async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            assert r.status == 200
    taken = []
    for _ in lifetimes:
        (row,) = await store.lease(["queued"], 60, 1, owner="test")
        taken.append(row.valid_before - now)
    assert taken == sorted(lifetimes)
    assert await store.lease(["queued"], 60, 1, owner="test") == []


async def test_a_settlement_in_flight_keeps_its_lease(gateway, origin, http, evm_devnet, db_url,
                                                      tmp_path):  # noqa: F811
    """Its instance renews the lease while it waits for the receipt: another instance
    does not take the payment over, however long the wait."""
    clock = ManualClock()
    o = await origin()
    config = shared(x402_config(evm_devnet, o.url, settlement="after",
                                evm_extra={"receipt_timeout_seconds": NET_WAIT}), db_url, tmp_path)
    config["server"] = {"settlement_lease_seconds": 1.5}  # a beat every half second
    g1 = await gateway(config, clock=clock)
    g2 = await gateway(config, clock=clock)
    for g in (g1, g2):
        await stop_worker(g)
    rail1, rail2, store = g1.gw.rails["x402-evm"], g2.gw.rails["x402-evm"], store_of(g1)
    req = await challenge_req(http, g1.url + "/sky/v1/flights")
    header = sign_payment(evm_devnet, evm_devnet.payers[3], req)

    async def pay():
        async with http.get(g1.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            return r.status

    async def lease_until():
        async with g1.gw.engine.connect() as conn:
            return (await conn.execute(select(payments.c.lease_until))).scalar_one_or_none()

    with automine_off(evm_devnet):
        request = asyncio.create_task(pay())
        async with asyncio.timeout(NET_WAIT):
            while (row := (await store.counts()).get("settling")) is None or \
                    (await only_row(store)).tx_hash is None:
                await asyncio.sleep(0.02)
        row = await only_row(store)
        assert row.lease_owner == rail1.instance
        for _ in range(3):  # three lease lengths pass while the receipt is awaited
            clock.advance(rail1.lease_seconds - 1)
            async with asyncio.timeout(NET_WAIT):  # the heartbeat renews from the new "now"
                while await lease_until() < clock.now() + rail1.lease_seconds - 0.5:
                    await asyncio.sleep(0.02)
            assert await rail2.work_once() == 0
        evm_devnet.request("evm_mine")
        async with asyncio.timeout(NET_WAIT):
            assert await request == 200
    done = await only_row(store)
    assert (done.state, done.attempts, done.tx_hash) == ("settled", 1, row.tx_hash)
    assert done.lease_owner is None
