"""x402 `exact` on Hedera (HBAR) through a running gateway, against the local Hedera network
(real gRPC consensus node + mirror REST) and a real origin."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from chains.hedera import exact
from chains.hedera.devnet import HBAR
from chains.hedera.ids import AccountId, TransactionId
from chains.payments import PaymentStore
from chains.x402 import decode_header, encode_header
from gateway.client import PayingClient
from tests.support.hedera_exact import forge, forge_bytes, header_for, resign

KEY_ENV = "TOLLGATE_TEST_HEDERA_FEE_PAYER_KEY"
PRICE = 5_000_000  # 0.05 HBAR in tinybars


@pytest.fixture(autouse=True)
def fee_payer_key(monkeypatch, hedera_devnet):
    monkeypatch.setenv(KEY_ENV, hedera_devnet.account("spender").private_key)


def hedera_config(devnet, origin_url: str, *, settlement: str = "after") -> dict:
    return {
        "assets": {"hbar": {"type": "hbar", "network": devnet.network}},
        "hedera": {"network": devnet.network, "nodes": devnet.network_map(),
                   "mirror_url": devnet.mirror_url,
                   "account_id": devnet.account("spender").account_id,
                   "private_key_env": KEY_ENV},
        "paygates": [{"id": "sky", "prefix": "/sky", "target": origin_url,
                      "rails": ["x402-hedera"], "prices": {"hbar": "0.05"},
                      "pay_to": {"hedera": devnet.account("merchant").account_id},
                      "settlement": settlement}],
    }


@pytest.fixture
async def paid(gateway, origin, hedera_devnet):
    """(gateway handle, origin) for a `/sky` paygate paid in HBAR."""
    async def make(**cfg):
        o = await origin()
        g = await gateway(hedera_config(hedera_devnet, o.url, **cfg))
        return g, o
    return make


async def challenge_req(http, url: str) -> dict:
    async with http.get(url) as r:
        assert r.status == 402
        return decode_header(r.headers["PAYMENT-REQUIRED"], max_len=65536)["accepts"][0]


def store_of(g) -> PaymentStore:
    return PaymentStore(g.gw.engine, g.gw.clock)


def balances(devnet, *accounts) -> dict[str, int]:
    names = ("payer", "merchant", "spender")
    accts = (accounts[0], devnet.account("merchant"), devnet.account("spender")) + accounts[1:]
    return {name: devnet.balance(a) for name, a in zip(names, accts)}


def tx_id_of(header: str) -> TransactionId:
    """The transaction id inside a payment header, read from the protobuf itself."""
    b64 = decode_header(header)["payload"]["transaction"]
    tid = exact.decode_transaction(exact.transaction_bytes(b64)).body.transactionID
    a, start = tid.accountID, tid.transactionValidStart
    return TransactionId(AccountId(a.shardNum, a.realmNum, a.accountNum), start.seconds, start.nanos)


async def test_402_offers_hbar_with_the_gateway_as_fee_payer(paid, http, hedera_devnet):
    g, o = await paid()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    assert req == {"scheme": "exact", "network": hedera_devnet.network, "asset": "0.0.0",
                   "amount": str(PRICE), "payTo": hedera_devnet.account("merchant").account_id,
                   "maxTimeoutSeconds": 180,
                   "extra": {"feePayer": hedera_devnet.account("spender").account_id}}
    assert o.requests == []


@pytest.mark.parametrize("key_type", ["ED25519", "ECDSA_SECP256K1"])
async def test_a_paid_call_moves_exactly_the_price(paid, http, hedera_devnet, hedera_account,
                                                   key_type):
    g, o = await paid()
    payer = hedera_account(key_type)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    header = forge(req, payer)
    before = balances(hedera_devnet, payer)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200, await r.text()
        receipt = decode_header(r.headers["PAYMENT-RESPONSE"])
    assert receipt["success"] is True and receipt["payer"] == payer.account_id
    assert receipt["network"] == hedera_devnet.network
    assert TransactionId.parse(receipt["transaction"]) == tx_id_of(header)
    after = balances(hedera_devnet, payer)
    assert after["payer"] == before["payer"] - PRICE
    assert after["merchant"] == before["merchant"] + PRICE
    assert after["spender"] == before["spender"] - hedera_devnet.fee  # the gateway paid the fee
    assert len(o.requests) == 1
    assert o.requests[0].headers["X-Tollgate-Payer"] == payer.account_id
    assert await store_of(g).counts() == {"settled": 1}


async def test_the_same_payment_again_gets_the_stored_response(paid, http, hedera_mirror_faults,
                                                               hedera_account):
    hedera_devnet = hedera_mirror_faults
    g, o = await paid()
    payer, stranger = hedera_account(), hedera_account()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    start, nanos = int(time.time()) - 5, 123_456_789
    raw = forge_bytes(req, payer, start=start, nanos=nanos)
    # With a payment-identifier (never on chain) the settled payment's response is replayed.
    decoded = decode_header(header_for(req, raw))
    decoded["extensions"] = {"payment-identifier": {"info": {"id": "hedera-replay-0001"}}}
    header = encode_header(decoded)
    before = balances(hedera_devnet, payer)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200
        first = await r.read()
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200
        assert await r.read() == first
    # The same transaction id re-signed, or another body under it: one claim, refused. The
    # mirror is held back so that only the claim can tell (as while a payment is in flight).
    hedera_devnet.set_mirror_lag(3600)
    for variant in (header_for(req, resign(raw, stranger)),
                    forge(req, payer, start=start, nanos=nanos, memo="another body"),
                    forge(req, stranger, start=start, nanos=nanos)):
        async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": variant}) as r:
            assert r.status == 402
            assert (await r.json())["error"] == exact.ALREADY_USED
    assert len(o.requests) == 1
    after = balances(hedera_devnet, payer)
    assert after["merchant"] == before["merchant"] + PRICE
    assert after["payer"] == before["payer"] - PRICE
    assert after["spender"] == before["spender"] - hedera_devnet.fee  # one submission's fee
    assert await store_of(g).counts() == {"settled": 1}


async def test_a_transaction_id_that_already_ran_is_refused_by_another_gateway(
        paid, http, hedera_devnet, hedera_account):
    g1, o1 = await paid()
    g2, o2 = await paid()
    payer = hedera_account()
    req = await challenge_req(http, g1.url + "/sky/v1/flights")
    header = forge(req, payer)
    async with http.get(g1.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200
    before = balances(hedera_devnet, payer)
    async with http.get(g2.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 402
        assert (await r.json())["error"] == exact.ALREADY_USED
    assert o2.requests == [] and balances(hedera_devnet, payer) == before
    assert await store_of(g2).counts() == {}


REFUSALS = {
    # name: (forge arguments given (req, payer, stranger, devnet), expected reason)
    "debits_the_fee_payer": (lambda req, p, s, d: dict(
        transfers=[(req["extra"]["feePayer"], -PRICE), (req["payTo"], PRICE)]),
        exact.FEE_PAYER_TRANSFERRING),
    "pays_the_wrong_account": (lambda req, p, s, d: dict(
        transfers=[(p.account_id, -PRICE), (s.account_id, PRICE)]), exact.RECIPIENT_MISMATCH),
    "pays_the_wrong_amount": (lambda req, p, s, d: dict(
        transfers=[(p.account_id, -PRICE + 1), (req["payTo"], PRICE - 1)]), exact.AMOUNT_MISMATCH),
    "carries_an_extra_transfer": (lambda req, p, s, d: dict(
        transfers=[(p.account_id, -PRICE - 1), (req["payTo"], PRICE), (s.account_id, 1)]),
        exact.EXTRA_POSITIVE_TRANSFERS),
    "carries_a_token_transfer": (lambda req, p, s, d: dict(token=("0.0.7001", p.account_id, -1)),
                                 exact.ASSET_MISMATCH),
    "is_an_allowance_approval": (lambda req, p, s, d: dict(kind="approve"), exact.NON_TRANSFER_OPS),
    "spends_an_allowance_to_the_gateway": (lambda req, p, s, d: dict(
        transfers=[(req["payTo"], PRICE)], approved=[(p.account_id, -PRICE)]),
        exact.APPROVED_TRANSFER),
    "is_signed_by_the_wrong_key": (lambda req, p, s, d: dict(signers=[s]), exact.SIGNATURE_INVALID),
    "is_unsigned": (lambda req, p, s, d: dict(signers=[]), exact.SIGNATURE_INVALID),
    "has_the_payer_as_transaction_id_account": (lambda req, p, s, d: dict(tx_account=p.account_id),
                                                exact.FEE_PAYER_MISMATCH),
    "has_an_expired_valid_start": (lambda req, p, s, d: dict(start=time.time() - 300),
                                   exact.TRANSACTION_EXPIRED),
    "has_a_valid_start_in_the_future": (lambda req, p, s, d: dict(start=time.time() + 90),
                                        exact.VALID_START_IN_FUTURE),
    "is_frozen_for_another_node": (lambda req, p, s, d: dict(nodes=["0.0.4"]), exact.NODE_ACCOUNT),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_bad_payments_get_402_with_the_reason(paid, http, hedera_devnet, hedera_account,
                                                    case):
    g, o = await paid()
    payer, stranger = hedera_account(), hedera_account()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    args, expected = REFUSALS[case]
    header = forge(req, payer, **args(req, payer, stranger, hedera_devnet))
    await _refused(g, o, http, hedera_devnet, payer, header, expected)


@pytest.mark.parametrize("transaction", ["@@@ not base64 @@@",
                                         base64.b64encode(b"\xffnot a protobuf\xff").decode()])
async def test_garbage_transactions_get_402(paid, http, hedera_devnet, hedera_account,
                                            transaction):
    from chains.x402 import encode_header

    g, o = await paid()
    payer = hedera_account()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    header = encode_header({"x402Version": 2, "accepted": req,
                            "payload": {"transaction": transaction}})
    await _refused(g, o, http, hedera_devnet, payer, header, exact.DECODE_FAILED)


async def test_a_payer_without_the_funds_gets_402(paid, http, hedera_devnet, hedera_account):
    g, o = await paid()
    payer = hedera_account(balance=PRICE - 1)
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    await _refused(g, o, http, hedera_devnet, payer, forge(req, payer), "insufficient_funds")


async def _refused(g, o, http, devnet, payer, header: str, expected: str) -> None:
    before = balances(devnet, payer)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 402
        body = await r.json()
        assert "PAYMENT-REQUIRED" in r.headers
    assert body["error"] == expected, body
    assert o.requests == []
    assert balances(devnet, payer) == before
    assert await store_of(g).counts() == {}


async def test_mirror_down_during_verification_is_503(paid, http, hedera_mirror_faults,
                                                      hedera_account):
    devnet = hedera_mirror_faults
    g, o = await paid()
    payer = hedera_account()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    header = forge(req, payer)
    before = balances(devnet, payer)
    devnet.set_mirror_down(True)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 503
        assert (await r.json())["error"] == "mirror_unavailable"
    assert o.requests == [] and balances(devnet, payer) == before
    assert await store_of(g).counts() == {}
    devnet.set_mirror_down(False)  # the same payment is good once the mirror is back
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200
    assert balances(devnet, payer)["payer"] == before["payer"] - PRICE


async def test_a_lost_node_answer_is_reconciled_and_charged_once(paid, http, hedera_mirror_faults,
                                                                  hedera_account):
    """The node executes the transfer but its answer is lost: the outcome is unknown, the
    caller is served, and the settlement worker settles it from the mirror's record."""
    devnet = hedera_mirror_faults
    g, o = await paid(settlement="before")
    payer = hedera_account()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    before = balances(devnet, payer)
    devnet.fail_next_submissions(1, mode="lost")  # executed, then the answer is dropped
    async with http.get(g.url + "/sky/v1/flights",
                        headers={"PAYMENT-SIGNATURE": forge(req, payer)}) as r:
        assert r.status == 200, await r.text()
        assert decode_header(r.headers["PAYMENT-RESPONSE"])["success"] is True
    async with asyncio.timeout(60):
        while (await store_of(g).counts()) != {"settled": 1}:
            await asyncio.sleep(0.2)
    after = balances(devnet, payer)
    assert after["payer"] == before["payer"] - PRICE
    assert after["merchant"] == before["merchant"] + PRICE
    assert len(o.requests) == 1


