"""Migration 9 upgrades a version-6 database (SQLite and PostgreSQL): the payer exposure
index, and on PostgreSQL the batched charge function; the ledger then charges on it; and
running it again changes nothing."""

from __future__ import annotations

from sqlalchemy import delete, inspect, text

from sessions.ledger import Charged, Ledger
from sessions.records import SessionRecords
from store import migrations, schema
from store.clock import ManualClock
from tests.store.test_store import pg_engine, postgres, sqlite_engine  # noqa: F401


async def check_upgrade(engine) -> None:
    await migrations.migrate(engine)
    # Back to version 6: no index, no function, version 9 not recorded.
    async with engine.begin() as conn:
        await conn.execute(text("DROP INDEX IF EXISTS ix_payments_exposure"))
        if engine.dialect.name == "postgresql":
            await conn.execute(text("DROP FUNCTION IF EXISTS tollgate_charge_batch"))
        await conn.execute(delete(schema.schema_migrations).where(
            schema.schema_migrations.c.version == 9))
    assert await migrations.pending(engine) == [9]
    assert await migrations.migrate(engine) == [9]
    async with engine.connect() as conn:
        indexes = await conn.run_sync(
            lambda c: {i["name"] for i in inspect(c).get_indexes("payments")})
    assert "ix_payments_exposure" in indexes
    clock = ManualClock()
    records = SessionRecords(engine, clock)
    nonce, _ = await records.issue_nonce("pg", "0.0.5", 600)
    session = await records.create_session(nonce=nonce, token="hs_t", paygate_id="pg",
                                           owner="0.0.5", spender="0.0.6", allowance=10,
                                           ttl=600)
    got = await Ledger(engine, clock).charge(session.id, "k", "fp", 4,
                                             fresh_after=clock.now() - 60)
    assert isinstance(got, Charged) and got.remaining == 6
    assert await migrations.migrate(engine) == []


async def test_migration_9_upgrades_sqlite(sqlite_engine):  # noqa: F811
    await check_upgrade(sqlite_engine)


async def test_migration_9_upgrades_postgres(pg_engine):  # noqa: F811
    await check_upgrade(pg_engine)
