"""Faults through real `tollgate serve` processes on PostgreSQL: the origin down, slow or
resetting; PostgreSQL stopped and restarted under load; the EVM node unreachable; the
Hedera mirror down; SIGTERM under load. The gateway fails closed (502/503/504), never
serves a call it was not paid for, never loses a charge, and recovers by itself."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from store.schema import payments
from tests.gateway.session_support import KEY_ENV, UNIT_PRICE, call_headers, open_session, session_config
from tests.gateway.test_x402_settlement import automine_off, challenge_req
from tests.gateway.test_x402_settlement_recovery import authorization_used
from tests.gateway.x402_support import PRICE, SETTLER_ENV, sign_payment, token_balance, x402_config
from tests.ops.cluster import Cluster, free_port, fresh_database
from tests.ops.test_instances import Recorder, eventually, rows

FINAL = ("settled", "failed", "void")


def nonce_of(header: str) -> tuple[str, str]:
    auth = json.loads(base64.b64decode(header))["payload"]["authorization"]
    return auth["from"], auth["nonce"]


async def pay(http, url: str, header: str) -> tuple[int, dict]:
    async with http.get(url, headers={"PAYMENT-SIGNATURE": header}) as r:
        body = await r.read()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, {}


async def resetting_origin() -> tuple[asyncio.Server, str]:
    """Reads a request, then resets the connection (RST) before answering anything."""
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_origin_down_slow_or_resetting_is_502_504_and_nothing_is_settled(
        postgres_server, evm_devnet, http, tmp_path):
    slow = web.Application()

    async def sleepy(request):
        await asyncio.sleep(5)
        return web.json_response({})
    slow.router.add_get("/{tail:.*}", sleepy)
    runner = web.AppRunner(slow)
    await runner.setup()
    slow_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", slow_port).start()
    reset_server, reset_url = await resetting_origin()
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    config = x402_config(evm_devnet, closed, paygate_id="down", prefix="/down")
    base = config["paygates"][0]
    config["paygates"] += [
        {**base, "id": "slow", "prefix": "/slow", "target": f"http://127.0.0.1:{slow_port}",
         "timeout_seconds": 1},
        {**base, "id": "reset", "prefix": "/reset", "target": reset_url},
    ]
    merchant = evm_devnet.merchant.address
    before = token_balance(evm_devnet, merchant)
    db_url = await fresh_database(postgres_server)
    try:
        async with Cluster(config, db_url, tmp_path, instances=1,
                           env={SETTLER_ENV: evm_devnet.settler.private_key}) as cluster:
            sent = {}
            for prefix, expected in (("down", 502), ("slow", 504), ("reset", 502)):
                url = cluster.url(0) + f"/{prefix}/v1/flights"
                header = sign_payment(evm_devnet, evm_devnet.payers[0],
                                      await challenge_req(http, url))
                status, body = await pay(http, url, header)
                assert status == expected, (prefix, body)
                sent[prefix] = header
            got = await rows(db_url, select(payments.c.paygate_id, payments.c.state,
                                            payments.c.tx_hash))
            assert sorted(r.paygate_id for r in got) == ["down", "reset", "slow"]
            assert all(r.state in ("void", "failed") and r.tx_hash is None for r in got), got
    finally:
        reset_server.close()
        await runner.cleanup()
    for header in sent.values():
        assert not authorization_used(evm_devnet, *nonce_of(header))
    assert token_balance(evm_devnet, merchant) == before


async def test_postgres_stopped_and_restarted_under_load_fails_closed_and_loses_nothing(
        postgres_server, evm_devnet, http, tmp_path):
    origin = Recorder()
    url = await origin.start()
    config = x402_config(evm_devnet, url)
    config["server"] = {"settlement_interval_seconds": 0.2, "settlement_lease_seconds": 2}
    merchant = evm_devnet.merchant.address
    before = token_balance(evm_devnet, merchant)
    db_url = await fresh_database(postgres_server)
    statuses: list[tuple[str, int, str]] = []  # (phase, status, error)
    phase = "up"
    stop = asyncio.Event()

    async with Cluster(config, db_url, tmp_path, instances=2,
                       env={SETTLER_ENV: evm_devnet.settler.private_key}) as cluster:
        req = await challenge_req(http, cluster.url(0) + "/sky/v1/flights")

        async def load(worker: int) -> None:
            i = 0
            while not stop.is_set():
                payer = evm_devnet.payers[worker % len(evm_devnet.payers)]
                header = sign_payment(evm_devnet, payer, req)
                try:
                    status, body = await pay(http, cluster.url(worker + i) + "/sky/v1/flights",
                                             header)
                except aiohttp.ClientError:
                    status, body = 0, {}
                statuses.append((phase, status, body.get("error", "")))
                i += 1
                await asyncio.sleep(0.05)

        def count(which: str, status: int) -> int:
            return sum(1 for p, s, _ in statuses if p == which and s == status)

        async def seen(which: str, status: int, n: int, what: str) -> None:
            async def check():
                return count(which, status) >= n
            await eventually(check, what)

        workers = [asyncio.create_task(load(w)) for w in range(4)]
        try:
            await seen("up", 200, 4, "paid calls served before the fault")
            phase = "down"
            postgres_server.halt()
            await seen("down", 503, 4, "503 while PostgreSQL is down")
            for inst in cluster.urls:
                async with http.get(inst + "/readyz") as r:
                    assert r.status == 503
            phase = "restarting"
            postgres_server.resume()
            phase = "back"
            await seen("back", 200, 4, "paid calls served again, without a restart")
        finally:
            stop.set()
            await asyncio.gather(*workers)

        # Settling resumes by itself. A request cut off between claiming its payment and
        # settling it stays `verified`: the worker settles it later if its response was
        # stored (served), else voids it (x402 rail: `abandoned_after`).
        async def quiet():
            got = await rows(db_url, select(payments.c.state))
            return all(r.state in FINAL + ("verified",) for r in got)
        await eventually(quiet, "every payment settled, void, failed or awaiting recovery")
        got = await rows(db_url, select(payments.c.state, payments.c.tx_hash,
                                        payments.c.payload))
    await origin.server.close()

    assert {s for _, s, _ in statuses} <= {200, 503}, statuses
    assert {e for _, s, e in statuses if s == 503} <= {"store_unavailable"}, statuses
    settled = [r for r in got if r.state == "settled"]
    pending = [r for r in got if r.state == "verified"]
    served = sum(1 for _, s, _ in statuses if s == 200)
    # No free call: every 200 a caller saw was settled. An origin call cut off by the
    # outage answered the caller 503 (the origin's work is lost, not the caller's money).
    assert served <= len(settled) <= len(origin.requests)
    cut_off = sum(1 for p, s, _ in statuses if p != "up" and s == 503)
    assert len(origin.requests) - len(settled) <= cut_off
    # No charge lost or doubled: each settled payment moved the money once; the ones
    # awaiting recovery have not moved any yet.
    assert len({r.tx_hash for r in settled}) == len(settled)
    assert token_balance(evm_devnet, merchant) == before + PRICE * len(settled)
    for r in pending:
        auth = json.loads(r.payload)["payment"]["payload"]["authorization"]
        assert not authorization_used(evm_devnet, auth["from"], auth["nonce"])


class RpcRelay:
    """The EVM node as the gateway sees it: a relay to anvil that can be switched off
    (its port closed, like a stopped node) and on again on the same port."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.http = aiohttp.ClientSession()

    async def _relay(self, request: web.Request) -> web.Response:
        async with self.http.post(self.target, data=await request.read(),
                                  headers={"Content-Type": "application/json"}) as r:
            return web.Response(body=await r.read(), status=r.status,
                                content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._relay)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


