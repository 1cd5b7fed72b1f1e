"""The payment store's hot writes on SQLite as units of work for store.writer: the claim,
state transitions and the stored response, each run in a savepoint of a group commit on
the writer's raw connection (see chains.payments for what each one means).

Amounts are stored as store.schema.Uint256 does on SQLite (78-digit zero-padded text) and
summed here in Python, exactly. A statement that must commit with one of these changes
(an outbox row) goes into the same unit.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from store import outbox
from store.schema import UINT256_DIGITS

OPEN_STATES = ("verified", "queued", "settling", "unknown")  # chains.payments uses these

_COLUMNS = ("id", "claim_key", "payment_identifier", "request_fingerprint", "rail",
            "paygate_id", "network", "asset", "payer", "pay_to", "amount", "state",
            "settlement", "payload", "tx_hash", "error", "attempts", "lease_until",
            "created_at", "updated_at", "request_digest", "forward_until", "client_digest",
            "valid_before")
_CLAIM = (f"INSERT INTO payments ({', '.join(_COLUMNS)}) "
          f"VALUES ({', '.join('?' * len(_COLUMNS))}) ON CONFLICT DO NOTHING")
_OPEN = ("FROM payments WHERE payer = ? AND network = ? AND asset = ? "
         f"AND state IN ({', '.join('?' * len(OPEN_STATES))})")
_OPEN_BOUND = f"SELECT count(*), max(amount) {_OPEN}"
_OPEN_AMOUNTS = f"SELECT amount {_OPEN}"


class OverExposed(Exception):
    """The payer's open payments would exceed the limit: roll the claim back."""


def uint256_text(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**256:
        raise ValueError(f"not a uint256: {value!r}")
    return f"{value:0{UINT256_DIGITS}d}"


def claim(values: dict[str, Any], exposure_limit: int | None,
          conn: sqlite3.Connection) -> bool:
    """Insert the payment row; True if this unit owns it. With `exposure_limit`, raises
    OverExposed (rolling the insert back) when the payer's open payments on this network
    and asset, this one included, exceed it. The writer runs one unit at a time, so the
    sum cannot race another claim."""
    row = dict(values, amount=uint256_text(values["amount"]))
    if conn.execute(_CLAIM, [row[c] for c in _COLUMNS]).rowcount != 1:
        return False
    if exposure_limit is not None:
        key = (values["payer"], values["network"], values["asset"], *OPEN_STATES)
        # count * max bounds the sum from above (the text max is the numeric max: the
        # amounts are zero-padded): within the limit, no need to add them all up. Only
        # a payer near the limit pays for the exact sum, in Python (SQLite would add
        # the texts as floats).
        count, largest = conn.execute(_OPEN_BOUND, key).fetchone()
        if count * int(largest) > exposure_limit and \
                sum(int(a) for (a,) in conn.execute(_OPEN_AMOUNTS, key)) > exposure_limit:
            raise OverExposed
    return True


def transition(payment_id: str, olds: list[str], values: dict[str, Any],
               bump_attempts: bool, conn: sqlite3.Connection) -> bool:
    sets = [f"{name} = ?" for name in values]
    if bump_attempts:
        sets.append("attempts = attempts + 1")
    sql = (f"UPDATE payments SET {', '.join(sets)} WHERE id = ? "
           f"AND state IN ({', '.join('?' * len(olds))})")
    if conn.execute(sql, (*values.values(), payment_id, *olds)).rowcount != 1:
        return False
    outbox.payment_finished_sqlite(conn, payment_id, values["state"], values["updated_at"])
    return True


_STORE_RESPONSE = (
    "INSERT INTO payment_responses (payment_id, status, headers, body, complete, created_at, "
    "body_kept, body_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")


def store_response(row: tuple, conn: sqlite3.Connection, *, queue: bool = False) -> None:
    """The stored response; with `queue`, the payment (still `verified`) moves to `queued`
    in the same unit."""
    conn.execute(_STORE_RESPONSE, row)
    if queue:
        transition(row[0], ["verified"], {"state": "queued", "updated_at": row[5]}, False, conn)


# -- PostgreSQL batch runners (store.pgbatch) ----------------------------------------------

CLAIMED, TAKEN, OVER_EXPOSED = 0, 1, 2  # outcomes of tollgate_claim_batch
_CLAIM_FIELDS = ("id", "claim_key", "payment_identifier", "request_fingerprint", "rail",
                 "paygate_id", "network", "asset", "payer", "pay_to", "amount", "settlement",
                 "payload", "request_digest", "client_digest", "forward_until", "valid_before")
_PG_CLAIMS = (
    "SELECT idx, outcome FROM tollgate_claim_batch("
    + ", ".join(f"${i + 1}::text[]" for i in range(15))
    + ", $16::double precision[], $17::double precision[], $18::text[], $19::double precision)")


def pg_claim_item(values: dict[str, Any], exposure_limit: int | None) -> tuple:
    return (*(str(values[f]) if f == "amount" else values[f] for f in _CLAIM_FIELDS),
            None if exposure_limit is None else str(exposure_limit), values["created_at"])


async def pg_claims(conn, items) -> list[int]:
    """items: pg_claim_item tuples. One outcome per item."""
    columns = [list(c) for c in zip(*items)]
    now = max(columns[-1])  # created_at/updated_at of the batch's rows: its latest clock
    out = [TAKEN] * len(items)
    for r in await conn.fetch(_PG_CLAIMS, *columns[:-1], now):
        out[r[0] - 1] = r[1]
    return out


async def pg_store_responses(conn, items) -> list[None]:
    """items: (payment_id, status, headers, body, complete, created_at, body_kept,
    body_size); first writer wins."""
    await conn.execute(
        "INSERT INTO payment_responses (payment_id, status, headers, body, complete, "
        "created_at, body_kept, body_size) SELECT * FROM unnest($1::text[], $2::integer[], "
        "$3::text[], $4::bytea[], $5::integer[], $6::double precision[], $7::integer[], "
        "$8::bigint[]) ON CONFLICT DO NOTHING", *(list(c) for c in zip(*items)))
    return [None] * len(items)


async def pg_transitions(conn, items) -> list[bool]:
    """items: (payment_id, old, new, updated_at): plain state moves. True where this item
    moved the row (of several items on one row, one wins)."""
    ids, olds, news, nows = (list(c) for c in zip(*items))
    rows = await conn.fetch(
        "UPDATE payments AS p SET state = u.new, updated_at = u.now "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::double precision[]) "
        "WITH ORDINALITY AS u(id, old, new, now, ord) "
        "WHERE p.id = u.id AND p.state = u.old RETURNING u.ord", ids, olds, news, nows)
    won = {r[0] for r in rows}
    return [i + 1 in won for i in range(len(items))]
