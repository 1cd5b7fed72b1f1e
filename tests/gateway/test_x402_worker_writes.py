"""The settlement worker's writes on SQLite go through the store's group-commit writer, not
through SQLAlchemy transactions that would hold the database file's write lock while the
writer (committing the request path's claims and responses) waits for it; and what they
write is what the worker needs: deferred payments served, leased, settled (singly and in
batch transactions), each with its webhook event, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import event, select

from store.schema import payments, webhook_events
from tests.gateway.test_x402_settlement import challenge_req, stop_worker, store_of
from tests.gateway.test_x402_settlement_recovery import db_url, postgres_server, shared  # noqa: F401
from tests.gateway.x402_support import PRICE, sign_payment, token_balance, x402_config

pytestmark = pytest.mark.usefixtures("settler_key")

WRITES = ("insert", "update", "delete", "replace")


def record_writes(engine) -> list[str]:
    """Every write statement the engine's connections run from now on."""
    seen: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _seen(conn, cursor, statement, params, context, executemany):  # noqa: ARG001
        if statement.lstrip().lower().startswith(WRITES):
            seen.append(statement)

    return seen


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
async def test_deferred_settlement_writes_only_through_the_writer_on_sqlite(
        gateway, origin, http, evm_devnet, batch):
    o = await origin()
    extra = {"batch_contract": evm_devnet.batch_address, "batch_linger_seconds": 0.01} if batch else {}
    g = await gateway(x402_config(evm_devnet, o.url, settlement="deferred", evm_extra=extra))
    await stop_worker(g)
    rail, store = g.gw.rails["x402-evm"], store_of(g)
    assert g.gw.engine.dialect.name == "sqlite"
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    merchant = evm_devnet.merchant.address
    before = token_balance(evm_devnet, merchant)
    writes = record_writes(g.gw.engine)
    for i in range(3):
        header = sign_payment(evm_devnet, evm_devnet.payers[i], req)
        async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            assert r.status == 200
    assert await rail.work_once() == 3
    await store.renew(["nobody"], rail.instance, 5.0)  # the heartbeat's write
    assert writes == []  # nothing held the file's write lock beside the writer
    async with g.gw.engine.connect() as conn:
        rows = (await conn.execute(select(payments.c.state, payments.c.tx_hash,
                                          payments.c.lease_owner))).all()
        events = (await conn.execute(select(webhook_events.c.type, webhook_events.c.data))).all()
    assert sorted(r.state for r in rows) == ["settled"] * 3
    assert all(r.tx_hash and r.lease_owner is None for r in rows)
    assert token_balance(evm_devnet, merchant) == before + 3 * PRICE
    assert sorted(e.type for e in events) == ["payment.settled"] * 3
    assert {json.loads(e.data)["tx_hash"] for e in events} == {r.tx_hash for r in rows}


async def test_worker_outcomes_and_leases_on_both_stores(gateway, origin, http, evm_devnet,
                                                         db_url, tmp_path):  # noqa: F811
    """Lease, renew, release, start-settling, tx hash and outcomes move the rows as the
    worker expects, on SQLite and PostgreSQL; an outcome's event commits with it, and an
    outcome from a state the row is no longer in moves nothing."""
    o = await origin()
    g = await gateway(shared(x402_config(evm_devnet, o.url, settlement="deferred"), db_url,
                             tmp_path))
    await stop_worker(g)
    store = store_of(g)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    for i in range(2):
        header = sign_payment(evm_devnet, evm_devnet.payers[4 + i], req)
        async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            assert r.status == 200
    a, b = await store.lease(["queued"], 60, 10, owner="w1")
    assert {a.lease_owner, b.lease_owner} == {"w1"}
    assert await store.lease(["queued"], 60, 10, owner="w2") == []  # held
    assert await store.renew([a.id, b.id], "w2", 60) == 0  # not w2's
    assert await store.renew([a.id, b.id], "w1", 60) == 2
    assert await store.start_settling([a.id, b.id], "queued", "w1", 60) == {a.id, b.id}
    assert await store.start_settling([a.id], "queued", "w1", 60) == set()
    await store.set_tx_hash(a.id, "0x" + "aa" * 32, b"\x01\x02")
    assert (await store.get(a.id)).raw_tx == b"\x01\x02"
    await store.set_tx_hash(a.id, "0x" + "ab" * 32)
    got = await store.get(a.id)
    assert (got.tx_hash, got.raw_tx) == ("0x" + "ab" * 32, b"\x01\x02")
    # b's outcome is not known: freed for a recheck later, nobody's lease.
    assert await store.record_outcome(b.id, "settling", "unknown", tx_hash="0x" + "bb" * 32,
                                      error="settlement_pending", retry_after=30)
    got = await store.get(b.id)
    assert (got.state, got.lease_owner, got.error) == ("unknown", None, "settlement_pending")
    assert await store.lease(["unknown"], 60, 10, owner="w2") == []  # not due yet
    assert await store.record_outcome(a.id, "settling", "failed", error="insufficient_funds")
    assert not await store.record_outcome(a.id, "settling", "settled")  # moved already
    assert await store.record_outcomes([
        dict(payment_id=b.id, old="unknown", new="settled", tx_hash="0x" + "bc" * 32),
        dict(payment_id=a.id, old="settling", new="settled")]) == [True, False]
    a, b = await store.get(a.id), await store.get(b.id)
    assert (a.state, a.error, a.lease_owner) == ("failed", "insufficient_funds", None)
    assert (b.state, b.tx_hash) == ("settled", "0x" + "bc" * 32)
    async with g.gw.engine.connect() as conn:
        events = (await conn.execute(select(webhook_events.c.type, webhook_events.c.data)
                                     .order_by(webhook_events.c.created_at))).all()
    got = sorted((e.type, json.loads(e.data)["payment"], json.loads(e.data)["tx_hash"],
                  json.loads(e.data)["error"], json.loads(e.data)["amount"]) for e in events)
    assert got == sorted([("payment.failed", a.id, a.tx_hash, "insufficient_funds", str(PRICE)),
                          ("payment.settled", b.id, b.tx_hash, "settlement_pending", str(PRICE))])
    await store.release(b.id)
