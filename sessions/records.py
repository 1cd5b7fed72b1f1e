"""Stored session records: activation nonces, sessions and their state, pulls.

Every state change is a conditional `UPDATE ... WHERE state IN (...)`, so two gateway
instances racing on the same row cannot both move it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from sessions.allowances import Allowances, upsert_in
from sessions.lifecycle import (
    PULL_TRANSITIONS,
    SESSION_TRANSITIONS,
    UNRECONCILED_PULLS,
    can_transition,
    hash_token,
)
from store import outbox
from store.clock import Clock
from store.schema import (
    session_allowances,
    session_charges,
    session_nonces,
    session_pulls,
    sessions,
)


@dataclass(frozen=True)
class Session:
    id: str
    paygate_id: str
    owner: str
    spender: str
    state: str
    allowance: int
    outstanding: int
    spent: int
    calls: int
    created_at: float
    expires_at: float
    mirror_at: float

    @property
    def available(self) -> int:
        return max(self.allowance - self.outstanding, 0)

    @classmethod
    def from_row(cls, r) -> "Session":
        return cls(r.id, r.paygate_id, r.owner, r.spender, r.state, int(r.allowance),
                   int(r.outstanding), int(r.spent), int(r.calls), r.created_at, r.expires_at,
                   r.mirror_at)


@dataclass(frozen=True)
class Pull:
    id: str
    session_id: str
    owner: str
    amount: int
    tx_id: str
    tx_bytes: bytes
    state: str
    valid_until: float
    error: str | None = None

    @classmethod
    def from_row(cls, r) -> "Pull":
        return cls(r.id, r.session_id, r.owner, int(r.amount), r.tx_id, bytes(r.tx_bytes),
                   r.state, r.valid_until, r.error)


# A session with the owner's shared allowance: `allowance`, `outstanding` and `mirror_at`
# are the owner's (see sessions.allowances), the rest the session's own.
SESSION_VIEW = select(
    sessions.c.id, sessions.c.paygate_id, sessions.c.owner, sessions.c.spender,
    sessions.c.state, session_allowances.c.allowance, session_allowances.c.outstanding,
    sessions.c.spent, sessions.c.calls, sessions.c.created_at, sessions.c.expires_at,
    session_allowances.c.mirror_at,
).select_from(sessions.join(session_allowances, and_(
    session_allowances.c.owner == sessions.c.owner,
    session_allowances.c.spender == sessions.c.spender)))


class SessionRecords:
    IDENTITY_TTL = 5.0  # seconds a token's session stays in the in-process cache
    _IDENTITY_MAX = 100_000

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self.allowances = Allowances(engine, clock)
        self._identities: dict[str, tuple[float, Session]] = {}

    # -- activation nonces ------------------------------------------------------------

    async def issue_nonce(self, paygate_id: str, account_id: str, ttl: float) -> tuple[str, float]:
        nonce = secrets.token_hex(16)
        now = self._clock.now()
        async with self._engine.begin() as conn:
            await conn.execute(insert(session_nonces).values(
                nonce=nonce, paygate_id=paygate_id, account_id=account_id, created_at=now,
                expires_at=now + ttl, used_at=None))
        return nonce, now + ttl

    async def nonce(self, nonce: str):
        async with self._engine.connect() as conn:
            return (await conn.execute(select(session_nonces).where(
                session_nonces.c.nonce == nonce))).first()

    async def drop_expired_nonces(self, older_than: float) -> int:
        """Forget nonces that expired before `older_than` (used or not)."""
        async with self._engine.begin() as conn:
            res = await conn.execute(delete(session_nonces).where(
                session_nonces.c.expires_at < older_than))
        return res.rowcount or 0

    async def create_session(self, *, nonce: str, token: str, paygate_id: str, owner: str,
                             spender: str, allowance: int, ttl: float,
                             read_at: float | None = None) -> Session | None:
        """Spend the nonce and open the session in one transaction; None if the nonce was
        already spent (a replayed activation). `allowance` is the mirror's, read from
        `read_at` (default: now) on; it joins the owner's shared row (`upsert_in`)."""
        now = self._clock.now()
        sid = secrets.token_hex(16)
        async with self._engine.begin() as conn:
            used = await conn.execute(update(session_nonces).where(
                session_nonces.c.nonce == nonce, session_nonces.c.used_at.is_(None),
                session_nonces.c.expires_at > now).values(used_at=now))
            if used.rowcount != 1:
                return None
            await conn.execute(insert(sessions).values(
                id=sid, token_hash=hash_token(token), paygate_id=paygate_id, owner=owner,
                spender=spender, state="active", allowance=0, outstanding=0, spent=0,
                calls=0, created_at=now, expires_at=now + ttl, mirror_at=0, ended_at=None,
                lease_until=None))
            await upsert_in(conn, owner=owner, spender=spender, allowance=allowance,
                            read_at=now if read_at is None else read_at)
            await outbox.emit(conn, "session.activated", paygate_id=paygate_id, now=now,
                              data={"session": sid, "owner": owner, "expires_at": now + ttl})
        return await self.get(sid)

    # -- sessions -----------------------------------------------------------------------

    async def get(self, session_id: str) -> Session | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(SESSION_VIEW.where(sessions.c.id == session_id))).first()
        return Session.from_row(row) if row else None

    async def by_token(self, token: str) -> Session | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(SESSION_VIEW.where(
                sessions.c.token_hash == hash_token(token)))).first()
        return Session.from_row(row) if row else None

    async def identity(self, token: str) -> Session | None:
        """The session of `token` for routing a call: its id, paygate and owner are
        exact (they never change), the rest may be up to `IDENTITY_TTL` seconds old.
        Nothing may be decided on those other fields: the charge itself checks state,
        expiry and money in the store, so a stale entry can never spend money. Unknown
        tokens are not cached (another instance may open that session a moment later)."""
        digest = hash_token(token)
        now = time.monotonic()
        hit = self._identities.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self._engine.connect() as conn:
            row = (await conn.execute(SESSION_VIEW.where(sessions.c.token_hash == digest))).first()
        if row is None:
            return None
        session = Session.from_row(row)
        if len(self._identities) >= self._IDENTITY_MAX:
            self._identities.clear()  # rare; a cold cache only costs reads
        self._identities[digest] = (now + self.IDENTITY_TTL, session)
        return session

    async def move(self, session_id: str, new: str, *, only_from: Iterable[str] | None = None) -> bool:
        """Change state if the table allows it from the current state."""
        olds = [s for s in (only_from or SESSION_TRANSITIONS)
                if can_transition(SESSION_TRANSITIONS, s, new)]
        values: dict = {"state": new}
        if new in ("revoked", "expired", "ended"):
            values["ended_at"] = self._clock.now()
        async with self._engine.begin() as conn:
            res = await conn.execute(update(sessions).where(
                sessions.c.id == session_id, sessions.c.state.in_(olds)).values(**values))
            if res.rowcount == 1:
                await outbox.session_moved(conn, session_id, new)
        return res.rowcount == 1

    async def apply_mirror(self, session_id: str, *, allowance: int | None,
                           reconciled_pull_ids: list[str],
                           unit_price: Callable[[str], int] | int) -> Session | None:
        """Record a mirror read for the owner of `session_id` (see
        `Allowances.apply_mirror`: the read is the owner's, for all their sessions);
        the session as it is afterwards."""
        session = await self.get(session_id)
        if session is None:
            return None
        await self.allowances.apply_mirror(
            session.owner, session.spender, allowance=allowance,
            reconciled_pull_ids=reconciled_pull_ids, unit_price=unit_price)
        return await self.get(session_id)

    # -- pulls ----------------------------------------------------------------------------

    async def sessions_to_pull(self, owner: str, spender: str, cutoff: float) -> list[str]:
        """The owner's sessions with kept charges not yet in a pull, created up to
        `cutoff`, the one with the oldest such charge first."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(session_charges.c.session_id)
                .join(sessions, sessions.c.id == session_charges.c.session_id)
                .where(sessions.c.owner == owner, sessions.c.spender == spender,
                       session_charges.c.state == "kept", session_charges.c.pull_id.is_(None),
                       session_charges.c.created_at <= cutoff)
                .group_by(session_charges.c.session_id)
                .order_by(func.min(session_charges.c.created_at)))).scalars().all()
        return list(rows)

    async def in_flight(self, owner: str, spender: str) -> int:
        """What the owner's pulls not yet reconciled with the mirror take from the
        allowance (the mirror's view may not show them yet)."""
        async with self._engine.connect() as conn:
            total = (await conn.execute(
                select(func.coalesce(func.sum(session_pulls.c.amount), 0))
                .join(sessions, sessions.c.id == session_pulls.c.session_id)
                .where(sessions.c.owner == owner, sessions.c.spender == spender,
                       session_pulls.c.state.in_(UNRECONCILED_PULLS)))).scalar_one()
        return int(total)

    async def owner_pulls(self, owner: str, spender: str,
                          states: Iterable[str] = UNRECONCILED_PULLS) -> list[Pull]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(session_pulls)
                .join(sessions, sessions.c.id == session_pulls.c.session_id)
                .where(sessions.c.owner == owner, sessions.c.spender == spender,
                       session_pulls.c.state.in_(list(states))))).all()
        return [Pull.from_row(r) for r in rows]

    async def unpulled(self, session_id: str, cutoff: float) -> int:
        async with self._engine.connect() as conn:
            total = (await conn.execute(select(func.coalesce(func.sum(session_charges.c.amount), 0))
                     .where(session_charges.c.session_id == session_id,
                            session_charges.c.state == "kept",
                            session_charges.c.pull_id.is_(None),
                            session_charges.c.created_at <= cutoff))).scalar_one()
        return int(total)

    async def pull_cutoff(self, session_id: str, cutoff: float, cap: int) -> tuple[float, int]:
        """The largest batch of the oldest kept, unpulled charges (created up to `cutoff`)
        whose sum fits in `cap`: (the batch's own cutoff, its sum). Charges made at the
        same instant go together or not at all."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(session_charges.c.created_at,
                       func.sum(session_charges.c.amount).label("amount"))
                .where(session_charges.c.session_id == session_id,
                       session_charges.c.state == "kept", session_charges.c.pull_id.is_(None),
                       session_charges.c.created_at <= cutoff)
                .group_by(session_charges.c.created_at)
                .order_by(session_charges.c.created_at))).all()
        total, until = 0, 0.0
        for row in rows:
            if total + int(row.amount) > cap:
                break
            total += int(row.amount)
            until = row.created_at
        return until, total

    async def prepare_pull(self, *, session_id: str, owner: str, amount: int, cutoff: float,
                           tx_id: str, tx_bytes: bytes, valid_until: float) -> str | None:
        """Store the signed pull and tie the charges it collects to it, before anything is
        submitted. None (nothing stored) if the charges changed since `amount` was summed."""
        now = self._clock.now()
        pid = secrets.token_hex(16)

        class _Changed(Exception):
            pass

        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(session_pulls).values(
                    id=pid, session_id=session_id, owner=owner, amount=amount, tx_id=tx_id,
                    tx_bytes=tx_bytes, state="prepared", valid_until=valid_until, error=None,
                    created_at=now, updated_at=now, lease_until=None))
                rows = (await conn.execute(update(session_charges).where(
                    session_charges.c.session_id == session_id,
                    session_charges.c.state == "kept", session_charges.c.pull_id.is_(None),
                    session_charges.c.created_at <= cutoff).values(pull_id=pid)
                    .returning(session_charges.c.amount))).all()
                if sum(int(r.amount) for r in rows) != amount:
                    raise _Changed
        except _Changed:
            return None
        return pid

    async def move_pull(self, pull_id: str, old: str | Iterable[str], new: str,
                        error: str | None = None) -> bool:
        olds = [old] if isinstance(old, str) else list(old)
        olds = [o for o in olds if can_transition(PULL_TRANSITIONS, o, new)]
        now = self._clock.now()
        async with self._engine.begin() as conn:
            res = await conn.execute(update(session_pulls).where(
                session_pulls.c.id == pull_id, session_pulls.c.state.in_(olds))
                .values(state=new, error=error, updated_at=now, lease_until=None))
            if res.rowcount == 1 and new == "failed":
                # The charges go back to the pool for the next pull.
                await conn.execute(update(session_charges).where(
                    session_charges.c.pull_id == pull_id).values(pull_id=None))
        return res.rowcount == 1

    async def lease_pulls(self, states: Iterable[str], lease_seconds: float, limit: int,
                          older_than: float = 0) -> list[Pull]:
        now = self._clock.now()
        async with self._engine.begin() as conn:
            ids = (await conn.execute(select(session_pulls.c.id).where(
                session_pulls.c.state.in_(list(states)),
                session_pulls.c.updated_at <= now - older_than,
                or_(session_pulls.c.lease_until.is_(None), session_pulls.c.lease_until < now))
                .limit(limit))).scalars().all()
            if not ids:
                return []
            rows = (await conn.execute(update(session_pulls).where(
                session_pulls.c.id.in_(ids),
                or_(session_pulls.c.lease_until.is_(None), session_pulls.c.lease_until < now))
                .values(lease_until=now + lease_seconds).returning(*session_pulls.c))).all()
        return [Pull.from_row(r) for r in rows]

    async def pulls(self, session_id: str, states: Iterable[str] = UNRECONCILED_PULLS) -> list[Pull]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(session_pulls).where(
                and_(session_pulls.c.session_id == session_id,
                     session_pulls.c.state.in_(list(states)))))).all()
        return [Pull.from_row(r) for r in rows]
