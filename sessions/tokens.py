"""Prepaid tokens: bearer tokens holding a quota of units on one paygate, bought by plan.

A token is `tg_live_` + 32 random bytes (base64url); only its sha256 is stored, so the
database never holds a usable token. Its public id (`tok_…`) names it to the origin and
to the provider's admin API.

Charges follow `sessions.ledger`: one group-committed write claims the idempotency key and
the units together (`remaining >= units`, conditional UPDATE), so N parallel calls on a
token with K units serve exactly K, and a key is charged at most once. A charge whose
origin failed is reversed (the key is free again); a kept charge has its response stored
and replayed to a retry of the same key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import func, insert, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from sessions import token_units as units
from sessions.ledger import Charged, KeyConflict, Replay, _existing
from store.clock import Clock
from store.ids import random_hex
from store.pgbatch import PgBatch
from store.schema import free_claims, prepaid_tokens, token_charges
from store.writer import sqlite_writer

PREFIX = "tg_live_"

__all__ = ["Charged", "KeyConflict", "Replay", "Token", "Tokens", "FreeRefused", "PREFIX"]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def email_hash(paygate_id: str, email: str) -> str:
    """Emails are kept only as a hash, normalised (case, surrounding space)."""
    return hashlib.sha256(f"{paygate_id}\n{email.strip().lower()}".encode()).hexdigest()


@dataclass(frozen=True)
class Token:
    id: str
    paygate_id: str
    plan_id: str
    billing: str
    units_total: int
    remaining: int
    state: str


class FreeRefused(Exception):
    """A free plan refused: `reason` is `email_used` or `address_limit`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _token_of(row) -> Token:
    return Token(row.id, row.paygate_id, row.plan_id, row.billing, int(row.units_total),
                 int(row.remaining), row.state)


