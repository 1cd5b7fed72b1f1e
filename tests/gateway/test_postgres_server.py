"""The tests' PostgreSQL helper starts a real server reachable through SQLAlchemy
async + asyncpg, and cleans up after itself."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.postgres import start_postgres


@pytest.fixture(scope="module")
def pg():
    with start_postgres(database="tollgate_test") as server:
        yield server


async def test_select_one_through_asyncpg(pg):
    assert pg.url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    assert pg.url.endswith(f":{pg.port}/tollgate_test")
    assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/tollgate_test"
    engine = create_async_engine(pg.url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("select 1"))).scalar_one() == 1
            assert (await conn.execute(text("select current_database()"))).scalar_one() == "tollgate_test"
    finally:
        await engine.dispose()


def test_stop_removes_everything():
    server = start_postgres()
    base, process = server.base_dir, server.process
    assert base.exists() and process.poll() is None
    server.stop()
    assert process.poll() is not None
    assert not base.exists()
    server.stop()  # idempotent
