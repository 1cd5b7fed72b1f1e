"""The webhook outbox: events written in the transaction of the change that caused them.

    await emit(conn, "session.revoked", paygate_id="skyroute", data={...})

`conn` is the caller's open transaction: the event exists if and only if the change
commits. The delivery worker (gateway.webhooks) fans events out to the endpoints that
want them and delivers them later; writing an event costs one INSERT and nothing else,
so the paths that emit (charges, settlements) stay cheap.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from store.schema import webhook_events

EVENT_TYPES = (
    "session.activated", "session.revoked", "session.expired",
    "allowance.low", "allowance.exhausted",
    "payment.settled", "payment.failed",
    "secret.rotated", "paygate.changed",
    "quota.warning", "quota.exceeded",
)


async def emit(conn: AsyncConnection, event_type: str, *, paygate_id: str | None = None,
               provider: str | None = None, data: dict[str, Any],
               now: float | None = None) -> str:
    """Add one event to the outbox inside `conn`'s transaction; returns its id.
    `provider` may be left out: the worker finds it from the paygate."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    event_id = "evt_" + secrets.token_hex(12)
    await conn.execute(insert(webhook_events).values(
        id=event_id, type=event_type, paygate_id=paygate_id, provider=provider,
        data=json.dumps(data, sort_keys=True, default=str),
        created_at=time.time() if now is None else now, fanned_out=0))
    return event_id


# Thresholds (atomic units) below which some endpoint wants `allowance.low`; refreshed by
# each instance's delivery worker, so a charge checks a tuple instead of a table.
_low_thresholds: tuple[int, ...] = ()


def set_low_thresholds(values) -> None:
    global _low_thresholds
    _low_thresholds = tuple(sorted({int(v) for v in values if v is not None}))


async def allowance_charged(conn: AsyncConnection, session_id: str, left: int,
                            amount: int) -> None:
    """After a session charge (inside its transaction): `allowance.low` when what is left
    fell below a threshold some endpoint set. Costs nothing unless a threshold is crossed."""
    before = left + amount
    if not any(left < t <= before for t in _low_thresholds):
        return
    from sqlalchemy import select

    from store.schema import sessions
    row = (await conn.execute(select(sessions.c.paygate_id, sessions.c.owner)
                              .where(sessions.c.id == session_id))).first()
    if row is not None:
        await emit(conn, "allowance.low", paygate_id=row.paygate_id, data={
            "session": session_id, "owner": row.owner, "remaining": left, "previous": before})


async def session_moved(conn: AsyncConnection, session_id: str, new_state: str) -> None:
    """After a session's state changed (inside that transaction): its event, if any."""
    event = {"active": None, "revoked": "session.revoked", "expired": "session.expired",
             "exhausted": "allowance.exhausted"}.get(new_state)
    if event is None:
        return
    from sqlalchemy import select

    from store.schema import sessions
    row = (await conn.execute(select(sessions.c.paygate_id, sessions.c.owner, sessions.c.spent,
                                     sessions.c.calls).where(sessions.c.id == session_id))
           ).first()
    if row is not None:
        await emit(conn, event, paygate_id=row.paygate_id, data={
            "session": session_id, "owner": row.owner, "state": new_state,
            "spent": int(row.spent), "calls": int(row.calls)})


async def payment_finished(conn: AsyncConnection, payment_id: str, new_state: str) -> None:
    """After an x402 payment reached `settled` or `failed` (inside that transaction)."""
    if new_state not in ("settled", "failed"):
        return
    from sqlalchemy import select

    from store.schema import payments
    row = (await conn.execute(select(
        payments.c.paygate_id, payments.c.rail, payments.c.network, payments.c.asset,
        payments.c.payer, payments.c.pay_to, payments.c.amount, payments.c.tx_hash,
        payments.c.error).where(payments.c.id == payment_id))).first()
    if row is not None:
        await emit(conn, f"payment.{new_state}", paygate_id=row.paygate_id, data={
            "payment": payment_id, "rail": row.rail, "network": row.network,
            "asset": row.asset, "payer": row.payer, "pay_to": row.pay_to,
            "amount": str(int(row.amount)), "tx_hash": row.tx_hash, "error": row.error})


# -- the same events from the raw SQLite units of the hot path (store.writer) -------------
# Those units run on the writer thread's own sqlite3 connection, inside the savepoint of
# the change; these write the event in that same savepoint.

_INSERT_SQLITE = ("INSERT INTO webhook_events (id, type, paygate_id, provider, data, created_at, "
                  "fanned_out) VALUES (?, ?, ?, NULL, ?, ?, 0)")


def emit_sqlite(conn, event_type: str, *, paygate_id: str | None, data: dict[str, Any],
                now: float) -> str:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    event_id = "evt_" + secrets.token_hex(12)
    conn.execute(_INSERT_SQLITE, (event_id, event_type, paygate_id,
                                  json.dumps(data, sort_keys=True, default=str), now))
    return event_id


def low_thresholds() -> list[int]:
    """The `allowance.low` thresholds some endpoint set (what the PostgreSQL charge
    function is given, to emit the event inside its own transaction)."""
    return list(_low_thresholds)


def allowance_charged_sqlite(conn, session_id: str, left: int, amount: int, now: float) -> None:
    """`allowance_charged` for a raw SQLite unit."""
    before = left + amount
    if not any(left < t <= before for t in _low_thresholds):
        return
    row = conn.execute("SELECT paygate_id, owner FROM sessions WHERE id = ?",
                       (session_id,)).fetchone()
    if row is not None:
        emit_sqlite(conn, "allowance.low", paygate_id=row[0], now=now, data={
            "session": session_id, "owner": row[1], "remaining": left, "previous": before})


def payment_finished_sqlite(conn, payment_id: str, new_state: str, now: float) -> None:
    """`payment_finished` for a raw SQLite unit."""
    if new_state not in ("settled", "failed"):
        return
    row = conn.execute(
        "SELECT paygate_id, rail, network, asset, payer, pay_to, amount, tx_hash, error "
        "FROM payments WHERE id = ?", (payment_id,)).fetchone()
    if row is not None:
        emit_sqlite(conn, f"payment.{new_state}", paygate_id=row[0], now=now, data={
            "payment": payment_id, "rail": row[1], "network": row[2], "asset": row[3],
            "payer": row[4], "pay_to": row[5], "amount": str(int(row[6])),
            "tx_hash": row[7], "error": row[8]})
