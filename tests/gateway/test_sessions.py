"""Hedera allowance sessions end to end: hiero-sdk-python approves on the local network,
the gateway activates, charges per call, pulls on chain, sees revocation."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from aiohttp import web

from store.clock import ManualClock
from tests.gateway.session_support import (
    KEY_ENV,
    UNIT_PRICE,
    approve,
    call_headers,
    open_session,
    session_config,
    sign_message,
)


@pytest.fixture(autouse=True)
def spender_key(monkeypatch, hedera_devnet):
    monkeypatch.setenv(KEY_ENV, hedera_devnet.account("spender").private_key)


@pytest.fixture
async def sessions_gw(gateway, origin, hedera_devnet):
    async def make(handler=None, clock=None, **cfg):
        o = await origin(handler)
        g = await gateway(session_config(hedera_devnet, o.url, **cfg), clock=clock)
        return g, o
    return make


def rail_of(g):
    return g.gw.rails["hedera-session"]


async def test_402_offers_a_session(sessions_gw, http, hedera_devnet):
    g, o = await sessions_gw()
    async with http.post(g.url + "/sky/v1/bookings") as r:
        assert r.status == 402
        ext = (await r.json())["extensions"]["hedera-session"]
    assert ext["spender"] == hedera_devnet.account("spender").account_id
    assert ext["price_tinybars"] == 3 * UNIT_PRICE
    assert ext["activation_endpoint"] == "/api/sessions/activate"
    assert ext["wallet_url"] == "/?paygate=sky"
    assert o.requests == []


async def test_session_lifecycle_calls_pull_and_revoke(sessions_gw, http, hedera_devnet,
                                                       hedera_account):
    g, o = await sessions_gw()
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=10 * UNIT_PRICE)
    merchant_before = hedera_devnet.balance("merchant")

    remaining = []
    for _ in range(4):
        async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token)) as r:
            assert r.status == 200, await r.text()
            remaining.append(int(r.headers["X-Tollgate-Remaining"]))
    assert remaining == [9 * UNIT_PRICE, 8 * UNIT_PRICE, 7 * UNIT_PRICE, 6 * UNIT_PRICE]
    seen = o.requests[-1]
    assert seen.headers["X-Tollgate-Payer"] == owner.account_id
    assert seen.headers["X-Tollgate-Remaining"] == str(6 * UNIT_PRICE)
    assert "X-Hedera-Session-Id" not in seen.headers and "Idempotency-Key" in seen.headers
    payment = json.loads(base64.b64decode(seen.headers["X-Payment"]))
    assert payment["scheme"] == "hedera-session" and payment["payload"]["amount"] == str(UNIT_PRICE)

    async with http.get(g.url + "/api/sessions/current", headers={"Authorization": f"Bearer {token}"}) as r:
        view = await r.json()
    assert (view["state"], view["spent"], view["calls"], view["remaining"]) == \
        ("active", 4 * UNIT_PRICE, 4, 6 * UNIT_PRICE)

    rail = rail_of(g)
    rail.puller.window = 0
    assert await rail.puller.work_once() >= 1
    assert hedera_devnet.balance("merchant") == merchant_before + 4 * UNIT_PRICE
    # one pull for the four calls, and the mirror shows the allowance spent
    (pull,) = await rail.records.pulls(view["id"], states=("succeeded",))
    assert pull.amount == 4 * UNIT_PRICE
    assert await rail.puller.work_once() == 0  # nothing pulled twice
    session = await rail.records.get(view["id"])
    await rail.refresher.refresh(session)
    after = await rail.records.get(view["id"])
    assert (after.allowance, after.outstanding) == (6 * UNIT_PRICE, 0)

    await approve(hedera_devnet, owner, 0)  # revoke
    await rail.refresher.refresh(after)
    async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token)) as r:
        assert r.status == 402
        body = await r.json()
    assert body["error"] == "session_revoked" and body["top_up_url"].startswith("/?paygate=sky")
    assert hedera_devnet.balance("merchant") == merchant_before + 4 * UNIT_PRICE


async def test_drained_to_exhaustion_then_402_with_top_up(sessions_gw, http, hedera_devnet,
                                                          hedera_account):
    g, o = await sessions_gw()
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=4 * UNIT_PRICE)
    async with http.post(g.url + "/sky/v1/bookings", headers=call_headers(token)) as r:
        assert r.status == 200  # 3 units
    async with http.post(g.url + "/sky/v1/bookings", headers=call_headers(token)) as r:
        assert r.status == 402  # 3 more do not fit, 1 does
        assert (await r.json())["error"] == "insufficient_allowance"
    async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token)) as r:
        assert r.status == 200
    async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token)) as r:
        assert r.status == 402
        body = await r.json()
    assert (body["error"], body["remaining"], body["required"]) == \
        ("session_exhausted", 0, UNIT_PRICE)
    assert "top_up_url" in body and "PAYMENT-REQUIRED" in r.headers
    async with http.get(g.url + "/api/sessions/current", headers={"X-Hedera-Session-Id": token}) as r:
        view = await r.json()
    assert (view["state"], view["spent"], view["calls"]) == ("exhausted", 4 * UNIT_PRICE, 2)
    assert len(o.requests) == 2


async def test_parallel_calls_on_a_short_allowance_serve_exactly_k(sessions_gw, http,
                                                                    hedera_devnet, hedera_account):
    g, o = await sessions_gw()
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=4 * UNIT_PRICE)

    async def call():
        async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token)) as r:
            return r.status

    statuses = await asyncio.gather(*(call() for _ in range(10)))
    assert sorted(statuses) == [200] * 4 + [402] * 6
    rail = rail_of(g)
    session = await rail.records.by_token(token)
    charges = await rail.ledger.charges(session.id)
    assert sum(c.amount for c in charges) == 4 * UNIT_PRICE == session.spent
    assert len(o.requests) == 4


async def test_idempotency_keys(sessions_gw, http, hedera_devnet, hedera_account):
    calls = 0
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if request.path == "/v1/slow":
            await release.wait()
        return web.json_response({"call": calls, "body": (await request.read()).decode()})

    g, o = await sessions_gw(handler)
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=20 * UNIT_PRICE)
    h = call_headers(token, "order-1")
    answers = []
    for _ in range(2):
        async with http.post(g.url + "/sky/v1/holds", data=b"seat=12A", headers=h) as r:
            answers.append((r.status, await r.json()))
    assert answers[0] == answers[1] == (200, {"call": 1, "body": "seat=12A"})
    async with http.post(g.url + "/sky/v1/holds", data=b"seat=14C", headers=h) as r:
        assert r.status == 409
        assert (await r.json())["error"] == "idempotency_key_reused"
    async with http.get(g.url + "/sky/v1/flights", headers={"X-Hedera-Session-Id": token}) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "missing_idempotency_key"
    # the X- form of the header is accepted too
    async with http.get(g.url + "/sky/v1/flights",
                        headers={"X-Hedera-Session-Id": token, "X-Idempotency-Key": "k-2"}) as r:
        assert r.status == 200
    slow = call_headers(token, "slow-1")
    first = asyncio.create_task(http.get(g.url + "/sky/v1/slow", headers=slow))
    while calls < 3:
        await asyncio.sleep(0.01)
    async with http.get(g.url + "/sky/v1/slow", headers=slow) as r:
        assert r.status == 409
        assert (await r.json())["error"] == "idempotency_key_in_flight"
    release.set()
    resp = await first
    assert resp.status == 200
    resp.release()
    session = await rail_of(g).records.by_token(token)
    assert (session.calls, session.spent) == (3, 3 * UNIT_PRICE)


async def test_origin_failure_reverses_the_charge(sessions_gw, http, hedera_devnet, hedera_account):
    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "down"}, status=502)

    g, o = await sessions_gw(broken)
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=5 * UNIT_PRICE)
    async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token, "k1")) as r:
        assert r.status == 502
    session = await rail_of(g).records.by_token(token)
    assert (session.spent, session.calls, session.outstanding) == (0, 0, 0)


@pytest.mark.parametrize("problem", ["unknown", "other_paygate", "ended", "expired"])
async def test_sessions_that_cannot_pay(problem, sessions_gw, http, hedera_devnet, hedera_account):
    clock = ManualClock()
    other = {"id": "other", "prefix": "/other", "target": "http://127.0.0.1:9",
             "rails": ["hedera-session"], "prices": {"hbar": "0.05"}}
    g, o = await sessions_gw(clock=clock, extra_paygates=[other])
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=5 * UNIT_PRICE)
    url, expected = g.url + "/sky/v1/flights", f"session_{problem}"
    if problem == "unknown":
        token = "hs_" + "x" * 43
    elif problem == "other_paygate":
        url, expected = g.url + "/other/v1/flights", "session_wrong_paygate"
    elif problem == "ended":
        async with http.delete(g.url + "/api/sessions/current",
                               headers={"X-Hedera-Session-Id": token}) as r:
            assert (await r.json())["state"] == "ended"
    else:
        clock.advance(86400 + 1)
    async with http.get(url, headers=call_headers(token)) as r:
        assert r.status == 402
        assert (await r.json())["error"] == expected
    assert o.requests == []


async def test_mirror_down_runs_on_cache_for_the_ttl_then_503(sessions_gw, http, hedera_devnet,
                                                              hedera_account, hedera_mirror_faults):
    clock = ManualClock()
    g, o = await sessions_gw(clock=clock, hedera={"mirror_ttl_seconds": 30})
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=5 * UNIT_PRICE)
    hedera_devnet.set_mirror_down(True)
    rail = rail_of(g)
    clock.advance(15)
    assert await rail.refresher.work_once() == 0  # tried, mirror down: cached view kept
    async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token)) as r:
        assert r.status == 200
    clock.advance(20)
    async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token)) as r:
        assert r.status == 503
        assert (await r.json())["error"] == "mirror_unavailable"
    hedera_devnet.set_mirror_down(False)
    assert await rail.refresher.work_once() == 1
    async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token)) as r:
        assert r.status == 200
    assert len(o.requests) == 2


async def test_signature_activation_ed25519_and_ecdsa(sessions_gw, http, hedera_devnet,
                                                      hedera_account):
    g, o = await sessions_gw()
    for key_type in ("ED25519", "ECDSA_SECP256K1"):
        owner = hedera_account(key_type)
        await approve(hedera_devnet, owner, 3 * UNIT_PRICE)
        async with http.post(g.url + "/api/sessions/challenge",
                             json={"account_id": owner.account_id, "paygate": "sky"}) as r:
            ch = await r.json()
        async with http.post(g.url + "/api/sessions/activate", json={
                "account_id": owner.account_id, "paygate": "sky", "nonce": ch["nonce"],
                "signature": sign_message(owner, ch["message"])}) as r:
            assert r.status == 201, await r.text()
            token = (await r.json())["token"]
        async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token)) as r:
            assert r.status == 200


@pytest.mark.parametrize("case", [
    "wrong_memo", "wrong_payer", "bad_signature", "no_allowance", "allowance_too_small",
    "bad_account_id", "bad_tx_id", "nonce_reused", "unknown_nonce",
])
async def test_bad_activations(case, sessions_gw, http, hedera_devnet, hedera_account):
    g, o = await sessions_gw()
    owner, stranger = hedera_account(), hedera_account()
    async with http.post(g.url + "/api/sessions/challenge",
                         json={"account_id": owner.account_id, "paygate": "sky"}) as r:
        ch = await r.json()
    body = {"account_id": owner.account_id, "paygate": "sky", "nonce": ch["nonce"]}
    expected = {"wrong_memo": (403, "proof_wrong_memo"), "wrong_payer": (403, "proof_wrong_payer"),
                "bad_signature": (403, "proof_bad_signature"),
                "no_allowance": (402, "allowance_missing"),
                "allowance_too_small": (402, "allowance_too_small"),
                "bad_account_id": (400, "invalid_account_id"),
                "bad_tx_id": (400, "invalid_transaction_id"),
                "nonce_reused": (403, "nonce_used"), "unknown_nonce": (403, "nonce_invalid")}[case]
    if case == "wrong_memo":
        body["transaction_id"] = await approve(hedera_devnet, owner, UNIT_PRICE * 2, memo="tollgate:nope")
    elif case == "wrong_payer":
        body["transaction_id"] = await approve(hedera_devnet, stranger, UNIT_PRICE * 2, memo=ch["memo"])
    elif case == "bad_signature":
        body["signature"] = sign_message(stranger, ch["message"])
    elif case == "no_allowance":
        body["signature"] = sign_message(owner, ch["message"])
    elif case == "allowance_too_small":
        body["transaction_id"] = await approve(hedera_devnet, owner, UNIT_PRICE - 1, memo=ch["memo"])
    elif case == "bad_account_id":
        body["account_id"] = "0.0.x1"
    elif case == "bad_tx_id":
        body["transaction_id"] = "not-a-tx"
    elif case == "unknown_nonce":
        body["nonce"] = "00" * 16
        body["signature"] = sign_message(owner, ch["message"])
    else:
        body["transaction_id"] = await approve(hedera_devnet, owner, UNIT_PRICE * 2, memo=ch["memo"])
        async with http.post(g.url + "/api/sessions/activate", json=body) as r:
            assert r.status == 201
    async with http.post(g.url + "/api/sessions/activate", json=body) as r:
        assert (r.status, (await r.json())["error"]) == expected
    rail = rail_of(g)
    if case != "nonce_reused":
        assert (await rail.records.nonce(ch["nonce"])).used_at is None


async def test_lost_submission_is_resubmitted_once(sessions_gw, http, hedera_devnet,
                                                   hedera_account, hedera_mirror_faults):
    g, o = await sessions_gw()
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=10 * UNIT_PRICE)
    for _ in range(3):
        async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token)) as r:
            assert r.status == 200
    merchant_before = hedera_devnet.balance("merchant")
    rail = rail_of(g)
    rail.puller.window = 0
    hedera_devnet.fail_next_submissions(1, "lost")  # reaches consensus, the answer is lost
    await rail.puller.work_once()
    session = await rail.records.by_token(token)
    (pull,) = await rail.records.pulls(session.id, states=("unknown",))
    # A restarted gateway: a new worker with nothing in memory resolves it from the store.
    from sessions.pulls import PullWorker
    fresh = PullWorker(rail.records, g.gw.hedera.network, g.gw.hedera.mirror, g.gw.clock,
                       destination=rail.destination, window=0)
    rows = await rail.records.lease_pulls(("unknown",), lease_seconds=60, limit=5)
    for row in rows:
        await fresh._resolve(row)
    (done,) = await rail.records.pulls(session.id, states=("succeeded",))
    assert done.id == pull.id and done.amount == 3 * UNIT_PRICE
    assert hedera_devnet.balance("merchant") == merchant_before + 3 * UNIT_PRICE


async def test_over_pull_is_refused_and_charges_released(sessions_gw, http, hedera_devnet,
                                                         hedera_account):
    g, o = await sessions_gw()
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=10 * UNIT_PRICE)
    for _ in range(3):
        async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token)) as r:
            assert r.status == 200
    await approve(hedera_devnet, owner, UNIT_PRICE)  # the owner cuts the allowance to one call
    merchant_before = hedera_devnet.balance("merchant")
    rail = rail_of(g)
    rail.puller.window = 0
    await rail.puller.work_once()
    session = await rail.records.by_token(token)
    (failed,) = await rail.records.pulls(session.id, states=("failed",))
    assert failed.amount == 3 * UNIT_PRICE
    assert hedera_devnet.balance("merchant") == merchant_before
    charges = await rail.ledger.charges(session.id)
    assert all(c.pull_id is None and c.state == "kept" for c in charges)
    await rail.refresher.refresh(session)
    after = await rail.records.get(session.id)
    assert after.state == "exhausted" and after.available == 0


async def test_session_api_is_rate_limited_per_client(sessions_gw, http, hedera_account):
    clock = ManualClock()
    g, o = await sessions_gw(clock=clock)
    owner = hedera_account()
    body = {"account_id": owner.account_id, "paygate": "sky"}
    for _ in range(30):  # the default: 30 per minute per client
        async with http.post(g.url + "/api/sessions/challenge", json=body) as r:
            assert r.status == 200
    async with http.post(g.url + "/api/sessions/challenge", json=body) as r:
        assert r.status == 429
        assert (await r.json())["error"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
    async with http.post(g.url + "/api/sessions/activate", json=body) as r:
        assert r.status == 429  # activation shares the budget
    clock.advance(2)  # one token back every 2 s
    async with http.post(g.url + "/api/sessions/challenge", json=body) as r:
        assert r.status == 200


async def test_expired_nonces_are_forgotten(sessions_gw, http, hedera_account):
    clock = ManualClock()
    g, o = await sessions_gw(clock=clock)
    owner = hedera_account()
    async with http.post(g.url + "/api/sessions/challenge",
                         json={"account_id": owner.account_id, "paygate": "sky"}) as r:
        nonce = (await r.json())["nonce"]
    rail = rail_of(g)
    await rail.puller.work_once()
    assert await rail.records.nonce(nonce) is not None
    clock.advance(600 + 86400 + 1)
    await rail.puller.work_once()
    assert await rail.records.nonce(nonce) is None


# -- one allowance, however many sessions ------------------------------------------------


@pytest.fixture(scope="module")
def sessions_pg_server():
    from tests.support.postgres import start_postgres

    with start_postgres(database="tollgate_gw_sessions") as server:
        yield server


async def fresh_pg_url(server) -> str:
    """A fresh, migrated database on the module's PostgreSQL server."""
    import uuid

    from sqlalchemy import text

    from store.db import create_engine_unpooled
    from store.migrations import migrate

    name = "gs_" + uuid.uuid4().hex[:12]
    admin = create_engine_unpooled(server.url)
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = server.url.rsplit("/", 1)[0] + "/" + name
    engine = create_engine_unpooled(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    return url


@pytest.mark.parametrize("store", ["sqlite", "postgresql-two-instances"])
async def test_one_allowance_shared_by_three_sessions(store, request, gateway, origin, http,
                                                      hedera_devnet, hedera_account, tmp_path):
    """An owner with three sessions (two tabs, two instances) is served what the allowance
    covers, once: 60 parallel calls on an allowance for 10 serve exactly 10, and every
    pull of what was charged succeeds on chain."""
    o = await origin()
    config = session_config(hedera_devnet, o.url)
    if store == "sqlite":
        gws = [await gateway(config)]
    else:
        url = await fresh_pg_url(request.getfixturevalue("sessions_pg_server"))
        config["database"] = {"url": url, "master_key_file": str(tmp_path / "shared.key")}
        gws = [await gateway(config), await gateway(config)]
        assert all(g.gw.engine.dialect.name == "postgresql" for g in gws)
    owner = hedera_account()
    tokens = [await open_session(http, gws[i % len(gws)], hedera_devnet, owner,
                                 allowance=10 * UNIT_PRICE) for i in range(3)]
    merchant_before, owner_before = hedera_devnet.balance("merchant"), hedera_devnet.balance(owner)

    async def call(i: int) -> int:
        g = gws[i % len(gws)]
        async with http.get(g.url + "/sky/v1/flights", headers=call_headers(tokens[i % 3])) as r:
            return r.status

    statuses = await asyncio.gather(*(call(i) for i in range(60)))
    assert sorted(statuses) == [200] * 10 + [402] * 50
    assert len(o.requests) == 10
    rail = rail_of(gws[0])
    views = [await rail.records.by_token(t) for t in tokens]
    assert sum(v.spent for v in views) == 10 * UNIT_PRICE
    assert sum(v.calls for v in views) == 10
    assert {v.available for v in views} == {0}  # one balance, seen from every session

    for g in gws:
        rail_of(g).puller.window = 0
    for _ in range(3):  # several passes of both instances: nothing more is tried
        await asyncio.gather(*(rail_of(g).puller.work_once() for g in gws))
    pulls = [p for v in views for p in await rail.records.pulls(v.id, states=(
        "prepared", "submitted", "unknown", "succeeded", "failed", "reconciled"))]
    assert pulls and {p.state for p in pulls} == {"succeeded"}
    assert sum(p.amount for p in pulls) == 10 * UNIT_PRICE
    assert hedera_devnet.balance("merchant") == merchant_before + 10 * UNIT_PRICE
    assert hedera_devnet.balance(owner) == owner_before - 10 * UNIT_PRICE


# -- a call that does not fit is refused, not the session -----------------------------------


async def test_a_call_that_does_not_fit_is_refused_not_the_session(sessions_gw, http,
                                                                   hedera_devnet, hedera_account):
    g, o = await sessions_gw(rules=[{"method": "POST", "path": "/v1/charter", "units": 10}])
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=5 * UNIT_PRICE)
    async with http.post(g.url + "/sky/v1/charter", headers=call_headers(token)) as r:
        assert r.status == 402
        body = await r.json()
    assert body["error"] == "insufficient_allowance"
    assert (body["remaining"], body["required"]) == (5 * UNIT_PRICE, 10 * UNIT_PRICE)
    assert "top_up_url" in body
    async with http.get(g.url + "/api/sessions/current", headers={"X-Hedera-Session-Id": token}) as r:
        view = await r.json()
    assert (view["state"], view["remaining"], view["calls"]) == ("active", 5 * UNIT_PRICE, 0)
    async with http.get(g.url + "/sky/v1/flights", headers=call_headers(token)) as r:
        assert r.status == 200
        assert int(r.headers["X-Tollgate-Remaining"]) == 4 * UNIT_PRICE
    assert [s.path for s in o.requests] == ["/v1/flights"]