async def test_evm_node_unreachable_is_503_and_queued_settlements_wait_then_resume(
        postgres_server, evm_devnet, http, tmp_path):
    relay = RpcRelay(evm_devnet.rpc_url)
    await relay.start()
    origin = Recorder()
    url = await origin.start()
    config = x402_config(evm_devnet, url, settlement="deferred",
                         evm_extra={"deferred_max_timeout_seconds": 60})
    config["evm"][evm_devnet.network]["rpc_url"] = relay.url
    config["server"] = {"settlement_interval_seconds": 0.2, "settlement_lease_seconds": 2}
    merchant = evm_devnet.merchant.address
    before = token_balance(evm_devnet, merchant)
    db_url = await fresh_database(postgres_server)
    try:
        async with Cluster(config, db_url, tmp_path, instances=1,
                           env={SETTLER_ENV: evm_devnet.settler.private_key}) as cluster:
            target = cluster.url(0) + "/sky/v1/flights"
            req = await challenge_req(http, target)
            with automine_off(evm_devnet):
                for i in range(3):  # served; their settlements are sent but not mined
                    status, body = await pay(http, target, sign_payment(
                        evm_devnet, evm_devnet.payers[i], req))
                    assert status == 200, body
                await relay.stop()
                refused = sign_payment(evm_devnet, evm_devnet.payers[3], req)
                status, body = await pay(http, target, refused)
                assert status == 503, body
                evm_devnet.request("evm_mine")  # the chain moves on; the gateway cannot see it
                waiting = await rows(db_url, select(payments.c.state))
                assert len(waiting) == 3 and not [r for r in waiting if r.state in FINAL], \
                    waiting  # neither settled nor given up while the node is unreachable
                await relay.start()

                async def settled():
                    evm_devnet.request("evm_mine")  # automine is off: mine what was sent
                    got = await rows(db_url, select(payments.c.state))
                    return len(got) == 3 and all(r.state == "settled" for r in got)
                await eventually(settled, "the queued settlements resumed")
    finally:
        await relay.stop()
        await relay.http.close()
        await origin.server.close()
    assert len(origin.requests) == 3  # the refused payment reached no origin
    assert not authorization_used(evm_devnet, *nonce_of(refused))
    assert token_balance(evm_devnet, merchant) == before + 3 * PRICE


