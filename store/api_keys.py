"""Admin API keys: `pk_<24 hex>` ids with a secret sealed by the master key.

A provider key (`provider` set) manages that provider's resources only; an operator key
(`operator`, no provider) manages everything. A secret is shown once, at creation or
rotation; the store keeps it sealed (it must be readable to check HMAC signatures).
Rotation keeps the previous secret valid for a grace period. Revocation is final.
"""

from __future__ import annotations

import secrets as _random
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
    def __init__(self, engine: AsyncEngine, box: SecretBox, clock: Clock) -> None:
        self._engine = engine
        self._box = box
        self._clock = clock

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
        """The unrevoked key and the secrets it may sign with now; None otherwise."""
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
        return done.rowcount == 1

    async def rotate(self, key_id: str, grace_seconds: float) -> str | None:
        """A new secret for an active key; the old one stays valid `grace_seconds`."""
        found = await self.active(key_id)
        if found is None:
            return None
        secret, now = new_key_secret(), self._clock.now()
        async with self._engine.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(
                secret_sealed=self._box.seal(secret),
                previous_sealed=self._box.seal(found.secrets[0]) if grace_seconds else None,
                previous_valid_until=now + grace_seconds if grace_seconds else None))
        return secret


async def first_use(engine: AsyncEngine, signature: str, expires_at: float) -> bool:
    """Record an admin request signature; False if it was recorded before (a replay).
    Shared by every instance on the database."""
    from sqlalchemy.exc import IntegrityError

    try:
        async with engine.begin() as conn:
            await conn.execute(insert(admin_signatures).values(
                signature=signature, expires_at=expires_at))
    except IntegrityError:
        return False
    return True


async def purge_signatures(engine: AsyncEngine, now: float) -> None:
    from sqlalchemy import delete

    async with engine.begin() as conn:
        await conn.execute(delete(admin_signatures).where(admin_signatures.c.expires_at < now))
