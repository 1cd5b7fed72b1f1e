"""The per-call ledger of allowance sessions: charges, reversals, stored responses.

A charge is one transaction holding two claims: the idempotency key (an `INSERT ... ON
CONFLICT DO NOTHING` on (session, key)) and the money (`UPDATE session_allowances ... WHERE
allowance - outstanding >= :price`, on the row the session's owner shares with all their
other sessions). Either both hold or neither does, so N parallel calls over any number of
sessions of an owner funded for K < N serve exactly K, and a key is charged at most once.
The session row only counts what it spent and how many calls, for display.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from sessions import ledger_units as units
from sessions.lifecycle import LIVE_STATES
from sessions.records import SESSION_VIEW, Session
from store.clock import Clock
from store.ids import random_hex
from store.pgbatch import PgBatch
from store.schema import session_allowances as allowances
from store.schema import session_charges, sessions
from store.writer import sqlite_writer


@dataclass(frozen=True)
class Charged:
    charge_id: str
    remaining: int  # available after this charge, tinybars


@dataclass(frozen=True)
class Replay:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class KeyConflict:
    """Same key, different request (`reused`) or the first call still running (`in_flight`)."""

    kind: str


@dataclass(frozen=True)
class Refused:
    """No charge: the claim did not hold. `session` is the session (with its owner's
    shared allowance) as it is now, for the caller to say why (too little left, expired,
    revoked, stale mirror...); None if there is no such session."""

    session: object


def _of_session(column, *, live: bool):
    """The session's owner or spender (uncorrelated, so the UPDATE below finds its one
    row by primary key); NULL, matching nothing, unless the session is live and unexpired
    when `live`."""
    query = select(column).where(sessions.c.id == bindparam("sid"))
    if live:
        query = query.where(sessions.c.state.in_(LIVE_STATES),
                            sessions.c.expires_at > bindparam("now"))
    return query.scalar_subquery()


_GIVE_BACK = (
    update(allowances)
    .where(allowances.c.owner == _of_session(sessions.c.owner, live=False),
           allowances.c.spender == _of_session(sessions.c.spender, live=False))
    .values(outstanding=allowances.c.outstanding - bindparam("amount")))


class Ledger:
    """The ledger on one store. Writes that answer a call (charge, keep, the stored
    response) are group-committed: on SQLite through the store's writer thread
    (store.writer), on PostgreSQL in one statement per batch (store.pgbatch, the function
    of store.pgfunctions). Either way a call's write is acknowledged only once committed,
    and concurrent calls share one commit."""

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._sqlite = engine.dialect.name == "sqlite"
        if self._sqlite:
            self._writer = sqlite_writer(engine)
        else:
            self._charge_batch = PgBatch(engine, units.pg_charges)
            self._keep_batch = PgBatch(engine, units.pg_keeps)
            self._record_batch = PgBatch(engine, units.pg_records)

    async def charge(self, session_id: str, key: str, fingerprint: str, amount: int, *,
                     fresh_after: float) -> Charged | Replay | KeyConflict | Refused:
        """Charge `amount` for the call identified by `key`, atomically.

        The session must be live (active or exhausted: what is left decides, not the
        label) and unexpired; its owner's shared allowance refreshed from the mirror
        after `fresh_after`, with `allowance - outstanding >= amount`. Returns once the
        charge is committed: on SQLite safe from a crash of the process and made durable
        against power loss by the call's record, which every reply waits for."""
        now = self._clock.now()
        charge_id = random_hex()
        if self._sqlite:
            try:
                # committed, not yet fsynced: the call's reply waits for its record, which
                # is (store.writer); a crash of the process loses nothing
                got = await self._writer.run(functools.partial(
                    units.sqlite_charge, charge_id, session_id, key, fingerprint, amount,
                    fresh_after, now), fsync=False)
            except units.NoFunds:
                return await self._refused(session_id)
            if isinstance(got, int):
                return Charged(charge_id, got)
            return _existing(got, fingerprint)
        outcome, left = await self._charge_batch.run(
            (charge_id, session_id, key, fingerprint, amount, fresh_after, now))
        if outcome == units.CHARGED:
            return Charged(charge_id, int(left))
        if outcome == units.REFUSED:
            return await self._refused(session_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(session_charges).where(
                session_charges.c.session_id == session_id,
                session_charges.c.idempotency_key == key))).first()
        return _existing(row and (row.fingerprint, row.status, row.headers, row.body),
                         fingerprint)

    async def _refused(self, session_id: str) -> Refused:
        async with self._engine.connect() as conn:
            current = (await conn.execute(
                SESSION_VIEW.where(sessions.c.id == session_id))).first()
        return Refused(Session.from_row(current) if current else None)

    async def keep(self, charge_id: str) -> None:
        if self._sqlite:
            await self._writer.run(functools.partial(units.sqlite_keep, charge_id))
        else:
            await self._keep_batch.run((charge_id,))

    async def reverse(self, charge_id: str) -> bool:
        """Undo a pending charge (the origin failed); True if it was undone now. The row
        goes with it, so the caller may retry with the same idempotency key."""
        if self._sqlite:
            return await self._writer.run(functools.partial(units.sqlite_reverse, charge_id))
        async with self._engine.begin() as conn:
            row = (await conn.execute(delete(session_charges).where(
                session_charges.c.id == charge_id, session_charges.c.state == "pending")
                .returning(session_charges.c.amount, session_charges.c.session_id))).first()
            if row is None:
                return False
            await conn.execute(_GIVE_BACK, {"sid": row.session_id, "amount": int(row.amount)})
            await conn.execute(update(sessions).where(sessions.c.id == row.session_id).values(
                spent=sessions.c.spent - row.amount, calls=sessions.c.calls - 1))
        return True

    async def reverse_abandoned(self, older_than: float) -> int:
        """Reverse pending charges created before `older_than` (their request died with
        its gateway); how many were reversed."""
        async with self._engine.connect() as conn:
            ids = (await conn.execute(select(session_charges.c.id).where(
                session_charges.c.state == "pending",
                session_charges.c.created_at < older_than).limit(100))).scalars().all()
        return sum([await self.reverse(cid) for cid in ids])

    async def record_response(self, charge_id: str, status: int,
                              headers: list[tuple[str, str]], body: bytes, *,
                              keep: bool = False) -> None:
        """Store the response served for the charge (replayed to a retry of its key);
        with `keep`, also keep the charge if it is still pending, in the same write."""
        headers_json = json.dumps(headers)
        if self._sqlite:
            await self._writer.run(functools.partial(
                units.sqlite_record, charge_id, status, headers_json, body, keep))
        else:
            await self._record_batch.run((charge_id, status, headers_json, body, keep))

    async def charges(self, session_id: str) -> list:
        async with self._engine.connect() as conn:
            return list((await conn.execute(select(session_charges).where(
                session_charges.c.session_id == session_id)
                .order_by(session_charges.c.created_at))).all())


def _existing(row, fingerprint: str) -> Replay | KeyConflict:
    """What a call whose key is taken gets: `row` is (fingerprint, status, headers, body)
    of the charge holding the key, or None if it is gone now (reversed after its origin
    failed: the key is free again, so this is "retry", not "another request")."""
    if row is None:
        return KeyConflict("in_flight")
    their_fingerprint, status, headers, body = row
    if their_fingerprint != fingerprint:
        return KeyConflict("reused")
    if status is None:
        return KeyConflict("in_flight")
    return Replay(status, [tuple(h) for h in json.loads(headers)], bytes(body))
