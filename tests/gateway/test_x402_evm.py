"""x402 `exact` on EVM through a running gateway, against real anvil and the real token."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time

import httpx
import pytest
from aiohttp import web

from chains.evm.codec import parse_exact_evm_payload
from chains.evm.rpc import RpcClient
from chains.evm.settle import Settler, TransferAuthorization
from chains.payments import PaymentStore
from chains.x402 import decode_header, encode_header
from gateway.client import PayingClient
from tests.gateway.x402_support import (
    PRICE,
    requirement_from,
    sign_payment,
    token_balance,
    x402_config,
)


pytestmark = pytest.mark.usefixtures("settler_key")


class DirectSettler:
    """Moves money on the devnet behind the gateway's back, as another party would."""

    def __init__(self, devnet, settler: Settler) -> None:
        self.devnet = devnet
        self.settler = settler

    async def settle_header(self, header: str) -> None:
        p = parse_exact_evm_payload(decode_header(header)["payload"])
        a = p.authorization
        auth = TransferAuthorization(a.from_, a.to, a.value, a.valid_after, a.valid_before, a.nonce)
        outcome = await self.settler.settle(self.devnet.token_address, auth, p.signature)
        assert outcome.state == "settled", outcome

    async def drain(self, payer, req: dict) -> None:
        """Send the payer's whole balance to the merchant with a fresh authorization."""
        balance = token_balance(self.devnet, payer.address)
        await self.settle_header(sign_payment(self.devnet, payer, req, value=balance))


@pytest.fixture
async def evm_settler_for(evm_devnet):
    async with RpcClient(evm_devnet.rpc_url) as rpc:
        yield DirectSettler(evm_devnet, Settler(rpc, evm_devnet.settler.private_key))


@pytest.fixture
async def paid(gateway, origin, evm_devnet):
    """(gateway handle, origin) for a `/sky` paygate settling `after`."""
    async def make(handler=None, **cfg):
        o = await origin(handler)
        g = await gateway(x402_config(evm_devnet, o.url, **cfg))
        return g, o
    return make


async def challenge_req(http, url: str) -> dict:
    async with http.get(url) as r:
        assert r.status == 402
        return requirement_from(r.headers["PAYMENT-REQUIRED"])


def store_of(g) -> PaymentStore:
    return PaymentStore(g.gw.engine, g.gw.clock)


async def test_402_lists_the_evm_offer(paid, http, evm_devnet):
    g, o = await paid()
    async with http.get(g.url + "/sky/v1/flights") as r:
        assert r.status == 402
        body = await r.json()
        header = decode_header(r.headers["PAYMENT-REQUIRED"], max_len=65536)
    assert header["x402Version"] == 2
    (entry,) = header["accepts"]
    assert entry == {"scheme": "exact", "network": evm_devnet.network, "amount": str(PRICE),
                     "asset": evm_devnet.token_address, "payTo": evm_devnet.merchant.address,
                     "maxTimeoutSeconds": 60,
                     "extra": {"name": evm_devnet.token_name, "version": evm_devnet.token_version}}
    assert body["accepts"][0]["maxAmountRequired"] == str(PRICE)
    assert header["resource"]["url"] == g.url + "/sky/v1/flights"
    async with http.post(g.url + "/sky/v1/bookings") as r:
        assert requirement_from(r.headers["PAYMENT-REQUIRED"])["amount"] == str(25 * PRICE)
    assert o.requests == []


