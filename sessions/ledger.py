"""The per-call ledger of allowance sessions: charges, reversals, stored responses.

A charge is one transaction holding two claims: the idempotency key (an `INSERT ... ON
CONFLICT DO NOTHING` on (session, key)) and the money (`UPDATE sessions ... WHERE
allowance - outstanding >= :price`). Either both hold or neither does, so N parallel calls
on a session funded for K < N serve exactly K, and a key is charged at most once.
"""

from __future__ import annotations

import functools
import json
import secrets
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from store.clock import Clock
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
    """No charge: the session row did not satisfy the claim. `session` is the row as it
    is now, for the caller to say why (exhausted, expired, revoked, stale mirror...)."""

    session: object


class _NoFunds(Exception):
    pass


# The money half of a charge, built once (building a statement costs more CPU than
# running it): take `amount` if the session is active, unexpired, freshly seen on the
# mirror and can cover it.
_TAKE_MONEY = (
    update(sessions)
    .where(sessions.c.id == bindparam("sid"), sessions.c.state == "active",
           sessions.c.expires_at > bindparam("now"),
           sessions.c.mirror_at > bindparam("fresh_after"),
           sessions.c.allowance - sessions.c.outstanding >= bindparam("amount"))
    .values(outstanding=sessions.c.outstanding + bindparam("amount"),
            spent=sessions.c.spent + bindparam("amount"), calls=sessions.c.calls + 1)
    .returning((sessions.c.allowance - sessions.c.outstanding).label("left")))


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

        The session must be active, unexpired, refreshed from the mirror after
        `fresh_after`, and have `allowance - outstanding >= amount`."""
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
                return Charged(charge_id, int(row.left))
        except _NoFunds:
            async with self._engine.connect() as conn:
                current = (await conn.execute(
                    select(sessions).where(sessions.c.id == session_id))).first()
            return Refused(current)

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
            await conn.execute(update(sessions).where(sessions.c.id == row.session_id).values(
                outstanding=sessions.c.outstanding - row.amount,
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
