"""A PostgreSQL batch whose server goes away under it fails as "store unavailable" (the
SQLAlchemy error class the gateway answers 503 `store_unavailable`, nothing charged), not
as a raw driver error the gateway would answer 500; a statement error stays what it is."""

from __future__ import annotations

import asyncpg
import pytest
import sqlalchemy.exc
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import error_middleware
from store.pgbatch import PgBatch
from tests.store.test_store import pg_engine, postgres  # noqa: F401


async def _terminated(conn, items):
    # The server ends this very session, as a shutdown or a restart does.
    await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    return [None] * len(items)


async def _bad_statement(conn, items):
    await conn.execute("SELECT 1 / 0")
    return [None] * len(items)


async def test_a_batch_cut_off_by_the_server_is_store_unavailable(pg_engine):  # noqa: F811
    with pytest.raises(sqlalchemy.exc.OperationalError) as got:
        await PgBatch(pg_engine, _terminated, retries=0).run(("x",))
    assert isinstance(got.value.orig, (asyncpg.PostgresError, asyncpg.InterfaceError))
    with pytest.raises(asyncpg.DivisionByZeroError):
        await PgBatch(pg_engine, _bad_statement).run(("x",))


async def test_the_gateway_answers_503_for_it(pg_engine):  # noqa: F811
    batch = PgBatch(pg_engine, _terminated, retries=0)

    async def handler(request):
        await batch.run(("x",))
        return web.json_response({})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/")
        assert r.status == 503
        assert (await r.json())["error"] == "store_unavailable"