async def test_paying_client_pays_and_origin_sees_signed_payment(paid, evm_devnet):
    g, o = await paid(origin_auth={"mode": "hmac"})
    payer = evm_devnet.payers[0]
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    async with PayingClient(evm_key=payer.private_key, spend_limit=10 * PRICE) as client:
        resp = await client.get(g.url + "/sky/v1/flights?from=ZRH")
        assert resp.status_code == 200, resp.text
        receipt = client.last_receipt
    assert receipt["success"] is True and receipt["transaction"].startswith("0x")
    assert receipt["payer"] == payer.address and receipt["network"] == evm_devnet.network
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PRICE
    tx = evm_devnet.request("eth_getTransactionReceipt", [receipt["transaction"]])
    assert int(tx["status"], 16) == 1
    (seen,) = o.requests
    secret = (await g.gw.origin_secrets("sky")).current
    x_payment, x_response = seen.headers["X-Payment"], seen.headers["X-Payment-Response"]
    expected = base64.b64encode(hmac.new(secret.encode(), f"{x_payment}|{x_response}".encode(),
                                         hashlib.sha256).digest()).decode()
    assert seen.headers["Sigwei-Auth-Signature"] == expected
    assert seen.headers["X-Tollgate-Payer"] == payer.address
    assert seen.headers["X-Tollgate-Units"] == "1"
    assert "PAYMENT-SIGNATURE" not in seen.headers
    assert json.loads(base64.b64decode(x_payment))["payload"]["authorization"]["from"] == payer.address


async def test_paying_client_sends_a_payment_identifier_so_its_retry_is_replayed(paid, http,
                                                                               evm_devnet):
    g, o = await paid()
    sent: list[str] = []

    async def keep(request):
        if "PAYMENT-SIGNATURE" in request.headers:
            sent.append(request.headers["PAYMENT-SIGNATURE"])

    async with httpx.AsyncClient(event_hooks={"request": [keep]}) as raw, \
            PayingClient(evm_key=evm_devnet.payers[2].private_key, http=raw) as client:
        first = await client.get(g.url + "/sky/v1/flights?from=ZRH")
    assert first.status_code == 200 and len(sent) == 1
    assert json.loads(base64.b64decode(sent[0]))["extensions"]["payment-identifier"]["info"]["id"]
    # The answer was "lost": the same header again gets the stored answer, no origin call.
    async with http.get(g.url + "/sky/v1/flights?from=ZRH",
                        headers={"PAYMENT-SIGNATURE": sent[0]}) as again:
        assert again.status == 200, await again.text()
        assert again.headers["X-Tollgate-Replay"] == "true"
        assert await again.read() == first.content
    assert len(o.requests) == 1


async def test_spend_limit_stops_the_client(paid, evm_devnet):
    g, o = await paid()
    async with PayingClient(evm_key=evm_devnet.payers[0].private_key,
                            max_per_request=10 * PRICE) as client:
        resp = await client.post(g.url + "/sky/v1/bookings")  # 25 units > 10 x price
    assert resp.status_code == 402
    assert "per-request maximum" in client.last_refusal
    assert o.requests == []


async def test_v1_x_payment_is_accepted(paid, http, evm_devnet):
    g, o = await paid()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    header = sign_payment(evm_devnet, evm_devnet.payers[1], req, version=1)
    async with http.get(g.url + "/sky/v1/flights", headers={"X-PAYMENT": header}) as r:
        assert r.status == 200
        receipt = decode_header(r.headers["X-PAYMENT-RESPONSE"])
        assert r.headers["PAYMENT-RESPONSE"] == r.headers["X-PAYMENT-RESPONSE"]
    assert receipt["success"] is True
    assert len(o.requests) == 1


