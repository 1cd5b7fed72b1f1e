"""x402-evm settlement recovery against real anvil, on SQLite and PostgreSQL: the signed
transaction is persisted before it is sent and re-sent as it is after a crash; a payer who
cancels the authorization is not a settlement; instances sharing one settler key race for
nonces without failing anything."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from sqlalchemy import text

from chains.payments import PaymentStore
from store import migrations
from store.clock import ManualClock
from store.db import create_engine_unpooled
from tests.chains.evm.test_settle import _cancel_authorization
from tests.gateway.test_x402_settlement import (
    challenge_req,
    only_row,
    rows_of,
    stop_worker,
    store_of,
)
from tests.gateway.x402_support import PRICE, sign_payment, token_balance, x402_config
from tests.support.postgres import start_postgres

pytestmark = pytest.mark.usefixtures("settler_key")

NET_WAIT = 15.0  # bound on any wait; never a pass criterion


@pytest.fixture(scope="module")
def postgres_server():
    with start_postgres(database="tollgate") as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request, tmp_path):
    """A migrated database that several gateway instances share."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        name = "t_" + uuid.uuid4().hex[:12]
        admin = create_engine_unpooled(server.url)
        async with admin.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await admin.dispose()
        url = server.url.rsplit("/", 1)[0] + "/" + name
    engine = create_engine_unpooled(url)
    try:
        await migrations.migrate(engine)
    finally:
        await engine.dispose()
    return url


def shared(config: dict, db_url: str, tmp_path) -> dict:
    return config | {"database": {"url": db_url, "master_key_file": str(tmp_path / "shared.key")}}


def receipt_of(devnet, tx_hash: str) -> dict | None:
    return devnet.request("eth_getTransactionReceipt", [tx_hash])


def authorization_used(devnet, payer: str, nonce_hex: str) -> bool:
    from eth_abi import encode

    from chains.evm.rpc import selector
    data = selector("authorizationState(address,bytes32)") + encode(
        ["address", "bytes32"], [payer, bytes.fromhex(nonce_hex[2:])])
    out = devnet.request("eth_call", [{"to": devnet.token_address, "data": "0x" + data.hex()},
                                      "latest"])
    return int(out, 16) == 1


class Crash(Exception):
    """Stands for the process dying at this point."""


async def test_crash_between_persist_and_send_resends_the_same_bytes(
        gateway, origin, http, evm_devnet, db_url, tmp_path):
    clock = ManualClock()
    o = await origin()
    config = shared(x402_config(evm_devnet, o.url, settlement="deferred"), db_url, tmp_path)
    g1 = await gateway(config, clock=clock)
    await stop_worker(g1)
    store = store_of(g1)
    req = await challenge_req(http, g1.url + "/sky/v1/flights")
    payer = evm_devnet.payers[0]
    payer_before = token_balance(evm_devnet, payer.address)
    async with http.get(g1.url + "/sky/v1/flights",
                        headers={"PAYMENT-SIGNATURE": sign_payment(evm_devnet, payer, req)}) as r:
        assert r.status == 200
    row = await only_row(store)
    assert row.state == "queued"

    # g1's worker signs the transaction, and dies just before it reaches the node.
    rpc = g1.gw.evm.network(evm_devnet.network).rpc

    async def die(_raw):
        raise Crash

    rpc.send_raw_transaction = die
    with contextlib.suppress(Crash):
        await g1.gw.rails["x402-evm"].work_once()
    crashed = await store.get(row.id)
    assert crashed.state == "settling"
    assert crashed.tx_hash and crashed.raw_tx, "the signed transaction was not persisted"
    assert evm_devnet.request("eth_getTransactionByHash", [crashed.tx_hash]) is None

    # A fresh instance on the same database, once the dead one's lease lapsed.
    g2 = await gateway(config, clock=clock)
    await stop_worker(g2)
    clock.advance(10)
    rail2 = g2.gw.rails["x402-evm"]
    assert await rail2.work_once() == 1
    clock.advance(10)
    await rail2.work_once()
    done = await store.get(row.id)
    assert (done.state, done.tx_hash) == ("settled", crashed.tx_hash)
    assert int(receipt_of(evm_devnet, crashed.tx_hash)["status"], 16) == 1
    assert token_balance(evm_devnet, payer.address) == payer_before - PRICE
    clock.advance(10)
    assert await rail2.work_once() == 0
    assert token_balance(evm_devnet, payer.address) == payer_before - PRICE