async def test_deferred_settlement_is_done_by_the_worker(paid, http, hedera_devnet,
                                                         hedera_account):
    g, o = await paid(settlement="deferred")
    payer = hedera_account()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    before = balances(hedera_devnet, payer)
    async with http.get(g.url + "/sky/v1/flights",
                        headers={"PAYMENT-SIGNATURE": forge(req, payer)}) as r:
        assert r.status == 200
    async with asyncio.timeout(30):
        while (await store_of(g).counts()) != {"settled": 1}:
            await asyncio.sleep(0.1)
    assert balances(hedera_devnet, payer)["merchant"] == before["merchant"] + PRICE


async def test_reconcile_reads_the_mirror_and_waits_out_the_window(paid, http, hedera_devnet,
                                                                   hedera_account):
    from gateway.rails.hedera import MIRROR_LAG_MARGIN, HederaExact
    from store.clock import ManualClock

    g, o = await paid()
    payer = hedera_account()
    req = await challenge_req(http, g.url + "/sky/v1/flights")
    ran, never = forge(req, payer), forge(req, payer)
    async with http.get(g.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": ran}) as r:
        assert r.status == 200
    clock = ManualClock()
    scheme = HederaExact(g.config, g.gw.hedera, clock)
    ran_outcome = await scheme.reconcile({"payment": decode_header(ran), "requirement": req}, None)
    assert ran_outcome.state == "settled"
    assert TransactionId.parse(ran_outcome.tx_hash) == tx_id_of(ran)
    stored = {"payment": decode_header(never), "requirement": req}  # never submitted
    # Inside the window "no record" asks for the same bytes to be resubmitted (safe: a
    # node that saw them answers DUPLICATE_TRANSACTION); the rail does so while valid.
    outcome = await scheme.reconcile(stored, None)
    assert (outcome.state, outcome.reason) == ("failed", "settlement_pending")
    assert scheme.still_valid(stored, clock.now())
    clock.advance(130)  # past the 120 s window, inside the mirror margin
    assert (await scheme.reconcile(stored, None)).state == "unknown"  # mirror may lag
    clock.advance(-130)
    clock.advance(180 + MIRROR_LAG_MARGIN)
    assert not scheme.still_valid(stored, clock.now())
    outcome = await scheme.reconcile(stored, None)
    assert (outcome.state, outcome.reason) == ("failed", "payment_expired")


async def test_paying_client_pays_hbar(paid, hedera_devnet, hedera_account):
    g, o = await paid()
    payer = hedera_account("ECDSA_SECP256K1")
    before = balances(hedera_devnet, payer)
    async with PayingClient(hedera_account=payer.account_id, hedera_key=payer.private_key,
                            max_per_request=PRICE, spend_limit=HBAR) as client:
        resp = await client.get(g.url + "/sky/v1/flights")
        assert resp.status_code == 200, resp.text
        receipt = client.last_receipt
    assert receipt["success"] is True and receipt["payer"] == payer.account_id
    assert client.spent.total("0.0.0") == PRICE
    assert balances(hedera_devnet, payer)["merchant"] == before["merchant"] + PRICE
    async with PayingClient(hedera_account=payer.account_id, hedera_key=payer.private_key,
                            max_per_request=PRICE - 1) as client:
        resp = await client.get(g.url + "/sky/v1/flights")
        assert resp.status_code == 402 and "per-request maximum" in client.last_refusal
