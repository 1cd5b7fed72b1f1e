"""Origin secrets per paygate: current + previous (valid until a chosen time).

Rotation keeps the previous secret verifiable for a grace period, so an origin can be
updated after the gateway without refusing traffic in between.
"""

from __future__ import annotations

import secrets as _random
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from store.clock import Clock
from store.crypto import SecretBox
from store.schema import origin_secrets


def new_secret() -> str:
    """A random secret: 32 bytes, url-safe base64 (43 characters)."""
    return _random.token_urlsafe(32)


@dataclass(frozen=True)
class OriginSecrets:
    current: str
    previous: str | None
    previous_valid_until: float | None

    def valid(self, now: float) -> list[str]:
        """Secrets an origin should accept now, current first."""
        out = [self.current]
        if self.previous and self.previous_valid_until and now < self.previous_valid_until:
            out.append(self.previous)
        return out


class SecretStore:
    def __init__(self, engine: AsyncEngine, box: SecretBox, clock: Clock) -> None:
        self._engine = engine
        self._box = box
        self._clock = clock

    async def get(self, paygate_id: str) -> OriginSecrets | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                select(origin_secrets).where(origin_secrets.c.paygate_id == paygate_id)
            )).first()
        if row is None:
            return None
        return OriginSecrets(
            current=self._box.open(row.current_sealed),
            previous=self._box.open(row.previous_sealed) if row.previous_sealed else None,
            previous_valid_until=row.previous_valid_until,
        )

    async def ensure(self, paygate_id: str, wanted: str | None, grace_seconds: int) -> OriginSecrets:
        """Make sure a secret exists: `wanted` (from the config's env var) if given —
        rotating to it when the stored one differs — else keep or create a random one."""
        existing = await self.get(paygate_id)
        if existing is None:
            value = wanted or new_secret()
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(insert(origin_secrets).values(
                        paygate_id=paygate_id, current_sealed=self._box.seal(value),
                        previous_sealed=None, previous_valid_until=None,
                        rotated_at=self._clock.now()))
            except IntegrityError:
                # Another instance created it first (several starting at once): use theirs.
                return await self.ensure(paygate_id, wanted, grace_seconds)
            return OriginSecrets(value, None, None)
        if wanted and wanted != existing.current:
            return await self.rotate(paygate_id, wanted, grace_seconds)
        return existing

    async def rotate(self, paygate_id: str, value: str | None, grace_seconds: int,
                     emit=None) -> OriginSecrets:
        """Install `value` (or a random secret) as current; the old current stays valid
        for `grace_seconds`. `emit(conn)` runs inside the rotation's transaction (the
        outbox event)."""
        existing = await self.get(paygate_id)
        if existing is None:
            return await self.ensure(paygate_id, value, grace_seconds)
        value = value or new_secret()
        until = self._clock.now() + grace_seconds if grace_seconds else None
        async with self._engine.begin() as conn:
            await conn.execute(update(origin_secrets)
                .where(origin_secrets.c.paygate_id == paygate_id)
                .values(current_sealed=self._box.seal(value),
                        previous_sealed=self._box.seal(existing.current) if until else None,
                        previous_valid_until=until, rotated_at=self._clock.now()))
            if emit is not None:
                await emit(conn)
        return OriginSecrets(value, existing.current if until else None, until)
