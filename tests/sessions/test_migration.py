"""Schema version 4 (one allowance per session owner) upgrades a version-3 database, on
SQLite and PostgreSQL: each owner gets one shared row, carried over conservatively and
stale, so nothing is charged on it before a fresh mirror read."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from sessions.ledger import Ledger, Refused
from sessions.records import SessionRecords
from store import migrations, schema
from store.clock import ManualClock
from store.db import create_engine
from tests.sessions.conftest import PRICE, SPENDER


@pytest.fixture(params=["sqlite", "postgresql"])
async def bare_engine(request, tmp_path):
    """An empty database (no migration run yet)."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'v3.db'}")
    else:
        server = request.getfixturevalue("sessions_postgres")
        name = f"m_{uuid.uuid4().hex[:12]}"
        admin = create_async_engine(server.url, isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await admin.dispose()
        engine = create_engine(server.url.rsplit("/", 1)[0] + "/" + name)
    yield engine
    await engine.dispose()


def _upgrade_to_3(conn) -> None:
    schema.schema_migrations.create(conn, checkfirst=True)
    for m in migrations.MIGRATIONS:
        if m.version <= 3:
            m.upgrade(conn)
            conn.execute(insert(schema.schema_migrations).values(
                version=m.version, description=m.description, applied_at=time.time()))


def _v3_session(sid: str, owner: str, *, allowance: int, outstanding: int, mirror_at: float,
                state: str = "active") -> dict:
    return dict(id=sid, token_hash=sid * 2, paygate_id="pg", owner=owner, spender=SPENDER,
                state=state, allowance=allowance, outstanding=outstanding, spent=outstanding,
                calls=outstanding // PRICE, created_at=mirror_at, expires_at=mirror_at + 3600,
                mirror_at=mirror_at, ended_at=None, lease_until=None)


async def test_version_4_upgrades_a_version_3_database(bare_engine):
    engine, now = bare_engine, time.time()
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_to_3)
        # Two tabs of one owner, each with its own (older / newer) view; one other owner.
        await conn.execute(insert(schema.sessions), [
            _v3_session("a" * 32, "0.0.1001", allowance=10 * PRICE, outstanding=3 * PRICE,
                        mirror_at=now - 20),
            _v3_session("b" * 32, "0.0.1001", allowance=9 * PRICE, outstanding=2 * PRICE,
                        mirror_at=now - 10),
            _v3_session("c" * 32, "0.0.1003", allowance=4 * PRICE, outstanding=0,
                        mirror_at=now - 5, state="ended"),
        ])
    assert 4 in await migrations.pending(engine)
    assert 4 in await migrations.migrate(engine)
    assert await migrations.migrate(engine) == []  # recorded: not run twice
    async with engine.connect() as conn:
        rows = {r.owner: r for r in await conn.execute(select(schema.session_allowances))}
    assert set(rows) == {"0.0.1001", "0.0.1003"}
    mine = rows["0.0.1001"]
    # The newest view's allowance, everything either tab was charged and not yet seen.
    assert (mine.spender, mine.allowance, mine.outstanding, mine.mirror_at, mine.refusals) == \
        (SPENDER, 9 * PRICE, 5 * PRICE, 0, 0)
    assert (rows["0.0.1003"].allowance, rows["0.0.1003"].outstanding) == (4 * PRICE, 0)

    # Stale until the mirror is read again: no charge on the carried-over view.
    clock = ManualClock()
    records, ledger = SessionRecords(engine, clock), Ledger(engine, clock)
    got = await ledger.charge("a" * 32, "k", "fp", PRICE, fresh_after=clock.now() - 30)
    assert isinstance(got, Refused) and got.session.available == 4 * PRICE
    await records.apply_mirror("a" * 32, allowance=9 * PRICE, reconciled_pull_ids=[],
                               unit_price=PRICE)
    both = [await records.get(sid) for sid in ("a" * 32, "b" * 32)]
    assert {(s.allowance, s.outstanding, s.available) for s in both} == \
        {(9 * PRICE, 5 * PRICE, 4 * PRICE)}


async def test_version_4_on_a_fresh_database_and_twice(bare_engine):
    """A fresh database gets the table from the current metadata before version 4 runs:
    the migration must take that (and an existing row) in its stride."""
    engine = bare_engine
    assert await migrations.migrate(engine) == [m.version for m in migrations.MIGRATIONS]
    async with engine.begin() as conn:
        await conn.execute(insert(schema.session_allowances).values(
            owner="0.0.1001", spender=SPENDER, allowance=PRICE, outstanding=0, mirror_at=1.0,
            refusals=0))
        await conn.execute(insert(schema.sessions).values(**_v3_session(
            "d" * 32, "0.0.1001", allowance=7 * PRICE, outstanding=0, mirror_at=2.0)))
        await conn.run_sync(next(m for m in migrations.MIGRATIONS if m.version == 4).upgrade)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(schema.session_allowances))).all()
    assert [(r.owner, r.allowance) for r in rows] == [("0.0.1001", PRICE)]  # left alone
