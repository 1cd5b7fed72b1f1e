"""The settlement worker's writes as group-committed units: on SQLite, units of work of the
store's writer thread (store.writer) on its raw connection; on PostgreSQL, batch runners
of store.pgbatch (one statement per batch). See chains.payments for what each one means.

Why: every SQLAlchemy write transaction on SQLite holds the database file's write lock
while its statements hop through aiosqlite, and the writer thread (which commits the
request path's claims, state moves and stored responses) waits on that lock. Run on the
writer instead, a lease, a start-settling, a transaction hash or an outcome joins the
batch that is committing anyway, and no other connection of the process writes.

Each SQLite unit is a plain function whose last argument is the writer's connection; it
runs inside its own savepoint and must not await. A unit's result is handed back only
after the batch holding it committed (nothing is acknowledged before it is durable).
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from typing import Any, Iterable, Sequence

from chains.payment_units import OPEN_STATES, transition
from store.schema import payments

_COLUMNS = tuple(c.name for c in payments.c)
# A row of `payments` as chains.payments.PaymentRow.from_row reads it (by attribute).
SqliteRow = namedtuple("SqliteRow", _COLUMNS)  # type: ignore[misc]
_RETURNING = ", ".join(_COLUMNS)
_CHUNK = 500  # ids per statement: far inside SQLite's bound-parameter limit
_FREE = "(lease_until IS NULL OR lease_until < ?)"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


def lease(states: Sequence[str], now: float, older_than: float, lease_seconds: float,
          limit: int, owner: str | None,
          conn: sqlite3.Connection) -> tuple[list[SqliteRow], dict[str, str]]:
    """Take up to `limit` free rows in `states`, soonest-expiring authorization first;
    the rows (after the lease) and the persisted bytes of the batch transactions they
    name (tx_hash -> raw hex)."""
    ids = [r[0] for r in conn.execute(
        f"SELECT id FROM payments WHERE state IN ({_marks(len(states))}) "
        f"AND updated_at <= ? AND {_FREE} "
        "ORDER BY valid_before IS NULL, valid_before, updated_at LIMIT ?",
        (*states, now - older_than, now, limit))]
    rows: list[SqliteRow] = []
    for part in _chunks(ids):
        rows += map(SqliteRow._make, conn.execute(
            f"UPDATE payments SET lease_until = ?, lease_owner = ? "
            f"WHERE id IN ({_marks(len(part))}) AND {_FREE} RETURNING {_RETURNING}",
            (now + lease_seconds, owner, *part, now)).fetchall())
    want = sorted({r.tx_hash for r in rows if r.tx_hash and r.raw_tx is None})
    found: dict[str, str] = {}
    for part in _chunks(want):
        found.update(conn.execute(
            f"SELECT tx_hash, raw_tx FROM settlement_txs WHERE tx_hash IN ({_marks(len(part))})",
            part).fetchall())
    return rows, found


def renew(ids: Sequence[str], owner: str, until: float, conn: sqlite3.Connection) -> int:
    held = 0
    for part in _chunks(ids):
        held += conn.execute(
            f"UPDATE payments SET lease_until = ? WHERE id IN ({_marks(len(part))}) "
            f"AND lease_owner = ? AND state IN ({_marks(len(OPEN_STATES))})",
            (until, *part, owner, *OPEN_STATES)).rowcount
    return held


def release(payment_id: str, until: float | None, conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE payments SET lease_until = ?, lease_owner = NULL WHERE id = ?",
                 (until, payment_id))


def start_settling(ids: Sequence[str], old: str, owner: str, now: float, until: float,
                   conn: sqlite3.Connection) -> set[str]:
    moved: set[str] = set()
    for part in _chunks(ids):
        moved.update(r[0] for r in conn.execute(
            "UPDATE payments SET state = 'settling', updated_at = ?, attempts = attempts + 1, "
            f"lease_owner = ?, lease_until = ? WHERE id IN ({_marks(len(part))}) "
            "AND state = ? RETURNING id", (now, owner, until, *part, old)).fetchall())
    return moved


def set_tx_hash(payment_id: str, tx_hash: str, raw_hex: str | None, now: float,
                conn: sqlite3.Connection) -> None:
    if raw_hex is None:
        conn.execute("UPDATE payments SET tx_hash = ?, updated_at = ? WHERE id = ?",
                     (tx_hash, now, payment_id))
    else:
        conn.execute("UPDATE payments SET tx_hash = ?, raw_tx = ?, updated_at = ? WHERE id = ?",
                     (tx_hash, raw_hex, now, payment_id))


def persist_batch(ids: Sequence[str], tx_hash: str, raw_hex: str, now: float,
                  conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO settlement_txs (tx_hash, raw_tx, created_at) VALUES (?, ?, ?) "
                 "ON CONFLICT DO NOTHING", (tx_hash, raw_hex, now))
    for part in _chunks(ids):
        conn.execute(f"UPDATE payments SET tx_hash = ?, raw_tx = NULL, updated_at = ? "
                     f"WHERE id IN ({_marks(len(part))})", (tx_hash, now, *part))


def outcomes(moves: Sequence[tuple[str, list[str], dict[str, Any]]],
             conn: sqlite3.Connection) -> list[bool]:
    """Several (payment_id, olds, values) moves in one unit (all or none)."""
    return [transition(pid, olds, values, False, conn) for pid, olds, values in moves]


def take_forward(payment_id: str, now: float, until: float, conn: sqlite3.Connection) -> bool:
    return conn.execute(
        "UPDATE payments SET forward_until = ? WHERE id = ? AND forward_until IS NOT NULL "
        "AND forward_until <= ?", (until, payment_id, now)).rowcount == 1


def set_forward(payment_id: str, until: float | None, conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE payments SET forward_until = ? WHERE id = ?", (until, payment_id))


def purge_responses(created_before: float, conn: sqlite3.Connection) -> int:
    return conn.execute("DELETE FROM payment_responses WHERE created_at < ?",
                        (created_before,)).rowcount


# -- PostgreSQL batch runners (store.pgbatch) ----------------------------------------------

# One settlement outcome per item: (payment_id, olds joined by ",", new, tx_hash, error,
# retry_until, now). The payment.settled / payment.failed webhook event of every row that
# moved to a final state is inserted by the same statement (one transaction), as
# store.outbox.payment_finished does inside SQLAlchemy transactions.
_PG_OUTCOMES = """
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::double precision[], $7::double precision[])
        WITH ORDINALITY AS t(id, olds, new, tx_hash, error, retry_until, now, ord)
), moved AS (
    UPDATE payments AS p SET
        state = u.new, updated_at = u.now,
        tx_hash = coalesce(u.tx_hash, p.tx_hash),
        error = coalesce(u.error, p.error),
        lease_owner = CASE WHEN u.new IN ('settled', 'failed', 'void')
                             OR u.retry_until IS NOT NULL THEN NULL ELSE p.lease_owner END,
        lease_until = CASE WHEN u.new IN ('settled', 'failed', 'void') THEN NULL
                           WHEN u.retry_until IS NOT NULL THEN u.retry_until
                           ELSE p.lease_until END
    FROM u
    WHERE p.id = u.id AND p.state = ANY(string_to_array(u.olds, ','))
    RETURNING u.ord, u.now, p.id, p.state, p.paygate_id, p.rail, p.network, p.asset,
              p.payer, p.pay_to, p.amount, p.tx_hash, p.error
), events AS (
    INSERT INTO webhook_events (id, type, paygate_id, provider, data, created_at, fanned_out)
    SELECT 'evt_' || substr(md5(m.id || random()::text || clock_timestamp()::text), 1, 24),
           'payment.' || m.state, m.paygate_id, NULL,
           json_build_object('amount', m.amount::text, 'asset', m.asset, 'error', m.error,
                             'network', m.network, 'pay_to', m.pay_to, 'payer', m.payer,
                             'payment', m.id, 'rail', m.rail, 'tx_hash', m.tx_hash)::text,
           m.now, 0
    FROM moved AS m WHERE m.state IN ('settled', 'failed')
)
SELECT ord FROM moved
"""


async def pg_outcomes(conn, items) -> list[bool]:
    """items: (payment_id, olds, new, tx_hash, error, retry_until, now). True where this
    item moved the row."""
    columns = [list(c) for c in zip(*items)]
    won = {r[0] for r in await conn.fetch(_PG_OUTCOMES, *columns)}
    return [i + 1 in won for i in range(len(items))]


async def pg_tx_hashes(conn, items) -> list[None]:
    """items: (payment_id, tx_hash, raw_hex or None, now); raw_tx is left as it is when
    no bytes are given."""
    ids, hashes, raws, nows = (list(c) for c in zip(*items))
    await conn.execute(
        "UPDATE payments AS p SET tx_hash = u.tx_hash, raw_tx = coalesce(u.raw, p.raw_tx), "
        "updated_at = u.now FROM unnest($1::text[], $2::text[], $3::text[], "
        "$4::double precision[]) AS u(id, tx_hash, raw, now) WHERE p.id = u.id",
        ids, hashes, raws, nows)
    return [None] * len(items)
