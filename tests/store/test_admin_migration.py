"""Migration 7 upgrades a version-6 database (admin keys, runtime paygates, webhooks)
and is idempotent, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, insert, select

from store import migrations, schema
from store.db import create_engine
from tests.gateway.admin_support import fresh_pg_url, postgres_server  # noqa: F401

NEW = ("api_keys", "admin_signatures", "runtime_paygates", "paygate_state",
       "webhook_endpoints", "webhook_events", "webhook_deliveries")


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/v6.db"
    else:
        url = await fresh_pg_url(request.getfixturevalue("postgres_server"))
    eng = create_engine(url)
    yield eng
    await eng.dispose()


async def test_version_6_database_upgrades(engine):
    if engine.dialect.name == "postgresql":  # fresh_pg_url migrated it: start over at 6
        async with engine.begin() as conn:
            for name in NEW:
                await conn.run_sync(lambda c, n=name: schema.metadata.tables[n].drop(c))
            await conn.execute(schema.schema_migrations.delete().where(
                schema.schema_migrations.c.version == 7))
    else:
        old = [m for m in migrations.MIGRATIONS if m.version < 7]
        async with engine.begin() as conn:
            def upto6(c):
                migrations._applied(c)
                for m in old:
                    m.upgrade(c)
                    c.execute(insert(schema.schema_migrations).values(
                        version=m.version, description=m.description, applied_at=0.0))
            await conn.run_sync(upto6)
            # a v6 database lacks the new tables (metadata-wide create was not used)
            have = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert not have & set(NEW)
    later = [m.version for m in migrations.MIGRATIONS if m.version >= 7]
    expected = [7] if engine.dialect.name == "postgresql" else later
    assert await migrations.pending(engine) == expected
    assert await migrations.migrate(engine) == expected
    async with engine.connect() as conn:
        have = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert set(NEW) <= have
        assert (await conn.execute(select(schema.schema_migrations.c.version)
                                   .order_by(schema.schema_migrations.c.version))
                ).scalars().all()[-1] == later[-1]
    async with engine.begin() as conn:  # idempotent: running the upgrade again is a no-op
        await conn.run_sync(next(m for m in migrations.MIGRATIONS if m.version == 7).upgrade)
    assert await migrations.migrate(engine) == []
