"""The origin-secret cache: requests do not each read the store, and a rotation made
elsewhere (another instance, the CLI) is signed with once the 5 s TTL has passed.

Entry ages are set directly on the cache (no sleeping): the TTL is a wall-clock bound
the cache promises, and the tests check what happens on each side of it.
"""

from __future__ import annotations

import asyncio
import time

from gateway import state
from tests.gateway.test_proxy import config, spec_hmac


def _age(gw, paygate_id: str, seconds: float) -> None:
    """Pretend the cached entry's read started `seconds` ago."""
    stamp, value = gw._secrets[paygate_id]
    gw._secrets[paygate_id] = (time.monotonic() - seconds, value)


def _count_reads(gw, gate: asyncio.Event | None = None) -> list[str]:
    """Count the cache's reads of the real secret store; the first waits for `gate`."""
    calls: list[str] = []
    real_get = gw.secret_store.get

    async def get(paygate_id: str):
        calls.append(paygate_id)
        if gate is not None and len(calls) == 1:
            await gate.wait()
        return await real_get(paygate_id)

    gw.secret_store.get = get
    return calls


async def test_concurrent_misses_share_one_store_read(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url, origin_auth={"mode": "hmac"}))
    gw.gw.forget_secret("api")
    reads = _count_reads(gw.gw)

    async def call() -> int:
        async with http.get(f"{gw.url}/api/x") as resp:
            return resp.status

    assert await asyncio.gather(*(call() for _ in range(20))) == [200] * 20
    assert reads == ["api"]
    secret = (await gw.gw.secret_store.get("api")).current
    assert {r.headers["Sigwei-Auth-Signature"] for r in o.requests} == {spec_hmac(secret, "", "")}


async def test_rotation_elsewhere_is_signed_with_once_the_ttl_has_passed(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url, origin_auth={"mode": "hmac", "rotation_grace_seconds": 60}))
    async with http.get(f"{gw.url}/api/one") as resp:
        assert resp.status == 200
    old = (await gw.gw.secret_store.get("api")).current
    # another instance rotates: this process is not told (no forget_secret)
    rotated = await gw.gw.secret_store.rotate("api", None, 60)
    assert rotated.current != old

    _age(gw.gw, "api", state._SECRET_TTL)  # the entry has reached the TTL: not used again
    async with http.get(f"{gw.url}/api/two") as resp:
        assert resp.status == 200
    assert o.requests[-1].headers["Sigwei-Auth-Signature"] == spec_hmac(rotated.current, "", "")


async def test_entry_near_the_ttl_is_renewed_in_the_background(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url, origin_auth={"mode": "hmac", "rotation_grace_seconds": 60}))
    async with http.get(f"{gw.url}/api/one") as resp:
        assert resp.status == 200
    old = (await gw.gw.secret_store.get("api")).current
    rotated = await gw.gw.secret_store.rotate("api", None, 60)

    _age(gw.gw, "api", (state._SECRET_REFRESH + state._SECRET_TTL) / 2)
    async with http.get(f"{gw.url}/api/two") as resp:  # still within the TTL: old secret
        assert resp.status == 200
    assert o.requests[-1].headers["Sigwei-Auth-Signature"] == spec_hmac(old, "", "")
    renewal = gw.gw._secret_reads.get("api")
    assert renewal is not None  # ...and one read renews the entry meanwhile
    await renewal
    async with http.get(f"{gw.url}/api/three") as resp:
        assert resp.status == 200
    assert o.requests[-1].headers["Sigwei-Auth-Signature"] == spec_hmac(rotated.current, "", "")


async def test_read_under_way_across_a_local_rotation_is_not_cached(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url, origin_auth={"mode": "hmac", "rotation_grace_seconds": 60}))
    gw.gw.forget_secret("api")
    gate = asyncio.Event()
    reads = _count_reads(gw.gw, gate)
    stale = asyncio.ensure_future(gw.gw.origin_secrets("api"))
    while not reads:
        await asyncio.sleep(0)
    # the read is under way; this process rotates and drops its cached copy
    rotated = await gw.gw.secret_store.rotate("api", None, 60)
    gw.gw.forget_secret("api")
    async with http.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 200
    assert o.requests[-1].headers["Sigwei-Auth-Signature"] == spec_hmac(rotated.current, "", "")
    gate.set()
    await stale
    assert gw.gw._secrets["api"][1].current == rotated.current