async def test_payer_cancelling_the_authorization_is_failed_not_settled(
        gateway, origin, http, evm_devnet, db_url, tmp_path):
    clock = ManualClock()
    o = await origin()
    g = await gateway(shared(x402_config(evm_devnet, o.url, settlement="deferred"), db_url,
                             tmp_path), clock=clock)
    await stop_worker(g)
    rail, store = g.gw.rails["x402-evm"], store_of(g)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    payer, merchant = evm_devnet.payers[1], evm_devnet.merchant.address
    merchant_before = token_balance(evm_devnet, merchant)
    header = sign_payment(evm_devnet, payer, req)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200
    row = await only_row(store)
    # A worker took it and died before anything was signed; meanwhile the payer, served,
    # cancels the authorization on chain.
    assert await store.transition(row.id, "queued", "settling")
    nonce = row.payload["payment"]["payload"]["authorization"]["nonce"]
    _cancel_authorization(evm_devnet, payer, bytes.fromhex(nonce[2:]))
    assert authorization_used(evm_devnet, payer.address, nonce)

    clock.advance(200)  # long past any lease; the authorization is still valid
    assert await rail.work_once() == 1
    final = await store.get(row.id)
    assert final.state == "failed", final
    assert final.error == "invalid_exact_evm_nonce_already_used"
    assert token_balance(evm_devnet, merchant) == merchant_before
    clock.advance(10)
    assert await rail.work_once() == 0


async def test_two_instances_sharing_a_settler_key_fail_nothing(
        gateway, origin, http, evm_devnet, db_url, tmp_path):
    """Settlement `after`, two instances, one key, concurrent payments: nonce conflicts
    between the instances' settlers are retried or left `unknown` and reconciled; the
    caller is never refused after the origin served, and every payment settles."""
    o = await origin()
    config = shared(x402_config(evm_devnet, o.url, settlement="after"), db_url, tmp_path)
    g1, g2 = await gateway(config), await gateway(config)
    for g in (g1, g2):
        await stop_worker(g)
    req = await challenge_req(http, g1.url + "/sky/v1/flights")
    merchant = evm_devnet.merchant.address
    merchant_before = token_balance(evm_devnet, merchant)
    count = 16
    headers = [sign_payment(evm_devnet, evm_devnet.payers[2 + i % 3], req) for i in range(count)]

    async def call(g, header):
        async with http.get(g.url + "/sky/v1/flights",
                            headers={"PAYMENT-SIGNATURE": header}) as r:
            return r.status, await r.text()

    async with asyncio.timeout(4 * NET_WAIT):
        results = await asyncio.gather(*(call((g1, g2)[i % 2], h) for i, h in enumerate(headers)))
    assert [status for status, _ in results] == [200] * count, results
    assert len(o.requests) == count

    store = store_of(g1)
    async with asyncio.timeout(4 * NET_WAIT):
        while (counts := await store.counts()) != {"settled": count}:
            assert "failed" not in counts, counts
            await asyncio.gather(g1.gw.rails["x402-evm"].work_once(),
                                 g2.gw.rails["x402-evm"].work_once())
            await asyncio.sleep(0.2)
    assert token_balance(evm_devnet, merchant) == merchant_before + count * PRICE
    assert len({r.tx_hash for r in await rows_of(store)}) == count