async def test_same_payment_again_gets_the_stored_response(paid, http, evm_devnet):
    calls = 0

    async def counting(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({"call": calls})

    g, o = await paid(counting)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    # With a payment-identifier (never on chain) the settled payment's response is replayed.
    ext = {"payment-identifier": {"info": {"id": "order-0002-abcdefgh"}}}
    header = sign_payment(evm_devnet, evm_devnet.payers[1], req, extensions=ext)
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    answers = []
    for _ in range(2):
        async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            answers.append((r.status, await r.json(), r.headers.get("PAYMENT-RESPONSE")))
    assert answers[0] == answers[1] and answers[0][1] == {"call": 1}
    # Without one, a settled payment's fields are public: the replay gets 409 and the receipt.
    header = sign_payment(evm_devnet, evm_devnet.payers[1], req)
    for expected in (200, 409):
        async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            assert r.status == expected
            receipt = decode_header(r.headers["PAYMENT-RESPONSE"])
            last = await r.json()
    assert last["error"] == "payment_already_used"
    assert receipt["success"] is True and receipt["transaction"].startswith("0x")
    assert calls == 2
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + 2 * PRICE


async def test_concurrent_duplicates_are_served_once(paid, http, evm_devnet):
    release = asyncio.Event()
    calls = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await release.wait()
        return web.json_response({"call": calls})

    g, o = await paid(slow)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    # (an identifier: a duplicate that arrives after settlement still gets the response)
    ext = {"payment-identifier": {"info": {"id": "order-0003-abcdefgh"}}}
    header = sign_payment(evm_devnet, evm_devnet.payers[2], req, extensions=ext)
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)

    async def call():
        async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            return r.status, await r.json()

    tasks = [asyncio.create_task(call()) for _ in range(5)]
    while calls == 0:
        await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*tasks)
    assert results == [(200, {"call": 1})] * 5
    assert calls == 1
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PRICE


async def test_payment_identifier_reused_with_another_payment_is_409(paid, http, evm_devnet):
    g, o = await paid()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    ext = {"payment-identifier": {"info": {"id": "order-0001-abcdefgh"}}}
    first = sign_payment(evm_devnet, evm_devnet.payers[1], req, extensions=ext)
    second = sign_payment(evm_devnet, evm_devnet.payers[1], req, extensions=ext)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": first}) as r:
        assert r.status == 200
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": second}) as r:
        assert r.status == 409
        assert (await r.json())["error"] == "payment_identifier_conflict"
    assert len(o.requests) == 1


async def test_settle_before_forwards_the_settled_receipt(paid, http, evm_devnet):
    g, o = await paid(settlement="before")
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    header = sign_payment(evm_devnet, evm_devnet.payers[3], req)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200
    (seen,) = o.requests
    forwarded = decode_header(seen.headers["X-Payment-Response"])
    assert forwarded["success"] is True and forwarded["transaction"].startswith("0x")


async def test_origin_error_is_not_settled(paid, http, evm_devnet):
    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=503)

    g, o = await paid(broken)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    payer = evm_devnet.payers[3]
    before = token_balance(evm_devnet, payer.address)
    header = sign_payment(evm_devnet, payer, req)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 503
        receipt = decode_header(r.headers["PAYMENT-RESPONSE"])
    assert receipt["success"] is False
    assert token_balance(evm_devnet, payer.address) == before
    assert (await store_of(g).counts()) == {"void": 1}


async def test_deferred_settles_in_the_background_with_bounded_exposure(paid, http, evm_devnet):
    g, o = await paid(settlement="deferred", evm_extra={"deferred_exposure_limit": 2 * PRICE})
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    payer = evm_devnet.payers[4]
    store = store_of(g)
    worker = g.gw.rails["x402-evm"]
    # Stop the background worker so the queue is observable, then drive it by hand.
    worker._worker.cancel()
    before = token_balance(evm_devnet, payer.address)
    for _ in range(2):
        header = sign_payment(evm_devnet, payer, req)
        async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            assert r.status == 200
    assert await store.counts() == {"queued": 2}
    header = sign_payment(evm_devnet, payer, req)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 402
        assert (await r.json())["error"] == "deferred_exposure_exceeded"
    assert len(o.requests) == 2
    assert await worker.work_once() == 2
    assert await store.counts() == {"settled": 2}
    assert token_balance(evm_devnet, payer.address) == before - 2 * PRICE


