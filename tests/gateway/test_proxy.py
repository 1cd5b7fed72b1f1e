"""The proxy, end to end: a real gateway in front of real origins on loopback.

Origin-auth headers are checked against an independent implementation of the recipes
in SPEC.md (`spec_*` below), never against gateway.origin's own signing functions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import socket
import time

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import create_async_engine
from yarl import URL

from gateway import origin as origin_lib
from gateway.config import ConfigError
from store.clock import ManualClock, SystemClock
from store.crypto import load_master_key
from store.secrets import OriginSecrets, SecretStore
from tests.gateway.conftest import echo

HANG_GUARD = 10  # seconds; only ever reached when the behaviour under test is broken


# ----------------------------------------------------------- SPEC recipes, re-implemented


def spec_hmac(secret: str, x_payment: str, x_payment_response: str) -> str:
    """hmac: base64(HMAC-SHA256(secret, X-Payment + "|" + X-Payment-Response))."""
    mac = hmac.new(secret.encode(), f"{x_payment}|{x_payment_response}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def spec_request(secret: str, method: str, path_qs: str, ts: str, request_id: str,
                 body: bytes) -> str:
    """request: v1=<hex HMAC-SHA256(secret, METHOD\\nPATH?QUERY\\nTIMESTAMP\\nREQUEST_ID\\n
    sha256hex(body))>, the "?" there even when the query is empty."""
    path, _, query = path_qs.partition("?")
    canonical = "\n".join([method, f"{path}?{query}", ts, request_id,
                           hashlib.sha256(body).hexdigest()])
    return "v1=" + hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()


# ----------------------------------------------------------- helpers


def paygate(target: str, **overrides) -> dict:
    """A free paygate "api" at /api (units 0: no rail involved)."""
    return {"id": "api", "prefix": "/api", "target": target, "default_units": 0, **overrides}


def config(target: str, **overrides) -> dict:
    return {"paygates": [paygate(target, **overrides)]}


async def stored_secrets(handle, paygate_id: str = "api") -> OriginSecrets:
    """Read a paygate's secrets straight from the gateway's database, as another
    process would."""
    engine = create_async_engine(handle.config.database.url)
    try:
        box = load_master_key(handle.config.database.master_key_env, handle.master_key_file)
        secrets = await SecretStore(engine, box, SystemClock()).get(paygate_id)
    finally:
        await engine.dispose()
    assert secrets is not None
    return secrets


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def assert_json_error(resp: aiohttp.ClientResponse, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def or_echo_after(handler):
    """`handler`, except that /after is echoed (for checking the gateway still serves)."""
    async def dispatch(request):
        if request.path == "/after":
            return await echo(request)
        return await handler(request)
    return dispatch


async def still_serving(http, gw) -> None:
    async with http.get(f"{gw.url}/api/after") as resp:
        assert resp.status == 200
        assert (await resp.json())["path"] == "/after"


# ----------------------------------------------------------- forwarding


async def test_free_route_forwards_without_payment(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url))
    async with http.get(f"{gw.url}/api/hello") as resp:
        assert resp.status == 200
        echoed = await resp.json()
    assert echoed["path"] == "/hello"
    assert len(o.requests) == 1
    seen = o.requests[0].headers
    assert seen["X-Tollgate-Paygate"] == "api"
    assert seen["X-Tollgate-Units"] == "0"
    assert seen["Host"] == f"127.0.0.1:{o.port}"


async def test_method_path_query_and_body_arrive_intact(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url + "/base"))
    body = bytes(range(256)) * 10
    # %3F and %23 must stay in the path; %26 must not split the query parameter
    target = "/api/items/a%20b/caf%C3%A9/x%3Fy%23z?q=1&q=2&s=%2F%20+&amp=a%26b&empty="
    async with http.request("PATCH", URL(gw.url + target, encoded=True), data=body,
                            headers={"Content-Type": "application/octet-stream"}) as resp:
        assert resp.status == 200
        echoed = await resp.json()
    assert echoed["method"] == "PATCH"
    # what went over the wire to the origin: base path + the request's own encoding
    assert echoed["raw_path"] == \
        "/base/items/a%20b/caf%C3%A9/x%3Fy%23z?q=1&q=2&s=%2F%20+&amp=a%26b&empty="
    assert echoed["path"] == "/base/items/a b/café/x?y#z"
    assert echoed["body_len"] == len(body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    headers = dict(echoed["headers"])
    assert headers["Content-Type"] == "application/octet-stream"


async def test_large_upload_within_cap_arrives_whole(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url))
    body = os.urandom(5 * 1024 * 1024)
    async with http.post(f"{gw.url}/api/upload", data=body) as resp:
        assert resp.status == 200
        echoed = await resp.json()
    assert echoed["body_len"] == len(body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_request_body_is_streamed_not_buffered(origin, gateway, http):
    """The caller sends its second chunk only after the origin has received the first:
    a gateway that buffered the body before forwarding would deadlock here."""
    first_arrived = asyncio.Event()

    async def handler(request: web.Request):
        first = await request.content.readany()
        first_arrived.set()
        rest = await request.content.read()
        return web.json_response({"first": len(first), "total": len(first) + len(rest)})

    o = await origin(handler)
    # signing the request needs the whole body first: only the Sigwei-only setting streams
    gw = await gateway(config(o.url, origin_auth={"mode": "hmac", "sign_request": False}))

    async def body():
        yield b"a" * 1000
        await first_arrived.wait()
        yield b"b" * 2000

    async with asyncio.timeout(HANG_GUARD):
        async with http.post(f"{gw.url}/api/stream", data=body()) as resp:
            assert resp.status == 200
            result = await resp.json()
    assert result["total"] == 3000
    assert 0 < result["first"] <= 1000


async def test_hop_by_hop_headers_are_stripped(origin, gateway, raw_http):
    o = await origin()
    gw = await gateway(config(o.url))
    resp = await raw_http(gw.port, (
        "GET /api/hop HTTP/1.1\r\n"
        "Host: gw.example\r\n"
        "Connection: close, X-Private-Hop\r\n"
        "Keep-Alive: timeout=5\r\n"
        "TE: trailers\r\n"
        "Upgrade: h2c\r\n"
        "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        "X-Private-Hop: secret\r\n"
        "X-End-To-End: kept\r\n"
        "\r\n").encode())
    assert resp.status == 200, resp.body
    seen = o.requests[0].headers
    for name in ("Keep-Alive", "TE", "Upgrade", "Proxy-Authorization", "X-Private-Hop"):
        assert name not in seen, name
    assert "x-private-hop" not in seen.get("Connection", "").lower()
    assert seen["X-End-To-End"] == "kept"


async def test_hop_by_hop_response_headers_are_stripped(origin, gateway, http):
    async def handler(request):
        return web.Response(text="ok", headers={"Connection": "X-Origin-Hop",
                                                "X-Origin-Hop": "1", "Keep-Alive": "timeout=9",
                                                "X-Kept": "yes"})

    o = await origin(handler)
    gw = await gateway(config(o.url))
    async with http.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 200
        assert resp.headers["X-Kept"] == "yes"
        assert "X-Origin-Hop" not in resp.headers
        assert "Keep-Alive" not in resp.headers


async def test_caller_cannot_forge_gateway_headers(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url, origin_auth={"mode": "hmac"}))
    forged = {
        "X-Tollgate-Payer": "0xForged",
        "X-Tollgate-Units": "999",
        "X-Tollgate-Signature": "v1=forged",
        "X-Tollgate-Anything": "x",
        "Sigwei-Auth-Signature": "forged",
        "Sigwei-Secret": "forged",
        "Sigwei-Other": "forged",
        "X-Payment-Response": "forged",
        "Payment-Response": "forged",
        "X-Hedera-Session-Id": "session-token",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=1.2.3.4",
    }
    async with http.get(f"{gw.url}/api/x", headers=forged) as resp:
        assert resp.status == 200
    seen = o.requests[0].headers
    assert seen["X-Tollgate-Payer"] == ""
    assert seen["X-Tollgate-Units"] == "0"
    assert seen.getall("X-Tollgate-Signature") != ["v1=forged"]  # the gateway's own only
    assert len(seen.getall("X-Tollgate-Signature")) == 1
    assert "X-Tollgate-Anything" not in seen
    assert seen["Sigwei-Auth-Signature"] != "forged"  # the gateway's own (hmac mode)
    assert "Sigwei-Secret" not in seen
    assert "Sigwei-Other" not in seen
    assert "X-Payment-Response" not in seen
    assert "Payment-Response" not in seen
    assert "X-Hedera-Session-Id" not in seen
    assert "Forwarded" not in seen
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] != "evil.example"
    for name in forged:
        assert seen.getall(name, []).count(forged[name]) == 0, name


async def test_forwarded_headers(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url))
    async with http.get(f"{gw.url}/api/x", headers={"Host": "shop.example:8443"}) as resp:
        assert resp.status == 200
    async with http.get(f"{gw.url}/api/y", headers={"X-Forwarded-For": "203.0.113.7"}) as resp:
        assert resp.status == 200
    first, second = (s.headers for s in o.requests)
    assert first["X-Forwarded-For"] == "127.0.0.1"
    assert first["X-Forwarded-Proto"] == "http"
    assert first["X-Forwarded-Host"] == "shop.example:8443"
    assert second.getall("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert second["X-Forwarded-Host"] == f"127.0.0.1:{gw.port}"


# ----------------------------------------------------------- origin auth


async def test_origin_auth_hmac_with_secret_from_env(origin, gateway, http, monkeypatch):
    monkeypatch.setenv("TOLLGATE_TEST_ORIGIN_SECRET", "provider-chosen-secret")
    o = await origin()
    gw = await gateway(config(o.url, origin_auth={"mode": "hmac",
                                                  "secret_env": "TOLLGATE_TEST_ORIGIN_SECRET"}))
    async with http.get(f"{gw.url}/api/x", headers={"X-Payment": "caller-forged"}) as resp:
        assert resp.status == 200
    seen = o.requests[0]
    assert "X-Payment" not in seen.headers  # a free call carries no payment
    assert seen.headers["Sigwei-Auth-Signature"] == spec_hmac("provider-chosen-secret", "", "")
    assert "Sigwei-Secret" not in seen.headers
    assert (await stored_secrets(gw)).current == "provider-chosen-secret"
    # the request-mode headers ride along, signed like `request` mode
    assert seen.headers["X-Tollgate-Signature"] == spec_request(
        "provider-chosen-secret", "GET", "/x", seen.headers["X-Tollgate-Timestamp"],
        seen.headers["X-Tollgate-Request-Id"], b"")
    paid = origin_lib.verify("hmac", "GET", seen.raw_path, seen.headers, b"",
                             ["provider-chosen-secret"])
    assert paid.units == 0 and paid.request_id == seen.headers["X-Tollgate-Request-Id"]


async def test_origin_auth_plaintext(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url, origin_auth={"mode": "plaintext"}))
    async with http.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 200
    secret = (await stored_secrets(gw)).current
    assert len(secret) >= 32
    seen = o.requests[0].headers
    assert seen["Sigwei-Secret"] == secret
    assert "Sigwei-Auth-Signature" not in seen
    assert origin_lib.verify("plaintext", "GET", "/x", seen, b"", [secret]).paygate == "api"


async def test_origin_auth_request_signs_what_the_origin_receives(origin, gateway, http):
    clock = ManualClock(1_700_000_000.75)
    o = await origin()
    gw = await gateway(config(o.url + "/base", origin_auth={"mode": "request"}), clock=clock)
    body = b'{"seats": 2}'
    async with http.post(URL(f"{gw.url}/api/v1/holds/a%20b?from=ZRH&to=L%48R", encoded=True),
                         data=body) as resp:
        assert resp.status == 200
    async with http.get(f"{gw.url}/api/v1/flights") as resp:
        assert resp.status == 200
    secret = (await stored_secrets(gw)).current
    post, get = o.requests

    assert post.raw_path == "/base/v1/holds/a%20b?from=ZRH&to=L%48R"
    assert post.body == body
    h = post.headers
    assert h["X-Tollgate-Timestamp"] == "1700000000"
    request_id = h["X-Tollgate-Request-Id"]
    assert request_id
    assert h["X-Tollgate-Signature"] == spec_request(
        secret, "POST", "/base/v1/holds/a%20b?from=ZRH&to=L%48R", "1700000000", request_id, body)
    assert "Sigwei-Auth-Signature" not in h and "Sigwei-Secret" not in h

    g = get.headers
    assert g["X-Tollgate-Request-Id"] != request_id  # fresh per request
    assert g["X-Tollgate-Signature"] == spec_request(
        secret, "GET", "/base/v1/flights", "1700000000", g["X-Tollgate-Request-Id"], b"")


async def test_rotation_signs_with_current_and_previous_stays_valid_for_grace(
        origin, gateway, http):
    clock = ManualClock(1_700_000_000)
    o = await origin()
    gw = await gateway(config(o.url, origin_auth={"mode": "hmac", "rotation_grace_seconds": 60}),
                       clock=clock)
    async with http.get(f"{gw.url}/api/before") as resp:
        assert resp.status == 200
    old = (await stored_secrets(gw)).current

    # rotate as the admin API / CLI would: through the store, then drop the cached copy
    rotated = await gw.gw.secret_store.rotate("api", None, 60)
    gw.gw.forget_secret("api")
    assert rotated.current != old and rotated.previous == old
    assert rotated.previous_valid_until == clock.now() + 60

    async with http.get(f"{gw.url}/api/after") as resp:
        assert resp.status == 200
    before, after = o.requests
    assert before.headers["Sigwei-Auth-Signature"] == spec_hmac(old, "", "")
    assert after.headers["Sigwei-Auth-Signature"] == spec_hmac(rotated.current, "", "")

    def origin_accepts(seen) -> bool:
        secrets = OriginSecrets(rotated.current, rotated.previous, rotated.previous_valid_until)
        try:
            origin_lib.verify("hmac", seen.method, seen.raw_path, seen.headers, b"",
                              secrets.valid(clock.now()), now=clock.now())
            return True
        except origin_lib.OriginAuthError:
            return False

    assert origin_accepts(after) and origin_accepts(before)  # within grace: both
    clock.advance(59)
    assert origin_accepts(before)
    clock.advance(1)
    assert not origin_accepts(before)  # grace is over: only the current secret
    assert origin_accepts(after)
    assert (await stored_secrets(gw)).valid(clock.now()) == [rotated.current]


async def test_default_mode_is_request(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url))
    async with http.get(f"{gw.url}/api/v1/flights") as resp:
        assert resp.status == 200
    h = o.requests[0].headers
    secret = (await stored_secrets(gw)).current
    assert h["X-Tollgate-Signature"] == spec_request(
        secret, "GET", "/v1/flights", h["X-Tollgate-Timestamp"], h["X-Tollgate-Request-Id"], b"")
    assert "X-Tollgate-Context" in h
    assert "Sigwei-Auth-Signature" not in h and "Sigwei-Secret" not in h


async def _verifying_origin(secret: str, mode: str, wire: list):
    """An origin protected by gateway.origin's middleware, as a provider would run it;
    `wire` gets the headers of every request as they arrived (what an eavesdropper on
    the gateway-origin link, or a logging proxy, would see)."""
    from aiohttp.test_utils import TestServer

    @web.middleware
    async def tap(request, handler):
        wire.append(dict(request.headers))
        return await handler(request)

    async def served(request):
        return web.json_response({"units": request["tollgate"].units, "route": request.path})

    app = web.Application(middlewares=[tap, origin_lib.aiohttp_middleware([secret], mode=mode)])
    app.router.add_route("*", "/{tail:.*}", served)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return server


@pytest.mark.parametrize("mode", ["hmac", "plaintext", "request"])
async def test_captured_free_call_cannot_be_replayed_to_the_origin(
        gateway, http, monkeypatch, mode):
    """The reported attack, end to end: a free call's headers, taken off the wire and
    sent straight to the origin for POST /v1/bookings claiming 25 units (or as they
    were, to the same route), are refused by an origin verifying with gateway.origin."""
    monkeypatch.setenv("TOLLGATE_TEST_ORIGIN_SECRET", "provider-chosen-secret")
    wire: list[dict] = []
    server = await _verifying_origin("provider-chosen-secret", mode, wire)
    try:
        origin_url = f"http://127.0.0.1:{server.port}"
        gw = await gateway(config(origin_url, origin_auth={
            "mode": mode, "secret_env": "TOLLGATE_TEST_ORIGIN_SECRET"}))
        async with http.get(f"{gw.url}/api/v1/status") as resp:
            assert resp.status == 200 and (await resp.json())["units"] == 0
        captured = {k: v for k, v in wire[0].items()
                    if k.lower().startswith(("x-tollgate-", "sigwei-", "x-payment"))}

        forged = {**captured, "X-Tollgate-Units": "25"}
        async with http.post(f"{origin_url}/v1/bookings", headers=forged) as resp:
            assert resp.status == 403, await resp.text()
        bare = {k: v for k, v in forged.items()
                if k.lower() in ("x-tollgate-payer", "x-tollgate-paygate", "x-tollgate-units")
                or k.lower().startswith("sigwei-")}
        async with http.post(f"{origin_url}/v1/bookings", headers=bare) as resp:
            assert resp.status == 403, await resp.text()
        async with http.get(f"{origin_url}/v1/status", headers=captured) as resp:
            assert resp.status == 403  # the gateway's own request id, seen already
            assert (await resp.json())["error"] == "replayed_request"
    finally:
        await server.close()


def payfence_check(secret: str, request: web.Request, body: bytes) -> bool:
    """PayFence's origin check, written from its recipe alone."""
    sig = request.headers.get("x-payfence-signature", "")
    ts = request.headers.get("x-payfence-timestamp", "")
    rid = request.headers.get("x-payfence-request-id", "")
    if not (sig and ts.isdigit() and rid) or abs(int(time.time()) - int(ts)) > 300:
        return False
    canonical = (f"{request.method}\n{request.path}?{request.query_string}\n{ts}\n{rid}\n"
                 f"{hashlib.sha256(body).hexdigest()}")
    expected = "v1=" + hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, sig)


