"""The deferred-exposure claim (PaymentStore.claim with a limit), on SQLite and
PostgreSQL: exact at the limit whatever the mix of amounts (the SQLite path bounds the sum
by count * max and adds up exactly only near the limit), uint256 amounts included, and
concurrent claims of one payer never exceed it together."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from chains.payments import NewPayment, PaymentStore
from store import migrations
from store.clock import ManualClock
from store.db import create_engine
from tests.store.test_store import postgres  # noqa: F401


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    else:
        server = request.getfixturevalue("postgres")
        name = f"e_{uuid.uuid4().hex[:12]}"
        admin = create_async_engine(server.url, isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await admin.dispose()
        engine = create_engine(server.url.rsplit("/", 1)[0] + "/" + name)
    await migrations.migrate(engine)
    yield PaymentStore(engine, ManualClock())
    await engine.dispose()


def payment(n: int, amount: int, payer: str = "0xpayer") -> NewPayment:
    return NewPayment(claim_key=f"k{n}|{payer}", payment_identifier=None, fingerprint="e" * 64,
                      rail="x402-evm", paygate_id="sky", network="eip155:1", asset="0xtok",
                      payer=payer, pay_to="0xmerchant", amount=amount, settlement="deferred",
                      payload={"payment": {}}, request_digest="d" * 64)


async def test_exact_at_the_limit_with_mixed_amounts(store):
    limit = 10
    assert await store.claim(payment(1, 8), limit)
    assert await store.claim(payment(2, 1), limit)  # 2 * 8 > 10, but the sum is 9
    assert await store.claim(payment(3, 1), limit)  # exactly 10
    assert await store.claim(payment(4, 1), limit) is None  # 11
    assert await store.find("k4|0xpayer", "sky", None) is None  # rolled back, no row
    assert await store.claim(payment(5, 1, payer="0xother"), limit)  # per payer
    assert (await store.counts()) == {"verified": 4}


async def test_uint256_amounts_are_summed_exactly(store):
    half = 2**255
    limit = 2**256 - 1
    assert await store.claim(payment(1, half - 1), limit)
    assert await store.claim(payment(2, half), limit)  # sum 2**256 - 1: at the limit
    assert await store.claim(payment(3, 1), limit) is None


async def test_concurrent_claims_stay_within_the_limit(store):
    got = await asyncio.gather(*(store.claim(payment(i, 3), 20) for i in range(20)))
    assert sum(1 for g in got if g) == 6


async def test_two_instances_on_one_postgres_stay_within_the_limit(postgres):  # noqa: F811
    """Two gateway instances (two engines, each batching its own claims) on one database:
    together they still claim no more than the payer's limit."""
    name = f"e_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(postgres.url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    engines = [create_engine(url), create_engine(url)]
    try:
        await migrations.migrate(engines[0])
        stores = [PaymentStore(e, ManualClock()) for e in engines]
        got = await asyncio.gather(*(stores[i % 2].claim(payment(i, 3), 20) for i in range(40)))
        assert sum(1 for g in got if g) == 6
        assert (await stores[0].counts()) == {"verified": 6}
    finally:
        for e in engines:
            await e.dispose()
