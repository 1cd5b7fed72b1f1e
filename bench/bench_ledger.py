"""Durable ledger throughput: charges (and whole paid calls) per second through
sessions.ledger.Ledger, with both stores durable.

Usage: python bench/bench_ledger.py [--charges N] [--concurrency 1,32,128] [--sessions M]
                                    [--backend sqlite|postgres|both]

Same workload and checks as bench/bench_sessions.py (which it reuses), but:

* SQLite: the file in a temporary directory; the ledger's writer commits with
  synchronous=FULL (a commit is on disk before the call is answered).
* PostgreSQL: the throwaway test server with durability switched back ON (fsync,
  synchronous_commit, full_page_writes), so each acknowledged charge was flushed.

"charge" is Ledger.charge alone; "call" is charge + keep + record_response. Each caller
awaits its own charge before the next, so a figure at concurrency C is C callers that
each wait for durability: the group commit is what lets them share fsyncs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_sessions import run  # noqa: E402
from sessions.ledger import Ledger  # noqa: E402
from sessions.records import SessionRecords  # noqa: E402
from store.clock import SystemClock  # noqa: E402
from store.db import create_engine  # noqa: E402
from store.migrations import migrate  # noqa: E402


@contextlib.contextmanager
def store(backend: str):
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as tmp:
            yield f"sqlite+aiosqlite:///{tmp}/bench.db"
        return
    from tests.support.postgres import start_postgres

    with start_postgres(database="tollgate_bench") as server:
        asyncio.run(_durable(server.url))
        yield server.url


async def _durable(url: str) -> None:
    """Switch the test server's durability back on (it starts with fsync off)."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            await conn.execute(f"ALTER SYSTEM SET {setting} = on")
        await conn.execute("SELECT pg_reload_conf()")
        await asyncio.sleep(0.5)
        got = [await conn.fetchval(f"SHOW {s}") for s in ("fsync", "synchronous_commit")]
        if got != ["on", "on"]:
            raise RuntimeError(f"durability not on: {got}")
    finally:
        await conn.close()


async def bench_backend(backend: str, url: str, args) -> None:
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
                print(f"{backend:9} {mode:6} {label:13} C={concurrency:<4} {rate:9.0f} /s",
                      flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--charges", type=int, default=5000)
    ap.add_argument("--concurrency", default="1,32,128")
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    print(f"{args.charges} charges per run, durable stores; charges (or calls) per second")
    for backend in backends:
        with store(backend) as url:
            asyncio.run(bench_backend(backend, url, args))


if __name__ == "__main__":
    main()