class Tokens:
    """The prepaid-token store and ledger on one engine."""

    IDENTITY_TTL = 5.0  # seconds a token's record stays in the in-process cache
    _IDENTITY_MAX = 100_000

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._identities: dict[str, tuple[float, Token]] = {}
        self._sqlite = engine.dialect.name == "sqlite"
        if self._sqlite:
            self._writer = sqlite_writer(engine)
        else:
            self._charge_batch = PgBatch(engine, units.pg_charges)
            self._keep_batch = PgBatch(engine, units.pg_keeps)
            self._record_batch = PgBatch(engine, units.pg_records)

    # -- issuing -------------------------------------------------------------------------

    def _new_row(self, paygate_id: str, plan_id: str, billing: str, amount: int,
                 warn_below: int) -> tuple[str, dict]:
        token = PREFIX + secrets.token_urlsafe(32)
        return token, dict(
            id="tok_" + secrets.token_hex(12), token_hash=token_hash(token),
            paygate_id=paygate_id, plan_id=plan_id, billing=billing, units_total=amount,
            remaining=amount, warn_below=warn_below, state="active",
            created_at=self._clock.now(), revoked_at=None)

    async def issue(self, paygate_id: str, plan_id: str, amount: int, warn_below: int,
                    billing: str = "paid") -> tuple[str, Token]:
        """A new token with `amount` units; returns (the bearer token, its record)."""
        token, row = self._new_row(paygate_id, plan_id, billing, amount, warn_below)
        async with self._engine.begin() as conn:
            await conn.execute(insert(prepaid_tokens).values(**row))
        return token, Token(row["id"], paygate_id, plan_id, billing, amount, amount, "active")

    async def top_up(self, token_id: str, plan_id: str, amount: int) -> Token | None:
        """Add `amount` units to an active token (one UPDATE); None if it is not active."""
        async with self._engine.begin() as conn:
            done = (await conn.execute(update(prepaid_tokens).where(
                prepaid_tokens.c.id == token_id, prepaid_tokens.c.state == "active").values(
                remaining=prepaid_tokens.c.remaining + amount,
                units_total=prepaid_tokens.c.units_total + amount, plan_id=plan_id,
                billing="paid"))).rowcount
        return await self.get(token_id) if done == 1 else None

    async def issue_free(self, paygate_id: str, plan_id: str, amount: int, warn_below: int,
                         email: str, client: str, per_address_limit: int) -> tuple[str, Token]:
        """A free token: once per email per paygate, at most `per_address_limit` per client
        address and plan. The checks and the insert are one serialized write (the SQLite
        writer; a transaction-scoped advisory lock on PostgreSQL), so parallel claims
        cannot both pass. Raises FreeRefused."""
        token, row = self._new_row(paygate_id, plan_id, "free", amount, warn_below)
        claim = dict(paygate_id=paygate_id, email_hash=email_hash(paygate_id, email),
                     plan_id=plan_id, client=client, token_id=row["id"], created_at=row["created_at"])
        if self._sqlite:
            await self._writer.run(functools.partial(_sqlite_free, row, claim, per_address_limit))
        else:
            from sqlalchemy import text
            async with self._engine.begin() as conn:
                await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                                   {"k": f"tollgate-free|{paygate_id}"})
                used = (await conn.execute(select(free_claims.c.client).where(
                    free_claims.c.paygate_id == paygate_id,
                    free_claims.c.email_hash == claim["email_hash"]))).first()
                if used is not None:
                    raise FreeRefused("email_used")
                count = (await conn.execute(select(func.count()).select_from(free_claims).where(
                    free_claims.c.paygate_id == paygate_id, free_claims.c.plan_id == plan_id,
                    free_claims.c.client == client))).scalar_one()
                if count >= per_address_limit:
                    raise FreeRefused("address_limit")
                await conn.execute(insert(prepaid_tokens).values(**row))
                await conn.execute(insert(free_claims).values(**claim))
        return token, Token(row["id"], paygate_id, plan_id, "free", amount, amount, "active")

    # -- looking up, revoking --------------------------------------------------------------

    async def identity(self, token: str) -> Token | None:
        """The token's record for routing a call: id, paygate and plan are exact (they never
        change); state and units may be up to IDENTITY_TTL seconds old. Nothing may be
        decided on those alone: the charge checks state and units in the store, so a stale
        entry never spends a revoked or empty token. Unknown tokens are not cached."""
        digest = token_hash(token)
        now = time.monotonic()
        hit = self._identities.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(prepaid_tokens).where(
                prepaid_tokens.c.token_hash == digest))).first()
        if row is None:
            return None
        found = _token_of(row)
        if len(self._identities) >= self._IDENTITY_MAX:
            self._identities.clear()
        self._identities[digest] = (now + self.IDENTITY_TTL, found)
        return found

    async def get(self, token_id: str) -> Token | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(prepaid_tokens).where(
                prepaid_tokens.c.id == token_id))).first()
        return _token_of(row) if row else None

    async def revoke(self, token_id: str, paygate_ids: set[str] | None = None) -> bool:
        """Revoke an active token (of one of `paygate_ids`, when given); True if done now.
        A call already charged keeps its charge; no later call is served."""
        query = update(prepaid_tokens).where(prepaid_tokens.c.id == token_id,
                                             prepaid_tokens.c.state == "active")
        if paygate_ids is not None:
            query = query.where(prepaid_tokens.c.paygate_id.in_(sorted(paygate_ids)))
        async with self._engine.begin() as conn:
            done = (await conn.execute(query.values(state="revoked",
                                                    revoked_at=self._clock.now()))).rowcount
        # this instance sees it at once (others within IDENTITY_TTL; the charge refuses it)
        for digest in [d for d, (_, t) in self._identities.items() if t.id == token_id]:
            del self._identities[digest]
        return done == 1

    # -- the ledger ------------------------------------------------------------------------

    async def charge(self, token_id: str, key: str, fingerprint: str,
                     amount: int) -> Charged | Replay | KeyConflict | None:
        """Charge `amount` units for the call `key`, atomically; None when the token is
        not active or has fewer units left. Returns once the charge is committed (on SQLite:
        fsynced with the call's record, which every reply waits for)."""
        now = self._clock.now()
        charge_id = random_hex()
        if self._sqlite:
            try:
                # committed, not yet fsynced: the reply waits for the call's record, which
                # is (store.writer)
                got = await self._writer.run(functools.partial(
                    units.sqlite_charge, charge_id, token_id, key, fingerprint, amount, now),
                    fsync=False)
            except units.NoUnits:
                return None
            if isinstance(got, int):
                return Charged(charge_id, got)
            return _existing(got, fingerprint)
        outcome, left = await self._charge_batch.run(
            (charge_id, token_id, key, fingerprint, amount, now))
        if outcome == units.CHARGED:
            return Charged(charge_id, int(left))
        if outcome == units.REFUSED:
            return None
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(token_charges).where(
                token_charges.c.token_id == token_id,
                token_charges.c.idempotency_key == key))).first()
        return _existing(row and (row.fingerprint, row.status, row.headers, row.body),
                         fingerprint)

    async def keep(self, charge_id: str) -> None:
        if self._sqlite:
            await self._writer.run(functools.partial(units.sqlite_keep, charge_id))
        else:
            await self._keep_batch.run((charge_id,))

    async def reverse(self, charge_id: str) -> bool:
        """Undo a pending charge (the origin failed): the units go back, the key is free."""
        if self._sqlite:
            return await self._writer.run(functools.partial(units.sqlite_reverse, charge_id))
        from sqlalchemy import delete
        async with self._engine.begin() as conn:
            row = (await conn.execute(delete(token_charges).where(
                token_charges.c.id == charge_id, token_charges.c.state == "pending")
                .returning(token_charges.c.units, token_charges.c.token_id))).first()
            if row is None:
                return False
            await conn.execute(update(prepaid_tokens).where(
                prepaid_tokens.c.id == row.token_id).values(
                remaining=prepaid_tokens.c.remaining + int(row.units)))
        return True

    async def reverse_abandoned(self, older_than: float, limit: int = 100) -> int:
        """Reverse up to `limit` charges still pending that were made before `older_than`
        (their call died with its gateway: nothing was answered, so the units go back);
        how many were reversed now. Each goes through `reverse`, so a charge kept or
        reversed meanwhile, here or by another instance, is never reversed twice."""
        async with self._engine.connect() as conn:
            ids = (await conn.execute(select(token_charges.c.id).where(
                # a literal, so the partial index of pending charges serves the query
                token_charges.c.state == literal_column("'pending'"),
                token_charges.c.created_at < older_than).limit(limit))).scalars().all()
        return sum([await self.reverse(cid) for cid in ids])

    async def record_response(self, charge_id: str, status: int,
                              headers: list[tuple[str, str]], body: bytes, *,
                              keep: bool = False) -> None:
        headers_json = json.dumps(headers)
        if self._sqlite:
            await self._writer.run(functools.partial(
                units.sqlite_record, charge_id, status, headers_json, body, keep))
        else:
            await self._record_batch.run((charge_id, status, headers_json, body, keep))


def _sqlite_free(row: dict, claim: dict, limit: int, conn) -> None:
    if conn.execute("SELECT 1 FROM free_claims WHERE paygate_id = ? AND email_hash = ?",
                    (claim["paygate_id"], claim["email_hash"])).fetchone():
        raise FreeRefused("email_used")
    (count,) = conn.execute(
        "SELECT count(*) FROM free_claims WHERE paygate_id = ? AND plan_id = ? AND client = ?",
        (claim["paygate_id"], claim["plan_id"], claim["client"])).fetchone()
    if count >= limit:
        raise FreeRefused("address_limit")
    cols = list(row)
    conn.execute(f"INSERT INTO prepaid_tokens ({', '.join(cols)}) VALUES "
                 f"({', '.join('?' * len(cols))})", [row[c] for c in cols])
    cols = list(claim)
    conn.execute(f"INSERT INTO free_claims ({', '.join(cols)}) VALUES "
                 f"({', '.join('?' * len(cols))})", [claim[c] for c in cols])
