"""store.writer: the SQLite group-commit writer, on a real database file.

Units that wait together share one transaction; one unit's failure rolls back only its
own savepoint; a failed COMMIT fails every unit of its batch and keeps none of them; a
result is returned only once its batch committed (another connection sees it)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from store.writer import SqliteWriter


@pytest.fixture
def db(tmp_path):
    path = str(tmp_path / "w.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    conn.commit()
    conn.close()
    return path


def rows(path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT k, v FROM t"))
    finally:
        conn.close()


def insert(k: str, v: int = 1, *, then_fail: bool = False):
    def unit(conn):
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, v))
        if then_fail:
            raise LookupError(k)
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
    return unit


def blocker():
    """A unit that holds the writer until released: whatever is queued meanwhile goes
    into the next batch, together."""
    started, release = threading.Event(), threading.Event()

    def unit(conn):
        started.set()
        release.wait(10)
    return unit, started, release


async def held(writer, *units):
    """Run `units` queued behind a blocker, so they form one batch."""
    unit, started, release = blocker()
    first = asyncio.ensure_future(writer.run(unit))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
    futures = [asyncio.ensure_future(writer.run(u)) for u in units]
    await asyncio.sleep(0)  # let them queue
    release.set()
    await first
    return await asyncio.gather(*futures, return_exceptions=True)


async def test_a_failing_unit_rolls_back_alone(db):
    writer = SqliteWriter(db)
    results = await held(writer, insert("a"), insert("b", then_fail=True), insert("c"))
    assert isinstance(results[1], LookupError)
    assert rows(db) == {"a": 1, "c": 1}  # b's insert went with its savepoint


async def test_units_queued_together_commit_together(db):
    """Each unit sees the units before it, and none of them is committed while the batch
    runs (another connection sees no row): they commit in one transaction."""
    writer = SqliteWriter(db)
    n = 20

    def unit(i):
        def run(conn):
            conn.execute("INSERT INTO t (k, v) VALUES (?, 1)", (f"k{i}",))
            mine = conn.execute("SELECT count(*) FROM t").fetchone()[0]
            return mine, len(rows(db))
        return run

    seen = await held(writer, *(unit(i) for i in range(n)))
    assert sorted(mine for mine, _ in seen) == list(range(1, n + 1))
    assert {outside for _, outside in seen} == {0}
    assert len(rows(db)) == n


async def test_a_failed_commit_keeps_nothing_and_fails_every_unit(db):
    """A unit that ends the transaction under the writer's feet makes the COMMIT fail:
    nobody is told their change is durable."""
    writer = SqliteWriter(db)

    def sneaky(conn):
        conn.execute("INSERT INTO t (k, v) VALUES ('x', 1)")
        conn.execute("RELEASE unit")
        conn.execute("ROLLBACK")

    results = await held(writer, insert("a"), sneaky)
    assert all(isinstance(r, Exception) for r in results), results
    assert rows(db) == {}


async def test_a_result_is_durable_when_returned(db):
    writer = SqliteWriter(db)
    for i in range(3):
        await writer.run(insert(f"k{i}", i))
        assert rows(db)[f"k{i}"] == i  # another connection sees it at once


def synchronous_now(conn) -> int:
    return conn.execute("PRAGMA synchronous").fetchone()[0]  # 1 NORMAL, 2 FULL


async def test_a_batch_with_any_fsync_unit_commits_full_and_one_without_does_not(db):
    """A batch of fsync=False units commits without waiting for the disk (NORMAL); a
    batch holding one unit that asks for fsync commits FULL, which also syncs every
    batch before it. Both are visible to other connections as soon as they return."""
    writer = SqliteWriter(db)

    def mode(k):
        def unit(conn):
            conn.execute("INSERT INTO t (k, v) VALUES (?, 1)", (k,))
            return synchronous_now(conn)
        return unit

    assert await writer.run(mode("a"), fsync=False) == 1
    assert rows(db) == {"a": 1}
    assert await writer.run(mode("b")) == 2
    unit, started, release = blocker()
    first = asyncio.ensure_future(writer.run(unit, fsync=False))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
    mixed = [asyncio.ensure_future(writer.run(mode("c"), fsync=False)),
             asyncio.ensure_future(writer.run(mode("d")))]
    await asyncio.sleep(0)
    release.set()
    await first
    assert await asyncio.gather(*mixed) == [2, 2]  # one batch: the fsync unit decides
    assert await writer.run(mode("e"), fsync=False) == 1
    assert rows(db) == {k: 1 for k in "abcde"}
