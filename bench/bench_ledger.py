"""Durable ledger throughput: charges (and whole paid calls) per second through
sessions.ledger.Ledger, with both stores durable.

Usage: python bench/bench_ledger.py [--charges N] [--concurrency 1,32,128] [--sessions M]
                                    [--backend sqlite|postgres|both]

Same workload and checks as bench/bench_sessions.py (which it reuses), but:

* SQLite: the file in a temporary directory. A charge alone commits without an fsync
  (store.writer: it is synced by the call's record, which commits with synchronous=FULL),
  so on SQLite the "call" figures are the durable ones.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_sessions import bench_backend  # noqa: E402


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
