"""Paygates and origin secrets at run time through the signed admin API, on SQLite and
PostgreSQL; two instances on one PostgreSQL see each other's changes without a restart."""

from __future__ import annotations

import asyncio

import pytest

from gateway.origin import verify_request
from tests.gateway.admin_support import Signer, make_key, postgres_server, store_config, fresh_pg_url  # noqa: F401



def _file_paygate(origin_url: str) -> dict:
    return {"id": "files", "prefix": "/files", "target": origin_url, "default_units": 0,
            "provider": "acme"}


@pytest.fixture
async def setup(gateway, origin, http, store_config):
    o = await origin()
    gw = await gateway({**store_config, "paygates": [_file_paygate(o.url)]})
    key_id, secret = await make_key(gw, provider="acme")
    return gw, o, Signer(http, gw.url, key_id, secret)


def _new(origin_url: str, **extra) -> dict:
    return {"id": "weather", "prefix": "/weather", "target": origin_url, "default_units": 0,
            "description": "forecasts", **extra}


async def test_create_routes_at_once_update_and_delete(setup, http):
    gw, o, client = setup
    async with http.get(gw.url + "/weather/today") as r:
        assert r.status == 404  # no such paygate yet
    made = await client.call("POST", "/api/v1/paygates", _new(o.url))
    assert made.status == 201, made.text
    assert made.body["provider"] == "acme" and made.body["source"] == "api"
    async with http.get(gw.url + "/weather/today") as r:
        assert r.status == 200
    assert o.requests[-1].path == "/today"  # below the prefix

    moved = await client.call("PATCH", "/api/v1/paygates/weather", {"prefix": "/forecast"})
    assert moved.status == 200 and moved.body["prefix"] == "/forecast"
    assert moved.body["description"] == "forecasts"
    async with http.get(gw.url + "/weather/today") as r:
        assert r.status == 404
    async with http.get(gw.url + "/forecast/today") as r:
        assert r.status == 200

    put = await client.call("PUT", "/api/v1/paygates/weather", _new(o.url, prefix="/w"))
    assert put.status == 200 and put.body["prefix"] == "/w"
    got = await client.call("GET", "/api/v1/paygates/weather")
    assert got.body["prefix"] == "/w"

    gone = await client.call("DELETE", "/api/v1/paygates/weather")
    assert gone.status == 204
    async with http.get(gw.url + "/w/today") as r:
        assert r.status == 404
    assert (await client.call("GET", "/api/v1/paygates/weather")).status == 404


async def test_invalid_bodies_name_the_field(setup):
    gw, o, client = setup
    cases = [
        (_new("ftp://files"), "target: 'ftp://files' is not an http(s) URL"),
        (_new(o.url, colour="red"), "colour: unknown key"),
        (_new(o.url, prices={"usdt": "0.1"}, rails=["x402-evm"]),
         "prices.usdt: unknown asset (known: none defined)"),
        (_new(o.url, prefix="/files/v2"), "prefix: '/files/v2' overlaps paygate 'files' ('/files')"),
        (_new(o.url, id="Bad Id"), "id: must be lowercase letters, digits, - or _ (at most 63)"),
        ({"id": "x", "prefix": "/x"}, "target: required key is missing"),
        (_new(o.url, default_units=1), "requests cost units but no rail can pay them"),
    ]
    for body, line in cases:
        answer = await client.call("POST", "/api/v1/paygates", body)
        assert answer.status == 422, (body, answer.text)
        assert answer.body["error"] == "invalid"
        assert any(e.startswith(line) for e in answer.body["errors"]), answer.body
    listed = await client.call("GET", "/api/v1/paygates")
    assert [p["id"] for p in listed.body["paygates"]] == ["files"]  # nothing was stored
    bad = await client.call("POST", "/api/v1/paygates", raw=b"[1, 2")
    assert bad.status == 400


async def test_duplicate_id_is_409_and_config_paygates_are_read_only(setup):
    gw, o, client = setup
    assert (await client.call("POST", "/api/v1/paygates", _new(o.url))).status == 201
    again = await client.call("POST", "/api/v1/paygates", _new(o.url, prefix="/other"))
    assert again.status == 409
    for method, body in (("PUT", _new(o.url, id="files")), ("PATCH", {"description": "x"}),
                         ("DELETE", None)):
        answer = await client.call(method, "/api/v1/paygates/files", body)
        assert answer.status == 409 and answer.body["error"] == "config_paygate"


async def test_private_targets_are_refused_unless_allowed(gateway, origin, http, store_config):
    o = await origin()
    gw = await gateway({**store_config, "server": {"allow_private_targets": False},
                        "paygates": []})
    key_id, secret = await make_key(gw, provider="acme")
    client = Signer(http, gw.url, key_id, secret)
    answer = await client.call("POST", "/api/v1/paygates", _new(o.url))
    assert answer.status == 422
    assert answer.body["errors"][0].startswith("target: 127.0.0.1 is a loopback/private")
    answer = await client.call("POST", "/api/v1/paygates",
                               _new(o.url, allow_private_target=True))
    assert answer.status == 422
    assert answer.body["errors"] == ["allow_private_target: only an operator key may set this"]
    op_id, op_secret = await make_key(gw, operator=True)
    operator = Signer(http, gw.url, op_id, op_secret)
    answer = await operator.call("POST", "/api/v1/paygates",
                                 _new(o.url, allow_private_target=True, provider="acme"))
    assert answer.status == 201, answer.text
    async with http.get(gw.url + "/weather/x") as r:
        assert r.status == 200  # the guarded resolver now lets this target through
    assert (await client.call("GET", "/api/v1/paygates/weather")).status == 200


