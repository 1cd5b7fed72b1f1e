"""The path that is priced is the path that is forwarded.

A real origin that normalises paths the way common frameworks do (percent-decoding,
backslash as slash, `;params` dropped, slashes merged, dot segments resolved, trailing
slash stripped, case-insensitive routes) sits behind a real gateway taking real x402
payments on anvil. Every spelling of a priced route is sent, paid at whatever the
gateway asks; the origin then checks that the route it actually served was paid at that
route's own price. Spellings the gateway refuses must be refused before anything is
charged and must never reach the origin.
"""

from __future__ import annotations

import posixpath
import re
import uuid
from urllib.parse import unquote

import pytest
from aiohttp import web
from sqlalchemy import text

from store import migrations
from store.db import create_engine_unpooled
from tests.gateway.x402_support import PRICE, requirement_from, sign_payment, token_balance, x402_config
from tests.support.postgres import start_postgres

pytestmark = pytest.mark.usefixtures("settler_key")


@pytest.fixture(scope="module")
def postgres_server():
    with start_postgres(database="tollgate") as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_config(request) -> dict:
    """{} for the fixture's own SQLite store, or a fresh migrated PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    server = request.getfixturevalue("postgres_server")
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine_unpooled(server.url)
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = server.url.rsplit("/", 1)[0] + "/" + name
    engine = create_engine_unpooled(url)
    try:
        await migrations.migrate(engine)
    finally:
        await engine.dispose()
    return {"database": {"url": url}}

# The origin's own price list (what the provider configured the rules for).
ORIGIN_ROUTES = {
    ("GET", "/v1/flights"): 1,
    ("POST", "/v1/holds"): 10,
    ("POST", "/v1/bookings"): 25,
    ("GET", "/v1/status"): 0,
}
RULES = [{"method": "GET", "path": "/v1/flights*", "units": 1},
         {"method": "POST", "path": "/v1/holds", "units": 10},
         {"method": "POST", "path": "/v1/bookings", "units": 25},
         {"method": "GET", "path": "/v1/status", "units": 0}]


def framework_path(raw_target: str) -> str:
    """How a lenient origin framework turns a request target into a route key."""
    path = raw_target.split("?", 1)[0]
    for _ in range(3):  # some stacks decode twice
        path = unquote(path, errors="replace")
    path = path.replace("\\", "/")
    path = "/".join(seg.split(";", 1)[0] for seg in path.split("/"))
    path = re.sub("/+", "/", path)
    path = posixpath.normpath(path) if path not in ("", "/") else "/"
    return (path.rstrip("/") or "/").lower()


async def lenient_origin(request: web.Request) -> web.Response:
    key = (request.method, framework_path(request.raw_path))
    if key not in ORIGIN_ROUTES:
        return web.json_response({"route": None}, status=404)
    return web.json_response({"route": key[1], "own_price": ORIGIN_ROUTES[key],
                              "paid_units": request.headers.get("X-Tollgate-Units")})


SPELLINGS = [
    # the canonical spellings: served at their own price
    ("POST", "/skyroute/v1/bookings"),
    ("GET", "/skyroute/v1/flights"),
    ("GET", "/skyroute/v1/flights?from=ZRH"),
    ("GET", "/skyroute/v1/status"),
    # item 5 as reported
    ("POST", "/skyroute//v1/bookings"),
    ("POST", "/skyroute/v1/bookings/"),
    ("POST", "/skyroute/v1//bookings"),
    ("POST", "/skyroute/v1/%62ookings"),
    ("POST", "/skyroute/v1/bookings;x"),
    ("POST", "/skyroute/V1/Bookings"),
    ("POST", "/skyroute/V1/BOOKINGS/"),
    # encoded slashes, dots and backslashes; odd and overlong encodings
    ("POST", "/skyroute/v1%2Fbookings"),
    ("POST", "/skyroute/v1%2fbookings"),
    ("POST", "/skyroute/v1/x/%2e%2e/bookings"),
    ("POST", "/skyroute/v1/%2E/bookings"),
    ("POST", "/skyroute/v1\\bookings"),
    ("POST", "/skyroute/v1%5Cbookings"),
    ("POST", "/skyroute/v1%C0%AFbookings"),
    ("POST", "/skyroute/v1/%2562ookings"),
    ("POST", "/skyroute/v1/bookings%3Bx"),
    ("POST", "/skyroute/v1/bookings%00"),
    ("POST", "/skyroute/v1/bookings%"),
    ("POST", "/skyroute/v1/book%zzings"),
    ("POST", "/skyroute/v1/%EF%BD%82ookings"),
    ("GET", "/skyroute/v1/status/..;/../bookings"),
    ("GET", "/skyroute/v1/status;/../../v1/flights"),
    # the prefix spelt differently
    ("POST", "/SKYROUTE/v1/bookings"),
    ("POST", "/sky%72oute/v1/bookings"),
    ("POST", "//skyroute/v1/bookings"),
    ("POST", "/skyroute;x/v1/bookings"),
    ("POST", "/skyroute/"),
]


def _request(method: str, target: str, extra: str = "") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n{extra}"
            f"Connection: close\r\n\r\n").encode("latin-1")


async def test_every_spelling_is_served_at_its_own_price_or_refused_uncharged(
        gateway, origin, raw_http, evm_devnet):
    o = await origin(lenient_origin)
    g = await gateway(x402_config(evm_devnet, o.url, prefix="/skyroute", paygate_id="sky",
                                  rules=RULES, default_units=1))
    payer = evm_devnet.payers[3]
    served, refused = [], []
    for method, target in SPELLINGS:
        before = len(o.requests)
        first = await raw_http(g.port, _request(method, target))
        if first.status == 400:
            assert first.json()["error"] == "invalid_path", target
            refused.append(target)
        elif first.status == 402:
            req = requirement_from(first.headers["PAYMENT-REQUIRED"])
            pay = sign_payment(evm_devnet, payer, req)
            paid = await raw_http(g.port, _request(method, target, f"PAYMENT-SIGNATURE: {pay}\r\n"))
            served.append((target, paid.status, paid.json()))
        else:  # free at the gateway: the origin must agree it is free
            served.append((target, first.status, first.json()))
        if first.status == 400:
            assert len(o.requests) == before, f"{target} reached the origin"

    wrong = [(t, body) for t, status, body in served
             if body.get("route") is not None and str(body["own_price"]) != body["paid_units"]]
    assert wrong == [], "served at the wrong price"
    # the canonical spellings are not refused
    for method, target in SPELLINGS[:4]:
        assert target not in refused
    assert any(body.get("route") == "/v1/bookings" and body["paid_units"] == "25"
               for _, _, body in served)


async def test_refused_spellings_charge_nothing_even_with_a_valid_payment(
        gateway, origin, raw_http, http, evm_devnet, store_config):
    o = await origin(lenient_origin)
    g = await gateway(x402_config(evm_devnet, o.url, prefix="/skyroute", paygate_id="sky",
                                  rules=RULES, default_units=1) | store_config)
    assert g.gw.engine.dialect.name == ("postgresql" if store_config else "sqlite")
    payer = evm_devnet.payers[4]
    async with http.post(g.url + "/skyroute/v1/bookings") as r:
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    assert int(req["amount"]) == 25 * PRICE
    balance = token_balance(evm_devnet, payer.address)
    for target in ("/skyroute//v1/bookings", "/skyroute/v1/bookings;x",
                   "/skyroute/v1/%62ookings", "/skyroute/v1%2Fbookings"):
        pay = sign_payment(evm_devnet, payer, req)
        resp = await raw_http(g.port, _request("POST", target, f"PAYMENT-SIGNATURE: {pay}\r\n"))
        assert resp.status == 400, (target, resp.body)
        assert resp.json()["error"] == "invalid_path"
    assert o.requests == []
    assert token_balance(evm_devnet, payer.address) == balance
    async with g.gw.engine.connect() as conn:  # not even a claim was recorded
        assert (await conn.execute(text("SELECT count(*) FROM payments"))).scalar() == 0


async def test_a_differently_spelt_prefix_does_not_reach_another_paygate(
        gateway, origin, raw_http, evm_devnet):
    """Prefixes match without regard to case, so `/SKYROUTE` is the skyroute paygate,
    not a free neighbour; two prefixes that differ only by case are refused."""
    from gateway.config import ConfigError

    o = await origin(lenient_origin)
    cfg = x402_config(evm_devnet, o.url, prefix="/skyroute", paygate_id="sky", rules=RULES)
    cfg["paygates"].append({"id": "free", "prefix": "/SkyRoute", "target": o.url,
                            "default_units": 0})
    with pytest.raises(ConfigError, match="overlaps"):
        await gateway(cfg)
    cfg["paygates"][1]["prefix"] = "/public"
    g = await gateway(cfg)
    resp = await raw_http(g.port, _request("POST", "/SkyRoute/v1/bookings"))
    assert resp.status == 402
    assert int(requirement_from(resp.headers["PAYMENT-REQUIRED"])["amount"]) == 25 * PRICE
    assert o.requests == []


async def test_a_paid_call_binds_its_payment_context_for_the_origin(
        gateway, origin, http, evm_devnet, store_config):
    """A real paid booking: the origin's verifier (gateway.origin, default request mode)
    accepts what arrived, and refuses the same headers with the units or the payment
    receipt swapped."""
    from gateway import origin as origin_lib

    o = await origin()
    g = await gateway(x402_config(evm_devnet, o.url, prefix="/skyroute", paygate_id="sky",
                                  rules=RULES) | store_config)
    assert g.gw.engine.dialect.name == ("postgresql" if store_config else "sqlite")
    async with http.post(g.url + "/skyroute/v1/bookings") as r:
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    pay = sign_payment(evm_devnet, evm_devnet.payers[5], req)
    async with http.post(g.url + "/skyroute/v1/bookings",
                         headers={"PAYMENT-SIGNATURE": pay}) as r:
        assert r.status == 200, await r.text()
    (seen,) = o.requests
    secret = (await g.gw.origin_secrets("sky")).current
    cache = origin_lib.ReplayCache()
    paid = origin_lib.verify("request", "POST", seen.raw_path, seen.headers, b"", [secret],
                             replay_cache=cache)
    assert paid.units == 25 and paid.payer == evm_devnet.payers[5].address
    assert paid.payment is not None and paid.payment_response is not None
    for name, value in (("X-Tollgate-Units", "1"), ("X-Payment-Response", "e30=")):
        with pytest.raises(origin_lib.OriginAuthError) as e:
            origin_lib.verify("request", "POST", seen.raw_path, {**seen.headers, name: value},
                              b"", [secret])
        assert e.value.reason == "bad_context"
    with pytest.raises(origin_lib.OriginAuthError) as e:
        origin_lib.verify("request", "POST", seen.raw_path, seen.headers, b"", [secret],
                          replay_cache=cache)
    assert e.value.reason == "replayed_request"