@pytest.mark.parametrize("prefix, accepted", [("X-PayFence", True), (None, False)])
async def test_payfence_origin_verifies_unchanged(origin, gateway, http, monkeypatch, prefix,
                                                  accepted):
    monkeypatch.setenv("TOLLGATE_TEST_ORIGIN_SECRET", "payfence-secret")

    async def handler(request):
        body = await request.read()
        if not payfence_check("payfence-secret", request, body):
            return web.json_response({"error": "origin_protection_failed"}, status=403)
        return web.json_response({"ok": True})

    o = await origin(handler)
    auth = {"mode": "request", "secret_env": "TOLLGATE_TEST_ORIGIN_SECRET"}
    if prefix:
        auth["header_prefix"] = prefix
    gw = await gateway(config(o.url, origin_auth=auth))
    for method, target, body in (("GET", "/api/v1/flights", None),
                                 ("GET", "/api/v1/flights?", None),
                                 ("POST", "/api/v1/holds?seats=2", b'{"seats": 2}')):
        async with http.request(method, URL(gw.url + target, encoded=True), data=body) as resp:
            assert (resp.status == 200) is accepted, (target, await resp.text())


async def test_original_verifier_accepts_the_gateways_request_signatures(
        origin, gateway, http):
    from tests.gateway.origin_v1_recipe import V1AuthError, verify_request as v1_verify

    o = await origin()
    gw = await gateway(config(o.url, origin_auth={"mode": "request"}))
    legacy = await gateway({"paygates": [paygate(o.url, id="old", prefix="/old",
                                                 origin_auth={"mode": "request",
                                                              "legacy_path_line": True})]})
    async with http.post(f"{gw.url}/api/v1/holds?seats=2", data=b"{}") as resp:
        assert resp.status == 200
    async with http.get(f"{gw.url}/api/v1/flights") as resp:
        assert resp.status == 200
    async with http.get(f"{legacy.url}/old/v1/flights") as resp:
        assert resp.status == 200
    secret = (await stored_secrets(gw)).current
    old_secret = (await stored_secrets(legacy, "old")).current
    post, get, old_get = o.requests
    assert v1_verify("POST", post.raw_path, post.headers, post.body, [secret])
    assert origin_lib.verify("request", "POST", post.raw_path, post.headers, post.body, [secret])
    with pytest.raises(V1AuthError):  # the path line of a query-less request changed
        v1_verify("GET", get.raw_path, get.headers, b"", [secret])
    assert v1_verify("GET", old_get.raw_path, old_get.headers, b"", [old_secret])
    assert origin_lib.verify("request", "GET", old_get.raw_path, old_get.headers, b"",
                             [old_secret]).paygate == "old"