async def test_settlement_revert_after_serving_answers_402(paid, http, evm_devnet, evm_settler_for):
    """The payer empties its balance while the origin works: settlement fails, the caller
    gets a 402 instead of the origin's answer, and the payment is recorded failed."""
    payer = evm_devnet.payers[5]
    drain = {}

    async def drain_during_call(request: web.Request) -> web.Response:
        await evm_settler_for.drain(payer, drain["req"])
        return web.json_response({"ok": True})

    g, o = await paid(drain_during_call)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    drain["req"] = req
    header = sign_payment(evm_devnet, payer, req)
    for _ in range(2):  # the same payment again is refused the same way, at once
        async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            assert r.status == 402
            assert (await r.json())["error"] == "insufficient_funds"
    assert await store_of(g).counts() == {"failed": 1}
    assert len(o.requests) == 1
    evm_devnet.mint(payer.address, 1_000_000_000)


@pytest.mark.parametrize("case", [
    "wrong_network", "wrong_asset", "wrong_pay_to", "amount_below_price", "valid_before_past",
    "valid_after_future", "signed_by_another_key", "malformed_signature", "bad_base64",
    "bad_json", "accepted_matches_nothing", "poor_payer", "oversized_header",
])
async def test_bad_payments_are_refused_and_nothing_moves(case, paid, http, evm_devnet):
    g, o = await paid()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    payer = evm_devnet.payers[0]
    now = int(time.time())
    other = dict(req)
    expected = {
        "wrong_network": "invalid_network", "wrong_asset": "invalid_payment_requirements",
        "wrong_pay_to": "invalid_exact_evm_payload_recipient_mismatch",
        "amount_below_price": "invalid_exact_evm_payload_authorization_value",
        "valid_before_past": "invalid_exact_evm_payload_authorization_valid_before",
        "valid_after_future": "invalid_exact_evm_payload_authorization_valid_after",
        "signed_by_another_key": "invalid_exact_evm_payload_signature",
        "malformed_signature": "invalid_exact_evm_payload_signature",
        "bad_base64": "invalid_payload", "bad_json": "invalid_payload",
        "accepted_matches_nothing": "invalid_payment_requirements",
        "poor_payer": "insufficient_funds", "oversized_header": "invalid_payload",
    }[case]
    if case == "wrong_network":
        header = sign_payment(evm_devnet, payer, req, accepted={**req, "network": "eip155:8453"})
    elif case == "wrong_asset":
        header = sign_payment(evm_devnet, payer, {**req, "asset": "0x" + "11" * 20})
    elif case == "wrong_pay_to":
        header = sign_payment(evm_devnet, payer, req, to=evm_devnet.payers[1].address)
    elif case == "amount_below_price":
        header = sign_payment(evm_devnet, payer, req, value=PRICE - 1)
    elif case == "valid_before_past":
        header = sign_payment(evm_devnet, payer, req, valid_before=now - 10)
    elif case == "valid_after_future":
        header = sign_payment(evm_devnet, payer, req, valid_after=now + 3600)
    elif case == "signed_by_another_key":
        header = sign_payment(evm_devnet, payer, req, key=evm_devnet.payers[1].private_key)
    elif case == "malformed_signature":
        good = decode_header(sign_payment(evm_devnet, payer, req))
        good["payload"]["signature"] = good["payload"]["signature"][:-4]
        header = encode_header(good)
    elif case == "bad_base64":
        header = "not*base64!"
    elif case == "bad_json":
        header = base64.b64encode(b"{not json").decode()
    elif case == "accepted_matches_nothing":
        other["amount"] = str(PRICE * 2)
        header = sign_payment(evm_devnet, payer, req, accepted=other)
    elif case == "poor_payer":
        header = sign_payment(evm_devnet, evm_devnet.poor, req)
    else:
        good = decode_header(sign_payment(evm_devnet, payer, req))
        good["extensions"] = {"padding": "x" * 9000}
        header = encode_header(good)
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 402
        body = await r.json()
        assert "PAYMENT-REQUIRED" in r.headers
    assert body["error"] == expected, body
    assert o.requests == []
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before
    assert await store_of(g).counts() == {}


