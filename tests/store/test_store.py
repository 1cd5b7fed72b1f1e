"""store: migrations, sealed origin secrets, the master key — on SQLite and on a real
PostgreSQL server."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from store import migrations, schema
from store.clock import ManualClock
from store.crypto import MasterKeyError, SecretBox, load_master_key
from store.db import create_engine
from store.secrets import SecretStore
from tests.support.postgres import start_postgres

ALL_VERSIONS = [m.version for m in migrations.MIGRATIONS]
UNSET_ENV = "TOLLGATE_TEST_UNSET_MASTER_KEY"


@pytest.fixture
async def sqlite_engine(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db' / 'store.db'}")
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the session. No skip: missing binaries make the
    helper raise PostgresUnavailable, which says what to install."""
    with start_postgres(database="tollgate_store") as server:
        yield server


@pytest.fixture
async def pg_engine(postgres):
    """A fresh, empty database on the session's server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(postgres.url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    engine = create_engine(postgres.url.rsplit("/", 1)[0] + "/" + name)
    yield engine
    await engine.dispose()


def box() -> SecretBox:
    return SecretBox(Fernet.generate_key())


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def recorded(engine: AsyncEngine) -> list[tuple[int, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(schema.schema_migrations.c.version,
                                         schema.schema_migrations.c.description)
                                  .order_by(schema.schema_migrations.c.version))
        return [tuple(r) for r in rows]


# ----------------------------------------------------------- migrations


async def check_migrations(engine: AsyncEngine) -> None:
    with pytest.raises(migrations.SchemaBehind) as exc:
        await migrations.ensure_current(engine)
    assert "tollgate migrate" in str(exc.value)
    assert await migrations.pending(engine) == ALL_VERSIONS

    assert await migrations.migrate(engine) == ALL_VERSIONS
    assert await recorded(engine) == [(m.version, m.description) for m in migrations.MIGRATIONS]
    assert {"schema_migrations", "origin_secrets", "payments",
            "payment_responses"} <= await table_names(engine)

    # idempotent: nothing to do the second time, nothing recorded twice
    assert await migrations.migrate(engine) == []
    assert await migrations.pending(engine) == []
    await migrations.ensure_current(engine)
    assert len(await recorded(engine)) == len(ALL_VERSIONS)


async def test_migrations_are_idempotent_and_recorded_sqlite(sqlite_engine):
    await check_migrations(sqlite_engine)


async def test_migrations_are_idempotent_and_recorded_postgres(pg_engine):
    await check_migrations(pg_engine)


async def test_concurrent_migrate_on_postgres_applies_once(postgres, pg_engine):
    # several instances starting at once on one database
    url = pg_engine.url.render_as_string(hide_password=False)
    engines = [create_engine(url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrations.migrate(e) for e in engines))
    finally:
        for e in engines:
            await e.dispose()
    assert sorted(results, key=len) == [[], [], [], ALL_VERSIONS]
    assert len(await recorded(pg_engine)) == len(ALL_VERSIONS)


# ----------------------------------------------------------- secrets


async def check_secrets_round_trip(engine: AsyncEngine) -> None:
    await migrations.migrate(engine)
    clock = ManualClock(1_700_000_000)
    store = SecretStore(engine, box(), clock)

    assert await store.get("sky") is None
    first = await store.ensure("sky", None, 300)
    assert len(first.current) >= 43 and first.previous is None
    assert await store.get("sky") == first
    assert await store.ensure("sky", None, 300) == first  # kept, not regenerated

    clock.advance(10)
    rotated = await store.rotate("sky", None, 300)
    assert rotated.current not in (first.current, "")
    assert rotated.previous == first.current
    assert rotated.previous_valid_until == 1_700_000_310
    assert await store.get("sky") == rotated
    assert rotated.valid(clock.now()) == [rotated.current, first.current]
    clock.advance(299)
    assert (await store.get("sky")).valid(clock.now()) == [rotated.current, first.current]
    clock.advance(1)
    assert (await store.get("sky")).valid(clock.now()) == [rotated.current]

    # a custom value; no grace means the old one stops at once
    custom = await store.rotate("sky", "provider-chosen", 0)
    assert custom.current == "provider-chosen" and custom.previous is None
    assert (await store.get("sky")).valid(clock.now()) == ["provider-chosen"]

    # ensure() with a wanted value (from the config's env var) rotates to it with grace
    wanted = await store.ensure("sky", "from-env", 60)
    assert wanted.current == "from-env" and wanted.previous == "provider-chosen"
    assert (await store.get("sky")).valid(clock.now()) == ["from-env", "provider-chosen"]

    # secrets are per paygate
    other = await store.ensure("other", "other-secret", 60)
    assert other.current == "other-secret"
    assert (await store.get("sky")).current == "from-env"


async def test_secrets_round_trip_sqlite(sqlite_engine):
    await check_secrets_round_trip(sqlite_engine)


async def test_secrets_round_trip_postgres(pg_engine):
    await check_secrets_round_trip(pg_engine)


async def check_sealed_at_rest(engine: AsyncEngine) -> None:
    await migrations.migrate(engine)
    store = SecretStore(engine, box(), ManualClock(1_700_000_000))
    await store.ensure("sky", "plain-secret-value-1", 60)
    await store.rotate("sky", "plain-secret-value-2", 60)
    async with engine.connect() as conn:
        row = (await conn.execute(text(
            "SELECT current_sealed, previous_sealed FROM origin_secrets WHERE paygate_id = 'sky'"
        ))).one()
    for column in row:
        assert column and "plain-secret-value" not in column
    assert row[0] != row[1]


async def test_secrets_sealed_at_rest_sqlite(sqlite_engine, tmp_path):
    await check_sealed_at_rest(sqlite_engine)
    await sqlite_engine.dispose()
    for f in (tmp_path / "db").iterdir():  # the database file, its WAL and shm
        assert b"plain-secret-value" not in f.read_bytes(), f.name


async def test_secrets_sealed_at_rest_postgres(pg_engine):
    await check_sealed_at_rest(pg_engine)


async def test_wrong_master_key_raises(sqlite_engine):
    await migrations.migrate(sqlite_engine)
    await SecretStore(sqlite_engine, box(), ManualClock()).ensure("sky", None, 60)
    with pytest.raises(MasterKeyError):
        await SecretStore(sqlite_engine, box(), ManualClock()).get("sky")


@pytest.mark.parametrize("key", [b"", b"too-short", b"x" * 44])
def test_malformed_master_key_raises(key):
    with pytest.raises(MasterKeyError) as exc:
        SecretBox(key)
    assert "32 url-safe base64" in str(exc.value)


# ----------------------------------------------------------- master key


def test_master_key_file_created_0600_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv(UNSET_ENV, raising=False)
    path = tmp_path / "keys" / "master.key"
    first = load_master_key(UNSET_ENV, path)
    assert path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    sealed = first.seal("hello")
    again = load_master_key(UNSET_ENV, path)
    assert again.open(sealed) == "hello"  # the same key, read back


def test_master_key_file_0600_despite_permissive_umask(tmp_path, monkeypatch):
    monkeypatch.delenv(UNSET_ENV, raising=False)
    old = os.umask(0)
    try:
        path = tmp_path / "master.key"
        load_master_key(UNSET_ENV, path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_master_key_env_wins_over_file(tmp_path, monkeypatch):
    key = Fernet.generate_key()
    monkeypatch.setenv(UNSET_ENV, key.decode())
    path = tmp_path / "master.key"
    from_env = load_master_key(UNSET_ENV, path)
    assert not path.exists()  # no file written when the env var is set
    assert SecretBox(key).open(from_env.seal("x")) == "x"


async def check_concurrent_first_ensure(engine: AsyncEngine) -> None:
    """Several instances starting at once on an empty store all end up with the same
    secret instead of one of them crashing on the primary key."""
    await migrations.migrate(engine)
    key = box()
    url = engine.url.render_as_string(hide_password=False)
    engines = [create_engine(url) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(SecretStore(e, key, ManualClock()).ensure("sky", None, 60) for e in engines),
            return_exceptions=True)
    finally:
        for e in engines:
            await e.dispose()
    assert not [r for r in results if isinstance(r, BaseException)], results
    stored = await SecretStore(engine, key, ManualClock()).get("sky")
    assert {r.current for r in results} == {stored.current}


async def test_concurrent_first_ensure_sqlite(sqlite_engine):
    await check_concurrent_first_ensure(sqlite_engine)


async def test_concurrent_first_ensure_postgres(pg_engine):
    await check_concurrent_first_ensure(pg_engine)
