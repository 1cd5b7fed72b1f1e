"""Charges per second through sessions.ledger.Ledger.charge, on SQLite and PostgreSQL.

Usage: python bench/bench_sessions.py [--charges N] [--concurrency 1,8,32] [--sessions M]
                                      [--backend sqlite|postgres|both]

For each store and each concurrency C, C asyncio callers share a budget of N charges
(distinct idempotency keys):

* one session:   every caller charges the same session (contention on one row);
* many sessions: M sessions of M different owners, caller i charges them round-robin
  from offset i (the sessions of one owner share one allowance row, so their charges
  queue on it like those of one session).

"charge" is Ledger.charge alone; "call" is what the session rail writes per paid call:
the charge, then the stored response with the keep in the same write. Each run is checked afterwards (every charge landed
exactly once in spent/calls). SQLite is a file in a temporary directory (WAL, the
store's settings); PostgreSQL is a throwaway local server from tests/support (fsync off,
so its figures are an upper bound for a durable server). Wall-clock figures, one run
each: compare them with each other, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sessions.ledger import Charged, Ledger  # noqa: E402
from sessions.lifecycle import new_token  # noqa: E402
from sessions.records import SessionRecords  # noqa: E402
from store.clock import SystemClock  # noqa: E402
from store.db import create_engine  # noqa: E402
from store.migrations import migrate  # noqa: E402

PRICE = 5_000_000


_owners = itertools.count(10_000)  # a new owner per session: runs share the database


async def open_sessions(records: SessionRecords, count: int, allowance: int) -> list[str]:
    ids = []
    for _ in range(count):
        owner = f"0.0.{next(_owners)}"
        nonce, _ = await records.issue_nonce("bench", owner, 600)
        session = await records.create_session(
            nonce=nonce, token=new_token(), paygate_id="bench", owner=owner,
            spender="0.0.1002", allowance=allowance, ttl=3600)
        ids.append(session.id)
    return ids


async def run(ledger: Ledger, records: SessionRecords, *, charges: int, concurrency: int,
              sessions: int, mode: str) -> float:
    ids = await open_sessions(records, sessions, allowance=(charges + 1) * PRICE)
    left = charges

    async def caller(offset: int) -> None:
        nonlocal left
        i = offset
        while left > 0:
            left -= 1
            sid = ids[i % len(ids)]
            i += 1
            got = await ledger.charge(sid, uuid.uuid4().hex, "fp", PRICE, fresh_after=0)
            if not isinstance(got, Charged):
                raise RuntimeError(f"charge refused: {got!r}")
            if mode == "call":
                await ledger.record_response(got.charge_id, 200, [("Content-Type", "text/plain")],
                                             b"ok", keep=True)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(concurrency)))
    elapsed = time.perf_counter() - t0
    views = [await records.get(sid) for sid in ids]
    if sum(v.calls for v in views) != charges or sum(v.spent for v in views) != charges * PRICE:
        raise RuntimeError("the ledger does not add up")
    if mode == "call":
        kept = 0
        for sid in ids:
            kept += sum(1 for c in await ledger.charges(sid) if c.state == "kept")
        if kept != charges:
            raise RuntimeError(f"{kept} of {charges} charges kept")
    return charges / elapsed


@contextlib.contextmanager
def store(backend: str):
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as tmp:
            yield f"sqlite+aiosqlite:///{tmp}/bench.db"
    else:
        from tests.support.postgres import start_postgres

        with start_postgres(database="tollgate_bench") as server:
            yield server.url


async def bench_backend(backend: str, url: str, args) -> list[tuple]:
    """Every (mode, concurrency, one or many sessions) run on one store; prints each."""
    rows = []
    for mode in ("charge", "call"):
        for concurrency in args.concurrency:
            for label, count in (("one session", 1), (f"{args.sessions} sessions", args.sessions)):
                engine = create_engine(url)
                try:
                    await migrate(engine)
                    clock = SystemClock()
                    rate = await run(Ledger(engine, clock), SessionRecords(engine, clock),
                                     charges=args.charges, concurrency=concurrency,
                                     sessions=count, mode=mode)
                finally:
                    await engine.dispose()
                rows.append((backend, mode, label, concurrency, rate))
                print(f"{backend:9} {mode:6} {label:13} C={concurrency:<4} {rate:9.0f} /s",
                      flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--charges", type=int, default=2000, help="charges per run (default 2000)")
    ap.add_argument("--concurrency", default="1,8,32",
                    help="comma-separated caller counts (default 1,8,32)")
    ap.add_argument("--sessions", type=int, default=64, help="sessions in the many-sessions runs")
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    print(f"{args.charges} charges per run; figures are charges (or calls) per second")
    for backend in backends:
        with store(backend) as url:
            asyncio.run(bench_backend(backend, url, args))


if __name__ == "__main__":
    main()
