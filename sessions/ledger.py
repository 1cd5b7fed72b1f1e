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
import secrets
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from sessions.lifecycle import LIVE_STATES
from sessions.records import SESSION_VIEW, Session
from store import outbox
from store.clock import Clock
from store.schema import session_allowances as allowances
from store.schema import session_charges, sessions


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


class _NoFunds(Exception):
    pass



def _of_session(column, *, live: bool):
    """The session's owner or spender (uncorrelated, so the UPDATE below finds its one
    row by primary key); NULL, matching nothing, unless the session is live and unexpired
    when `live`."""
    query = select(column).where(sessions.c.id == bindparam("sid"))
    if live:
        query = query.where(sessions.c.state.in_(LIVE_STATES),
                            sessions.c.expires_at > bindparam("now"))
    return query.scalar_subquery()


# The money half of a charge, built once (building a statement costs more CPU than
# running it): take `amount` from the owner's shared allowance if the session is live and
# unexpired, the owner's view is fresh from the mirror and can cover it. One statement:
# concurrent charges of the owner's sessions queue on this one row.
_TAKE_MONEY = (
    update(allowances)
    .where(allowances.c.owner == _of_session(sessions.c.owner, live=True),
           allowances.c.spender == _of_session(sessions.c.spender, live=True),
           allowances.c.mirror_at > bindparam("fresh_after"),
           allowances.c.allowance - allowances.c.outstanding >= bindparam("amount"))
    .values(outstanding=allowances.c.outstanding + bindparam("amount"))
    .returning((allowances.c.allowance - allowances.c.outstanding).label("left")))

# The session's own counters. Still conditional: a session ended by a concurrent
# transaction since the claim above read it is not charged (the whole charge rolls back).
_COUNT_CALL = (
    update(sessions)
    .where(sessions.c.id == bindparam("sid"), sessions.c.state.in_(LIVE_STATES))
    .values(spent=sessions.c.spent + bindparam("amount"), calls=sessions.c.calls + 1,
            state="active"))

_GIVE_BACK = (
    update(allowances)
    .where(allowances.c.owner == _of_session(sessions.c.owner, live=False),
           allowances.c.spender == _of_session(sessions.c.spender, live=False))
    .values(outstanding=allowances.c.outstanding - bindparam("amount")))


class Ledger:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    def _insert(self, table):
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    @functools.cached_property
    def _claim_key(self):
        return self._insert(session_charges).on_conflict_do_nothing().returning(
            session_charges.c.id)

    async def charge(self, session_id: str, key: str, fingerprint: str, amount: int, *,
                     fresh_after: float) -> Charged | Replay | KeyConflict | Refused:
        """Charge `amount` for the call identified by `key`, atomically.

        The session must be live (active or exhausted: what is left decides, not the
        label) and unexpired; its owner's shared allowance refreshed from the mirror
        after `fresh_after`, with `allowance - outstanding >= amount`."""
        now = self._clock.now()
        charge_id = secrets.token_hex(16)
        try:
            async with self._engine.begin() as conn:
                claimed = (await conn.execute(self._claim_key, dict(
                    id=charge_id, session_id=session_id, idempotency_key=key,
                    fingerprint=fingerprint, amount=amount, state="pending", pull_id=None,
                    created_at=now))).first()
                if claimed is None:
                    return await self._existing(conn, session_id, key, fingerprint)
                row = (await conn.execute(_TAKE_MONEY, {
                    "sid": session_id, "now": now, "fresh_after": fresh_after,
                    "amount": amount})).first()
                if row is None:
                    raise _NoFunds  # rolls back the key claim with it
                counted = await conn.execute(_COUNT_CALL, {"sid": session_id, "amount": amount})
                if counted.rowcount != 1:
                    raise _NoFunds
                await outbox.allowance_charged(conn, session_id, int(row.left), amount)
                return Charged(charge_id, int(row.left))
        except _NoFunds:
            async with self._engine.connect() as conn:
                current = (await conn.execute(
                    SESSION_VIEW.where(sessions.c.id == session_id))).first()
            return Refused(Session.from_row(current) if current else None)

    async def _existing(self, conn, session_id: str, key: str,
                        fingerprint: str) -> Replay | KeyConflict:
        row = (await conn.execute(select(session_charges).where(
            session_charges.c.session_id == session_id,
            session_charges.c.idempotency_key == key))).first()
        if row is None:
            # The claim met a row that is gone now (reversed after its origin failed): the
            # key is free again, so this is "retry", not "another request".
            return KeyConflict("in_flight")
        if row.fingerprint != fingerprint:
            return KeyConflict("reused")
        if row.status is None:
            return KeyConflict("in_flight")
        return Replay(row.status, [tuple(h) for h in json.loads(row.headers)], bytes(row.body))

    async def keep(self, charge_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(session_charges).where(
                session_charges.c.id == charge_id, session_charges.c.state == "pending")
                .values(state="kept"))

    async def reverse(self, charge_id: str) -> bool:
        """Undo a pending charge (the origin failed); True if it was undone now. The row
        goes with it, so the caller may retry with the same idempotency key."""
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
                              headers: list[tuple[str, str]], body: bytes) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(session_charges).where(session_charges.c.id == charge_id)
                               .values(status=status, headers=json.dumps(headers), body=body))

    async def charges(self, session_id: str) -> list:
        async with self._engine.connect() as conn:
            return list((await conn.execute(select(session_charges).where(
                session_charges.c.session_id == session_id)
                .order_by(session_charges.c.created_at))).all())