async def test_mirror_down_sessions_run_on_the_cached_allowance_for_the_ttl_then_503(
        postgres_server, hedera_devnet, hedera_mirror_faults, hedera_account, http, tmp_path):
    origin = Recorder()
    url = await origin.start()
    config = session_config(hedera_devnet, url, hedera={"mirror_ttl_seconds": 8})
    db_url = await fresh_database(postgres_server)
    env = {KEY_ENV: hedera_devnet.account("spender").private_key}
    async with Cluster(config, db_url, tmp_path, instances=1, env=env) as cluster:

        class Gw:
            url = cluster.url(0)

        token = await open_session(http, Gw, hedera_devnet, hedera_account(),
                                   allowance=400 * UNIT_PRICE)  # never the limit here
        hedera_devnet.set_mirror_down(True)
        seen: list[tuple[int, str]] = []

        async def call() -> int:
            async with http.get(Gw.url + "/sky/v1/flights", headers=call_headers(token)) as r:
                body = await r.json()
                seen.append((r.status, body.get("error", "") if isinstance(body, dict) else ""))
                return r.status

        assert await call() == 200  # the allowance read at activation is still fresh

        async def refused():
            return await call() == 503
        await eventually(refused, "503 once the cached allowance is older than the TTL")
        assert seen[-1] == (503, "mirror_unavailable")
        statuses = [s for s, _ in seen]
        first_503 = statuses.index(503)
        assert set(statuses[:first_503]) == {200}
        hedera_devnet.set_mirror_down(False)

        async def served():
            return await call() == 200
        await eventually(served, "sessions served again once the mirror is back")
    await origin.server.close()
    assert len(origin.requests) == statuses.count(200) + 1  # nothing served unpaid


