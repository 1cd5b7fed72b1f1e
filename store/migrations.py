"""Ordered schema migrations, recorded in `schema_migrations`.

A migration is a version number, a description and a function run on a synchronous
connection inside one transaction. Versions only ever get added to the end of
`MIGRATIONS`; a released migration is never edited. On PostgreSQL an advisory lock makes
concurrent `migrate` calls from several instances safe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Connection, insert, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from store import schema

_ADVISORY_LOCK_ID = 0x70_11_6A_7E  # arbitrary, constant across instances


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    upgrade: Callable[[Connection], None]


def _create(*names: str) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        for name in names:
            schema.metadata.tables[name].create(conn, checkfirst=True)
    return run


def _shared_allowances(conn: Connection) -> None:
    """Version 4: one allowance row per (owner, spender), shared by the owner's sessions.

    An existing database's sessions each had their own view; the row takes the most recent
    view's allowance and the sum of every session's outstanding (what the owner was charged
    and the mirror does not show yet), which can only under-state what is left. `mirror_at`
    starts at 0, so no call is charged on the carried-over view before a fresh mirror read.
    """
    table = schema.session_allowances
    table.create(conn, checkfirst=True)
    have = {(r.owner, r.spender) for r in conn.execute(select(table.c.owner, table.c.spender))}
    s = schema.sessions
    rows = conn.execute(select(s.c.owner, s.c.spender, s.c.allowance, s.c.outstanding,
                               s.c.mirror_at).order_by(s.c.mirror_at)).all()
    merged: dict[tuple[str, str], dict] = {}
    for r in rows:  # oldest view first: the latest allowance wins, outstanding adds up
        key = (r.owner, r.spender)
        if key in have:
            continue
        row = merged.setdefault(key, {"owner": r.owner, "spender": r.spender, "allowance": 0,
                                      "outstanding": 0, "mirror_at": 0.0, "refusals": 0})
        row["allowance"] = int(r.allowance)
        row["outstanding"] += int(r.outstanding)
    if merged:
        conn.execute(insert(table), list(merged.values()))


def _add_columns(table: str, *names: str) -> Callable[[Connection], None]:
    """Add columns of the current metadata that an older database lacks (idempotent)."""
    def run(conn: Connection) -> None:
        have = {c["name"] for c in inspect(conn).get_columns(table)}
        for name in names:
            if name not in have:
                column = schema.metadata.tables[table].c[name]
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))
    return run


MIGRATIONS: list[Migration] = [
    Migration(1, "origin secrets", _create("origin_secrets")),
    Migration(2, "x402 payments and stored responses", _create("payments", "payment_responses")),
    Migration(3, "Hedera allowance sessions", _create(
        "session_nonces", "sessions", "session_charges", "session_pulls")),
    Migration(4, "one allowance per session owner", _shared_allowances),


    Migration(6, "payments: persisted signed tx, lease owner, authorization expiry",
              _add_columns("payments", "raw_tx", "lease_owner", "valid_before")),
]


class SchemaBehind(Exception):
    pass


def _applied(conn: Connection) -> set[int]:
    schema.schema_migrations.create(conn, checkfirst=True)
    return set(conn.execute(select(schema.schema_migrations.c.version)).scalars())


def _upgrade(conn: Connection) -> list[int]:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
    done = _applied(conn)
    ran = []
    for m in MIGRATIONS:
        if m.version in done:
            continue
        m.upgrade(conn)
        conn.execute(insert(schema.schema_migrations).values(
            version=m.version, description=m.description, applied_at=time.time()))
        ran.append(m.version)
    return ran


async def migrate(engine: AsyncEngine) -> list[int]:
    """Apply every pending migration; returns the versions applied."""
    async with engine.begin() as conn:
        return await conn.run_sync(_upgrade)


async def pending(engine: AsyncEngine) -> list[int]:
    async with engine.begin() as conn:
        done = await conn.run_sync(_applied)
    return [m.version for m in MIGRATIONS if m.version not in done]


async def ensure_current(engine: AsyncEngine) -> None:
    missing = await pending(engine)
    if missing:
        raise SchemaBehind(
            f"database schema is behind (pending migrations {missing}): run `tollgate migrate`")