async def test_sign_request_false_sends_the_sigwei_recipe_alone(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url, origin_auth={"mode": "hmac", "sign_request": False}))
    async with http.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 200
    h = o.requests[0].headers
    assert "Sigwei-Auth-Signature" in h
    assert not any(k.lower() in ("x-tollgate-signature", "x-tollgate-context") for k in h)
    with pytest.raises(ConfigError, match="sign_request"):
        await gateway(config(o.url, origin_auth={"mode": "request", "sign_request": False}))
    with pytest.raises(ConfigError, match="header_prefix"):
        await gateway(config(o.url, origin_auth={"header_prefix": "X-Pay Fence"}))


# ----------------------------------------------------------- limits and faults


async def test_slow_origin_times_out_with_504(origin, gateway, http):
    release = asyncio.Event()

    async def slow(request):
        await release.wait()
        return web.Response(text="too late")

    o = await origin(or_echo_after(slow))
    gw = await gateway(config(o.url, timeout_seconds=0.2))
    try:
        async with http.get(f"{gw.url}/api/slow") as resp:
            body = await assert_json_error(resp, 504, "upstream_timeout")
        assert "0.2" in body["message"]
    finally:
        release.set()
    await still_serving(http, gw)


async def test_declared_response_over_cap_is_502(origin, gateway, http):
    async def huge(request):
        return web.Response(body=b"x" * 8192)

    o = await origin(huge)
    gw = await gateway(config(o.url, max_response_bytes=4096))
    async with http.get(f"{gw.url}/api/huge") as resp:
        await assert_json_error(resp, 502, "upstream_response_too_large")


