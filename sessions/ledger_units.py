"""The ledger's hot writes as raw statements: SQLite units of work (run by store.writer on
its connection, each in a savepoint of a group commit) and PostgreSQL batch runners (run
by store.pgbatch on an asyncpg connection, one statement per batch).

The statements are the ones `sessions.ledger` documents: a charge claims the key (INSERT,
conflict = key taken), then the money on the owner's shared allowance row (conditional
UPDATE), then counts the call on the session (conditional UPDATE); a unit that raises is
rolled back whole, key claim included. A statement that must commit with one of these
changes (an outbox row) goes into the same unit, or into the batch's statement.
"""

from __future__ import annotations

import sqlite3

from store import outbox

CHARGED, KEY_TAKEN, REFUSED = 0, 1, 2  # outcomes of tollgate_charge_batch


class NoFunds(Exception):
    """The charge's claim on the money (or the session) did not hold: roll it back."""


# -- SQLite units --------------------------------------------------------------------------

_CLAIM_KEY = (
    "INSERT INTO session_charges (id, session_id, idempotency_key, fingerprint, amount, "
    "state, pull_id, created_at) VALUES (?, ?, ?, ?, ?, 'pending', NULL, ?) "
    "ON CONFLICT DO NOTHING")
_EXISTING = (
    "SELECT fingerprint, status, headers, body FROM session_charges "
    "WHERE session_id = ? AND idempotency_key = ?")
_TAKE_MONEY = (
    "UPDATE session_allowances SET outstanding = outstanding + ?1 "
    "WHERE (owner, spender) = (SELECT owner, spender FROM sessions WHERE id = ?2 "
    "AND state IN ('active', 'exhausted') AND expires_at > ?3) "
    "AND mirror_at > ?4 AND allowance - outstanding >= ?1 "
    "RETURNING allowance - outstanding")
_COUNT_CALL = (
    "UPDATE sessions SET spent = spent + ?, calls = calls + 1, state = 'active' "
    "WHERE id = ? AND state IN ('active', 'exhausted')")


def sqlite_charge(charge_id: str, session_id: str, key: str, fingerprint: str, amount: int,
                  fresh_after: float, now: float, conn: sqlite3.Connection):
    """What is left after the charge (an int), or the (fingerprint, status, headers,
    body) of the charge that holds the key (None if none does); raises NoFunds."""
    if conn.execute(_CLAIM_KEY, (charge_id, session_id, key, fingerprint, amount,
                                 now)).rowcount != 1:
        return conn.execute(_EXISTING, (session_id, key)).fetchone()
    row = conn.execute(_TAKE_MONEY, (amount, session_id, now, fresh_after)).fetchone()
    if row is None:
        raise NoFunds
    if conn.execute(_COUNT_CALL, (amount, session_id)).rowcount != 1:
        raise NoFunds  # ended since: the savepoint rolls the key claim back too
    outbox.allowance_charged_sqlite(conn, session_id, int(row[0]), amount, now)
    return int(row[0])


def sqlite_keep(charge_id: str, conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE session_charges SET state = 'kept' WHERE id = ? AND state = 'pending'",
                 (charge_id,))


def sqlite_reverse(charge_id: str, conn: sqlite3.Connection) -> bool:
    row = conn.execute("DELETE FROM session_charges WHERE id = ? AND state = 'pending' "
                       "RETURNING amount, session_id", (charge_id,)).fetchone()
    if row is None:
        return False
    amount, session_id = int(row[0]), row[1]
    conn.execute("UPDATE session_allowances SET outstanding = outstanding - ? "
                 "WHERE (owner, spender) = (SELECT owner, spender FROM sessions WHERE id = ?)",
                 (amount, session_id))
    conn.execute("UPDATE sessions SET spent = spent - ?, calls = calls - 1 WHERE id = ?",
                 (amount, session_id))
    return True


def sqlite_record(charge_id: str, status: int, headers_json: str, body: bytes, keep: bool,
                  conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE session_charges SET status = ?, headers = ?, body = ?, "
                 "state = CASE WHEN ? AND state = 'pending' THEN 'kept' ELSE state END "
                 "WHERE id = ?", (status, headers_json, body, keep, charge_id))


# -- PostgreSQL batch runners ------------------------------------------------------------

_PG_CHARGES = (
    "SELECT idx, outcome, remaining FROM tollgate_charge_batch("
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], "
    "$6::double precision[], $7::double precision[], $8::bigint[])")


async def pg_charges(conn, items) -> list[tuple[int, int | None]]:
    """items: (charge_id, session_id, key, fingerprint, amount, fresh_after, now)."""
    ids, sids, keys, fps, amounts, fresh, nows = (list(c) for c in zip(*items))
    out: list = [None] * len(items)
    # The `allowance.low` thresholds go with the batch: the function writes the event in
    # the charge's own sub-transaction.
    for r in await conn.fetch(_PG_CHARGES, ids, sids, keys, fps, amounts, fresh, nows,
                              outbox.low_thresholds()):
        out[r[0] - 1] = (r[1], r[2])
    return out


async def pg_keeps(conn, items) -> list[None]:
    await conn.execute("UPDATE session_charges SET state = 'kept' "
                       "WHERE id = ANY($1::text[]) AND state = 'pending'",
                       [i[0] for i in items])
    return [None] * len(items)


async def pg_records(conn, items) -> list[None]:
    ids, statuses, headers, bodies, keeps = (list(c) for c in zip(*items))
    await conn.execute(
        "UPDATE session_charges AS c SET status = u.status, headers = u.headers, body = u.body, "
        "state = CASE WHEN u.keep AND c.state = 'pending' THEN 'kept' ELSE c.state END "
        "FROM unnest($1::text[], $2::integer[], $3::text[], $4::bytea[], $5::boolean[]) "
        "AS u(id, status, headers, body, keep) WHERE c.id = u.id",
        ids, statuses, headers, bodies, keeps)
    return [None] * len(items)
