"""Migration 14 upgrades a version-13 database (SQLite and PostgreSQL): the partial index
of pending token charges; the abandoned-charge sweep then reverses only pending charges
on it; and running it again changes nothing."""

from __future__ import annotations

from sqlalchemy import delete, inspect, text

from sessions.tokens import Charged, Tokens
from store import migrations, schema
from store.clock import ManualClock
from tests.store.test_store import pg_engine, postgres, sqlite_engine  # noqa: F401


async def check_upgrade(engine) -> None:
    await migrations.migrate(engine)
    # Back to version 13: no index, version 14 not recorded.
    async with engine.begin() as conn:
        await conn.execute(text("DROP INDEX IF EXISTS ix_token_charges_pending"))
        await conn.execute(delete(schema.schema_migrations).where(
            schema.schema_migrations.c.version == 14))
    assert await migrations.pending(engine) == [14]
    assert await migrations.migrate(engine) == [14]
    async with engine.connect() as conn:
        indexes = await conn.run_sync(
            lambda c: {i["name"] for i in inspect(c).get_indexes("token_charges")})
    assert "ix_token_charges_pending" in indexes
    clock = ManualClock()
    tokens = Tokens(engine, clock)
    _, token = await tokens.issue("pg", "plan", 10, 1)
    kept = await tokens.charge(token.id, "kept", "fp", 3)
    left = await tokens.charge(token.id, "left", "fp", 4)
    assert isinstance(kept, Charged) and isinstance(left, Charged) and left.remaining == 3
    await tokens.record_response(kept.charge_id, 200, [], b"", keep=True)
    clock.advance(60)
    assert await tokens.reverse_abandoned(older_than=clock.now() - 61) == 0  # too young
    assert await tokens.reverse_abandoned(older_than=clock.now()) == 1
    assert await tokens.reverse_abandoned(older_than=clock.now()) == 0
    assert (await tokens.get(token.id)).remaining == 7
    assert await migrations.migrate(engine) == []


async def test_migration_14_upgrades_sqlite(sqlite_engine):  # noqa: F811
    await check_upgrade(sqlite_engine)


async def test_migration_14_upgrades_postgres(pg_engine):  # noqa: F811
    await check_upgrade(pg_engine)
