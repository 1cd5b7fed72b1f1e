"""Several `tollgate serve` processes on one PostgreSQL, no balancer: the test spreads the
calls itself. The money properties must hold across processes exactly as inside one:
a session serves what it is funded for and no more, one x402 payment buys one origin
call and settles once, background work (deferred settlements, session pulls) is done
once, a secret rotated through the store reaches every instance within its cache time
(gateway.state's secret TTL), and a paygate created through the admin API on one
instance is routed by all of them within `admin.poll_seconds`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from sqlalchemy import select

from gateway.state import _SECRET_TTL
from store.db import create_engine_unpooled
from store.schema import payments
from tests.gateway.admin_support import Signer
from tests.gateway.test_x402_settlement import challenge_req
from tests.gateway.x402_support import PRICE, SETTLER_ENV, sign_payment, token_balance, x402_config
from tests.ops.cluster import NET_WAIT, REPO, Cluster, fresh_database

DEFERRED = 12


async def scalar(db_url: str, query):
    engine = create_engine_unpooled(db_url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(query)).scalar()
    finally:
        await engine.dispose()


async def rows(db_url: str, query):
    engine = create_engine_unpooled(db_url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(query)).all()
    finally:
        await engine.dispose()


async def eventually(check, what: str):
    """Poll `check` (async, returns truthy when done) within NET_WAIT."""
    try:
        async with asyncio.timeout(NET_WAIT):
            while not await check():
                await asyncio.sleep(0.2)
    except TimeoutError:
        pytest.fail(f"not within {NET_WAIT} s: {what}")


class Recorder:
    """An origin on loopback that answers JSON and remembers what it got."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, CIMultiDict[str]]] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, CIMultiDict(request.headers)))
        return web.json_response({"path": request.path})

    async def start(self) -> str:
        await self.server.start_server(shutdown_timeout=1)
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture(scope="module")
async def x402_cluster(postgres_server, evm_devnet, tmp_path_factory):
    """Three instances: `sky` settles after the call, `def` deferred, `free` is a free
    paygate whose origin secret travels in plain text (so the test can read it)."""
    origin = Recorder()
    url = await origin.start()
    config = x402_config(evm_devnet, url, evm_extra={"deferred_max_timeout_seconds": 60})
    config["paygates"] += [
        {**config["paygates"][0], "id": "def", "prefix": "/def", "settlement": "deferred"},
        {"id": "free", "prefix": "/free", "target": url, "default_units": 0,
         "origin_auth": {"mode": "plaintext"}},
    ]
    config["server"] = {"settlement_interval_seconds": 0.2, "settlement_lease_seconds": 2}
    db_url = await fresh_database(postgres_server)
    async with Cluster(config, db_url, tmp_path_factory.mktemp("x402"), instances=3,
                       env={SETTLER_ENV: evm_devnet.settler.private_key}) as cluster:
        yield cluster, origin
    await origin.server.close()


async def test_one_payment_sent_100_times_across_instances_is_one_call_one_settlement(
        x402_cluster, http, evm_devnet):
    cluster, origin = x402_cluster
    merchant = evm_devnet.merchant.address
    before = token_balance(evm_devnet, merchant)
    req = await challenge_req(http, cluster.url(0) + "/sky/v1/flights")
    header = sign_payment(evm_devnet, evm_devnet.payers[0], req)
    calls_before = len(origin.requests)

    async def send(i: int):
        async with http.get(cluster.url(i) + "/sky/v1/flights",
                            headers={"PAYMENT-SIGNATURE": header}) as r:
            return r.status, await r.read(), r.headers.get("X-Tollgate-Replay")

    answers = await asyncio.gather(*(send(i) for i in range(100)))
    # A copy gets the stored answer while the payment is unpublished; once its settlement
    # is on chain the header is public data, so a copy gets 409 with the receipt.
    served = [(body, replay) for status, body, replay in answers if status == 200]
    refused = [json.loads(body)["error"] for status, body, _ in answers if status != 200]
    assert len(served) + refused.count("payment_already_used") == 100, answers[:3]
    assert len({body for body, _ in served}) == 1
    assert [replay for _, replay in served].count(None) == 1  # one origin answer, replays
    assert len(origin.requests) - calls_before == 1
    paid = await rows(cluster.db_url, select(payments.c.state, payments.c.tx_hash)
                      .where(payments.c.paygate_id == "sky"))
    assert [p.state for p in paid] == ["settled"]
    assert token_balance(evm_devnet, merchant) == before + PRICE


