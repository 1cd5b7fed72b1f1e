"""Admin API keys: `pk_<24 hex>` ids with a secret sealed by the master key.

A provider key (`provider` set) manages that provider's resources only; an operator key
(`operator`, no provider) manages everything. A secret is shown once, at creation or
rotation; the store keeps it sealed (it must be readable to check HMAC signatures).
Rotation keeps the previous secret valid for a grace period. Revocation is final.
"""

from __future__ import annotations

import functools
import secrets as _random
import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from store.clock import Clock
from store.crypto import SecretBox
from store.schema import admin_signatures, api_keys


def new_key_id() -> str:
    return "pk_" + _random.token_hex(12)


def new_key_secret() -> str:
    return "sk_" + _random.token_hex(32)


@dataclass(frozen=True)
class ApiKey:
    id: str
    provider: str | None
    operator: bool
    created_at: float
    revoked_at: float | None

    def public(self) -> dict:
        return {"id": self.id, "provider": self.provider, "operator": self.operator,
                "created_at": self.created_at, "revoked_at": self.revoked_at,
                "active": self.revoked_at is None}


@dataclass(frozen=True)
class KeyWithSecrets:
    key: ApiKey
    secrets: list[str]  # valid now, current first


def _key(row) -> ApiKey:
    return ApiKey(row.id, row.provider, bool(row.operator), row.created_at, row.revoked_at)


class KeyStore:
    # Seconds an active key (with its opened secrets) stays in the in-process cache: a key
    # revoked or rotated through another instance is honoured here at most this late (on
    # this instance, at once). Unknown keys are never cached.
    ACTIVE_TTL = 2.0
    _ACTIVE_MAX = 10_000

    def __init__(self, engine: AsyncEngine, box: SecretBox, clock: Clock) -> None:
        self._engine = engine
        self._box = box
        self._clock = clock
        self._active: dict[str, tuple[float, KeyWithSecrets]] = {}

    async def create(self, provider: str | None, operator: bool) -> tuple[ApiKey, str]:
        """A new key and its secret (shown to the caller once)."""
        if not operator and not provider:
            raise ValueError("a key is either a provider's or an operator's")
        key_id, secret, now = new_key_id(), new_key_secret(), self._clock.now()
        async with self._engine.begin() as conn:
            await conn.execute(insert(api_keys).values(
                id=key_id, provider=provider, operator=int(operator),
                secret_sealed=self._box.seal(secret), previous_sealed=None,
                previous_valid_until=None, created_at=now, revoked_at=None))
        return ApiKey(key_id, provider, operator, now, None), secret

    async def list(self, provider: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.created_at)
        if provider is not None:
            query = query.where(api_keys.c.provider == provider)
        async with self._engine.connect() as conn:
            return [_key(r) for r in (await conn.execute(query)).all()]

    async def get(self, key_id: str) -> ApiKey | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _key(row) if row else None

    async def active(self, key_id: str) -> KeyWithSecrets | None:
        """The unrevoked key and the secrets it may sign with now; None otherwise. At most
        ACTIVE_TTL seconds old (every signed call asks: one read and decryption each was
        most of a /v1/authorize call)."""
        now = time.monotonic()
        hit = self._active.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await self._read_active(key_id)
        if found is not None:
            if len(self._active) >= self._ACTIVE_MAX:
                self._active.clear()
            self._active[key_id] = (now + self.ACTIVE_TTL, found)
        return found

    async def _read_active(self, key_id: str) -> KeyWithSecrets | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(
                api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)))).first()
        if row is None:
            return None
        out = [self._box.open(row.secret_sealed)]
        if row.previous_sealed and (row.previous_valid_until or 0) > self._clock.now():
            out.append(self._box.open(row.previous_sealed))
        return KeyWithSecrets(_key(row), out)

    async def revoke(self, key_id: str) -> bool:
        async with self._engine.begin() as conn:
            done = await conn.execute(update(api_keys).where(
                api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self._clock.now()))
        self._active.pop(key_id, None)
        return done.rowcount == 1

    async def rotate(self, key_id: str, grace_seconds: float) -> str | None:
        """A new secret for an active key; the old one stays valid `grace_seconds`."""
        found = await self._read_active(key_id)
        if found is None:
            return None
        secret, now = new_key_secret(), self._clock.now()
        async with self._engine.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(
                secret_sealed=self._box.seal(secret),
                previous_sealed=self._box.seal(found.secrets[0]) if grace_seconds else None,
                previous_valid_until=now + grace_seconds if grace_seconds else None))
        self._active.pop(key_id, None)
        return secret


async def first_use(engine: AsyncEngine, signature: str, expires_at: float) -> bool:
    """Record an admin request signature; False if it was recorded before (a replay).
    Shared by every instance on the database. On a SQLite file the insert is one unit of
    the group-committing writer (signed calls such as /v1/authorize arrive together)."""
    from sqlalchemy.exc import IntegrityError

    database = engine.url.database or ""
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        from store.writer import sqlite_writer

        return await sqlite_writer(engine).run(
            functools.partial(_sqlite_first_use, signature, expires_at))
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(admin_signatures).values(
                signature=signature, expires_at=expires_at))
    except IntegrityError:
        return False
    return True


def _sqlite_first_use(signature: str, expires_at: float, conn) -> bool:
    cur = conn.execute("INSERT INTO admin_signatures (signature, expires_at) VALUES (?, ?) "
                       "ON CONFLICT (signature) DO NOTHING", (signature, expires_at))
    return cur.rowcount == 1


async def purge_signatures(engine: AsyncEngine, now: float) -> None:
    from sqlalchemy import delete

    async with engine.begin() as conn:
        await conn.execute(delete(admin_signatures).where(admin_signatures.c.expires_at < now))