async def test_chunked_response_growing_past_cap_is_aborted(origin, gateway, http, caplog):
    async def growing(request):
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(64):  # 1 MiB in 16 KiB chunks, cap is 64 KiB
                await resp.write(b"y" * 16384)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            return resp
        await resp.write_eof()
        return resp

    o = await origin(or_echo_after(growing))
    gw = await gateway(config(o.url, max_response_bytes="64KiB"))
    with caplog.at_level(logging.WARNING, logger="tollgate.proxy"):
        async with asyncio.timeout(HANG_GUARD):
            async with http.get(f"{gw.url}/api/big") as resp:
                assert resp.status == 200
                with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
                    await resp.read()
    assert any("larger than 65536" in r.getMessage() for r in caplog.records)
    await still_serving(http, gw)


async def test_unreachable_origin_is_502(gateway, http):
    gw = await gateway(config(f"http://127.0.0.1:{closed_port()}"))
    async with http.get(f"{gw.url}/api/x") as resp:
        await assert_json_error(resp, 502, "upstream_error")


async def test_origin_reset_mid_response_aborts_client_and_gateway_keeps_serving(
        origin, gateway, http, caplog):
    first_read = asyncio.Event()

    async def resetting(request):
        resp = web.StreamResponse()
        resp.content_length = 100_000
        await resp.prepare(request)
        await resp.write(b"z" * 1000)
        await first_read.wait()
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        request.transport.abort()  # RST: linger on with zero timeout
        return resp

    o = await origin(or_echo_after(resetting))
    gw = await gateway(config(o.url))
    with caplog.at_level(logging.WARNING, logger="tollgate.proxy"):
        async with asyncio.timeout(HANG_GUARD):
            async with http.get(f"{gw.url}/api/reset") as resp:
                assert resp.status == 200
                assert await resp.content.readexactly(1000) == b"z" * 1000
                first_read.set()
                with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
                    await resp.read()
    assert any("broke off" in r.getMessage() and "/api/reset" in r.getMessage()
               for r in caplog.records)
    await still_serving(http, gw)