async def test_nonce_used_on_chain_elsewhere_is_refused(paid, http, evm_devnet, evm_settler_for):
    g, o = await paid()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    nonce = os.urandom(32)
    header = sign_payment(evm_devnet, evm_devnet.payers[0], req, nonce=nonce)
    await evm_settler_for.settle_header(header)  # someone else settles it first
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 402
        assert (await r.json())["error"] == "invalid_exact_evm_nonce_already_used"
    assert o.requests == []


async def test_nonce_used_elsewhere_is_refused_among_concurrent_valid_payments(
        paid, http, evm_devnet, evm_settler_for):
    """Payments verified together share one chain read round trip; the one whose
    authorization someone else already used is still refused, the others served."""
    g, o = await paid(settlement="deferred")
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    headers = [sign_payment(evm_devnet, evm_devnet.payers[i % 3], req) for i in range(8)]
    await evm_settler_for.settle_header(headers[5])  # someone else settles this one first
    reads = g.gw.rails["x402-evm"].scheme.network(evm_devnet.network).reads
    trips = reads.round_trips

    async def call(header: str):
        async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
            return r.status, (await r.json()).get("error") if r.status == 402 else None

    got = await asyncio.gather(*(call(h) for h in headers))
    assert got == [(200, None)] * 5 + [(402, "invalid_exact_evm_nonce_already_used")] + \
        [(200, None)] * 2
    assert len(o.requests) == 7
    assert reads.round_trips - trips <= 8  # (shared when the requests land in one pass)
    counts = await store_of(g).counts()  # (the worker may be settling them already)
    assert sum(counts.values()) == 7 and set(counts) <= {"queued", "settling", "settled"}


async def test_nonce_reused_with_another_payload_is_refused(paid, http, evm_devnet):
    g, o = await paid()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    nonce = os.urandom(32)
    first = sign_payment(evm_devnet, evm_devnet.payers[0], req, nonce=nonce)
    second = sign_payment(evm_devnet, evm_devnet.payers[0], req, nonce=nonce, value=PRICE + 1)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": first}) as r:
        assert r.status == 200
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": second}) as r:
        assert r.status == 402
        assert (await r.json())["error"] == "invalid_exact_evm_nonce_already_used"
    assert len(o.requests) == 1


async def test_rpc_down_is_503_and_nothing_served(gateway, origin, http, evm_devnet):
    o = await origin()
    cfg = x402_config(evm_devnet, o.url)
    cfg["evm"][evm_devnet.network]["rpc_url"] = "http://127.0.0.1:9"  # discard port: closed
    g = await gateway(cfg)
    async with http.get(g.url + "/sky/v1/flights") as r:
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    header = sign_payment(evm_devnet, evm_devnet.payers[0], req)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 503
        assert (await r.json())["error"] == "chain_unavailable"
    assert o.requests == []
    assert await store_of(g).counts() == {}


async def test_unreachable_origin_voids_the_payment_and_a_retry_is_told_so(gateway, http,
                                                                            evm_devnet):
    g = await gateway(x402_config(evm_devnet, "http://127.0.0.1:9"))  # nothing listens there
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    payer = evm_devnet.payers[0]
    before = token_balance(evm_devnet, payer.address)
    header = sign_payment(evm_devnet, payer, req)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 502
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 402
        assert (await r.json())["error"] == "invalid_transaction_state"
    assert await store_of(g).counts() == {"void": 1}
    assert token_balance(evm_devnet, payer.address) == before


async def test_a_browser_gets_the_html_paywall(paid, http):
    g, o = await paid(description="Flights </script><script>alert(1)</script>")
    async with http.get(g.url + "/sky/v1/flights", headers={"Accept": "text/html,*/*"}) as r:
        assert r.status == 402
        assert r.headers["Content-Type"].startswith("text/html")
        page = await r.text()
        offer = requirement_from(r.headers["PAYMENT-REQUIRED"])
    assert "<script>alert(1)</script>" not in page
    assert offer["amount"] in page and offer["asset"] in page
    assert o.requests == []
