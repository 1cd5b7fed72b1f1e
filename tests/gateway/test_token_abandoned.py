"""Prepaid-token charges left pending by a gateway that died mid-call are given back.

A real `tollgate serve` process is killed (SIGKILL) while the origin holds a call paid from
a token: its charge stays pending in the shared store (SQLite file, PostgreSQL). Another
gateway on that store returns the units once the longest call could have ended, exactly
once however many instances sweep, and never touches a charge that was kept. Also: a
`/v1/authorize` authorization paid with a token and never completed is reversed by the
authorize sweep, and the store's sweep leaves an open authorization alone."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web
from sqlalchemy import select

from gateway.authorize import AUTHORIZATIONS, sweep_once
from gateway.rails.token import abandon_after
from store.clock import ManualClock
from store.schema import prepaid_tokens, token_charges
from tests.gateway.admin_support import Signer, make_key, store_config  # noqa: F401
from tests.gateway.test_x402_settlement_kill import NET_WAIT, Serve, to_toml
from tests.gateway.test_x402_settlement_recovery import db_url, postgres_server  # noqa: F401
from tests.gateway.x402_support import x402_config

pytestmark = pytest.mark.usefixtures("settler_key")

PLANS = [{"id": "trial", "units": 50, "per_address_limit": 5}]


async def token_state(g, token_id: str) -> tuple[int, list[tuple[str, str]]]:
    """(remaining, [(idempotency key, state) of each charge]) as the store holds them."""
    async with g.gw.engine.connect() as conn:
        left = (await conn.execute(select(prepaid_tokens.c.remaining).where(
            prepaid_tokens.c.id == token_id))).scalar_one()
        rows = (await conn.execute(select(token_charges.c.idempotency_key,
                                          token_charges.c.state).where(
            token_charges.c.token_id == token_id))).all()
    return int(left), sorted((r[0], r[1]) for r in rows)


async def test_a_charge_left_by_a_killed_gateway_is_returned_once_and_kept_ones_never(
        origin, gateway, http, evm_devnet, db_url, tmp_path):  # noqa: F811
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/hang"):
            await release.wait()  # the call is in flight when its gateway dies
        return web.json_response({"ok": True})
    o = await origin(handler)
    config = x402_config(evm_devnet, o.url, plans=PLANS)
    config["server"] = {"allow_private_targets": True}
    config["database"] = {"url": db_url, "master_key_env": "TOLLGATE_TEST_UNSET_MASTER",
                          "master_key_file": str(tmp_path / "master.key")}
    config_path = tmp_path / "tollgate.toml"
    config_path.write_text(to_toml(config))
    shared = {**config, "database": {"url": db_url,
                                     "master_key_file": str(tmp_path / "master.key")}}

    first = Serve(config_path, tmp_path / "first.log")
    try:
        await first.ready(http)
        async with http.post(first.url + "/api/checkout/sky/trial/free",
                             json={"email": "a@example.com"}) as r:
            assert r.status == 200, await r.text()
            got = await r.json()
        token, token_id = got["token"], got["tokenId"]
        auth = {"Authorization": f"Bearer {token}"}
        for i in range(2):  # two calls served and kept before the crash
            async with http.get(first.url + "/sky/v1/ok", headers={
                    **auth, "Idempotency-Key": f"kept-{i}"}) as r:
                assert r.status == 200 and r.headers["X-Tollgate-Remaining"] == str(49 - i)
        killed = asyncio.ensure_future(http.get(first.url + "/sky/v1/hang", headers={
            **auth, "Idempotency-Key": "died"}))
        async with asyncio.timeout(NET_WAIT):
            while not any(s.path.endswith("/hang") for s in o.requests):
                await asyncio.sleep(0.05)  # charged: the origin has the call
        first.kill()
        with pytest.raises(Exception):
            (await killed).release()
    finally:
        release.set()
        first.stop()

    started = time.time()
    clock = ManualClock(started)
    g = await gateway(shared, clock=clock)
    rail = g.gw.rails["prepaid-token"]
    held = [("died", "pending"), ("kept-0", "kept"), ("kept-1", "kept")]
    assert await token_state(g, token_id) == (47, held)

    # Too young: a call could still be running somewhere.
    assert await rail.sweep_once() == 0
    async with g.gw.engine.connect() as conn:
        charged_at = (await conn.execute(select(token_charges.c.created_at).where(
            token_charges.c.idempotency_key == "died"))).scalar_one()
    clock.set(charged_at + abandon_after(g.gw.config) - 1)
    assert await rail.sweep_once() == 0
    assert await token_state(g, token_id) == (47, held)

    # Past the longest call: the gateway's own background task gives the unit back.
    clock.set(charged_at + abandon_after(g.gw.config) + 1)
    async with asyncio.timeout(NET_WAIT):  # a bound, not the criterion
        while (await token_state(g, token_id))[0] != 48:
            await asyncio.sleep(0.1)
    kept_only = [("kept-0", "kept"), ("kept-1", "kept")]
    assert await token_state(g, token_id) == (48, kept_only)

    # Never twice: more instances and more passes find nothing more to give back.
    other = await gateway(shared, clock=ManualClock(started + 10 * abandon_after(g.gw.config)))
    again = await asyncio.gather(rail.sweep_once(), other.gw.rails["prepaid-token"].sweep_once(),
                                 rail.sweep_once())
    assert again == [0, 0, 0]
    assert await token_state(g, token_id) == (48, kept_only)

    # The key of the dead call is free again: the caller's retry is charged, once.
    async with http.get(g.url + "/sky/v1/ok", headers={**auth, "Idempotency-Key": "died"}) as r:
        assert r.status == 200 and r.headers["X-Tollgate-Remaining"] == "47"
        await r.read()
    async with asyncio.timeout(NET_WAIT):  # kept once the response is recorded
        while ("died", "kept") not in (await token_state(g, token_id))[1]:
            await asyncio.sleep(0.05)
    clock.advance(10 * abandon_after(g.gw.config))
    assert await rail.sweep_once() == 0
    assert (await token_state(g, token_id))[0] == 47


async def test_a_token_authorization_never_completed_is_reversed_and_an_open_one_kept(
        gateway, origin, http, evm_devnet, store_config):  # noqa: F811
    o = await origin()
    clock = ManualClock()
    cfg = x402_config(evm_devnet, o.url, plans=PLANS, provider="acme", timeout_seconds=10)
    cfg["server"] = {"authorize_timeout_seconds": 3600}  # longer than any proxied call
    g = await gateway({**store_config, **cfg}, clock=clock)
    key_id, secret = await make_key(g, provider="acme")
    signer = Signer(http, g.url, key_id, secret)
    async with http.post(g.url + "/api/checkout/sky/trial/free",
                         json={"email": "b@example.com"}) as r:
        got = await r.json()
    bearer = {"Authorization": f"Bearer {got['token']}"}

    async def authorize(key: str) -> dict:
        answer = await signer.call("POST", "/v1/authorize", {
            "paygate": "sky", "method": "GET", "path": "/v1/x", "headers": bearer,
            "idempotency_key": key})
        assert answer.status == 200 and answer.body["allowed"] is True, answer.text
        return answer.body

    abandoned, served = await authorize("abandoned"), await authorize("served")
    assert served["remaining"] == 48 and served["payer"] == got["tokenId"]
    rail = g.gw.rails["prepaid-token"]

    # The store's sweep waits for the authorize timeout too: open authorizations stay.
    assert abandon_after(g.gw.config) > 3600
    clock.advance(abandon_after(g.gw.config) - 1)
    assert await rail.sweep_once() == 0
    clock.set(time.time())  # signed calls are checked against the gateway's clock
    done = await signer.call("POST", f"/v1/authorize/{served['authorization_id']}/complete",
                             {"status": 200})
    assert done.status == 200, done.text

    # The one never completed is reversed by the authorize sweep, once.
    table = g.app[AUTHORIZATIONS]
    assert await sweep_once(g.gw, table) == 0  # not yet due
    clock.advance(3601)
    assert await sweep_once(g.gw, table) == 1
    assert await sweep_once(g.gw, table) == 0
    clock.set(time.time())
    late = await signer.call(
        "POST", f"/v1/authorize/{abandoned['authorization_id']}/complete", {"status": 200})
    assert late.status == 409
    clock.advance(10 * abandon_after(g.gw.config))
    assert await rail.sweep_once() == 0
    assert await token_state(g, got["tokenId"]) == (49, [("served", "kept")])