async def test_sse_events_reach_the_client_as_they_are_sent(origin, gateway, http):
    released = [asyncio.Event(), asyncio.Event()]

    async def sse(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        await released[0].wait()
        await resp.write(b"data: two\n\n")
        await released[1].wait()
        await resp.write(b"data: three\n\n")
        await resp.write_eof()
        return resp

    o = await origin(sse)
    gw = await gateway(config(o.url))
    async with asyncio.timeout(HANG_GUARD):
        async with http.get(f"{gw.url}/api/events") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            # the origin has not sent event two yet: it waits for us
            assert await resp.content.readuntil(b"\n\n") == b"data: one\n\n"
            released[0].set()
            assert await resp.content.readuntil(b"\n\n") == b"data: two\n\n"
            released[1].set()
            assert await resp.content.readuntil(b"\n\n") == b"data: three\n\n"
            assert await resp.content.read() == b""


async def test_request_body_over_cap_with_content_length_is_413(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url, max_request_bytes="64KiB"))
    async with http.post(f"{gw.url}/api/upload", data=b"x" * (64 * 1024 + 1)) as resp:
        await assert_json_error(resp, 413, "payload_too_large")
    assert o.requests == []
    async with http.post(f"{gw.url}/api/upload", data=b"x" * (64 * 1024)) as resp:
        assert resp.status == 200  # exactly the cap is fine
    assert len(o.requests) == 1


