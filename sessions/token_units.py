"""The prepaid-token ledger's hot writes as raw statements: SQLite units of work (run by
store.writer inside a savepoint of a group commit) and a PostgreSQL batch runner (run by
store.pgbatch: one transaction per batch, one savepoint per item).

A charge claims the key (INSERT ... ON CONFLICT DO NOTHING: conflict = key taken), then
the units (`UPDATE prepaid_tokens SET remaining = remaining - n WHERE id = ? AND state =
'active' AND remaining >= n`); if the second claim does not hold the item is rolled back
whole, key claim included. The `quota.*` event of a charge is written in the same unit.
"""

from __future__ import annotations

import json
import secrets
import sqlite3

from store import outbox

CHARGED, KEY_TAKEN, REFUSED = 0, 1, 2


class NoUnits(Exception):
    """The claim on the units did not hold: roll the item back."""


_CLAIM_KEY = (
    "INSERT INTO token_charges (id, token_id, idempotency_key, fingerprint, units, state, "
    "created_at) VALUES ({p}, {p}, {p}, {p}, {p}, 'pending', {p}) ON CONFLICT DO NOTHING")
_EXISTING = ("SELECT fingerprint, status, headers, body FROM token_charges "
             "WHERE token_id = {p} AND idempotency_key = {p}")
_TAKE_UNITS = (
    "UPDATE prepaid_tokens SET remaining = remaining - {p} WHERE id = {p} "
    "AND state = 'active' AND remaining >= {p} "
    "RETURNING remaining, warn_below, paygate_id, plan_id")


def _sql(template: str, pg: bool) -> str:
    """The statement with SQLite's `?` or PostgreSQL's numbered `$n` placeholders."""
    if not pg:
        return template.format(p="?")
    parts = template.split("{p}")
    return "".join(f"{part}${n}" for n, part in enumerate(parts[:-1], 1)) + parts[-1]


def events_for(left: int, units: int, warn_below: int) -> list[str]:
    """The quota events a charge of `units` leaving `left` crosses: `quota.warning` once
    when the quota falls below its threshold, `quota.exceeded` when it reaches zero."""
    before = left + units
    out = []
    if left < warn_below <= before and left > 0:
        out.append("quota.warning")
    if left == 0 and before > 0:
        out.append("quota.exceeded")
    return out


def _event_data(token_id: str, plan_id: str, left: int, units: int) -> dict:
    return {"token": token_id, "plan": plan_id, "remaining": left, "previous": left + units}


# -- SQLite units --------------------------------------------------------------------------

def sqlite_charge(charge_id: str, token_id: str, key: str, fingerprint: str, units: int,
                  now: float, conn: sqlite3.Connection):
    """What is left after the charge (an int), or the (fingerprint, status, headers,
    body) of the charge holding the key (None if none does); raises NoUnits."""
    if conn.execute(_sql(_CLAIM_KEY, False), (charge_id, token_id, key, fingerprint, units,
                                              now)).rowcount != 1:
        return conn.execute(_sql(_EXISTING, False), (token_id, key)).fetchone()
    row = conn.execute(_sql(_TAKE_UNITS, False), (units, token_id, units)).fetchone()
    if row is None:
        raise NoUnits
    left, warn_below, paygate_id, plan_id = int(row[0]), int(row[1]), row[2], row[3]
    for event in events_for(left, units, warn_below):
        outbox.emit_sqlite(conn, event, paygate_id=paygate_id, now=now,
                           data=_event_data(token_id, plan_id, left, units))
    return left


def sqlite_keep(charge_id: str, conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE token_charges SET state = 'kept' WHERE id = ? AND state = 'pending'",
                 (charge_id,))


def sqlite_reverse(charge_id: str, conn: sqlite3.Connection) -> bool:
    row = conn.execute("DELETE FROM token_charges WHERE id = ? AND state = 'pending' "
                       "RETURNING units, token_id", (charge_id,)).fetchone()
    if row is None:
        return False
    conn.execute("UPDATE prepaid_tokens SET remaining = remaining + ? WHERE id = ?",
                 (int(row[0]), row[1]))
    return True


def sqlite_record(charge_id: str, status: int, headers_json: str, body: bytes, keep: bool,
                  conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE token_charges SET status = ?, headers = ?, body = ?, "
                 "state = CASE WHEN ? AND state = 'pending' THEN 'kept' ELSE state END "
                 "WHERE id = ?", (status, headers_json, body, keep, charge_id))


# -- PostgreSQL batch runners ------------------------------------------------------------

_EVENT_PG = ("INSERT INTO webhook_events (id, type, paygate_id, provider, data, created_at, "
             "fanned_out) VALUES ($1, $2, $3, NULL, $4, $5, 0)")


async def pg_charges(conn, items) -> list[tuple[int, int | None]]:
    """items: (charge_id, token_id, key, fingerprint, units, now). One transaction for the
    batch, a savepoint per item: an item whose units claim fails is undone alone."""
    out: list[tuple[int, int | None]] = []
    claim, take = _sql(_CLAIM_KEY, True), _sql(_TAKE_UNITS, True)
    async with conn.transaction():
        for charge_id, token_id, key, fingerprint, units, now in items:
            tx = conn.transaction()
            await tx.start()
            status = await conn.execute(claim, charge_id, token_id, key, fingerprint, units, now)
            if status.endswith(" 0"):
                await tx.rollback()
                out.append((KEY_TAKEN, None))
                continue
            row = await conn.fetchrow(take, units, token_id, units)
            if row is None:
                await tx.rollback()
                out.append((REFUSED, None))
                continue
            left = int(row[0])
            for event in events_for(left, units, int(row[1])):
                await conn.execute(_EVENT_PG, "evt_" + secrets.token_hex(12), event, row[2],
                                   json.dumps(_event_data(token_id, row[3], left, units),
                                              sort_keys=True), now)
            await tx.commit()
            out.append((CHARGED, left))
    return out


async def pg_keeps(conn, items) -> list[None]:
    await conn.execute("UPDATE token_charges SET state = 'kept' "
                       "WHERE id = ANY($1::text[]) AND state = 'pending'", [i[0] for i in items])
    return [None] * len(items)


async def pg_records(conn, items) -> list[None]:
    ids, statuses, headers, bodies, keeps = (list(c) for c in zip(*items))
    await conn.execute(
        "UPDATE token_charges AS c SET status = u.status, headers = u.headers, body = u.body, "
        "state = CASE WHEN u.keep AND c.state = 'pending' THEN 'kept' ELSE c.state END "
        "FROM unnest($1::text[], $2::integer[], $3::text[], $4::bytea[], $5::boolean[]) "
        "AS u(id, status, headers, body, keep) WHERE c.id = u.id",
        ids, statuses, headers, bodies, keeps)
    return [None] * len(items)