# -- the activation proof names the gateway -------------------------------------------------

PUBLIC_URL = "https://pay.skyroute.example"


@pytest.mark.parametrize("other", ["url", "spender", "network"])
@pytest.mark.parametrize("says_message", [False, True])
async def test_a_signature_for_another_gateway_opens_nothing(other, says_message, sessions_gw,
                                                            http, hedera_devnet, hedera_account):
    g, o = await sessions_gw(server={"public_url": PUBLIC_URL})
    owner = hedera_account()
    await approve(hedera_devnet, owner, 3 * UNIT_PRICE)
    async with http.post(g.url + "/api/sessions/challenge",
                         json={"account_id": owner.account_id, "paygate": "sky"}) as r:
        ch = await r.json()
    spender = hedera_devnet.account("spender").account_id
    message = ch["message"]
    for part in (PUBLIC_URL, spender, "hedera:devnet", ch["nonce"]):
        assert part in message  # the message says where, to whom, on which network, which nonce
    theirs = {"url": (PUBLIC_URL, "https://other-gateway.example"),
              "spender": (spender, "0.0.999999"),
              "network": ("hedera:devnet", "hedera:mainnet")}[other]
    # What another site (same nonce, relayed) would have had the owner sign.
    foreign = message.replace(*theirs)
    assert foreign != message
    body = {"account_id": owner.account_id, "paygate": "sky", "nonce": ch["nonce"],
            "signature": sign_message(owner, foreign)}
    if says_message:
        body["message"] = foreign
    async with http.post(g.url + "/api/sessions/activate", json=body) as r:
        assert r.status == 403, await r.text()
        err = await r.json()
    assert err["error"] == ("proof_wrong_message" if says_message else "proof_bad_signature")
    assert PUBLIC_URL in err["message"]
    rail = rail_of(g)
    assert (await rail.records.nonce(ch["nonce"])).used_at is None
    # ...while the owner's signature over this gateway's own message opens a session.
    body["signature"] = sign_message(owner, message)
    body.pop("message", None)
    async with http.post(g.url + "/api/sessions/activate", json=body) as r:
        assert r.status == 201, await r.text()


