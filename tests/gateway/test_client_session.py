"""Agents spending from a Hedera session: `PayingClient(session=...)` and
`tollgate pay --session`. A fresh idempotency key per call; a retry (lost answer, call
still in flight) reuses the key, so it is never charged twice."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiohttp import web

from gateway.client import PayingClient
from tests.gateway.session_support import KEY_ENV, UNIT_PRICE, open_session, session_config
from tests.gateway.test_cli_pay import tollgate_pay


@pytest.fixture(autouse=True)
def spender_key(monkeypatch, hedera_devnet):
    monkeypatch.setenv(KEY_ENV, hedera_devnet.account("spender").private_key)


@pytest.fixture
async def session_gw(gateway, origin, hedera_devnet):
    async def make(handler=None):
        o = await origin(handler)
        return await gateway(session_config(hedera_devnet, o.url)), o
    return make


async def charges_of(g, token):
    rail = g.gw.rails["hedera-session"]
    session = await rail.records.by_token(token)
    return [c for c in await rail.ledger.charges(session.id) if c.state != "reversed"]


async def test_each_call_gets_a_fresh_key_and_one_charge(session_gw, http, hedera_devnet,
                                                        hedera_account):
    g, o = await session_gw()
    token = await open_session(http, g, hedera_devnet, hedera_account(), allowance=5 * UNIT_PRICE)
    async with PayingClient(session=token) as client:
        statuses = [(await client.get(g.url + "/sky/v1/flights")).status_code for _ in range(3)]
        assert client.last_remaining == 2 * UNIT_PRICE
    assert statuses == [200, 200, 200]
    keys = [seen.headers["Idempotency-Key"] for seen in o.requests]
    assert len(set(keys)) == 3
    assert [int(c.amount) for c in await charges_of(g, token)] == [UNIT_PRICE] * 3


class DropFirstAnswer(httpx.AsyncBaseTransport):
    """The network loses the first answer after the gateway has served it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        response = await self.inner.handle_async_request(request)
        if len(self.sent) == 1:
            await response.aread()
            await response.aclose()
            raise httpx.ReadError("connection reset by peer")
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_lost_answer_is_retried_with_the_same_key_and_charged_once(
        session_gw, http, hedera_devnet, hedera_account):
    g, o = await session_gw()
    token = await open_session(http, g, hedera_devnet, hedera_account(), allowance=5 * UNIT_PRICE)
    transport = DropFirstAnswer()
    async with httpx.AsyncClient(transport=transport) as raw:
        async with PayingClient(session=token, http=raw) as client:
            resp = await client.post(g.url + "/sky/v1/bookings", content=b'{"seat": "2A"}')
    assert resp.status_code == 200 and resp.headers["X-Tollgate-Replay"] == "true"
    assert [r.headers["Idempotency-Key"] for r in transport.sent][0] == \
        transport.sent[1].headers["Idempotency-Key"]
    assert len(o.requests) == 1
    assert [int(c.amount) for c in await charges_of(g, token)] == [3 * UNIT_PRICE]


async def test_a_call_still_in_flight_is_retried_after_its_409(session_gw, http, hedera_devnet,
                                                              hedera_account):
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"ok": True})

    g, o = await session_gw(slow)
    token = await open_session(http, g, hedera_devnet, hedera_account(), allowance=5 * UNIT_PRICE)
    headers = {"X-Hedera-Session-Id": token, "Idempotency-Key": "call-1"}
    first = asyncio.create_task(http.get(g.url + "/sky/v1/flights", headers=headers))
    while not o.requests:
        await asyncio.sleep(0.01)
    async with PayingClient(session=token) as client:
        second = asyncio.create_task(client.get(g.url + "/sky/v1/flights",
                                                headers={"Idempotency-Key": "call-1"}))
        while client.retries_done == 0:  # it saw the 409 and waits to retry
            await asyncio.sleep(0.01)
        release.set()
        resp = await second
    assert (await first).status == 200
    assert resp.status_code == 200 and resp.headers["X-Tollgate-Replay"] == "true"
    assert len(o.requests) == 1
    assert len(await charges_of(g, token)) == 1


async def test_an_exhausted_session_returns_the_402_without_paying_otherwise(
        session_gw, http, hedera_devnet, hedera_account):
    g, o = await session_gw()
    token = await open_session(http, g, hedera_devnet, hedera_account(), allowance=UNIT_PRICE)
    async with PayingClient(session=token) as client:
        assert (await client.get(g.url + "/sky/v1/flights")).status_code == 200
        resp = await client.get(g.url + "/sky/v1/flights")
        assert resp.status_code == 402
        assert client.last_refusal and "session_exhausted" in client.last_refusal
    assert len(o.requests) == 1


async def test_cli_pay_with_a_session(session_gw, http, hedera_devnet, hedera_account):
    g, o = await session_gw()
    token = await open_session(http, g, hedera_devnet, hedera_account(), allowance=2 * UNIT_PRICE)
    code, out, err = await tollgate_pay(g.url + "/sky/v1/flights?from=ZRH", "--session", token)
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines[0] == "HTTP 200"
    assert f"remaining: {UNIT_PRICE} tinybars" in lines
    assert len(o.requests) == 1 and o.requests[0].query_string == "from=ZRH"
    code, out, err = await tollgate_pay(g.url + "/sky/v1/bookings", "-X", "POST", "--session", token)
    assert code == 1 and out.splitlines()[0] == "HTTP 402"
    # bookings cost more than the one unit left: refused, the session stays open
    assert "insufficient_allowance" in err
    assert len(await charges_of(g, token)) == 1
