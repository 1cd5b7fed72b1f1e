"""Fixtures for the sessions package's tests.

    engine            a migrated store, once on SQLite (a file in tmp_path) and once on a
                      real PostgreSQL server (a fresh database per test): tests that take
                      it run on both.
    sqlite_engine     the SQLite one only; postgres_engine the PostgreSQL one only.
    clock             a ManualClock at the current time (the local Hedera network uses
                      real time, so the two start together).
    records, ledger   SessionRecords / Ledger on `engine` and `clock`.
    open_session      open an active session the way activation does (issue a nonce,
                      spend it in create_session).
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from sessions.ledger import Ledger
from sessions.lifecycle import new_token
from sessions.records import SessionRecords
from store.clock import ManualClock
from store.db import create_engine
from store.migrations import migrate
from tests.support.postgres import start_postgres

PRICE = 5_000_000  # tinybars per call in these tests
OWNER = "0.0.1001"
SPENDER = "0.0.1002"


@pytest.fixture(scope="session")
def sessions_postgres():
    """One real PostgreSQL server for these tests. No skip: missing binaries make the
    helper raise PostgresUnavailable, which says what to install."""
    with start_postgres(database="tollgate_sessions") as server:
        yield server


async def _fresh_pg_engine(server):
    name = f"s_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(server.url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return create_engine(server.url.rsplit("/", 1)[0] + "/" + name)


@pytest.fixture
async def sqlite_engine(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}")
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request, tmp_path):
    if request.param == "sqlite":
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}")
    else:
        engine = await _fresh_pg_engine(request.getfixturevalue("sessions_postgres"))
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def postgres_engine(sessions_postgres):
    """For races that need interleaved transactions (the SQLite store pools one connection)."""
    engine = await _fresh_pg_engine(sessions_postgres)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def records(engine, clock):
    return SessionRecords(engine, clock)


@pytest.fixture
def ledger(engine, clock):
    return Ledger(engine, clock)


async def new_session(records: SessionRecords, *, allowance: int, ttl: float = 3600.0,
                      paygate: str = "pg", owner: str = OWNER, spender: str = SPENDER):
    nonce, _ = await records.issue_nonce(paygate, owner, 600)
    session = await records.create_session(nonce=nonce, token=new_token(), paygate_id=paygate,
                                           owner=owner, spender=spender, allowance=allowance,
                                           ttl=ttl)
    assert session is not None and session.state == "active"
    return session


@pytest.fixture
def open_session(records):
    async def make(**kw):
        return await new_session(records, **kw)
    return make
