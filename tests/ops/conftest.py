"""Fixtures for the operations tests: the gateway tests' origins and HTTP client, the
devnet keys, and one PostgreSQL server per module (each test takes a fresh database)."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import http, origin, settler_key  # noqa: F401
from tests.support.postgres import start_postgres


@pytest.fixture(scope="module")
def postgres_server():
    with start_postgres(database="tollgate") as server:
        yield server
