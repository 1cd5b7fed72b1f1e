"""Migration 5 upgrades a database made by earlier versions: uint256 amounts (a table
rebuild on SQLite), replay binding and limit columns; rows and constraints survive."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    insert,
    text,
)
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import create_async_engine

from chains.payments import NewPayment, PaymentStore
from store import migrations, schema
from store.clock import ManualClock
from store.db import create_engine
from tests.support.postgres import start_postgres

# The x402 tables as versions 2-4 created them.
_old = MetaData()
OLD_PAYMENTS = Table(
    "payments", _old,
    Column("id", String(64), primary_key=True),
    Column("claim_key", String(200), nullable=False, unique=True),
    Column("payment_identifier", String(200), nullable=True),
    Column("request_fingerprint", String(64), nullable=False),
    Column("rail", String(32), nullable=False),
    Column("paygate_id", String(64), nullable=False),
    Column("network", String(64), nullable=False),
    Column("asset", String(100), nullable=False),
    Column("payer", String(100), nullable=False),
    Column("pay_to", String(100), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("settlement", String(16), nullable=False),
    Column("payload", Text, nullable=False),
    Column("tx_hash", String(100), nullable=True),
    Column("error", String(200), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_until", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("paygate_id", "payment_identifier", name="uq_payments_identifier"),
)
OLD_RESPONSES = Table(
    "payment_responses", _old,
    Column("payment_id", String(64), primary_key=True),
    Column("status", Integer, nullable=False),
    Column("headers", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("complete", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)


@pytest.fixture(scope="module")
def postgres():
    with start_postgres(database="tollgate_v5") as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request, tmp_path):
    if request.param == "sqlite":
        eng = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db' / 'old.db'}")
    else:
        server = request.getfixturevalue("postgres")
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_async_engine(server.url, isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await admin.dispose()
        eng = create_engine(server.url.rsplit("/", 1)[0] + "/" + name)
    yield eng
    await eng.dispose()


def _make_old_database(conn) -> None:
    """A database as the versions before 5 left it, holding one served payment: 1 and 2
    by hand (the x402 tables as they were), later ones by their own upgrade functions."""
    schema.schema_migrations.create(conn)
    schema.origin_secrets.create(conn)
    _old.create_all(conn)
    for m in migrations.MIGRATIONS:
        if m.version >= 5:
            continue
        if m.version > 2:
            m.upgrade(conn)
        conn.execute(insert(schema.schema_migrations).values(
            version=m.version, description=m.description, applied_at=time.time()))
    now = time.time()
    conn.execute(insert(OLD_PAYMENTS).values(
        id="old1", claim_key="net|tok|payer|0x01", payment_identifier=None,
        request_fingerprint="f" * 64, rail="x402-evm", paygate_id="sky", network="eip155:1",
        asset="0xtok", payer="0xpayer", pay_to="0xmerchant", amount=9_000_000_000_000_000_000,
        state="settled", settlement="after", payload=json.dumps({"payment": {}}),
        tx_hash="0xabc", error=None, attempts=1, lease_until=None, created_at=now,
        updated_at=now))
    conn.execute(insert(OLD_RESPONSES).values(
        payment_id="old1", status=200, headers="[]", body=b"paid", complete=1, created_at=now))


def new_payment(claim_key: str, amount: int) -> NewPayment:
    return NewPayment(claim_key=claim_key, payment_identifier=None, fingerprint="e" * 64,
                      rail="x402-evm", paygate_id="sky", network="eip155:1", asset="0xtok",
                      payer="0xpayer", pay_to="0xmerchant", amount=amount, settlement="after",
                      payload={"payment": {}}, request_digest="d" * 64)


async def test_version_5_upgrades_an_old_database(engine):
    async with engine.begin() as conn:
        await conn.run_sync(_make_old_database)
    assert 5 in await migrations.pending(engine)
    assert 5 in await migrations.migrate(engine)
    assert await migrations.pending(engine) == []

    store = PaymentStore(engine, ManualClock())
    old = await store.get("old1")
    assert old.amount == 9_000_000_000_000_000_000 and old.tx_hash == "0xabc"
    assert old.request_digest is None and old.forward_until is None
    stored = await store.response("old1")
    assert stored.body == b"paid" and stored.body_kept
    # uint256 amounts now fit, exactly; the claim key is still unique.
    biggest = 2**256 - 1
    pid = await store.claim(new_payment("net|tok|payer|0x02", biggest))
    assert (await store.get(pid)).amount == biggest
    assert await store.claim(new_payment("net|tok|payer|0x02", 1)) is None
    assert await store.claim(new_payment("net|tok|payer|0x01", 1)) is None
    with pytest.raises(StatementError, match="not a uint256"):
        await store.claim(new_payment("net|tok|payer|0x03", 2**256))
    async with engine.connect() as conn:
        cols = await conn.run_sync(lambda c: {col["name"]: col["type"]
                                              for col in inspect(c).get_columns("payments")})
        if engine.dialect.name == "sqlite":
            kinds = (await conn.execute(text("SELECT DISTINCT typeof(amount) FROM payments"))
                     ).scalars().all()
            assert kinds == ["text"]
    assert {"request_digest", "forward_until", "client_digest"} <= set(cols)
    # and running it again does nothing
    assert await migrations.migrate(engine) == []


async def test_version_5_on_a_fresh_database_is_a_no_op(engine):
    assert 5 in await migrations.migrate(engine)
    store = PaymentStore(engine, ManualClock())
    pid = await store.claim(new_payment("net|tok|payer|0x09", 20 * 10**18))
    assert (await store.get(pid)).amount == 20 * 10**18