async def test_an_open_authorization_keeps_its_charge_past_the_longest_call(
        sessions_gw, http, hedera_devnet, hedera_account):
    """Middleware mode holds a session charge while the provider's own server works, for up
    to `authorize_timeout_seconds`, which may be far longer than any proxied call. The
    abandoned-charge sweep must not give that charge back meanwhile: the provider then
    completes it as served, and the caller would have had the call for nothing."""
    from sqlalchemy import select

    from gateway.admin import ADMIN
    from store.schema import session_charges
    from tests.gateway.admin_support import Signer

    clock = ManualClock()
    g, _ = await sessions_gw(clock=clock, server={"authorize_timeout_seconds": 3600})
    owner = hedera_account()
    token = await open_session(http, g, hedera_devnet, owner, allowance=10 * UNIT_PRICE)
    key, secret = await g.app[ADMIN].keys.create(None, True)
    signer = Signer(http, g.url, key.id, secret)

    async def signed(path: str, payload: dict) -> dict:
        body = json.dumps(payload).encode()
        headers = {**signer.headers("POST", path, body, ts=int(clock.now())),
                   "Content-Type": "application/json"}
        async with http.post(g.url + path, data=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    got = await signed("/v1/authorize", {"paygate": "sky", "method": "GET",
                                         "path": "/v1/flights", "headers": call_headers(token)})
    assert got["allowed"] is True
    longest = max(pg.timeout_seconds for pg in g.gw.config.paygates)
    clock.advance(longest + 600)  # past any proxied call, well within the authorization
    await rail_of(g).puller.work_once()
    done = await signed(f"/v1/authorize/{got['authorization_id']}/complete", {"status": 200})
    assert done["status"] == 200
    async with g.gw.engine.connect() as conn:
        states = (await conn.execute(select(session_charges.c.state))).scalars().all()
    assert states == ["kept"]
