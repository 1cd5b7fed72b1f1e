"""Paygates shared by every instance on the database.

Rows hold a paygate in the config file's shape (JSON). `source` is "config" for the
paygates a config file defines (written at start by id, see `apply_config`) and "api" for
those made through the admin API. Every change bumps `paygate_state.version` in the same
transaction, so an instance that polls the version sees every change.

Validation is not done here: the gateway validates a paygate with the config file's code
before it writes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.clock import Clock
from store.schema import origin_secrets, paygate_state, runtime_paygates


class PaygateExists(Exception):
    pass


@dataclass(frozen=True)
class StoredPaygate:
    id: str
    provider: str | None
    source: str  # "config" | "api"
    body: dict[str, Any]
    created_at: float
    updated_at: float


def _row(r) -> StoredPaygate:
    return StoredPaygate(r.id, r.provider, r.source, json.loads(r.body), r.created_at,
                         r.updated_at)


async def _bump(conn: AsyncConnection) -> None:
    done = await conn.execute(update(paygate_state).where(paygate_state.c.id == 1)
                              .values(version=paygate_state.c.version + 1))
    if done.rowcount == 0:
        try:
            async with conn.begin_nested():
                await conn.execute(insert(paygate_state).values(id=1, version=1))
        except IntegrityError:  # created by a concurrent transaction meanwhile
            await conn.execute(update(paygate_state).where(paygate_state.c.id == 1)
                               .values(version=paygate_state.c.version + 1))


class PaygateStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    async def version(self) -> int:
        async with self._engine.connect() as conn:
            value = (await conn.execute(select(paygate_state.c.version)
                                        .where(paygate_state.c.id == 1))).scalar()
        return int(value or 0)

    async def all(self) -> list[StoredPaygate]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(runtime_paygates)
                                       .order_by(runtime_paygates.c.created_at,
                                                 runtime_paygates.c.id))).all()
        return [_row(r) for r in rows]

    async def get(self, paygate_id: str) -> StoredPaygate | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(runtime_paygates).where(
                runtime_paygates.c.id == paygate_id))).first()
        return _row(row) if row else None

    async def apply_config(self, bodies: list[dict[str, Any]]) -> None:
        """Write the config file's paygates by id (source "config"); drop config rows the
        file no longer has. An API paygate with the same id is replaced: the file wins.
        Instances starting together may race on the same ids: the loser tries again."""
        for attempt in range(5):
            try:
                return await self._apply_config(bodies)
            except IntegrityError:
                if attempt == 4:
                    raise

    async def _apply_config(self, bodies: list[dict[str, Any]]) -> None:
        now = self._clock.now()
        wanted = {b["id"]: b for b in bodies}
        async with self._engine.begin() as conn:
            have = {r.id: r for r in (await conn.execute(select(runtime_paygates))).all()}
            changed = False
            for pid, body in wanted.items():
                text = json.dumps(body, sort_keys=True)
                row = have.get(pid)
                if row is None:
                    await conn.execute(insert(runtime_paygates).values(
                        id=pid, provider=body.get("provider"), source="config", body=text,
                        created_at=now, updated_at=now))
                    changed = True
                elif row.body != text or row.source != "config":
                    await conn.execute(update(runtime_paygates)
                                       .where(runtime_paygates.c.id == pid)
                                       .values(provider=body.get("provider"), source="config",
                                               body=text, updated_at=now))
                    changed = True
            for pid, row in have.items():
                if row.source == "config" and pid not in wanted:
                    await conn.execute(delete(runtime_paygates)
                                       .where(runtime_paygates.c.id == pid))
                    changed = True
            if changed:
                await _bump(conn)

    async def create(self, body: dict[str, Any], provider: str | None,
                     emit=None) -> StoredPaygate:
        """Insert an API paygate; PaygateExists if the id is taken. `emit(conn)` runs in
        the same transaction (the outbox event of the change)."""
        now = self._clock.now()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(runtime_paygates).values(
                    id=body["id"], provider=provider, source="api",
                    body=json.dumps(body, sort_keys=True), created_at=now, updated_at=now))
                # A secret left by an earlier paygate of this id (maybe another provider's)
                # must not be handed to the new owner: the new paygate gets a fresh one.
                await conn.execute(delete(origin_secrets)
                                   .where(origin_secrets.c.paygate_id == body["id"]))
                await _bump(conn)
                if emit:
                    await emit(conn)
        except IntegrityError:
            raise PaygateExists(body["id"]) from None
        return StoredPaygate(body["id"], provider, "api", body, now, now)

    async def replace(self, body: dict[str, Any], emit=None) -> bool:
        """Replace an API paygate's body; False if there is no such API paygate."""
        async with self._engine.begin() as conn:
            done = await conn.execute(update(runtime_paygates).where(
                runtime_paygates.c.id == body["id"], runtime_paygates.c.source == "api")
                .values(body=json.dumps(body, sort_keys=True),
                        updated_at=self._clock.now()))
            if done.rowcount != 1:
                return False
            await _bump(conn)
            if emit:
                await emit(conn)
        return True

    async def delete(self, paygate_id: str, emit=None) -> bool:
        async with self._engine.begin() as conn:
            done = await conn.execute(delete(runtime_paygates).where(
                runtime_paygates.c.id == paygate_id, runtime_paygates.c.source == "api"))
            if done.rowcount != 1:
                return False
            await conn.execute(delete(origin_secrets)
                               .where(origin_secrets.c.paygate_id == paygate_id))
            await _bump(conn)
            if emit:
                await emit(conn)
        return True