async def test_deferred_settlements_are_sent_once_whichever_instance_took_the_payment(
        x402_cluster, http, evm_devnet):
    cluster, origin = x402_cluster
    merchant = evm_devnet.merchant.address
    before = token_balance(evm_devnet, merchant)
    settler = evm_devnet.settler.address
    nonce_before = int(evm_devnet.request("eth_getTransactionCount", [settler, "latest"]), 16)
    req = await challenge_req(http, cluster.url(0) + "/def/v1/flights")
    payers = evm_devnet.payers
    headers = [sign_payment(evm_devnet, payers[i % len(payers)], req) for i in range(DEFERRED)]

    async def pay(i: int) -> int:
        async with http.get(cluster.url(i) + "/def/v1/flights",
                            headers={"PAYMENT-SIGNATURE": headers[i]}) as r:
            return r.status

    assert await asyncio.gather(*(pay(i) for i in range(DEFERRED))) == [200] * DEFERRED
    query = select(payments.c.state, payments.c.tx_hash).where(payments.c.paygate_id == "def")

    async def all_settled():
        got = await rows(cluster.db_url, query)
        assert not [r for r in got if r.state in ("failed", "void")], got
        return len(got) == DEFERRED and all(r.state == "settled" for r in got)

    await eventually(all_settled, "every deferred payment settled")
    settled = await rows(cluster.db_url, query)
    assert len({r.tx_hash for r in settled}) == DEFERRED
    # Exactly one transaction per payment left the settler: no instance sent a duplicate.
    nonce_after = int(evm_devnet.request("eth_getTransactionCount", [settler, "latest"]), 16)
    assert nonce_after - nonce_before == DEFERRED
    assert token_balance(evm_devnet, merchant) == before + DEFERRED * PRICE


async def test_a_secret_rotated_in_the_store_reaches_every_instance_within_its_ttl(
        x402_cluster, http):
    cluster, origin = x402_cluster

    async def secrets_seen() -> list[str]:
        out = []
        for url in cluster.urls:
            async with http.get(url + "/free/ping") as r:
                assert r.status == 200
            out.append(origin.requests[-1][1]["Sigwei-Secret"])
        return out

    old = await secrets_seen()
    assert len(set(old)) == 1  # one shared secret, from the store
    new = "rotated-" + old[0][:8]
    out = subprocess.run([sys.executable, "-m", "gateway", "secrets", "rotate", "-c",
                          str(cluster.config_path), "free", "--value", new, "--grace", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=NET_WAIT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["current"] == new
    # Every instance cached the old value before the rotation committed; a cached value
    # is used for at most the TTL, so after it every instance signs with the new one.
    await asyncio.sleep(_SECRET_TTL)
    assert await secrets_seen() == [new] * len(cluster.urls)


async def test_a_paygate_created_through_one_instance_is_routed_by_every_instance(
        x402_cluster, http):
    """The admin API on instance 0 creates a paygate; the other processes route it within
    `admin.poll_seconds` (2 s), with no restart; deleting it unroutes it everywhere."""
    cluster, origin = x402_cluster
    made = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "--operator",
                           "-c", str(cluster.config_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=NET_WAIT)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    admin = Signer(http, cluster.url(0), key["id"], key["secret"])

    async def statuses(path: str) -> list[int]:
        out = []
        for url in cluster.urls:
            async with http.get(url + path) as r:
                out.append(r.status)
        return out

    assert await statuses("/late/ping") == [404] * len(cluster.urls)
    created = await admin.call("POST", "/api/v1/paygates", {
        "id": "late", "prefix": "/late", "target": f"http://127.0.0.1:{origin.server.port}",
        "default_units": 0,
        "allow_private_target": True, "origin_auth": {"mode": "plaintext"}})
    assert created.status == 201, created.text

    async def routed_everywhere():
        return await statuses("/late/ping") == [200] * len(cluster.urls)
    await eventually(routed_everywhere, "every instance routes the new paygate")
    assert (await admin.call("DELETE", "/api/v1/paygates/late")).status in (200, 204)

    async def gone_everywhere():
        return await statuses("/late/ping") == [404] * len(cluster.urls)
    await eventually(gone_everywhere, "every instance forgets the deleted paygate")
