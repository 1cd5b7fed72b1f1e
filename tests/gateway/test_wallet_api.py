"""The wallet page's JSON API: the gateway prepares approvals and submits only signed HBAR
approvals to its own spender; polling the meter is not rate-limited like activations."""

from __future__ import annotations

import asyncio
import base64

import pytest

from gateway.demo.dev_signer import sign_transaction
from tests.gateway.session_support import KEY_ENV, UNIT_PRICE, open_session, session_config


@pytest.fixture(autouse=True)
def spender_key(monkeypatch, hedera_devnet):
    monkeypatch.setenv(KEY_ENV, hedera_devnet.account("spender").private_key)


@pytest.fixture
async def wallet_gw(gateway, origin, hedera_devnet):
    o = await origin()
    return await gateway(session_config(hedera_devnet, o.url)), o


async def prepared(http, g, owner, amount, nonce=None) -> dict:
    async with http.post(g.url + "/api/wallet/approval", json={
            "account_id": owner.account_id, "paygate": "sky", "amount": amount,
            "nonce": nonce}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def allowance(g, owner):
    found = await g.gw.hedera.mirror.crypto_allowance(owner.account_id,
                                                      g.gw.config.hedera.account_id)
    return found.amount if found else None


async def test_prepared_approval_signed_by_the_owner_is_submitted(wallet_gw, http, hedera_account):
    g, _ = wallet_gw
    owner = hedera_account()
    tx = await prepared(http, g, owner, 3 * UNIT_PRICE)
    assert (tx["owner"], tx["amount"], tx["memo"]) == (owner.account_id, 3 * UNIT_PRICE,
                                                       "tollgate allowance")
    signed = await asyncio.to_thread(sign_transaction, owner.private_key, tx["transaction"])
    async with http.post(g.url + "/api/wallet/submit", json={"transaction": signed}) as r:
        body = await r.json()
    assert (r.status, body["status"], body["transaction_id"]) == (200, "SUCCESS", tx["transaction_id"])
    assert await allowance(g, owner) == 3 * UNIT_PRICE


async def test_unsigned_approval_is_not_submitted(wallet_gw, http, hedera_account):
    g, _ = wallet_gw
    owner = hedera_account()
    tx = await prepared(http, g, owner, UNIT_PRICE)
    async with http.post(g.url + "/api/wallet/submit", json={"transaction": tx["transaction"]}) as r:
        assert (r.status, (await r.json())["error"]) == (400, "invalid_approval")
    assert await allowance(g, owner) is None


async def test_submit_relays_nothing_but_an_approval_to_our_spender(wallet_gw, http,
                                                                   hedera_devnet, hedera_account):
    """An attacker must not use the gateway to relay other signed transactions."""
    import hiero_sdk_python as sdk

    g, _ = wallet_gw
    owner = hedera_account()
    thief = hedera_account()
    before = hedera_devnet.balance(owner)

    def signed(build) -> str:
        tx = (build().set_transaction_id(sdk.TransactionId.generate(owner.sdk_account_id()))
              .set_node_account_id(sdk.AccountId.from_string("0.0.3")))
        tx.freeze()
        tx.sign(owner.sdk_private_key())
        return base64.b64encode(tx.to_bytes()).decode()

    transfer = signed(lambda: sdk.TransferTransaction()
                      .add_hbar_transfer(owner.sdk_account_id(), -UNIT_PRICE)
                      .add_hbar_transfer(thief.sdk_account_id(), UNIT_PRICE))
    other_spender = signed(lambda: sdk.AccountAllowanceApproveTransaction().approve_hbar_allowance(
        owner.sdk_account_id(), thief.sdk_account_id(), sdk.Hbar.from_tinybars(UNIT_PRICE)))
    for tx in (transfer, other_spender, "bm90IGEgdHJhbnNhY3Rpb24=", "%%%"):
        async with http.post(g.url + "/api/wallet/submit", json={"transaction": tx}) as r:
            assert (r.status, (await r.json())["error"]) == (400, "invalid_approval"), tx
    await asyncio.sleep(0)  # nothing was submitted: balances and allowances unchanged
    assert hedera_devnet.balance(owner) == before
    found = await g.gw.hedera.mirror.crypto_allowance(owner.account_id, thief.account_id)
    assert found is None


async def test_approval_takes_only_the_accounts_own_unused_nonce(wallet_gw, http, hedera_account):
    g, _ = wallet_gw
    owner, other = hedera_account(), hedera_account()
    async with http.post(g.url + "/api/sessions/challenge",
                         json={"account_id": other.account_id, "paygate": "sky"}) as r:
        nonce = (await r.json())["nonce"]
    for body in ({"account_id": owner.account_id, "paygate": "sky", "amount": 1, "nonce": nonce},
                 {"account_id": owner.account_id, "paygate": "sky", "amount": -1},
                 {"account_id": owner.account_id, "paygate": "sky", "amount": 1.5},
                 {"account_id": "alice", "paygate": "sky", "amount": 1}):
        async with http.post(g.url + "/api/wallet/approval", json=body) as r:
            assert r.status == 400, body
    tx = await prepared(http, g, other, UNIT_PRICE, nonce)
    assert tx["memo"] == f"tollgate:{nonce}"


async def test_polling_the_meter_is_not_limited_like_activations(gateway, origin, http,
                                                                hedera_devnet, hedera_account):
    o = await origin()
    g = await gateway(session_config(hedera_devnet, o.url) | {"server": {
        "session_api_per_minute": 5, "allow_private_targets": True}})
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=2 * UNIT_PRICE)
    for _ in range(12):  # the page polls every 2 s
        async with http.get(g.url + "/api/wallet/session",
                            headers={"X-Hedera-Session-Id": token}) as r:
            assert r.status == 200
            meter = await r.json()
    assert meter["session"]["remaining"] == 2 * UNIT_PRICE
    statuses = []
    for _ in range(8):
        async with http.post(g.url + "/api/wallet/approval", json={
                "account_id": owner.account_id, "paygate": "sky", "amount": 1}) as r:
            statuses.append(r.status)
    assert 429 in statuses  # preparing transactions is limited like activations


async def test_public_listing_and_page_config(wallet_gw, http, hedera_devnet):
    g, o = wallet_gw
    async with http.get(g.url + "/api/paygates") as r:
        (sky,) = (await r.json())["paygates"]
    assert (sky["id"], sky["prefix"], sky["rails"]) == ("sky", "/sky", ["hedera-session"])
    assert sky["prices"]["hbar"] == {"unit_price": "0.05", "atomic": str(UNIT_PRICE),
                                     "network": "hedera:devnet"}
    assert sky["rules"] == [{"method": "POST", "path": "/v1/bookings", "units": 3}]
    assert sky["unit_price_tinybars"] == UNIT_PRICE
    async with http.get(g.url + "/api/wallet/config") as r:
        cfg = await r.json()
    assert (cfg["network"], cfg["spender"], cfg["sessions"]) == \
        ("hedera:devnet", hedera_devnet.account("spender").account_id, True)
    assert cfg["walletconnect_project_id"] is None and cfg["dev_signer"] is None
    assert "private" not in str(cfg).lower() and "secret" not in str(cfg).lower()
    async with http.get(g.url + "/") as r:
        assert r.status == 200 and "Tollgate wallet" in await r.text()
        assert "script-src" not in r.headers["Content-Security-Policy"]  # default-src 'self'
    assert o.requests == []
