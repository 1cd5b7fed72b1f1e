"""Migration 15 upgrades a version-13 database (SQLite and PostgreSQL) with the settlement
worker's index on payments (state, valid_before); the worker's lease then takes the open
payment in expiry order; and running it again changes nothing."""

from __future__ import annotations

from sqlalchemy import delete, inspect, text

from chains.payments import NewPayment, PaymentStore
from store import migrations, schema
from store.clock import ManualClock
from tests.store.test_store import pg_engine, postgres, sqlite_engine  # noqa: F401


def payment(n: int, valid_before: float) -> NewPayment:
    return NewPayment(claim_key=f"k{n}", payment_identifier=None, fingerprint="f" * 64,
                      rail="x402-evm", paygate_id="pg", network="eip155:31337", asset="0xa",
                      payer="0xp", pay_to="0xm", amount=10**20 + n, settlement="deferred",
                      payload={"n": n}, valid_before=valid_before)


async def check_upgrade(engine) -> None:
    await migrations.migrate(engine)
    async with engine.begin() as conn:  # back to version 13
        await conn.execute(text("DROP INDEX IF EXISTS ix_payments_work"))
        await conn.execute(delete(schema.schema_migrations).where(
            schema.schema_migrations.c.version == 15))
    assert await migrations.pending(engine) == [15]
    assert await migrations.migrate(engine) == [15]
    async with engine.connect() as conn:
        indexes = await conn.run_sync(
            lambda c: {i["name"]: i["column_names"] for i in inspect(c).get_indexes("payments")})
    assert indexes["ix_payments_work"] == ["state", "valid_before"]
    store = PaymentStore(engine, ManualClock())
    ids = [await store.claim(payment(n, vb)) for n, vb in enumerate([300.0, 100.0, 200.0])]
    for pid in ids:
        assert await store.transition(pid, "verified", "queued")
    leased = await store.lease(["queued"], 60, 2, owner="w")
    assert [(r.valid_before, r.amount) for r in leased] == [(100.0, 10**20 + 1),
                                                            (200.0, 10**20 + 2)]
    assert await migrations.migrate(engine) == []


async def test_migration_15_upgrades_sqlite(sqlite_engine):  # noqa: F811
    await check_upgrade(sqlite_engine)


async def test_migration_15_upgrades_postgres(pg_engine):  # noqa: F811
    await check_upgrade(pg_engine)