async def test_server_wide_request_cap_applies_too(origin, gateway, http):
    o = await origin()
    gw = await gateway({"server": {"max_request_bytes": "1KiB"}, **config(o.url)})
    async with http.post(f"{gw.url}/api/upload", data=b"x" * 1025) as resp:
        await assert_json_error(resp, 413, "payload_too_large")
    assert o.requests == []


async def test_chunked_upload_over_cap_never_reaches_origin_whole(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url, max_request_bytes="64KiB"))

    async def body():
        for _ in range(8):
            yield b"u" * 32768  # 256 KiB in all, no Content-Length

    async with asyncio.timeout(HANG_GUARD):
        try:
            async with http.post(f"{gw.url}/api/upload", data=body()) as resp:
                await assert_json_error(resp, 413, "payload_too_large")
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            pass  # an aborted exchange is an acceptable answer too
        await o.wait_done()
    assert not any(seen.body_complete for seen in o.requests)
    await still_serving(http, gw)


async def test_control_character_in_header_is_400(origin, gateway, raw_http):
    o = await origin()
    gw = await gateway(config(o.url))
    resp = await raw_http(gw.port, b"GET /api/x HTTP/1.1\r\nHost: gw\r\nX-Bad: a\x01b\r\n"
                                   b"Connection: close\r\n\r\n")
    # aiohttp's own HTTP parser (llhttp) refuses control characters in header values
    # before the request reaches any handler, so this 400 is aiohttp's plain-text one;
    # what matters is that it is a 400 and the origin never sees the request.
    assert resp.status == 400
    assert o.requests == []


