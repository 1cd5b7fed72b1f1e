"""Hedera allowance sessions on three `tollgate serve` processes sharing one PostgreSQL:
parallel calls spread over the instances are served exactly up to the allowance, and the
instances' pull workers collect the charges on chain once between them.

(A module of its own: its instances must not share the PostgreSQL server's connection
limit with the x402 cluster of test_instances.py; see the README on sizing.)"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from store.schema import session_pulls, sessions
from tests.gateway.session_support import KEY_ENV, UNIT_PRICE, call_headers, open_session, session_config
from tests.ops.cluster import Cluster, fresh_database
from tests.ops.test_instances import Recorder, eventually, scalar

FUNDED_CALLS = 50
PARALLEL_CALLS = 200


@pytest.fixture
async def session_cluster(postgres_server, hedera_devnet, tmp_path):
    origin = Recorder()
    url = await origin.start()
    config = session_config(hedera_devnet, url, hedera={"pull_interval_seconds": 1})
    db_url = await fresh_database(postgres_server)
    env = {KEY_ENV: hedera_devnet.account("spender").private_key}
    async with Cluster(config, db_url, tmp_path, instances=3, env=env) as cluster:
        yield cluster, origin
    await origin.server.close()


async def test_parallel_session_calls_across_instances_serve_exactly_what_is_funded(
        session_cluster, http, hedera_devnet, hedera_account):
    cluster, origin = session_cluster
    owner = hedera_account()
    merchant = hedera_devnet.account("merchant")
    merchant_before = hedera_devnet.balance(merchant)

    class First:  # open_session wants an object with .url
        url = cluster.url(0)

    token = await open_session(http, First, hedera_devnet, owner,
                               allowance=FUNDED_CALLS * UNIT_PRICE)

    async def call(i: int) -> int:
        async with http.get(cluster.url(i) + "/sky/v1/flights", headers=call_headers(token)) as r:
            return r.status

    statuses = await asyncio.gather(*(call(i) for i in range(PARALLEL_CALLS)))
    assert statuses.count(200) == FUNDED_CALLS
    assert statuses.count(402) == PARALLEL_CALLS - FUNDED_CALLS
    assert len(origin.requests) == FUNDED_CALLS
    spent = await scalar(cluster.db_url, select(sessions.c.spent))
    assert spent == FUNDED_CALLS * UNIT_PRICE

    # The pull workers of all three instances collect the charges once between them.
    async def pulled():
        total = await scalar(cluster.db_url, select(func.coalesce(func.sum(
            session_pulls.c.amount), 0)).where(session_pulls.c.state == "succeeded"))
        return total == spent and hedera_devnet.balance(merchant) == merchant_before + spent

    await eventually(pulled, "the session's charges pulled")
    assert await scalar(cluster.db_url, select(func.sum(session_pulls.c.amount))) == spent
    assert hedera_devnet.balance(merchant) == merchant_before + spent