async def test_secrets_get_regenerate_and_custom(setup, http):
    gw, o, client = setup
    made = await client.call("POST", "/api/v1/paygates", _new(o.url))
    assert made.status == 201
    first = await client.call("GET", "/api/v1/paygates/weather/secret")
    assert first.status == 200 and first.body["previous"] is None
    new = await client.call("POST", "/api/v1/paygates/weather/secret/regenerate",
                            {"grace_seconds": 600})
    assert new.status == 200
    assert new.body["current"] != first.body["current"]
    assert new.body["previous"] == first.body["current"]
    short = await client.call("PATCH", "/api/v1/paygates/weather/secret", {"secret": "short"})
    assert short.status == 422 and short.body["errors"][0].startswith("secret:")
    custom = "my-own-secret-of-enough-length-123"
    set_ = await client.call("PATCH", "/api/v1/paygates/weather/secret",
                             {"secret": custom, "grace_seconds": 0})
    assert set_.status == 200 and set_.body["current"] == custom
    assert set_.body["previous"] is None
    got = await client.call("GET", "/api/v1/paygates/weather/secret")
    assert got.body["current"] == custom
    # the gateway signs with it at once
    async with http.get(gw.url + "/weather/today") as r:
        assert r.status == 200
    seen = o.requests[-1]
    verify_request("GET", seen.raw_path, seen.headers, b"", [custom])  # raises if not


async def test_two_instances_share_runtime_paygates(gateway, origin, http, postgres_server,
                                                    tmp_path):
    url = await fresh_pg_url(postgres_server)
    o = await origin()
    cfg = {"database": {"url": url, "master_key_file": str(tmp_path / "shared.key")},
           "admin": {"poll_seconds": 0.05}, "paygates": [_file_paygate(o.url)]}
    a, b = await gateway(cfg), await gateway(cfg)
    key_id, secret = await make_key(a, provider="acme")
    client = Signer(http, a.url, key_id, secret)
    assert (await client.call("POST", "/api/v1/paygates", _new(o.url))).status == 201

    async def status_on_b(path: str) -> int:
        async with http.get(b.url + path) as r:
            return r.status

    async with asyncio.timeout(30):
        while await status_on_b("/weather/x") != 200:
            await asyncio.sleep(0.05)
    assert (await client.call("DELETE", "/api/v1/paygates/weather")).status == 204
    async with asyncio.timeout(30):
        while await status_on_b("/weather/x") != 404:
            await asyncio.sleep(0.05)
    # keys are shared too: the same key signs on B
    on_b = Signer(http, b.url, key_id, secret)
    assert (await on_b.call("GET", "/api/v1/paygates")).status == 200


async def test_a_deleted_paygates_secret_does_not_pass_to_the_next_owner(setup, http):
    gw, o, client = setup
    assert (await client.call("POST", "/api/v1/paygates", _new(o.url))).status == 201
    old = (await client.call("GET", "/api/v1/paygates/weather/secret")).body["current"]
    assert (await client.call("DELETE", "/api/v1/paygates/weather")).status == 204
    other_id, other_secret = await make_key(gw, provider="globex")
    other = Signer(http, gw.url, other_id, other_secret)
    assert (await other.call("POST", "/api/v1/paygates", _new(o.url))).status == 201
    new = (await other.call("GET", "/api/v1/paygates/weather/secret")).body
    assert new["current"] != old and new["previous"] is None
    assert (await client.call("GET", "/api/v1/paygates/weather")).status == 404


async def test_instances_starting_together_apply_the_config_once(gateway, origin,
                                                                 postgres_server, tmp_path):
    url = await fresh_pg_url(postgres_server)
    o = await origin()
    cfg = {"database": {"url": url, "master_key_file": str(tmp_path / "shared.key")},
           "paygates": [_file_paygate(o.url), {**_file_paygate(o.url), "id": "more",
                                                "prefix": "/more"}]}
    a, b, c = await asyncio.gather(gateway(cfg), gateway(cfg), gateway(cfg))
    key_id, secret = await make_key(a, operator=True)
    async with __import__("aiohttp").ClientSession() as http:
        listed = await Signer(http, c.url, key_id, secret).call("GET", "/api/v1/paygates")
    assert sorted(p["id"] for p in listed.body["paygates"]) == ["files", "more"]


async def test_a_paygate_under_api_still_gets_its_other_paths(gateway, origin, http):
    o = await origin()
    gw = await gateway({"paygates": [{"id": "api", "prefix": "/api", "target": o.url,
                                      "default_units": 0}]})
    async with http.get(gw.url + "/api/v1/flights") as r:
        assert r.status == 200  # proxied: no admin route has this path
    assert o.requests[-1].path == "/v1/flights"
    async with http.post(gw.url + "/api/v1/usage") as r:
        assert r.status == 200  # the admin route is GET only: POST is the paygate's
    async with http.get(gw.url + "/api/v1/paygates") as r:
        assert r.status == 401  # the admin API's own path
