"""Replays of x402 payments through a running gateway, against real anvil, on SQLite and on
PostgreSQL:
a stored response goes only to the same request, only while the authorization is valid and
the response retained, and never to someone who rebuilt the payment from public chain data;
a truncated or unkept response is not replayed as a success; a `before` payment whose origin
failed is forwarded again; amounts beyond 64 bits are stored exactly."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import pytest
from aiohttp import web
from eth_abi import decode as abi_decode
from sqlalchemy import select, text

from chains.evm.settle import TRANSFER_WITH_AUTHORIZATION
from chains.payments import PaymentStore
from chains.x402 import decode_header, encode_header
from store import migrations
from store.clock import ManualClock
from store.db import create_engine_unpooled
from store.schema import payment_responses
from tests.gateway.x402_support import (
    PRICE,
    requirement_from,
    sign_payment,
    token_balance,
    x402_config,
)
from tests.support.postgres import start_postgres

NET_WAIT = 15.0  # bound on any wait; never a pass criterion

pytestmark = pytest.mark.usefixtures("settler_key")


@pytest.fixture
def gateway(gateway, db_config):
    """Every gateway of this module on the parametrized store (SQLite, PostgreSQL)."""
    async def make(config: dict, **kw):
        return await gateway(config | db_config, **kw)
    return make


def pid_ext(tag: str = "") -> dict:
    """A payment-identifier extension with a fresh random id."""
    return {"payment-identifier": {"info": {"id": f"pay{tag}-{uuid.uuid4().hex}"}}}


def store_of(g) -> PaymentStore:
    return PaymentStore(g.gw.engine, g.gw.clock)


async def challenge_req(http, url: str, method: str = "GET") -> dict:
    async with http.request(method, url) as r:
        assert r.status == 402
        return requirement_from(r.headers["PAYMENT-REQUIRED"])


def counting_origin():
    """An origin handler that answers {"call": n, "path": ..., "body": ...}."""
    calls: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        calls.append(request.path)
        return web.json_response({"call": len(calls), "path": request.path,
                                  "body": body.decode()})
    return handler, calls


async def send(http, g, path: str, header: str, method: str = "GET", data: bytes | None = None):
    async with http.request(method, g.url + path, headers={"PAYMENT-SIGNATURE": header},
                            data=data) as r:
        return r.status, await r.read(), r.headers


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


# -- 6. a replay is for the same request ---------------------------------------------------


async def test_same_payment_on_another_url_is_409_and_never_the_first_body(
        gateway, origin, http, evm_devnet):
    handler, calls = counting_origin()
    o = await origin(handler)
    g = await gateway(x402_config(evm_devnet, o.url))
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    header = sign_payment(evm_devnet, evm_devnet.payers[0], req, extensions=pid_ext())
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)

    status, first, _ = await send(http, g, "/sky/v1/flights", header)
    assert status == 200 and json.loads(first)["path"] == "/v1/flights"
    for path in ("/sky/v1/hotels", "/sky/v1/flights?x=1", "/sky/v1/flights/"):
        status, body, headers = await send(http, g, path, header)
        assert status == 409, (path, body)
        assert error_of(body) == "payment_already_used"
        assert b"/v1/flights\"" not in body and "X-Tollgate-Replay" not in headers
    # The same request still gets its stored response.
    status, again, headers = await send(http, g, "/sky/v1/flights", header)
    assert (status, again, headers["X-Tollgate-Replay"]) == (200, first, "true")
    assert calls == ["/v1/flights"]
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PRICE


async def test_same_payment_on_another_url_while_the_first_is_in_flight_is_409_at_once(
        gateway, origin, http, evm_devnet):
    release = asyncio.Event()
    calls: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        calls.append(request.path)
        await release.wait()
        return web.json_response({"path": request.path})

    o = await origin(slow)
    g = await gateway(x402_config(evm_devnet, o.url))
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    for ext in ({}, pid_ext()):
        calls.clear()
        release.clear()
        header = sign_payment(evm_devnet, evm_devnet.payers[1], req, extensions=ext)
        first = asyncio.create_task(send(http, g, "/sky/v1/flights", header))
        async with asyncio.timeout(NET_WAIT):
            while not calls:
                await asyncio.sleep(0.01)
            status, body, _ = await send(http, g, "/sky/v1/hotels", header)
        assert status == 409 and error_of(body) == "payment_already_used"
        assert not first.done()
        release.set()
        status, body, _ = await first
        assert status == 200 and json.loads(body) == {"path": "/v1/flights"}
        assert calls == ["/v1/flights"]


async def test_same_url_with_another_body_or_method_is_409(gateway, origin, http, evm_devnet):
    handler, calls = counting_origin()
    o = await origin(handler)
    g = await gateway(x402_config(evm_devnet, o.url))
    req = await challenge_req(http, g.url + "/sky/v1/flights", "POST")
    header = sign_payment(evm_devnet, evm_devnet.payers[2], req, extensions=pid_ext())
    status, first, _ = await send(http, g, "/sky/v1/flights", header, "POST", b"seat=1A")
    assert status == 200 and json.loads(first)["body"] == "seat=1A"
    for method, data in (("POST", b"seat=9F"), ("POST", None), ("PUT", b"seat=1A"),
                         ("GET", None), ("DELETE", None)):
        status, body, _ = await send(http, g, "/sky/v1/flights", header, method, data)
        assert status == 409, (method, data, body)
        assert error_of(body) == "payment_already_used"
    status, again, _ = await send(http, g, "/sky/v1/flights", header, "POST", b"seat=1A")
    assert (status, again) == (200, first)
    assert calls == ["/v1/flights"]


# -- 7. public chain data is not a ticket ----------------------------------------------------


def rebuild_from_chain(devnet, tx_hash: str, req: dict, version: int = 2,
                       resource: dict | None = None) -> str:
    """What a third party can build from the settlement transaction and the public 402."""
    tx = devnet.request("eth_getTransactionByHash", [tx_hash])
    data = bytes.fromhex(tx["input"].removeprefix("0x"))
    assert data[:4] == TRANSFER_WITH_AUTHORIZATION
    frm, to, value, after, before, nonce, v, r, s = abi_decode(
        ["address", "address", "uint256", "uint256", "uint256", "bytes32", "uint8", "bytes32",
         "bytes32"], data[4:])
    payload = {"signature": "0x" + (r + s + bytes([v])).hex(),
               "authorization": {"from": _checksum(frm), "to": _checksum(to), "value": str(value),
                                 "validAfter": str(after), "validBefore": str(before),
                                 "nonce": "0x" + nonce.hex()}}
    if version == 1:
        return encode_header({"x402Version": 1, "scheme": "exact", "network": req["network"],
                              "payload": payload})
    out = {"x402Version": 2, "accepted": req, "payload": payload, "extensions": {}}
    if resource is not None:
        out["resource"] = resource
    return encode_header(out)


def _checksum(address: str) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(address)


@pytest.mark.parametrize("settlement", ["after", "before", "deferred"])
async def test_a_payment_rebuilt_from_public_chain_data_gets_no_paid_body(
        settlement, gateway, origin, http, evm_devnet):
    handler, calls = counting_origin()
    o = await origin(handler)
    g = await gateway(x402_config(evm_devnet, o.url, settlement=settlement))
    async with http.get(g.url + "/sky/v1/flights") as r:
        public_402 = decode_header(r.headers["PAYMENT-REQUIRED"], max_len=65536)
    req = public_402["accepts"][0]
    payer = [evm_devnet.payers[3], evm_devnet.payers[4], evm_devnet.payers[5]][
        ["after", "before", "deferred"].index(settlement)]
    header = sign_payment(evm_devnet, payer, req)
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    status, paid_body, _ = await send(http, g, "/sky/v1/flights", header)
    assert status == 200
    store = store_of(g)
    if settlement == "deferred":
        async with asyncio.timeout(NET_WAIT):
            while (await store.counts()) != {"settled": 1}:
                await asyncio.sleep(0.05)
    async with g.gw.engine.connect() as conn:
        tx_hash = (await conn.execute(text("SELECT tx_hash FROM payments"))).scalar_one()

    rebuilt = [rebuild_from_chain(evm_devnet, tx_hash, req),
               rebuild_from_chain(evm_devnet, tx_hash, req, resource=public_402["resource"]),
               rebuild_from_chain(evm_devnet, tx_hash, req, version=1)]
    assert decode_header(rebuilt[0]) == decode_header(header)  # the very same payment
    attempts = [("PAYMENT-SIGNATURE", rebuilt[0]), ("PAYMENT-SIGNATURE", rebuilt[1]),
                ("X-PAYMENT", rebuilt[2])]
    for hdr, attempt in attempts:
        async with http.get(g.url + "/sky/v1/flights", headers={hdr: attempt}) as r:
            body = await r.read()
            assert "X-Tollgate-Replay" not in r.headers
            if hdr == "X-PAYMENT":  # another envelope: refused as a used nonce, or 409
                assert r.status in (402, 409), body
                continue
            assert r.status == 409, body
            assert error_of(body) == "payment_already_used"
            assert decode_header(r.headers["PAYMENT-RESPONSE"])["transaction"] == tx_hash
        assert body != paid_body and b'"call"' not in body
    assert calls == ["/v1/flights"]
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PRICE


async def test_the_payer_replays_with_its_payment_identifier_an_observer_cannot(
        gateway, origin, http, evm_devnet):
    handler, calls = counting_origin()
    o = await origin(handler)
    g = await gateway(x402_config(evm_devnet, o.url, settlement="before"))
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    header = sign_payment(evm_devnet, evm_devnet.payers[0], req, extensions=pid_ext())
    status, first, headers = await send(http, g, "/sky/v1/flights", header)
    assert status == 200
    tx_hash = decode_header(headers["PAYMENT-RESPONSE"])["transaction"]
    status, again, _ = await send(http, g, "/sky/v1/flights", header)
    assert (status, again) == (200, first)
    # The observer knows everything on chain and in the 402, but not the identifier.
    status, body, _ = await send(http, g, "/sky/v1/flights", rebuild_from_chain(evm_devnet, tx_hash, req))
    assert status == 409 and error_of(body) == "payment_already_used"
    guessed = decode_header(rebuild_from_chain(evm_devnet, tx_hash, req))
    guessed["extensions"] = pid_ext()
    status, body, _ = await send(http, g, "/sky/v1/flights", encode_header(guessed))
    assert status == 409 and error_of(body) == "payment_already_used"
    assert calls == ["/v1/flights"]


async def test_replays_end_with_retention_and_with_the_authorization(gateway, origin, http,
                                                                     evm_devnet):
    clock = ManualClock()
    handler, calls = counting_origin()
    o = await origin(handler)
    g = await gateway(x402_config(evm_devnet, o.url) | {"replay": {"retention_seconds": 60}},
                      clock=clock)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    now = int(clock.now())
    long_lived = sign_payment(evm_devnet, evm_devnet.payers[1], req, extensions=pid_ext(),
                              valid_before=now + 3600)
    short_lived = sign_payment(evm_devnet, evm_devnet.payers[1], req, extensions=pid_ext(),
                               valid_before=now + 300)
    for header in (long_lived, short_lived):
        assert (await send(http, g, "/sky/v1/flights", header))[0] == 200
        assert (await send(http, g, "/sky/v1/flights", header))[0] == 200
    clock.advance(61)  # past retention, both authorizations still valid
    status, body, _ = await send(http, g, "/sky/v1/flights", long_lived)
    assert status == 409 and error_of(body) == "payment_already_used"
    assert "retention" in json.loads(body)["message"]
    # A new payment purges what is past retention from the store.
    fresh = sign_payment(evm_devnet, evm_devnet.payers[1], req, valid_before=now + 3600)
    assert (await send(http, g, "/sky/v1/flights", fresh))[0] == 200
    async def stored_ids():
        async with g.gw.engine.connect() as conn:
            return (await conn.execute(select(payment_responses.c.payment_id))).scalars().all()

    # (the response is recorded as the client finishes reading it: wait for that)
    async with asyncio.timeout(NET_WAIT):
        while len(await stored_ids()) != 1:
            await asyncio.sleep(0.02)
    clock.advance(300)  # the short-lived authorization has expired
    status, body, _ = await send(http, g, "/sky/v1/flights", short_lived)
    assert status == 402
    assert json.loads(body)["error"] == "invalid_exact_evm_payload_authorization_valid_before"
    assert len(calls) == 3


async def test_a_response_too_large_to_keep_is_409_on_replay_never_a_second_origin_call(
        gateway, origin, http, evm_devnet):
    calls = []

    async def big(request: web.Request) -> web.Response:
        calls.append(1)
        return web.Response(body=b"b" * 5000)

    o = await origin(big)
    g = await gateway(x402_config(evm_devnet, o.url) | {"replay": {"max_bytes": 4096}})
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    header = sign_payment(evm_devnet, evm_devnet.payers[2], req, extensions=pid_ext())
    status, body, _ = await send(http, g, "/sky/v1/flights", header)
    assert status == 200 and body == b"b" * 5000
    status, body, _ = await send(http, g, "/sky/v1/flights", header)
    assert status == 409 and error_of(body) == "payment_already_used"
    assert "4096" in json.loads(body)["message"]
    assert calls == [1]
    async with g.gw.engine.connect() as conn:
        stored = (await conn.execute(select(payment_responses.c.body))).scalar_one()
    assert bytes(stored) == b""


# -- 8. a truncated response is not replayed as a success --------------------------------


async def test_a_truncated_response_is_replayed_as_502(gateway, origin, http, evm_devnet):
    calls = []

    async def breaks_off(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        resp = web.StreamResponse()
        resp.content_length = 10_000
        await resp.prepare(request)
        await resp.write(b"h" * 1000)
        request.transport.abort()
        return resp

    o = await origin(breaks_off)
    g = await gateway(x402_config(evm_devnet, o.url))
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    header = sign_payment(evm_devnet, evm_devnet.payers[3], req, extensions=pid_ext())
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            await r.read()
    status, body, headers = await send(http, g, "/sky/v1/flights", header)
    assert status == 502, body
    assert error_of(body) == "upstream_error"
    assert "broke off" in json.loads(body)["message"]
    assert calls == [1]


# -- 11. `before` with a failing origin ---------------------------------------------------


@pytest.mark.parametrize("failure", ["status_502", "status_504", "no_answer"])
async def test_before_with_a_failing_origin_forwards_a_retry_of_the_same_payment(
        failure, gateway, origin, http, evm_devnet):
    calls: list[int] = []
    never = asyncio.Event()

    async def flaky(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        if len(calls) == 1:
            if failure == "no_answer":  # the gateway gives up on it: its own 504
                await never.wait()
            return web.json_response({"origin": "down"}, status=int(failure[-3:]))
        return web.json_response({"served": len(calls)})

    o = await origin(flaky)
    g = await gateway(x402_config(evm_devnet, o.url, settlement="before",
                                  timeout_seconds=1 if failure == "no_answer" else 600))
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    payer = evm_devnet.payers[4]
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    header = sign_payment(evm_devnet, payer, req)
    status, body, headers = await send(http, g, "/sky/v1/flights", header)
    assert status in (502, 504)
    assert "will be forwarded" in headers["X-Tollgate-Payment-Retry"]
    if failure == "no_answer":
        assert "will be forwarded" in json.loads(body)["message"]
    assert decode_header(headers["PAYMENT-RESPONSE"])["success"] is True
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PRICE
    # Another request with it is still refused; the same request is forwarded again.
    status, body, _ = await send(http, g, "/sky/v1/hotels", header)
    assert status == 409 and error_of(body) == "payment_already_used"
    async with asyncio.timeout(NET_WAIT):
        status, body, _ = await send(http, g, "/sky/v1/flights", header)
    assert (status, json.loads(body)) == (200, {"served": 2})
    # Served once: a further retry is not forwarded again.
    status, body, _ = await send(http, g, "/sky/v1/flights", header)
    assert status == 409 and error_of(body) == "payment_already_used"
    assert len(calls) == 2
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PRICE
    assert await store_of(g).counts() == {"settled": 1}


async def test_before_an_observer_cannot_take_the_retry_of_a_failed_origin_call(
        gateway, origin, http, evm_devnet):
    calls: list[str] = []

    async def flaky(request: web.Request) -> web.Response:
        calls.append(request.remote)
        if len(calls) == 1:
            return web.json_response({"origin": "down"}, status=502)
        return web.json_response({"served": len(calls)})

    o = await origin(flaky)
    g = await gateway(x402_config(evm_devnet, o.url, settlement="before"))
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    header = sign_payment(evm_devnet, evm_devnet.payers[2], req)  # no identifier
    status, _, headers = await send(http, g, "/sky/v1/flights", header)
    assert status == 502 and "X-Tollgate-Payment-Retry" in headers
    tx_hash = decode_header(headers["PAYMENT-RESPONSE"])["transaction"]
    # The observer, on another host, rebuilds the header from the settlement transaction
    # and sends the very same request first.
    rebuilt = rebuild_from_chain(evm_devnet, tx_hash, req)
    elsewhere = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=elsewhere) as observer:
        status, body, _ = await send(observer, g, "/sky/v1/flights", rebuilt)
    assert status == 409 and error_of(body) == "payment_already_used"
    assert b"\"served\"" not in body and len(calls) == 1
    # The payer's own retry is forwarded.
    status, body, _ = await send(http, g, "/sky/v1/flights", header)
    assert (status, json.loads(body)) == (200, {"served": 2})
    assert len(calls) == 2


async def test_before_concurrent_retries_after_an_origin_failure_forward_once(
        gateway, origin, http, evm_devnet):
    calls: list[int] = []
    release = asyncio.Event()

    async def flaky(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) == 1:
            return web.json_response({"origin": "down"}, status=503)
        await release.wait()
        return web.json_response({"served": len(calls)})

    o = await origin(flaky)
    g = await gateway(x402_config(evm_devnet, o.url, settlement="before"))
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    header = sign_payment(evm_devnet, evm_devnet.payers[3], req, extensions=pid_ext())
    status, _, headers = await send(http, g, "/sky/v1/flights", header)
    assert status == 503 and "X-Tollgate-Payment-Retry" in headers
    retries = [asyncio.create_task(send(http, g, "/sky/v1/flights", header)) for _ in range(4)]
    async with asyncio.timeout(NET_WAIT):
        while len(calls) < 2:
            await asyncio.sleep(0.01)
        release.set()
        results = await asyncio.gather(*retries)
    assert {(status, body) for status, body, _ in results} == {(200, b'{"served": 2}')}
    assert len(calls) == 2
    assert await store_of(g).counts() == {"settled": 1}


async def test_before_with_an_unreachable_origin_a_retry_is_answered_at_once(
        gateway, http, evm_devnet):
    from tests.gateway.test_proxy import closed_port

    g = await gateway(x402_config(evm_devnet, f"http://127.0.0.1:{closed_port()}",
                                  settlement="before"))
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    header = sign_payment(evm_devnet, evm_devnet.payers[5], req, extensions=pid_ext())
    for _ in range(2):
        async with asyncio.timeout(NET_WAIT):
            status, body, headers = await send(http, g, "/sky/v1/flights", header)
        assert status == 502 and error_of(body) == "upstream_error"
        assert "payment is settled" in json.loads(body)["message"]
        assert "X-Tollgate-Payment-Retry" in headers
    assert await store_of(g).counts() == {"settled": 1}


# -- 12. big numbers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_server():
    with start_postgres(database="tollgate") as server:
        yield server


async def fresh_pg_url(postgres_server) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine_unpooled(postgres_server.url)
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    return postgres_server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgres"])
async def db_config(request, tmp_path):
    if request.param == "sqlite":
        return {}
    url = await fresh_pg_url(request.getfixturevalue("postgres_server"))
    engine = create_engine_unpooled(url)
    try:
        await migrations.migrate(engine)
    finally:
        await engine.dispose()
    return {"database": {"url": url, "master_key_file": str(tmp_path / "shared.key")}}


@pytest.fixture(scope="module")
def wei_token(evm_devnet):
    """An 18-decimal EIP-3009 token, with 1000 whole tokens for two payers."""
    address = evm_devnet.deploy_token("Wei Token", "1", 18)
    for payer in evm_devnet.payers[:2]:
        evm_devnet.mint(payer.address, 1000 * 10**18, token=address)
    return address


def balance_of(devnet, token: str, address: str) -> int:
    from eth_abi import encode

    from chains.evm.rpc import selector
    data = selector("balanceOf(address)") + encode(["address"], [address])
    return int(devnet.request("eth_call", [{"to": token, "data": "0x" + data.hex()}, "latest"]), 16)


@pytest.mark.parametrize("settlement", ["after", "deferred"])
async def test_twenty_tokens_of_an_18_decimal_token_settle_and_serve(
        settlement, db_config, wei_token, gateway, origin, http, evm_devnet):
    twenty = 20 * 10**18  # over 2**64
    o = await origin()
    cfg = x402_config(evm_devnet, o.url, settlement=settlement, prices={"wei": "20"})
    cfg["assets"] = {"wei": {"type": "eip3009", "network": evm_devnet.network,
                             "address": wei_token, "decimals": 18, "eip712_name": "Wei Token",
                             "eip712_version": "1"}}
    g = await gateway(cfg)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    assert int(req["amount"]) == twenty
    payer = evm_devnet.payers[0 if settlement == "after" else 1]
    payer_before = balance_of(evm_devnet, wei_token, payer.address)
    headers = [sign_payment(evm_devnet, payer, req, extensions=pid_ext()) for _ in range(2)]
    for header in headers:
        status, body, _ = await send(http, g, "/sky/v1/flights", header)
        assert status == 200, body
    store = store_of(g)
    async with asyncio.timeout(NET_WAIT):
        while (await store.counts()) != {"settled": 2}:
            await asyncio.sleep(0.05)
    async with g.gw.engine.connect() as conn:
        amounts = (await conn.execute(text("SELECT amount FROM payments"))).scalars().all()
    assert sorted(int(a) for a in amounts) == [twenty, twenty]
    assert all(not isinstance(a, float) for a in amounts)
    assert balance_of(evm_devnet, wei_token, payer.address) == payer_before - 2 * twenty
    # A replay of a big payment is still the stored response.
    status, body, _ = await send(http, g, "/sky/v1/flights", headers[0])
    assert status == 200


async def test_deferred_exposure_sums_big_amounts_exactly(db_config, wei_token, gateway, origin,
                                                         http, evm_devnet):
    # Two 20-token payments are exactly at a 40-token limit; one atom less refuses the second.
    o = await origin()
    for limit, served in ((40 * 10**18, 2), (40 * 10**18 - 1, 1)):
        cfg = x402_config(evm_devnet, o.url, settlement="deferred", prices={"wei": "20"},
                          evm_extra={"deferred_exposure_limit": limit})
        cfg["assets"] = {"wei": {"type": "eip3009", "network": evm_devnet.network,
                                 "address": wei_token, "decimals": 18,
                                 "eip712_name": "Wei Token", "eip712_version": "1"}}
        g = await gateway(cfg)
        rail = g.gw.rails["x402-evm"]
        rail._worker.cancel()
        await asyncio.gather(rail._worker, return_exceptions=True)
        req = await challenge_req(http, g.url + "/sky/v1/flights")
        results = []
        for _ in range(2):
            header = sign_payment(evm_devnet, evm_devnet.payers[1], req)
            results.append((await send(http, g, "/sky/v1/flights", header))[0])
        assert results.count(200) == served, (limit, results)
        # the next gateway shares the database: settle this one's queue first
        await rail.work_once()
        assert (await store_of(g).counts()).get("queued", 0) == 0