async def test_sigterm_under_load_finishes_in_flight_calls_and_their_settlements(
        postgres_server, evm_devnet, http, tmp_path):
    arrived = asyncio.Event()
    release = asyncio.Event()
    held = []

    origin = web.Application()

    async def hold(request):
        held.append(request.path)
        if len(held) == IN_FLIGHT:
            arrived.set()
        await release.wait()
        return web.json_response({"ok": True})
    origin.router.add_get("/{tail:.*}", hold)
    runner = web.AppRunner(origin)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    config = x402_config(evm_devnet, f"http://127.0.0.1:{port}")
    config["server"] = {"shutdown_grace_seconds": 20}
    merchant = evm_devnet.merchant.address
    before = token_balance(evm_devnet, merchant)
    db_url = await fresh_database(postgres_server)
    try:
        async with Cluster(config, db_url, tmp_path, instances=1,
                           env={SETTLER_ENV: evm_devnet.settler.private_key}) as cluster:
            target = cluster.url(0) + "/sky/v1/flights"
            req = await challenge_req(http, target)
            calls = [asyncio.create_task(pay(http, target, sign_payment(
                evm_devnet, evm_devnet.payers[i % len(evm_devnet.payers)], req)))
                for i in range(IN_FLIGHT)]
            await asyncio.wait_for(arrived.wait(), 60)
            gateway = cluster.instances[0]
            gateway.terminate()

            async def closed():  # new connections are refused once shutdown began
                try:
                    async with http.get(cluster.url(0) + "/healthz") as r:
                        return False
                except aiohttp.ClientConnectionError:
                    return True
            await eventually(closed, "the listener closed on SIGTERM")
            release.set()
            answers = await asyncio.gather(*calls)
            assert await gateway.exited() == 0
    finally:
        await runner.cleanup()
    assert [s for s, _ in answers] == [200] * IN_FLIGHT, answers
    got = await rows(db_url, select(payments.c.state))
    assert [r.state for r in got] == ["settled"] * IN_FLIGHT
    assert token_balance(evm_devnet, merchant) == before + IN_FLIGHT * PRICE


IN_FLIGHT = 6


@pytest.mark.parametrize("when", ["before_the_answer", "during_the_body"])
async def test_store_down_while_the_origin_answers_never_hands_over_an_unrecorded_answer(
        postgres_server, evm_devnet, http, tmp_path, when):
    """A deferred payment is claimed, then PostgreSQL stops while the origin is answering,
    so the gateway cannot record the call. Before the answer: the caller gets the store's
    503. During a streamed body: the caller never gets the whole answer (its last bytes
    wait for the record, which fails). Either way the payment was never queued (that goes
    with the record), so it is never settled: nobody pays for an answer not served."""
    size = 300_000

    async def handler(request: web.Request) -> web.StreamResponse:
        if when == "before_the_answer":
            await asyncio.to_thread(postgres_server.halt)
            return web.Response(body=b"p" * 64, content_type="application/octet-stream")
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        await resp.write(b"p" * 1000)
        await asyncio.sleep(0.3)  # the gateway has the head and has queued the payment
        await asyncio.to_thread(postgres_server.halt)
        await resp.write(b"p" * (size - 1000))
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}"
    config = x402_config(evm_devnet, url)
    config["paygates"][0]["settlement"] = "deferred"
    config["server"] = {"settlement_interval_seconds": 0.2, "settlement_lease_seconds": 2}
    merchant = evm_devnet.merchant.address
    before = token_balance(evm_devnet, merchant)
    db_url = await fresh_database(postgres_server)
    try:
        async with Cluster(config, db_url, tmp_path, instances=1,
                           env={SETTLER_ENV: evm_devnet.settler.private_key}) as cluster:
            req = await challenge_req(http, cluster.url(0) + "/sky/v1/flights")
            header = sign_payment(evm_devnet, evm_devnet.payers[0], req)
            got, status = b"", 0
            try:
                async with http.get(cluster.url(0) + "/sky/v1/flights",
                                    headers={"PAYMENT-SIGNATURE": header}) as r:
                    status = r.status
                    got = await r.read()
            except aiohttp.ClientError:
                pass  # a broken answer
            assert postgres_server.process is None  # the store really was down
            assert len(got) < size, "the caller got a whole answer the store never recorded"
            if when == "before_the_answer":
                assert status == 503 and json.loads(got)["error"] == "store_unavailable"
            await asyncio.to_thread(postgres_server.resume)
            await asyncio.sleep(2)  # ten settlement passes
            got_rows = await rows(db_url, select(payments.c.state))
            # not served, so never queued: voided once abandoned, never settled
            assert [r.state for r in got_rows] == ["verified"]
            assert token_balance(evm_devnet, merchant) == before
    finally:
        if postgres_server.process is None:
            postgres_server.resume()
        await server.close()
