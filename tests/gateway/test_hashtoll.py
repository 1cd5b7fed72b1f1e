"""HashToll-compatible sessions: its field names in, its shapes out, our proof of control
kept (PROTOCOLS.md "HashToll")."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tests.gateway.session_support import (
    KEY_ENV,
    UNIT_PRICE,
    approve,
    session_config,
)


@pytest.fixture(autouse=True)
def spender_key(monkeypatch, hedera_devnet):
    monkeypatch.setenv(KEY_ENV, hedera_devnet.account("spender").private_key)


@pytest.fixture
async def hashtoll_gw(gateway, origin, hedera_devnet):
    o = await origin()
    return await gateway(session_config(hedera_devnet, o.url)), o


async def _hashtoll_activate(http, g, net, owner, allowance, **extra):
    async with http.post(g.url + "/api/sessions/challenge",
                         json={"userAccountId": owner.account_id, "productName": "sky"}) as r:
        assert r.status == 200, await r.text()
        ch = await r.json()
    tx_id = await approve(net, owner, allowance, memo=ch["memo"])
    async with http.post(g.url + "/api/sessions/activate", json={
            "userAccountId": owner.account_id, "productName": "sky", "nonce": ch["nonce"],
            "transactionId": tx_id, **extra}) as r:
        return r.status, await r.json()


async def test_hashtoll_names_open_a_session_whose_id_is_the_token(hashtoll_gw, http,
                                                                   hedera_devnet, hedera_account):
    g, o = hashtoll_gw
    owner = hedera_account()
    status, body = await _hashtoll_activate(http, g, hedera_devnet, owner, 4 * UNIT_PRICE,
                                            expiryHours=2)
    assert status == 201, body
    session = body["session"]
    assert session["id"] == body["token"] and session["userId"] == owner.account_id
    expires = datetime.strptime(session["expiresAt"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc).timestamp()
    assert expires == session["expires_at"]
    assert session["expires_at"] - session["created_at"] in (7200, 7201)
    # HashToll's lowercase headers spend from it
    async with http.get(g.url + "/sky/v1/flights", headers={
            "x-hedera-session-id": session["id"], "x-idempotency-key": "k1"}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Tollgate-Remaining"] == str(3 * UNIT_PRICE)
    assert o.requests[-1].headers["X-Tollgate-Payer"] == owner.account_id


async def test_expiry_hours_is_capped_by_the_configured_ttl(hashtoll_gw, http, hedera_devnet,
                                                           hedera_account):
    g, _ = hashtoll_gw
    status, body = await _hashtoll_activate(http, g, hedera_devnet, hedera_account(),
                                            2 * UNIT_PRICE, expiryHours=24 * 365)
    assert status == 201, body
    s = body["session"]
    assert s["expires_at"] - s["created_at"] in (86400, 86401)


@pytest.mark.parametrize("hours", [0, -1, "24", True])
async def test_bad_expiry_hours_open_nothing(hashtoll_gw, http, hedera_devnet, hedera_account,
                                             hours):
    g, _ = hashtoll_gw
    owner = hedera_account()
    status, body = await _hashtoll_activate(http, g, hedera_devnet, owner, 2 * UNIT_PRICE,
                                            expiryHours=hours)
    assert (status, body["error"]) == (400, "invalid_expiry_hours")
    rail = g.gw.rails["hedera-session"]
    async with g.gw.engine.connect() as conn:
        from sqlalchemy import func, select

        from store.schema import sessions
        count = (await conn.execute(select(func.count()).select_from(sessions).where(
            sessions.c.owner == owner.account_id))).scalar_one()
    assert count == 0 and rail is not None


async def test_hashtoll_names_without_proof_open_nothing(hashtoll_gw, http, hedera_devnet,
                                                         hedera_account):
    """HashToll opened a session for any account id; we still want the proof."""
    g, o = hashtoll_gw
    victim = hedera_account()
    await approve(hedera_devnet, victim, 10 * UNIT_PRICE)  # an allowance someone could drain
    async with http.post(g.url + "/api/sessions/activate", json={
            "userAccountId": victim.account_id, "expiryHours": 24, "productName": "sky"}) as r:
        assert r.status in (400, 403)
        body = await r.json()
    assert "token" not in body and "session" not in body
    assert o.requests == []


async def test_session_402_carries_the_hashtoll_hint(hashtoll_gw, http, hedera_devnet):
    g, o = hashtoll_gw
    async with http.post(g.url + "/sky/v1/bookings") as r:  # 3 units at 0.05 HBAR
        assert r.status == 402
        body = await r.json()
    assert body["hedera"] == {"instructions": "Please approve more HBAR allowance",
                              "spenderAccount": hedera_devnet.account("spender").account_id,
                              "requiredAmount": "0.15"}
    assert body["accepts"] == [] and "hedera-session" in body["extensions"]  # x402 fields kept
    async with http.get(g.url + "/sky/v1/flights", headers={
            "x-hedera-session-id": "hs_unknown", "x-idempotency-key": "k"}) as r:
        assert r.status == 402
        assert (await r.json())["hedera"]["requiredAmount"] == "0.05"
    assert o.requests == []


async def test_health_answers_like_healthz(hashtoll_gw, http):
    g, _ = hashtoll_gw
    for path in ("/health", "/healthz"):
        async with http.get(g.url + path) as r:
            assert (r.status, await r.json()) == (200, {"status": "ok"})


# -- the same on PostgreSQL (the session rows, TTL and charges live in the store) --------

from tests.gateway.test_x402_settlement import pg_url, postgres_server  # noqa: E402,F401


async def test_hashtoll_session_and_wallet_meter_on_postgres(gateway, origin, http, pg_url,
                                                             tmp_path, hedera_devnet,
                                                             hedera_account):
    o = await origin()
    g = await gateway(session_config(hedera_devnet, o.url) | {"database": {
        "url": pg_url, "master_key_file": str(tmp_path / "pg.key")}})
    assert g.gw.engine.dialect.name == "postgresql"
    owner = hedera_account()
    status, body = await _hashtoll_activate(http, g, hedera_devnet, owner, 4 * UNIT_PRICE,
                                            expiryHours=1)
    assert status == 201, body
    token = body["session"]["id"]
    assert body["session"]["expires_at"] - body["session"]["created_at"] in (3600, 3601)
    for key in ("a", "b", "a"):  # the third is a retry of the first: no new charge
        async with http.get(g.url + "/sky/v1/flights", headers={
                "x-hedera-session-id": token, "x-idempotency-key": key}) as r:
            assert r.status == 200
    async with http.get(g.url + "/api/wallet/session", headers={"X-Hedera-Session-Id": token}) as r:
        meter = await r.json()
    assert (meter["session"]["calls"], meter["session"]["remaining"]) == (2, 2 * UNIT_PRICE)
    assert [c["amount"] for c in meter["charges"]] == [UNIT_PRICE, UNIT_PRICE]
    assert len(o.requests) == 2
