"""The facilitator API the gateway serves (`/facilitator/verify|settle|supported`), the
client for any facilitator, and a gateway that settles through another one; real anvil."""

from __future__ import annotations

import socket
import time

import pytest

from chains.facilitator import FacilitatorClient, FacilitatorUnavailable
from chains.payments import PaymentStore
from chains.x402 import PaymentRequirements, decode_header
from gateway.config import ConfigError
from store.clock import ManualClock
from tests.gateway.test_facilitator_access import (  # noqa: F401  (facilitator_key: a fixture)
    AUTH,
    FAC_ENV,
    FAC_KEY,
    enabled,
    facilitator_key,
    settler_nonce,
)
from tests.gateway.test_x402_settlement import automine_off, stop_worker
from tests.gateway.x402_support import (
    PRICE,
    requirement_from,
    sign_payment,
    token_balance,
    x402_config,
)


pytestmark = pytest.mark.usefixtures("settler_key", "facilitator_key")


@pytest.fixture
async def fac(gateway, origin, http, evm_devnet):
    """(gateway A with a settler key and the facilitator API on, one requirement it offers)."""
    o = await origin()
    g = await gateway(enabled(evm_devnet, o.url))
    async with http.get(g.url + "/sky/v1/flights") as r:
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    return g, req


def body_for(devnet, req: dict, payer=None, **sign) -> dict:
    payload = decode_header(sign_payment(devnet, payer or devnet.payers[0], req, **sign))
    return {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": req}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


async def test_supported_lists_exact_on_the_devnet_and_the_settler(fac, http, evm_devnet):
    g, _req = fac
    async with http.get(g.url + "/facilitator/supported", headers=AUTH) as r:
        assert r.status == 200
        body = await r.json()
    kinds = body["kinds"]
    for version in (2, 1):
        assert {"x402Version": version, "scheme": "exact", "network": evm_devnet.network} in kinds
    assert body["extensions"] == []
    signers = [a for addrs in body["signers"].values() for a in addrs]
    assert signers == [evm_devnet.settler.address]


async def test_verify_accepts_a_valid_payment(fac, http, evm_devnet):
    g, req = fac
    payer = evm_devnet.payers[0]
    async with http.post(g.url + "/facilitator/verify", json=body_for(evm_devnet, req),
                         headers=AUTH) as r:
        assert r.status == 200
        assert await r.json() == {"isValid": True, "payer": payer.address}


@pytest.mark.parametrize("case,reason", [
    ("wrong_pay_to", "invalid_exact_evm_payload_recipient_mismatch"),
    ("expired", "invalid_exact_evm_payload_authorization_valid_before"),
    ("bad_signature", "invalid_exact_evm_payload_signature"),
])
async def test_verify_rejects_bad_payments_with_200_and_a_reason(case, reason, fac, http,
                                                                 evm_devnet):
    g, req = fac
    payer = evm_devnet.payers[0]
    sign = {
        "wrong_pay_to": {"to": evm_devnet.payers[1].address},
        "expired": {"valid_before": int(time.time()) - 10},
        "bad_signature": {"key": evm_devnet.payers[1].private_key},
    }[case]
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    async with http.post(g.url + "/facilitator/verify",
                         json=body_for(evm_devnet, req, payer, **sign), headers=AUTH) as r:
        assert r.status == 200
        body = await r.json()
    assert body["isValid"] is False
    assert body["invalidReason"] == reason
    assert body["payer"] == payer.address
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before


@pytest.mark.parametrize("path", ["verify", "settle"])
@pytest.mark.parametrize("case,code", [
    ("not_json", "invalid_json"),
    ("not_an_object", "invalid_request"),
    ("missing_payload", "invalid_request"),
    ("missing_requirements", "invalid_request"),
    ("bad_requirements", "invalid_payment_requirements"),
])
async def test_malformed_requests_are_400_json(path, case, code, fac, http, evm_devnet):
    g, req = fac
    good = body_for(evm_devnet, req)
    data = {
        "not_json": b"{not json",
        "not_an_object": b"[1, 2]",
        "missing_payload": {k: v for k, v in good.items() if k != "paymentPayload"},
        "missing_requirements": {k: v for k, v in good.items() if k != "paymentRequirements"},
        "bad_requirements": {**good, "paymentRequirements": {"scheme": "exact"}},
    }[case]
    kw = {"data": data, "headers": {**AUTH, "Content-Type": "application/json"}} \
        if isinstance(data, bytes) else {"json": data, "headers": AUTH}
    async with http.post(g.url + f"/facilitator/{path}", **kw) as r:
        assert r.status == 400
        assert r.content_type == "application/json"
        body = await r.json()
    assert body["error"] == code and body["message"]


async def test_settle_moves_money_once_and_refuses_the_same_payload_again(fac, http,
                                                                         evm_devnet):
    g, req = fac
    payer = evm_devnet.payers[1]
    body = body_for(evm_devnet, req, payer)
    payer_before = token_balance(evm_devnet, payer.address)
    async with http.post(g.url + "/facilitator/settle", json=body, headers=AUTH) as r:
        assert r.status == 200
        first = await r.json()
    assert first["success"] is True, first
    assert first["payer"] == payer.address and first["network"] == evm_devnet.network
    receipt = evm_devnet.request("eth_getTransactionReceipt", [first["transaction"]])
    assert int(receipt["status"], 16) == 1
    assert receipt["to"].lower() == evm_devnet.token_address.lower()
    assert receipt["from"].lower() == evm_devnet.settler.address.lower()
    assert token_balance(evm_devnet, payer.address) == payer_before - PRICE

    async with http.post(g.url + "/facilitator/settle", json=body, headers=AUTH) as r:
        assert r.status == 200
        again = await r.json()
    assert again["success"] is False
    assert again["errorReason"] == "invalid_exact_evm_nonce_already_used"
    assert again["transaction"] == ""
    assert token_balance(evm_devnet, payer.address) == payer_before - PRICE


async def test_gateway_settles_through_another_gateways_facilitator(fac, gateway, origin, http,
                                                                   evm_devnet):
    a, _req = fac
    o = await origin()
    cfg = x402_config(evm_devnet, o.url)
    net = cfg["evm"][evm_devnet.network]
    del net["settler_key_env"]
    net["facilitator_url"] = a.url + "/facilitator"
    net["facilitator_api_key_env"] = FAC_ENV
    b = await gateway(cfg)
    assert b.gw.evm.networks[evm_devnet.network].settler is None
    async with http.get(b.url + "/sky/v1/flights") as r:
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    payer = evm_devnet.payers[2]
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    async with http.get(b.url + "/sky/v1/flights",
                        headers={"PAYMENT-SIGNATURE": sign_payment(evm_devnet, payer, req)}) as r:
        assert r.status == 200
        receipt = decode_header(r.headers["PAYMENT-RESPONSE"])
    assert receipt["success"] is True and receipt["payer"] == payer.address
    tx = evm_devnet.request("eth_getTransactionByHash", [receipt["transaction"]])
    # Sent by A's settler key: B holds none.
    assert tx["from"].lower() == evm_devnet.settler.address.lower()
    mined = evm_devnet.request("eth_getTransactionReceipt", [receipt["transaction"]])
    assert int(mined["status"], 16) == 1
    (row,) = [await PaymentStore(b.gw.engine, b.gw.clock).get(i) for i in await _ids(b)]
    assert row.state == "settled" and row.tx_hash == receipt["transaction"]
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PRICE
    assert len(o.requests) == 1


async def _ids(g):
    from sqlalchemy import select

    from store.schema import payments
    async with g.gw.engine.connect() as conn:
        return (await conn.execute(select(payments.c.id))).scalars().all()


async def test_facilitator_client_against_a_closed_port_is_unavailable(evm_devnet):
    port = closed_port()
    req = PaymentRequirements.model_validate({
        "scheme": "exact", "network": evm_devnet.network, "amount": str(PRICE),
        "asset": evm_devnet.token_address, "payTo": evm_devnet.merchant.address,
        "maxTimeoutSeconds": 60, "extra": {"name": "USD Coin", "version": "2"}})
    payload = {"x402Version": 2, "accepted": req.to_wire(), "payload": {}}
    client = FacilitatorClient(f"http://127.0.0.1:{port}/facilitator", timeout=5)
    try:
        with pytest.raises(FacilitatorUnavailable):
            await client.verify(payload, req)
        with pytest.raises(FacilitatorUnavailable):
            await client.settle(payload, req)
        with pytest.raises(FacilitatorUnavailable):
            await client.supported()
    finally:
        await client.aclose()


@pytest.mark.parametrize("key", [None, "wrong-key-" + "x" * 32])
async def test_facilitator_client_sends_the_key_and_a_refused_key_is_unavailable(
        key, fac, evm_devnet):
    """401 says nothing about the payment: unavailable (outcome unknown), never a verdict."""
    a, req_dict = fac
    req = PaymentRequirements.model_validate(req_dict)
    payload = body_for(evm_devnet, req_dict)["paymentPayload"]
    nonce = settler_nonce(evm_devnet)
    client = FacilitatorClient(a.url + "/facilitator", api_key=key, timeout=5)
    try:
        with pytest.raises(FacilitatorUnavailable, match="401"):
            await client.verify(payload, req)
        with pytest.raises(FacilitatorUnavailable, match="401"):
            await client.settle(payload, req)
        with pytest.raises(FacilitatorUnavailable):
            await client.supported()
    finally:
        await client.aclose()
    assert settler_nonce(evm_devnet) == nonce
    good = FacilitatorClient(a.url + "/facilitator", api_key=FAC_KEY, timeout=5)
    try:
        assert (await good.verify(payload, req)).is_valid
        assert (await good.supported())["kinds"]
    finally:
        await good.aclose()


async def test_gateway_with_a_wrong_facilitator_key_keeps_the_payment_unknown(
        fac, gateway, origin, http, evm_devnet, monkeypatch):
    a, _req = fac
    monkeypatch.setenv("TOLLGATE_TEST_WRONG_FACILITATOR_KEY", "wrong-key-" + "x" * 32)
    o = await origin()
    cfg = x402_config(evm_devnet, o.url)
    net = cfg["evm"][evm_devnet.network]
    del net["settler_key_env"]
    net["facilitator_url"] = a.url + "/facilitator"
    net["facilitator_api_key_env"] = "TOLLGATE_TEST_WRONG_FACILITATOR_KEY"
    b = await gateway(cfg)
    await stop_worker(b)
    async with http.get(b.url + "/sky/v1/flights") as r:
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    payer = evm_devnet.payers[3]
    payer_before = token_balance(evm_devnet, payer.address)
    nonce = settler_nonce(evm_devnet)
    async with http.get(b.url + "/sky/v1/flights",
                        headers={"PAYMENT-SIGNATURE": sign_payment(evm_devnet, payer, req)}) as r:
        assert r.status == 200
    (row_id,) = await _ids(b)
    row = await PaymentStore(b.gw.engine, b.gw.clock).get(row_id)
    assert row.state == "unknown" and row.tx_hash is None  # retried later, not lost as failed
    assert settler_nonce(evm_devnet) == nonce
    assert token_balance(evm_devnet, payer.address) == payer_before


async def test_a_facilitator_key_env_that_is_unset_refuses_to_start(gateway, origin, evm_devnet,
                                                                    monkeypatch):
    monkeypatch.delenv("TOLLGATE_TEST_UNSET_FACILITATOR_KEY", raising=False)
    o = await origin()
    cfg = x402_config(evm_devnet, o.url)
    net = cfg["evm"][evm_devnet.network]
    del net["settler_key_env"]
    net["facilitator_url"] = "https://facilitator.example.com"
    net["facilitator_api_key_env"] = "TOLLGATE_TEST_UNSET_FACILITATOR_KEY"
    with pytest.raises(ConfigError) as exc:
        await gateway(cfg)
    assert "facilitator_api_key_env" in str(exc.value)


async def test_facilitator_down_leaves_the_payment_unknown_never_a_402(gateway, origin, http,
                                                                      evm_devnet):
    clock = ManualClock()
    o = await origin()
    cfg = x402_config(evm_devnet, o.url)
    net = cfg["evm"][evm_devnet.network]
    del net["settler_key_env"]
    net["facilitator_url"] = f"http://127.0.0.1:{closed_port()}/facilitator"
    b = await gateway(cfg, clock=clock)
    rail = b.gw.rails["x402-evm"]
    await stop_worker(b)
    async with http.get(b.url + "/sky/v1/flights") as r:
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    payer = evm_devnet.payers[3]
    payer_before = token_balance(evm_devnet, payer.address)
    # (an identifier, so the replay below, after settlement was attempted, gets the response)
    header = sign_payment(evm_devnet, payer, req,
                          extensions={"payment-identifier": {"info": {"id": "fac-down-0001-ab"}}})
    async with http.get(b.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200
        assert "PAYMENT-REQUIRED" not in r.headers
    store = PaymentStore(b.gw.engine, b.gw.clock)
    (row_id,) = await _ids(b)
    row = await store.get(row_id)
    assert row.state == "unknown" and row.tx_hash is None
    # The worker retries through the (still closed) facilitator: still unknown, not failed.
    clock.advance(10)
    assert await rail.work_once() == 1
    assert (await store.get(row_id)).state == "unknown"
    async with http.get(b.url + "/sky/v1/flights", headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status == 200 and r.headers["X-Tollgate-Replay"] == "true"
    assert len(o.requests) == 1
    assert token_balance(evm_devnet, payer.address) == payer_before



async def test_unmined_settlement_is_pending_not_success_and_b_reconciles_it(
        gateway, origin, http, evm_devnet):
    """A's settlement is sent but not mined within its receipt wait: A must not claim
    success. B (settling through A) serves the caller, keeps the payment `unknown` with A's
    transaction, sends nothing more while it is pending, and settles it once mined."""
    o = await origin()
    a_cfg = enabled(evm_devnet, o.url)
    a_cfg["evm"][evm_devnet.network]["receipt_timeout_seconds"] = 0.2
    a = await gateway(a_cfg)
    cfg = x402_config(evm_devnet, o.url)
    net = cfg["evm"][evm_devnet.network]
    del net["settler_key_env"]
    net["facilitator_url"] = a.url + "/facilitator"
    net["facilitator_api_key_env"] = FAC_ENV
    clock = ManualClock()
    b = await gateway(cfg, clock=clock)
    await stop_worker(b)
    async with http.get(b.url + "/sky/v1/flights") as r:
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    payer = evm_devnet.payers[4]
    merchant = evm_devnet.merchant.address
    merchant_before = token_balance(evm_devnet, merchant)
    store = PaymentStore(b.gw.engine, b.gw.clock)

    def pending_count() -> int:
        addr = evm_devnet.settler.address
        return int(evm_devnet.request("eth_getTransactionCount", [addr, "pending"]), 16) - \
            int(evm_devnet.request("eth_getTransactionCount", [addr, "latest"]), 16)

    with automine_off(evm_devnet):
        # A, asked directly: not a success while the transaction is pending.
        async with http.post(a.url + "/facilitator/settle",
                             json=body_for(evm_devnet, req, payer), headers=AUTH) as r:
            assert r.status == 200
            direct = await r.json()
        assert direct["success"] is False
        assert direct["errorReason"] == "settlement_pending"
        assert direct["transaction"].startswith("0x")
        evm_devnet.request("evm_mine")

        header = sign_payment(evm_devnet, payer, req)
        async with http.get(b.url + "/sky/v1/flights",
                            headers={"PAYMENT-SIGNATURE": header}) as r:
            assert r.status == 200  # served, never a fresh 402
            receipt = decode_header(r.headers["PAYMENT-RESPONSE"])
        (row_id,) = await _ids(b)
        row = await store.get(row_id)
        assert row.state == "unknown" and row.tx_hash == receipt["transaction"]
        assert pending_count() == 1
        clock.advance(10)
        assert await b.gw.rails["x402-evm"].work_once() == 1
        assert (await store.get(row_id)).state == "unknown"
        assert pending_count() == 1  # nothing re-sent while A's transaction is pending
        evm_devnet.request("evm_mine")

    clock.advance(10)
    assert await b.gw.rails["x402-evm"].work_once() == 1
    done = await store.get(row_id)
    assert done.state == "settled" and done.tx_hash == row.tx_hash
    assert token_balance(evm_devnet, merchant) == merchant_before + 2 * PRICE
