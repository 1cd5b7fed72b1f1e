"""Helpers for admin API tests: keys made in the gateway's own store, a signing client,
and a store fixture that runs each test on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from gateway.admin.auth import sign
from gateway.admin.common import ADMIN
from store import migrations
from store.db import create_engine_unpooled
from tests.support.postgres import start_postgres


@pytest.fixture(scope="module")
def postgres_server():
    with start_postgres(database="tollgate") as server:
        yield server


async def fresh_pg_url(server) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine_unpooled(server.url)
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = server.url.rsplit("/", 1)[0] + "/" + name
    engine = create_engine_unpooled(url)
    try:
        await migrations.migrate(engine)
    finally:
        await engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_config(request, tmp_path) -> dict:
    """{} for the gateway fixture's own SQLite store, or a fresh migrated PostgreSQL
    database (with one master key file, so several instances can share it)."""
    if request.param == "sqlite":
        return {}
    url = await fresh_pg_url(request.getfixturevalue("postgres_server"))
    return {"database": {"url": url, "master_key_file": str(tmp_path / "shared.key")}}


async def make_key(handle, provider: str | None = None, operator: bool = False):
    key, secret = await handle.app[ADMIN].keys.create(provider, operator)
    return key.id, secret


@dataclass
class Answer:
    status: int
    body: Any
    text: str
    headers: Any


@dataclass
class Signer:
    """Signs each request as PROTOCOLS.md "X-PAY signing" says."""

    http: aiohttp.ClientSession
    base: str
    key_id: str
    secret: str

    used: set = field(default_factory=set)

    def headers(self, method: str, path: str, body: bytes, ts: int | None = None) -> dict:
        ts_text = str(int(time.time()) if ts is None else ts)
        self.used.add((method, path.split("?")[0], body, ts_text))
        return {"X-PAY-Key": self.key_id, "X-PAY-Timestamp": ts_text,
                "X-PAY-Signature": sign(self.secret, ts_text, method, path.split("?")[0], body)}

    async def fresh_headers(self, method: str, path: str, body: bytes) -> dict:
        """Signature headers never used before. An identical request (the query is not
        signed) in the same second would repeat a signature, which the gateway refuses
        as a replay; so, as a real client must, wait for the next second."""
        while (method, path.split("?")[0], body, str(int(time.time()))) in self.used:
            await asyncio.sleep(0.05)
        return self.headers(method, path, body)

    async def call(self, method: str, path: str, body: Any = None, *,
                   headers: dict | None = None, raw: bytes | None = None) -> Answer:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        hdrs = await self.fresh_headers(method, path, data) if headers is None else headers
        if data:
            hdrs = {**hdrs, "Content-Type": "application/json"}
        async with self.http.request(method, self.base + path, data=data, headers=hdrs) as r:
            text_body = await r.text()
            try:
                parsed = json.loads(text_body) if text_body else None
            except ValueError:
                parsed = None
            return Answer(r.status, parsed, text_body, r.headers)
