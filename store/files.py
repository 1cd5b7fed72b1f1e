"""The files a file paygate sells (`paid_files`): one row per (paygate, name)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from store.clock import Clock
from store.schema import paid_files


@dataclass(frozen=True)
class PaidFile:
    paygate_id: str
    name: str
    storage: str  # "local" or "s3"
    stored: str | None  # local: the file's name under the files directory
    bucket: str | None
    object_key: str | None
    size: int | None
    content_type: str
    sha256: str | None
    created_at: float


class FileStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    async def put(self, f: PaidFile) -> PaidFile | None:
        """Store `f` (created_at set now), replacing a file of the same name; returns the
        replaced row (whose local bytes the caller removes), or None."""
        async with self.engine.begin() as conn:
            old = (await conn.execute(select(paid_files).where(
                paid_files.c.paygate_id == f.paygate_id, paid_files.c.name == f.name)
                .with_for_update())).first()
            if old is not None:
                await conn.execute(delete(paid_files).where(
                    paid_files.c.paygate_id == f.paygate_id, paid_files.c.name == f.name))
            row = {**f.__dict__, "created_at": self.clock.now()}
            await conn.execute(paid_files.insert().values(**row))
        return PaidFile(**old._mapping) if old is not None else None

    async def get(self, paygate_id: str, name: str) -> PaidFile | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(paid_files).where(
                paid_files.c.paygate_id == paygate_id, paid_files.c.name == name))).first()
        return PaidFile(**row._mapping) if row is not None else None

    async def list(self, paygate_id: str) -> list[PaidFile]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(paid_files).where(
                paid_files.c.paygate_id == paygate_id).order_by(paid_files.c.name))).all()
        return [PaidFile(**r._mapping) for r in rows]