async def test_non_ascii_header_value_is_400_json(origin, gateway, raw_http):
    o = await origin()
    gw = await gateway(config(o.url))
    resp = await raw_http(gw.port, b"GET /api/x HTTP/1.1\r\nHost: gw\r\nX-Name: caf\xc3\xa9\r\n"
                                   b"Connection: close\r\n\r\n")
    assert resp.status == 400
    assert resp.json()["error"] == "invalid_header"
    assert o.requests == []


async def test_dot_segments_are_refused(origin, gateway, raw_http):
    o = await origin()
    gw = await gateway(config(o.url))
    for target in (b"/api/a/../b", b"/api/a/%2e%2E/b", b"/api/./b"):
        resp = await raw_http(gw.port, b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n"
                                       b"Connection: close\r\n\r\n")
        assert resp.status == 400, target
        assert resp.json()["error"] == "invalid_path"
    assert o.requests == []


async def test_unknown_route_is_404_json(origin, gateway, http):
    o = await origin()
    gw = await gateway(config(o.url))
    for path in ("/nope", "/apis"):  # "/" is the wallet page
        async with http.get(gw.url + path) as resp:
            await assert_json_error(resp, 404, "not_found")
    assert o.requests == []


# ----------------------------------------------------------- health


async def test_healthz_and_readyz(gateway, http):
    gw = await gateway({})
    async with http.get(f"{gw.url}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json()) == {"status": "ok"}
    async with http.get(f"{gw.url}/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json()) == {"status": "ready", "store": "sqlite"}


async def test_readyz_fails_closed_when_store_is_unreachable(gateway, http):
    gw = await gateway({})
    await gw.gw.engine.dispose()  # drop pooled connections to the file...
    for f in gw.db_path.parent.iterdir():  # ...and take the database away
        f.unlink()
    gw.db_path.parent.rmdir()
    async with http.get(f"{gw.url}/readyz") as resp:
        await assert_json_error(resp, 503, "store_unavailable")
    async with http.get(f"{gw.url}/healthz") as resp:
        assert resp.status == 200  # alive, just not ready


async def test_absolute_form_and_prefix_case_route_and_encoded_prefix_is_refused(
        origin, gateway, raw_http):
    o = await origin()
    gw = await gateway(config(o.url + "/base"))
    for target in (b"/API/x%20y?k=v%26w", b"http://gw.example/api/x%20y?k=v%26w"):
        resp = await raw_http(gw.port, b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n"
                                       b"Connection: close\r\n\r\n")
        assert resp.status == 200, resp.body
        assert resp.json()["raw_path"] == "/base/x%20y?k=v%26w"
    # an unreserved character spelt %XX is read as a different path by some origins
    for target in (b"/%61pi/x", b"http://gw.example/api//x", b"http://gw.example/api/%78"):
        resp = await raw_http(gw.port, b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n"
                                       b"Connection: close\r\n\r\n")
        assert resp.status == 400, target
        assert resp.json()["error"] == "invalid_path"
    assert len(o.requests) == 2


async def test_repeated_response_headers_and_status_pass_through(origin, gateway, http):
    async def handler(request):
        resp = web.Response(status=201, reason="Made It", body=b"made")
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        return resp

    o = await origin(handler)
    gw = await gateway(config(o.url))
    async with http.post(f"{gw.url}/api/things") as resp:
        assert resp.status == 201 and resp.reason == "Made It"
        assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert await resp.read() == b"made"


async def test_head_keeps_content_length_without_a_body(origin, gateway, raw_http):
    async def handler(request):
        return web.Response(body=b"x" * 1234)

    o = await origin(handler)
    gw = await gateway(config(o.url))
    resp = await raw_http(gw.port, b"HEAD /api/file HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "1234"
    assert resp.body == b""
    assert o.requests[0].method == "HEAD"


async def test_unset_secret_env_refuses_to_start(origin, gateway, monkeypatch):
    monkeypatch.delenv("TOLLGATE_TEST_ABSENT_SECRET", raising=False)
    o = await origin()
    with pytest.raises(ConfigError) as exc:
        await gateway(config(o.url, origin_auth={"secret_env": "TOLLGATE_TEST_ABSENT_SECRET"}))
    assert "TOLLGATE_TEST_ABSENT_SECRET is not set" in str(exc.value)
    assert "origin_auth.secret_env" in str(exc.value)


async def test_a_name_resolving_to_loopback_is_refused_unless_allowed(gateway, origin, http):
    """The config can judge only IP literals; the connect-time guard judges what a name
    resolves to (here `localhost`, which resolves to 127.0.0.1)."""
    from gateway.forward import GuardedResolver, TargetRefused

    o = await origin()
    guard, allowed = GuardedResolver(set()), GuardedResolver({"localhost"})
    try:
        with pytest.raises(TargetRefused):
            await guard.resolve("localhost", o.port)
        assert (await allowed.resolve("localhost", o.port))[0]["host"].startswith("127.")
    finally:
        await guard.close()
        await allowed.close()
    g = await gateway({"paygates": [{"id": "free", "prefix": "/free", "default_units": 0,
                                     "target": f"http://localhost:{o.port}",
                                     "allow_private_target": True}]})
    async with http.get(g.url + "/free/x") as r:
        assert r.status == 200


async def test_demo_origin_accepts_the_gateway_with_default_settings(gateway, http, monkeypatch):
    """The sample origin (gateway.demo.skyroute) and a paygate left at its defaults agree."""
    from aiohttp.test_utils import TestServer

    from gateway.demo.skyroute import create_origin

    monkeypatch.setenv("TOLLGATE_TEST_ORIGIN_SECRET", "demo-secret")
    server = TestServer(create_origin(["demo-secret"]), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        gw = await gateway(config(f"http://127.0.0.1:{server.port}",
                                  origin_auth={"secret_env": "TOLLGATE_TEST_ORIGIN_SECRET"}))
        async with http.get(f"{gw.url}/api/v1/flights") as resp:
            assert resp.status == 200, await resp.text()
        async with http.post(f"{gw.url}/api/v1/holds", json={"seats": 1}) as resp:
            assert resp.status == 201, await resp.text()
        async with http.get(f"http://127.0.0.1:{server.port}/v1/flights") as resp:
            assert resp.status == 403  # not through the gateway
    finally:
        await server.close()
