"""Migration 6 adds the settlement worker's columns to an existing `payments` table
(persisted signed tx, lease owner, authorization expiry), on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import Column, MetaData, Table, insert, inspect, select

from store import migrations, schema
from tests.store.test_store import pg_engine, postgres, sqlite_engine  # noqa: F401

NEW = ("raw_tx", "lease_owner", "valid_before")


def _old_database(conn) -> None:
    """A database as version 3 left it: payments without the new columns."""
    schema.schema_migrations.create(conn)
    for m in migrations.MIGRATIONS:
        if m.version <= 3:
            conn.execute(insert(schema.schema_migrations).values(
                version=m.version, description=m.description, applied_at=0.0))
    old = Table("payments", MetaData(), *[Column(c.name, c.type, nullable=c.nullable,
                                                 primary_key=c.primary_key)
                                          for c in schema.payments.c if c.name not in NEW])
    old.create(conn)
    for name in ("origin_secrets", "payment_responses", "session_nonces", "sessions",
                 "session_charges", "session_pulls"):
        schema.metadata.tables[name].create(conn)
    conn.execute(insert(old).values(
        id="p1", claim_key="k", payment_identifier=None, request_fingerprint="f", rail="x402-evm",
        paygate_id="sky", network="eip155:1", asset="0xa", payer="0xb", pay_to="0xc", amount=1,
        state="queued", settlement="deferred", payload="{}", tx_hash=None, error=None,
        attempts=0, lease_until=None, created_at=1.0, updated_at=1.0))


async def check_upgrade(engine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_old_database)
    ran = await migrations.migrate(engine)
    assert 6 in ran and not {1, 2, 3} & set(ran)
    async with engine.connect() as conn:
        columns = await conn.run_sync(lambda c: {x["name"] for x in inspect(c).get_columns("payments")})
        row = (await conn.execute(select(schema.payments))).one()
    assert set(NEW) <= columns
    assert (row.id, row.state, row.raw_tx, row.lease_owner, row.valid_before) == \
        ("p1", "queued", None, None, None)
    assert await migrations.migrate(engine) == []  # idempotent


async def test_migration_6_upgrades_an_existing_database_sqlite(sqlite_engine):  # noqa: F811
    await check_upgrade(sqlite_engine)


async def test_migration_6_upgrades_an_existing_database_postgres(pg_engine):  # noqa: F811
    await check_upgrade(pg_engine)
