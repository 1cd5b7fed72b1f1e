"""Group-committed writes for PostgreSQL: concurrent requests share one round trip and
one transaction, run straight on asyncpg.

A `PgBatch` gathers items (argument tuples) while its previous round trip is out, then
hands all of them at once to its `runner` on one asyncpg connection borrowed from the
engine's pool. The runner sends ONE statement (so PostgreSQL runs it as one implicit
transaction, committed before the reply comes back) and returns one result per item, in
order. Callers' futures are resolved only after that reply: nothing is acknowledged
before it is committed.

Contracts:

- `run(item)` returns the runner's result for `item` once the batch holding it committed,
  or raises the error that failed the whole batch (nothing of it was kept then).
- A batch that PostgreSQL aborts for a deadlock or a serialization failure (several
  instances batching over the same rows) is retried whole, up to `retries` times.
- A batch cut off because the server went away (the connection was lost or refused,
  or SQLSTATE class 08, 53 or 57P: shutting down, starting up, too many clients) raises
  `sqlalchemy.exc.OperationalError` wrapping the driver's error, as SQLAlchemy's own
  statements do: callers (the gateway's 503 `store_unavailable`) need not know asyncpg.
- Extra statements that must commit with the change belong in the runner's statement
  (a data-modifying CTE, or the PL/pgSQL function it calls): one statement, one
  transaction, one round trip.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Sequence

import sqlalchemy.exc

Runner = Callable[[Any, Sequence[tuple]], Awaitable[Sequence[Any]]]

_RETRY_STATES = {"40P01", "40001"}  # deadlock detected, serialization failure
_MAX_BATCH = 1024
_UNAVAILABLE_STATES = ("08", "53", "57P")
_LOST_CONNECTION = ("InterfaceError", "ConnectionDoesNotExistError")  # asyncpg's names


def _as_unavailable(exc: Exception) -> Exception:
    """The driver's error as SQLAlchemy's OperationalError when it means the server is not
    there (see the module docstring); any other error as it is."""
    sqlstate = getattr(exc, "sqlstate", None)
    gone = (isinstance(exc, OSError)
            or (isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_STATES))
            or any(c.__name__ in _LOST_CONNECTION and c.__module__.startswith("asyncpg")
                   for c in type(exc).__mro__))
    if not gone or isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
        return exc
    wrapped = sqlalchemy.exc.OperationalError("(batched statement)", None, exc)
    wrapped.__cause__ = exc
    return wrapped


class PgBatch:
    def __init__(self, engine, runner: Runner, *, retries: int = 5) -> None:
        self._engine = engine
        self._runner = runner
        self._retries = retries
        self._waiting: list[tuple[tuple, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def run(self, item: tuple) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((item, future))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            # (A flusher of a loop that is gone never comes back: start one here.)
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            async with self._engine.connect() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                while self._waiting:
                    batch = self._waiting[:_MAX_BATCH]
                    del self._waiting[:_MAX_BATCH]
                    await self._one(raw, batch)
        except BaseException as exc:
            # No connection (or cancelled): fail whoever still waits.
            waiting, self._waiting = self._waiting, []
            for _item, future in waiting:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception)
                                         else ConnectionError("writer stopped"))
            if not isinstance(exc, Exception):
                raise
        finally:
            if self._flusher is asyncio.current_task():
                self._flusher = None
                if self._waiting:  # arrived after the loop ended
                    self._flusher = asyncio.create_task(self._flush())

    async def _one(self, raw, batch: list[tuple[tuple, asyncio.Future]]) -> None:
        # Callers whose loop is gone wait no more: leave their items out.
        batch = [(i, f) for i, f in batch if not f.get_loop().is_closed()]
        if not batch:
            return
        items = [item for item, _future in batch]
        for attempt in range(self._retries + 1):
            try:
                results = await self._runner(raw, items)
            except Exception as exc:
                if getattr(exc, "sqlstate", None) in _RETRY_STATES and attempt < self._retries:
                    continue
                exc = _as_unavailable(exc)
                for _item, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            break
        for (_item, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
