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

from sqlalchemy import Connection, inspect, insert, select, text
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


def _add_missing_columns(conn: Connection, table: str, names: tuple[str, ...]) -> None:
    """ALTER TABLE ... ADD COLUMN for each of `names` (as the metadata defines it) that the
    table lacks: idempotent, so it is a no-op on a table `_create` just built."""
    have = {c["name"] for c in inspect(conn).get_columns(table)}
    for name in names:
        if name in have:
            continue
        col = schema.metadata.tables[table].c[name]
        ddl = f"ALTER TABLE {table} ADD COLUMN {name} {col.type.compile(conn.dialect)}"
        if col.server_default is not None:
            ddl += f" DEFAULT {col.server_default.arg}"
        if not col.nullable:
            ddl += " NOT NULL"
        conn.execute(text(ddl))


def _rebuild_sqlite_table(conn: Connection, table: str) -> None:
    """SQLite cannot change a column's type: rename the table, create it from the current
    metadata, copy the shared columns (converting `amount` to Uint256's padded text), drop
    the old one. Explicit indexes go first: their names are global in SQLite."""
    old = f"{table}_before_v5"
    for (index,) in conn.execute(text(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t "
            "AND sql IS NOT NULL"), {"t": table}).all():
        conn.execute(text(f'DROP INDEX "{index}"'))
    conn.execute(text(f'ALTER TABLE "{table}" RENAME TO "{old}"'))
    schema.metadata.tables[table].create(conn)
    new_cols = set(schema.metadata.tables[table].c.keys())
    shared = [c["name"] for c in inspect(conn).get_columns(old) if c["name"] in new_cols]
    exprs = [f"printf('%0{schema.UINT256_DIGITS}d', \"{c}\")" if c == "amount" else f'"{c}"'
             for c in shared]
    cols = ", ".join(f'"{c}"' for c in shared)
    conn.execute(text(f'INSERT INTO "{table}" ({cols}) SELECT {", ".join(exprs)} FROM "{old}"'))
    conn.execute(text(f'DROP TABLE "{old}"'))


def _payments_v5(conn: Connection) -> None:
    """Replay binding and limits, `before` re-forwarding, uint256 amounts."""
    amount = next(c for c in inspect(conn).get_columns("payments") if c["name"] == "amount")
    if conn.dialect.name == "sqlite":
        if not isinstance(amount["type"], schema.String):  # BigInteger before version 5
            _rebuild_sqlite_table(conn, "payments")
    elif not isinstance(amount["type"], schema.NUMERIC):
        conn.execute(text(f"ALTER TABLE payments ALTER COLUMN amount TYPE "
                          f"NUMERIC({schema.UINT256_DIGITS}, 0) USING amount::numeric"))
    _add_missing_columns(conn, "payments", ("request_digest", "forward_until", "client_digest"))
    _add_missing_columns(conn, "payment_responses", ("body_kept", "body_size"))


def _hot_path(conn: Connection) -> None:
    """Version 9: what the hot path needs from the schema, idempotent: an index for the
    deferred-exposure sum of a claim (a payer's open payments), and on PostgreSQL the
    stored functions of store.pgfunctions (`CREATE OR REPLACE`)."""
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_payments_exposure "
                         "ON payments (payer, network, asset, state, amount)")
    if conn.dialect.name == "postgresql":
        from store.pgfunctions import FUNCTIONS  # the SQL is long: it lives with its docs
        for ddl in FUNCTIONS:
            conn.exec_driver_sql(ddl)


def _pending_token_charges(conn: Connection) -> None:
    """Version 14: the partial index of pending token charges (idempotent; a database
    created at this version already has it from the table's definition)."""
    table = schema.metadata.tables["token_charges"]
    for index in table.indexes:
        if index.name == "ix_token_charges_pending":
            index.create(conn, checkfirst=True)


def _work_index(conn: Connection) -> None:
    """Version 15: the settlement worker's lease finds the payments in open states through
    an index rather than a scan of every payment ever made (on SQLite it runs on the
    group-commit writer, so a scan would hold up every claim behind it)."""
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_payments_work "
                         "ON payments (state, valid_before)")


MIGRATIONS: list[Migration] = [
    Migration(1, "origin secrets", _create("origin_secrets")),
    Migration(2, "x402 payments and stored responses", _create("payments", "payment_responses")),
    Migration(3, "Hedera allowance sessions", _create(
        "session_nonces", "sessions", "session_charges", "session_pulls")),
    Migration(4, "one allowance per session owner", _shared_allowances),
    Migration(5, "x402 replay binding, replay limits, uint256 amounts", _payments_v5),
    Migration(6, "payments: persisted signed tx, lease owner, authorization expiry",
              lambda conn: _add_missing_columns(conn, "payments",
                                                ("raw_tx", "lease_owner", "valid_before"))),
    Migration(7, "admin API keys, runtime paygates, webhooks", _create(
        "api_keys", "admin_signatures", "runtime_paygates", "paygate_state",
        "webhook_endpoints", "webhook_events", "webhook_deliveries")),
    Migration(9, "hot path: payer exposure index; PostgreSQL batched session charges",
              _hot_path),
    Migration(10, "batch settlement transactions", _create("settlement_txs")),
    Migration(12, "plans: prepaid tokens, their charges, free-plan claims",
              _create("prepaid_tokens", "token_charges", "free_claims")),
    Migration(13, "paid files", _create("paid_files")),
    Migration(14, "prepaid tokens: an index of pending charges, for the abandoned sweep",
              _pending_token_charges),
    Migration(15, "payments: index for the settlement worker's lease", _work_index),
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
