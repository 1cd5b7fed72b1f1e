"""What one store round trip costs: a one-row INSERT transaction and a `SELECT 1` through
SQLAlchemy + aiosqlite (the gateway's SQLite path) against the same INSERT with the
standard library's sqlite3 called inline. Shows where a paid request's time goes.

Usage: python bench/bench_store.py [--n 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402

from store.db import create_engine  # noqa: E402


async def through_sqlalchemy(path: Path, n: int) -> tuple[float, float]:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"))
        start = time.perf_counter()
        for i in range(n):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": i})
        insert = (time.perf_counter() - start) / n
        start = time.perf_counter()
        for _ in range(n):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        select = (time.perf_counter() - start) / n
        return insert, select
    finally:
        await engine.dispose()


def inline(path: Path, n: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    start = time.perf_counter()
    for i in range(n):
        db.execute("BEGIN")
        db.execute("INSERT INTO t (v) VALUES (?)", (i,))
        db.execute("COMMIT")
    db.close()
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        insert, select = asyncio.run(through_sqlalchemy(path, args.n))
        bare = inline(path, args.n)
    print(f"SQLAlchemy + aiosqlite: INSERT transaction {insert * 1e6:7.0f} us, "
          f"connect + SELECT 1 {select * 1e6:7.0f} us")
    print(f"sqlite3 inline:         INSERT transaction {bare * 1e6:7.0f} us")
    print(f"ratio: {insert / bare:.0f}x")


if __name__ == "__main__":
    main()
