"""Durable ledger throughput: charges (and whole paid calls) per second through
sessions.ledger.Ledger, with both stores durable.

Usage: python bench/bench_ledger.py [--charges N] [--concurrency 1,32,128] [--sessions M]
                                    [--backend sqlite|postgres|both]

Same workload and checks as bench/bench_sessions.py (which it reuses), but:

* SQLite: the file in a temporary directory; the ledger's writer commits with
  synchronous=FULL (a commit is on disk before the call is answered).
* PostgreSQL: the throwaway test server with durability switched back ON (fsync,
  synchronous_commit, full_page_writes), so each acknowledged charge was flushed.

"charge" is Ledger.charge alone; "call" is what the session rail writes per paid call:
the charge, then the stored response with the keep in the same write. Each caller
awaits its own charge before the next, so a figure at concurrency C is C callers that
each wait for durability: the group commit is what lets them share fsyncs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_sessions import PRICE, open_sessions  # noqa: E402
from sessions.ledger import Charged  # noqa: E402
from sessions.ledger import Ledger  # noqa: E402
from sessions.records import SessionRecords  # noqa: E402
from store.clock import SystemClock  # noqa: E402
from store.db import create_engine  # noqa: E402
from store.migrations import migrate  # noqa: E402


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
        return
    from tests.support import postgres

    # The test server runs with fsync off (set on its command line, which nothing can
    # override later): launch it the same way with durability on instead.
    def durable_launch(server, run_as, data_dir) -> None:
        with open(server.log_path, "wb") as log:
            server.process = subprocess.Popen(
                [str(server.bin_dir / "postgres"), "-D", str(data_dir), "-p", str(server.port),
                 "-k", str(server.socket_dir), "-c", f"listen_addresses={server.host}",
                 "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on"],
                cwd=server.base_dir, env=postgres._env(server.base_dir),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **run_as.popen_kwargs())

    postgres._launch = durable_launch
    with postgres.start_postgres(database="tollgate_bench") as server:
        asyncio.run(_check_durable(server.url))
        yield server.url


async def _check_durable(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        got = [await conn.fetchval(f"SHOW {s}") for s in ("fsync", "synchronous_commit")]
    finally:
        await conn.close()
    if got != ["on", "on"]:
        raise RuntimeError(f"durability not on: {got}")


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
