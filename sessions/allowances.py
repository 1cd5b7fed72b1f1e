"""The allowance an owner granted the gateway's spender, shared by all the owner's sessions.

One row per (owner, spender) in `session_allowances`. Charges claim against it (see
`sessions.ledger`); the mirror refresh and the pulls work on it, per owner, never per
session, so neither the money an owner can spend nor the mirror requests made for it grow
with the number of sessions the owner opens.

Contracts:

- `allowance - outstanding` never goes below zero through a charge, whichever session or
  gateway instance makes it (the charge is one conditional UPDATE of this row).
- Only a mirror read moves `allowance` of an existing row, together with the pulls it
  reconciles (`apply_mirror`); an activation may set it only from a read that started after
  the row's last one (`upsert_in`).
- A pull refused on chain for allowance reasons (`refused`) stops the owner's pulls until a
  mirror read after the refusal and the back-off have both passed, and makes the row stale
  so no call is charged on the view the chain just contradicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sessions.lifecycle import LIVE_STATES, UNRECONCILED_PULLS
from store.clock import Clock
from store.schema import session_allowances as allowances
from store.schema import session_charges, session_pulls, sessions

REFUSAL_BACKOFF = 30.0  # seconds before the first retry after a refused pull; doubles
REFUSAL_BACKOFF_MAX = 3600.0

_OWNED = and_(sessions.c.owner == allowances.c.owner, sessions.c.spender == allowances.c.spender)


def _pulls_not_held(now: float):
    """No pull while a refused one waits for its back-off and a mirror read after it."""
    return (or_(allowances.c.pull_after.is_(None), allowances.c.pull_after <= now),
            or_(allowances.c.refused_at.is_(None),
                allowances.c.mirror_at > allowances.c.refused_at))


def refusal_backoff(refusals: int) -> float:
    """Seconds to wait after the `refusals`-th allowance refusal in a row (1, 2, ...)."""
    return min(REFUSAL_BACKOFF * 2 ** max(refusals - 1, 0), REFUSAL_BACKOFF_MAX)


@dataclass(frozen=True)
class OwnerAllowance:
    owner: str
    spender: str
    allowance: int
    outstanding: int
    mirror_at: float
    refusals: int

    @property
    def available(self) -> int:
        return max(self.allowance - self.outstanding, 0)

    @classmethod
    def from_row(cls, r) -> "OwnerAllowance":
        return cls(r.owner, r.spender, int(r.allowance), int(r.outstanding), r.mirror_at,
                   int(r.refusals))


def _insert(conn: AsyncConnection):
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(allowances)


async def upsert_in(conn: AsyncConnection, *, owner: str, spender: str, allowance: int,
                    read_at: float) -> None:
    """Inside an activation's transaction: create the owner's row from the mirror read
    that started at `read_at`, or update an existing row's allowance from it when that
    read is at least as recent as the row's own (an older read could predate a pull the
    row already reconciled, and count its amount as available again)."""
    stmt = _insert(conn).values(owner=owner, spender=spender, allowance=allowance,
                                outstanding=0, mirror_at=read_at, refusals=0)
    stmt = stmt.on_conflict_do_update(
        index_elements=[allowances.c.owner, allowances.c.spender],
        set_={"allowance": stmt.excluded.allowance, "mirror_at": stmt.excluded.mirror_at},
        where=allowances.c.mirror_at <= stmt.excluded.mirror_at)
    await conn.execute(stmt)


class Allowances:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    async def get(self, owner: str, spender: str) -> OwnerAllowance | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(allowances).where(
                allowances.c.owner == owner, allowances.c.spender == spender))).first()
        return OwnerAllowance.from_row(row) if row else None

    # -- mirror refresh --------------------------------------------------------------------

    async def lease_for_refresh(self, lease_seconds: float, limit: int,
                                older_than: float) -> list[tuple[str, str]]:
        """(owner, spender) rows whose mirror view is older than `older_than` seconds and
        that still need one (a live session, a pull to reconcile, or a refused pull waiting
        for a fresh read), leased so only one instance refreshes each."""
        now = self._clock.now()
        free = or_(allowances.c.lease_until.is_(None), allowances.c.lease_until < now)
        needed = or_(
            exists().where(_OWNED, sessions.c.state.in_(LIVE_STATES)),
            exists().where(session_pulls.c.owner == allowances.c.owner,
                           session_pulls.c.state.in_(UNRECONCILED_PULLS),
                           session_pulls.c.session_id.in_(
                               select(sessions.c.id).where(_OWNED))),
            and_(allowances.c.refused_at.is_not(None),
                 allowances.c.mirror_at <= allowances.c.refused_at))
        async with self._engine.begin() as conn:
            keys = (await conn.execute(select(allowances.c.owner, allowances.c.spender).where(
                allowances.c.mirror_at <= now - older_than, free, needed)
                .order_by(allowances.c.mirror_at).limit(limit))).all()
            leased = []
            # Lock in key order: instances leasing overlapping sets never wait on each
            # other in a cycle.
            for owner, spender in sorted(tuple(k) for k in keys):
                res = await conn.execute(update(allowances).where(
                    allowances.c.owner == owner, allowances.c.spender == spender, free)
                    .values(lease_until=now + lease_seconds))
                if res.rowcount == 1:
                    leased.append((owner, spender))
        return leased

    async def release(self, owner: str, spender: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(allowances).where(
                allowances.c.owner == owner, allowances.c.spender == spender)
                .values(lease_until=None))

    async def apply_mirror(self, owner: str, spender: str, *, allowance: int | None,
                           reconciled_pull_ids: list[str],
                           unit_price: Callable[[str], int] | int) -> None:
        """Record a mirror read for the owner: the allowance now (None = revoked) and the
        pulls it already reflects (their amounts leave `outstanding` in the same
        transaction). The owner's live sessions follow: revoked, expired, or active /
        exhausted by whether what is left covers one unit of their paygate."""
        price = unit_price if callable(unit_price) else (lambda _pg, p=unit_price: p)
        now = self._clock.now()
        key = (allowances.c.owner == owner, allowances.c.spender == spender)
        async with self._engine.begin() as conn:
            reconciled = 0
            if reconciled_pull_ids:
                # Only this owner's pulls at this spender: another owner's amount must
                # never leave this row's `outstanding`.
                rows = (await conn.execute(update(session_pulls).where(
                    session_pulls.c.id.in_(reconciled_pull_ids),
                    session_pulls.c.owner == owner,
                    session_pulls.c.session_id.in_(select(sessions.c.id).where(
                        sessions.c.owner == owner, sessions.c.spender == spender)),
                    session_pulls.c.state == "succeeded")
                    .values(state="reconciled", updated_at=now)
                    .returning(session_pulls.c.amount))).all()
                reconciled = sum(int(r.amount) for r in rows)
            row = (await conn.execute(update(allowances).where(*key).values(
                allowance=allowance if allowance is not None else 0,
                outstanding=allowances.c.outstanding - reconciled, mirror_at=now,
                lease_until=None).returning(allowances.c.allowance,
                                            allowances.c.outstanding))).first()
            if row is None:
                return
            left = int(row.allowance) - int(row.outstanding)
            live = (await conn.execute(select(sessions.c.id, sessions.c.paygate_id,
                                              sessions.c.expires_at, sessions.c.state).where(
                sessions.c.owner == owner, sessions.c.spender == spender,
                sessions.c.state.in_(LIVE_STATES)))).all()
            for s in live:
                if allowance is None:
                    state = "revoked"
                elif s.expires_at <= now:
                    state = "expired"
                else:
                    state = "active" if left >= price(s.paygate_id) else "exhausted"
                if state == s.state:
                    continue
                values: dict = {"state": state}
                if state in ("revoked", "expired"):
                    values["ended_at"] = now
                await conn.execute(update(sessions).where(
                    sessions.c.id == s.id, sessions.c.state.in_(LIVE_STATES)).values(**values))

    # -- pulls -------------------------------------------------------------------------------

    async def pull_candidates(self, older_than: float, limit: int = 50) -> list[tuple[str, str]]:
        """Owners with kept charges not yet in a pull, the oldest charged before
        `older_than` (unix time), whose pulls are not on hold (see `lease_for_pull`) and
        whose allowance is not empty; the longest waiting first."""
        now = self._clock.now()
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(sessions.c.owner, sessions.c.spender)
                .join(session_charges, sessions.c.id == session_charges.c.session_id)
                .join(allowances, _OWNED)
                .where(session_charges.c.state == "kept", session_charges.c.pull_id.is_(None),
                       allowances.c.allowance > 0, *_pulls_not_held(now))
                .group_by(sessions.c.owner, sessions.c.spender)
                .having(func.min(session_charges.c.created_at) <= older_than)
                .order_by(func.max(func.coalesce(allowances.c.pull_after, 0)))
                .limit(limit))).all()
        return [(r.owner, r.spender) for r in rows]

    async def lease_for_pull(self, owner: str, spender: str,
                             lease_seconds: float) -> OwnerAllowance | None:
        """Claim the owner's pulls for `lease_seconds`: None if another instance holds
        them, or a refused pull still waits for its mirror read or back-off."""
        now = self._clock.now()
        async with self._engine.begin() as conn:
            row = (await conn.execute(update(allowances).where(
                allowances.c.owner == owner, allowances.c.spender == spender,
                or_(allowances.c.pull_lease_until.is_(None),
                    allowances.c.pull_lease_until < now), *_pulls_not_held(now))
                .values(pull_lease_until=now + lease_seconds)
                .returning(*allowances.c))).first()
        return OwnerAllowance.from_row(row) if row else None

    async def end_pull(self, owner: str, spender: str, *, pulled: bool,
                       idle_until: float | None = None) -> None:
        """Give the pull lease back; a pull that went through ends a run of refusals.
        `idle_until`: nothing could be pulled (what waits does not fit what is left), so
        the owner goes behind the others until then."""
        values: dict = {"pull_lease_until": None}
        if pulled:
            values["refusals"] = 0
        if idle_until is not None:
            values["pull_after"] = idle_until
        async with self._engine.begin() as conn:
            await conn.execute(update(allowances).where(
                allowances.c.owner == owner, allowances.c.spender == spender).values(**values))

    async def refused(self, owner: str, spender: str) -> float:
        """The chain refused a pull for allowance reasons: our view is wrong. Mark the row
        stale (no charges on it, refreshed first) and hold the owner's pulls until a mirror
        read after now and the back-off; returns the back-off in seconds."""
        now = self._clock.now()
        async with self._engine.begin() as conn:
            row = (await conn.execute(update(allowances).where(
                allowances.c.owner == owner, allowances.c.spender == spender)
                .values(refusals=allowances.c.refusals + 1, refused_at=now, mirror_at=0)
                .returning(allowances.c.refusals))).first()
            if row is None:
                return 0.0
            backoff = refusal_backoff(int(row.refusals))
            await conn.execute(update(allowances).where(
                allowances.c.owner == owner, allowances.c.spender == spender)
                .values(pull_after=now + backoff))
        return backoff
