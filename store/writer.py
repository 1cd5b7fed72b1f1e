"""Group-committed durable writes for SQLite: one writer thread, one COMMIT per batch.

A *unit of work* is a plain function given the writer's raw `sqlite3.Connection`; it runs
inside its own SAVEPOINT, so a unit that raises is rolled back alone (its exception goes
to its caller) while the others of the batch still commit. Every unit that is waiting when
the thread comes round goes into the same transaction, and each caller's future is
resolved only after that transaction's COMMIT returned: nothing is acknowledged before it
is durable, and concurrent callers share one fsync.

Contracts:

- `run(unit)` returns the unit's result (or raises its exception) after the batch holding
  it committed. If the COMMIT itself fails, every unit of the batch raises that error and
  none of their changes is kept.
- Units run one at a time, in arrival order, on one connection: a unit sees the effects
  of every unit before it, and nothing else writes between its statements (other SQLite
  connections of the process wait on the file lock).
- The connection runs in WAL mode. A batch holding a unit run with `fsync=True` (the
  default) commits with `synchronous=FULL`: it survives a power loss, not just a crash
  of the process, and so does every batch committed before it (the WAL is one file,
  synced up to its end). A batch of `fsync=False` units only commits (`NORMAL`): visible
  to every connection at once and safe from a crash of the process, durable against a
  power loss with the next fsync'd batch. For a change nothing outside the process sees
  before a later fsync'd write: a charge taken before a call is forwarded (its reply
  waits for the call's record, run with fsync), not the record itself.
- A unit must not COMMIT, ROLLBACK or release savepoints it did not open, and must not
  await anything: it runs on the writer thread, away from the event loop.
- Units are handed to the thread once per pass of the caller's event loop (all that pass's
  units in one queue put): the thread is woken once per pass, not once per unit.

Extra statements that must commit with a change (an outbox row, say) go inside the same
unit: whatever the function does on the connection is part of the change.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")
Unit = Callable[[sqlite3.Connection], Any]

_IDLE_SECONDS = 2.0  # the thread closes its connection and exits after this long idle
_MAX_BATCH = 512  # units per transaction: bounds how long one COMMIT keeps callers waiting
_LOCK_WAIT_SECONDS = 30.0  # as the engines' busy_timeout (store.db)


class SqliteWriter:
    def __init__(self, path: str) -> None:
        self._path = path
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pending = 0  # units queued or running; guarded by _lock
        # per event loop: units handed in during the loop's current pass (that loop only)
        self._gathering: dict[asyncio.AbstractEventLoop, list] = {}
        self._fsyncs = True  # the connection's synchronous setting: FULL (True) or NORMAL

    async def run(self, unit: Callable[[sqlite3.Connection], T], *, fsync: bool = True) -> T:
        """Run `unit` in the next batch; its result once the batch committed. `fsync=False`
        (see the module's contracts) for a change no reply waits on by itself."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        gathering = self._gathering.get(loop)
        if gathering is None:
            # The units a loop hands in during one pass of its callbacks go to the thread
            # together: one queue item and one wake-up of the thread, not one per unit.
            gathering = self._gathering[loop] = []
            loop.call_soon(self._hand_over, loop)
        gathering.append((unit, future, loop, fsync))
        return await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        items = self._gathering.pop(loop, None)
        if not items:
            return
        with self._lock:
            self._pending += len(items)
            self._queue.put(items)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="tollgate-sqlite-writer",
                                                daemon=True)
                self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=30, isolation_level=None,
                               check_same_thread=False, cached_statements=256)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        self._fsyncs = True
        # No busy handler: SQLite's sleeps 1, 2, 5 ... 100 ms between tries, and a batch
        # stalled that long stalls every caller queued behind it. `_begin` polls instead.
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _serve(self) -> None:
        conn = None
        try:
            conn = self._connect()
            while True:
                try:
                    first = self._queue.get(timeout=_IDLE_SECONDS)
                except queue.Empty:
                    with self._lock:
                        if self._pending == 0:
                            self._thread = None
                            return
                    continue
                batch = list(first)
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.extend(self._queue.get_nowait())
                    except queue.Empty:
                        break
                outcomes = self._commit(conn, batch)
                with self._lock:
                    self._pending -= len(batch)
                _resolve(batch, outcomes)
        except BaseException as exc:  # the connection could not be opened: fail the waiters
            with self._lock:
                self._thread = None
                waiting = []
                while True:
                    try:
                        waiting.extend(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._pending -= len(waiting)
            _resolve(waiting, [(False, exc)] * len(waiting))
            raise
        finally:
            if conn is not None:
                conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        try:
            fsync = any(item[3] for item in batch)
            if fsync != self._fsyncs:  # FULL: COMMIT waits for the WAL's fsync; NORMAL: not
                conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
                self._fsyncs = fsync
            _begin(conn)
            for unit, _future, _loop, _fsync in batch:
                conn.execute("SAVEPOINT unit")
                try:
                    result = unit(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO unit")
                    conn.execute("RELEASE unit")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE unit")
                    outcomes.append((True, result))
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(False, exc)] * len(batch)
        return outcomes


def _begin(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE: take the write lock now rather than fail on upgrading a read lock
    in the middle of the batch. Another connection of the file (the cold paths' pool)
    may hold it: poll every 0.2 ms, so the lock is taken as soon as it is free, for up
    to `_LOCK_WAIT_SECONDS`. (In WAL mode no later statement of the batch waits for a
    lock: readers never block the writer.)"""
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.0002)


def _resolve(batch: list, outcomes: list[tuple[bool, Any]]) -> None:
    """Hand the outcomes to the callers' loops: one wake-up per loop, not per unit."""
    per_loop: dict = {}
    for (_unit, future, loop, _fsync), outcome in zip(batch, outcomes):
        per_loop.setdefault(loop, []).append((future, outcome))
    for loop, items in per_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, items)
        except RuntimeError:  # that loop is closed: nobody waits any more
            pass


def _settle(items: list) -> None:
    for future, (ok, value) in items:
        if future.done():  # the caller was cancelled; the change stands regardless
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


_writers: "weakref.WeakKeyDictionary[Any, SqliteWriter]" = weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


def sqlite_writer(engine) -> SqliteWriter:
    """The writer of this SQLite engine's database file (one per engine)."""
    key = engine.sync_engine
    with _writers_lock:
        writer = _writers.get(key)
        if writer is None:
            database = engine.url.database or ""
            if not database or database == ":memory:":
                raise ValueError("the SQLite writer needs a database file, not :memory:")
            writer = _writers[key] = SqliteWriter(str(Path(database)))
        return writer
