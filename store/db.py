"""Engine creation for the two supported stores: SQLite (embedded) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout so readers never block the writer and
concurrent writers wait instead of failing. All statements that move money are single
claims (`UPDATE ... WHERE ... RETURNING`, `INSERT ... ON CONFLICT DO NOTHING`), which both
engines execute atomically.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # One connection: SQLite has one writer at a time anyway, and queueing writers on
        # the pool (FIFO, no sleeping) beats letting them collide on the file lock, where
        # SQLite's busy handler backs off in sleeps of up to 100 ms.
        # No reset on return: every transaction is committed or rolled back before its
        # connection goes back (Connection.close rolls back an open one), so the pool's
        # extra rollback would only cost a round trip to aiosqlite's thread.
        engine = create_async_engine(url, connect_args={"timeout": 30}, pool_size=1,
                                     max_overflow=0, pool_timeout=60,
                                     pool_reset_on_return=None)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def create_engine_unpooled(url: str) -> AsyncEngine:
    """For one-shot commands (migrate, CLI): no pool left behind."""
    return create_async_engine(url, poolclass=NullPool)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


async def ping(engine: AsyncEngine) -> None:
    """Raise if the store cannot answer a trivial query."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
