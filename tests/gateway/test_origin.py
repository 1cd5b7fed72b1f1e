"""Tests for gateway.origin, the provider-side verifier library.

Expected signatures are built by an independent implementation of the SPEC recipes
below (``spec_*``), never by the module's own signing functions, so a recipe bug
in the module cannot hide behind a matching bug in the test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import origin
from gateway.origin import (
    ASGIMiddleware,
    GatewayPayment,
    OriginAuthError,
    aiohttp_middleware,
    decode_payment_header,
    verify,
    verify_hmac,
    verify_plaintext,
    verify_request,
)

SECRET = "s3cret-current"
PREVIOUS = "s3cret-previous"
NOW = 1_700_000_000


# ----------------------------------------------------------- SPEC recipes, re-implemented


def b64json(obj) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def spec_hmac(secret: str, x_payment: str, x_payment_response: str) -> str:
    mac = hmac.new(secret.encode("utf-8"), (x_payment + "|" + x_payment_response).encode(), "sha256")
    return base64.b64encode(mac.digest()).decode()


def spec_request(secret, method, path, query, ts, request_id, body: bytes) -> str:
    target = path + ("?" + query if query else "")
    body_hex = hashlib.sha256(body).hexdigest()
    canonical = f"{method.upper()}\n{target}\n{ts}\n{request_id}\n{body_hex}"
    return "v1=" + hmac.new(secret.encode("utf-8"), canonical.encode(), "sha256").hexdigest()


PAYMENT = {"x402Version": 1, "scheme": "exact", "payload": {"amount": "1000"}}
PAYMENT_RESPONSE = {"success": True, "transaction": "0xabc", "payer": "0xPayer"}


def info_headers() -> dict[str, str]:
    return {
        "X-Tollgate-Payer": "0xPayer",
        "X-Tollgate-Paygate": "skyroute",
        "X-Tollgate-Units": "10",
        "X-Tollgate-Remaining": "90",
    }


def hmac_headers(secret=SECRET) -> dict[str, str]:
    xp, xpr = b64json(PAYMENT), b64json(PAYMENT_RESPONSE)
    return {**info_headers(), "X-Payment": xp, "X-Payment-Response": xpr,
            "Sigwei-Auth-Signature": spec_hmac(secret, xp, xpr)}


def request_headers(secret=SECRET, method="POST", path="/flights", query="from=ZRH&to=LHR",
                    ts=NOW, request_id="req-1", body=b'{"seats":2}') -> dict[str, str]:
    return {**info_headers(), "X-Tollgate-Timestamp": str(ts), "X-Tollgate-Request-Id": request_id,
            "X-Tollgate-Signature": spec_request(secret, method, path, query, ts, request_id, body)}


def reason(excinfo) -> str:
    return excinfo.value.reason


# ----------------------------------------------------------- hmac mode


def test_hmac_valid_and_payment_decoded():
    paid = verify_hmac(hmac_headers(), [SECRET])
    assert paid == GatewayPayment(payer="0xPayer", paygate="skyroute", units=10, remaining=90,
                                  payment=PAYMENT, payment_response=PAYMENT_RESPONSE, mode="hmac")


def test_hmac_signing_function_matches_spec():
    assert origin.hmac_signature(SECRET, "a", "b") == spec_hmac(SECRET, "a", "b")
    assert origin.hmac_signature(SECRET, "", "") == spec_hmac(SECRET, "", "")


def test_hmac_missing_payment_headers_count_as_empty():
    headers = {"Sigwei-Auth-Signature": spec_hmac(SECRET, "", "")}
    paid = verify_hmac(headers, [SECRET])
    assert paid.payment is None and paid.payment_response is None and paid.payer is None


def test_hmac_header_lookup_is_case_insensitive():
    headers = {k.lower(): v for k, v in hmac_headers().items()}
    assert verify_hmac(headers, [SECRET]).payer == "0xPayer"
    headers = {k.upper(): v for k, v in hmac_headers().items()}
    assert verify_hmac(headers, [SECRET]).units == 10


def test_hmac_multidict_headers():
    from multidict import CIMultiDict

    assert verify_hmac(CIMultiDict(hmac_headers()), [SECRET]).paygate == "skyroute"


def test_hmac_wrong_secret_fails():
    with pytest.raises(OriginAuthError) as e:
        verify_hmac(hmac_headers(secret="other"), [SECRET])
    assert reason(e) == "bad_signature"


def test_hmac_previous_secret_accepted_only_when_passed():
    headers = hmac_headers(secret=PREVIOUS)
    assert verify_hmac(headers, [SECRET, PREVIOUS]).mode == "hmac"
    with pytest.raises(OriginAuthError):
        verify_hmac(headers, [SECRET])


def test_hmac_tampered_payment_fails():
    headers = hmac_headers()
    headers["X-Payment-Response"] = b64json({**PAYMENT_RESPONSE, "payer": "0xEvil"})
    with pytest.raises(OriginAuthError) as e:
        verify_hmac(headers, [SECRET])
    assert reason(e) == "bad_signature"


def test_hmac_missing_signature():
    headers = hmac_headers()
    del headers["Sigwei-Auth-Signature"]
    with pytest.raises(OriginAuthError) as e:
        verify_hmac(headers, [SECRET])
    assert reason(e) == "missing_signature"


def test_no_secret_configured():
    for secrets in ([], [""], ""):
        with pytest.raises(OriginAuthError) as e:
            verify_hmac(hmac_headers(), secrets)
        assert reason(e) == "missing_secret"


def test_single_string_secret_is_accepted():
    assert verify_hmac(hmac_headers(), SECRET).mode == "hmac"


# ----------------------------------------------------------- plaintext mode


def test_plaintext_valid_wrong_previous_missing():
    headers = {**info_headers(), "sigwei-secret": SECRET}
    assert verify_plaintext(headers, [SECRET]).paygate == "skyroute"
    assert verify_plaintext({"Sigwei-Secret": PREVIOUS}, [SECRET, PREVIOUS]).mode == "plaintext"
    with pytest.raises(OriginAuthError) as e:
        verify_plaintext({"Sigwei-Secret": "nope"}, [SECRET])
    assert reason(e) == "bad_signature"
    with pytest.raises(OriginAuthError) as e:
        verify_plaintext(info_headers(), [SECRET])
    assert reason(e) == "missing_signature"


# ----------------------------------------------------------- request mode

BODY = b'{"seats":2}'
TARGET = "/flights?from=ZRH&to=LHR"


def test_request_valid():
    paid = verify_request("POST", TARGET, request_headers(), BODY, [SECRET], now=NOW)
    assert paid.mode == "request" and paid.request_id == "req-1"
    assert (paid.payer, paid.paygate, paid.units, paid.remaining) == ("0xPayer", "skyroute", 10, 90)


def test_request_signing_functions_match_spec():
    expected = spec_request(SECRET, "post", "/a", "b=1", NOW, "r", b"xyz")
    assert origin.request_signature(SECRET, "post", "/a?b=1", NOW, "r", b"xyz") == expected
    assert origin.request_signature(SECRET, "POST", "/a?b=1", str(NOW), "r", b"xyz") == expected
    digest = hashlib.sha256(b"xyz").hexdigest()
    assert origin.request_signature_from_digest(SECRET, "POST", "/a?b=1", NOW, "r", digest) == expected
    canonical = f"GET\n/a\n{NOW}\nr\n{hashlib.sha256(b'').hexdigest()}".encode()
    assert origin.request_canonical("get", "/a", NOW, "r", b"") == canonical
    assert origin.request_canonical_from_digest("GET", "/a", NOW, "r",
                                                hashlib.sha256(b"").hexdigest()) == canonical


def test_request_without_query_signs_path_alone():
    headers = request_headers(method="GET", path="/hotels", query="", body=b"")
    assert verify_request("GET", "/hotels", headers, b"", [SECRET], now=NOW).mode == "request"
    # An empty query ("/hotels?") is no query.
    assert verify_request("GET", "/hotels?", headers, b"", [SECRET], now=NOW).mode == "request"


def test_request_wrong_secret_and_previous_secret():
    with pytest.raises(OriginAuthError) as e:
        verify_request("POST", TARGET, request_headers(secret="other"), BODY, [SECRET], now=NOW)
    assert reason(e) == "bad_signature"
    headers = request_headers(secret=PREVIOUS)
    assert verify_request("POST", TARGET, headers, BODY, [SECRET, PREVIOUS], now=NOW).mode == "request"


@pytest.mark.parametrize(
    "method, target, body, change",
    [
        ("POST", TARGET, b'{"seats":3}', None),                         # body
        ("POST", "/hotels?from=ZRH&to=LHR", BODY, None),                # path
        ("POST", "/flights?from=ZRH&to=JFK", BODY, None),               # query
        ("POST", "/flights", BODY, None),                               # query dropped
        ("PUT", TARGET, BODY, None),                                    # method
        ("POST", TARGET, BODY, ("X-Tollgate-Timestamp", str(NOW + 1))),  # timestamp
        ("POST", TARGET, BODY, ("X-Tollgate-Request-Id", "req-2")),     # request id
    ],
)
def test_request_tampering_fails(method, target, body, change):
    headers = request_headers()
    if change:
        headers[change[0]] = change[1]
    with pytest.raises(OriginAuthError) as e:
        verify_request(method, target, headers, body, [SECRET], now=NOW)
    assert reason(e) == "bad_signature"


@pytest.mark.parametrize("skew", [301, -301, 3600, -86400])
def test_request_timestamp_out_of_range(skew):
    ts = NOW + skew
    headers = request_headers(ts=ts)
    with pytest.raises(OriginAuthError) as e:
        verify_request("POST", TARGET, headers, BODY, [SECRET], now=NOW)
    assert reason(e) == "timestamp_out_of_range"


@pytest.mark.parametrize("skew", [300, -300, 0])
def test_request_timestamp_at_tolerance_edge_passes(skew):
    headers = request_headers(ts=NOW + skew)
    assert verify_request("POST", TARGET, headers, BODY, [SECRET], now=NOW).mode == "request"


def test_request_custom_tolerance():
    headers = request_headers(ts=NOW - 400)
    assert verify_request("POST", TARGET, headers, BODY, [SECRET], now=NOW, tolerance=600)
    with pytest.raises(OriginAuthError):
        verify_request("POST", TARGET, request_headers(ts=NOW - 61), BODY, [SECRET], now=NOW,
                       tolerance=60)


def test_request_uses_wall_clock_by_default():
    ts = int(time.time())
    headers = request_headers(ts=ts)
    assert verify_request("POST", TARGET, headers, BODY, [SECRET]).mode == "request"
    with pytest.raises(OriginAuthError) as e:
        verify_request("POST", TARGET, request_headers(ts=ts - 10_000), BODY, [SECRET])
    assert reason(e) == "timestamp_out_of_range"


@pytest.mark.parametrize(
    "header, value, expected",
    [
        ("X-Tollgate-Signature", None, "missing_signature"),
        ("X-Tollgate-Timestamp", None, "missing_timestamp"),
        ("X-Tollgate-Timestamp", "yesterday", "bad_timestamp"),
        ("X-Tollgate-Timestamp", "-5", "bad_timestamp"),
        ("X-Tollgate-Request-Id", None, "missing_request_id"),
        ("X-Tollgate-Signature", "v2=abcd", "bad_signature"),
        ("X-Tollgate-Signature", "not-a-signature", "bad_signature"),
    ],
)
def test_request_missing_or_malformed_headers(header, value, expected):
    headers = request_headers()
    if value is None:
        del headers[header]
    else:
        headers[header] = value
    with pytest.raises(OriginAuthError) as e:
        verify_request("POST", TARGET, headers, BODY, [SECRET], now=NOW)
    assert reason(e) == expected
    assert e.value.message


def test_verify_dispatches_by_mode():
    assert verify("hmac", "GET", "/", hmac_headers(), b"", [SECRET]).mode == "hmac"
    assert verify("plaintext", "GET", "/", {"Sigwei-Secret": SECRET}, b"", [SECRET]).mode == "plaintext"
    assert verify("request", "POST", TARGET, request_headers(), BODY, [SECRET], now=NOW).mode == "request"
    with pytest.raises(ValueError):
        verify("bogus", "GET", "/", {}, b"", [SECRET])


# ----------------------------------------------------------- decode_payment_header


def test_decode_payment_header_round_trip_and_padding():
    data = {"a": 1, "nested": {"b": [1, 2]}, "s": "é"}
    encoded = base64.b64encode(json.dumps(data).encode()).decode()
    assert decode_payment_header(encoded) == data
    assert decode_payment_header(encoded.rstrip("=")) == data
    # Lengths that need one and two padding characters.
    for obj in ({"k": "v"}, {"k": "vv"}, {"k": "vvv"}):
        enc = b64json(obj).rstrip("=")
        assert decode_payment_header(enc) == obj


@pytest.mark.parametrize(
    "junk",
    ["", "   ", "!!!!", "a", base64.b64encode(b"not json").decode(),
     base64.b64encode(b"[1, 2]").decode(), base64.b64encode(b"\xff\xfe").decode()],
)
def test_decode_payment_header_junk(junk):
    with pytest.raises(ValueError):
        decode_payment_header(junk)


# ----------------------------------------------------------- aiohttp middleware


async def _echo(request: web.Request) -> web.Response:
    paid = request["tollgate"]
    body = await request.read()
    return web.json_response({"payer": paid.payer, "units": paid.units, "mode": paid.mode,
                              "body": body.decode()})


def _app(mode: str, secrets) -> web.Application:
    app = web.Application(middlewares=[aiohttp_middleware(secrets, mode=mode)])
    app.router.add_route("*", "/flights", _echo)
    return app


async def test_aiohttp_middleware_hmac():
    async with TestClient(TestServer(_app("hmac", [SECRET]), host="127.0.0.1")) as client:
        resp = await client.get("/flights")
        assert resp.status == 403
        assert (await resp.json())["error"] == "missing_signature"

        resp = await client.get("/flights", headers=hmac_headers(secret="other"))
        assert resp.status == 403
        data = await resp.json()
        assert data["error"] == "bad_signature" and data["message"]

        resp = await client.get("/flights", headers=hmac_headers())
        assert resp.status == 200
        assert await resp.json() == {"payer": "0xPayer", "units": 10, "mode": "hmac", "body": ""}


async def test_aiohttp_middleware_request_mode_reads_body_and_rotation_callable():
    current = {"secrets": [SECRET]}
    app = _app("request", lambda: current["secrets"])
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        ts = int(time.time())
        headers = request_headers(ts=ts)
        resp = await client.post(TARGET, data=BODY, headers=headers)
        assert resp.status == 200
        assert (await resp.json())["body"] == BODY.decode()

        resp = await client.post(TARGET, data=b'{"seats":9}', headers=headers)
        assert resp.status == 403
        assert (await resp.json())["error"] == "bad_signature"

        resp = await client.post(TARGET, data=BODY, headers=request_headers(ts=ts - 1000))
        assert (await resp.json())["error"] == "timestamp_out_of_range"

        # Rotation: the callable is read per request.
        old = request_headers(secret=PREVIOUS, ts=ts)
        assert (await client.post(TARGET, data=BODY, headers=old)).status == 403
        current["secrets"] = [SECRET, PREVIOUS]
        assert (await client.post(TARGET, data=BODY, headers=old)).status == 200


def test_middlewares_reject_unknown_mode():
    with pytest.raises(ValueError):
        aiohttp_middleware([SECRET], mode="bogus")
    with pytest.raises(ValueError):
        ASGIMiddleware(None, [SECRET], mode="bogus")


# ----------------------------------------------------------- ASGI middleware


class RecordingApp:
    """A tiny ASGI app: reads the whole body and answers 200 with what it saw."""

    def __init__(self):
        self.calls = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            self.calls.append((scope["type"], None, None))
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        self.calls.append(("http", scope["state"]["tollgate"], body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def http_scope(method, path, query, headers, state=None, raw_path=True):
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    if raw_path:
        scope["raw_path"] = path.encode()
    if state is not None:
        scope["state"] = state
    return scope


async def drive(app, scope, chunks=(b"",)):
    """Run ``app`` with ``chunks`` as the request body; return (status, body, sent)."""
    incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]
    incoming.append({"type": "http.disconnect"})
    sent = []

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, sent


async def test_asgi_hmac_passes_and_fills_state():
    inner = RecordingApp()
    app = ASGIMiddleware(inner, [SECRET])
    status, body, _ = await drive(app, http_scope("GET", "/flights", "", hmac_headers()))
    assert status == 200
    (kind, paid, _), = inner.calls
    assert paid.payer == "0xPayer" and paid.payment == PAYMENT and paid.mode == "hmac"


async def test_asgi_rejects_unsigned_with_403_json():
    inner = RecordingApp()
    app = ASGIMiddleware(inner, [SECRET])
    status, body, sent = await drive(app, http_scope("GET", "/flights", "", info_headers()))
    assert status == 403
    assert json.loads(body) == {"error": "missing_signature", "message": json.loads(body)["message"]}
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert inner.calls == []


async def test_asgi_request_mode_replays_body():
    inner = RecordingApp()
    app = ASGIMiddleware(inner, [SECRET, PREVIOUS], mode="request")
    ts = int(time.time())
    headers = request_headers(secret=PREVIOUS, ts=ts)
    existing_state = {"db": "kept"}
    scope = http_scope("POST", "/flights", "from=ZRH&to=LHR", headers, state=existing_state)
    status, body, _ = await drive(app, scope, chunks=(b'{"sea', b'ts":2}'))
    assert status == 200
    assert body == BODY
    (_, paid, seen_body), = inner.calls
    assert seen_body == BODY and paid.request_id == "req-1"
    assert scope["state"]["db"] == "kept" and scope["state"]["tollgate"] is paid


async def test_asgi_request_mode_without_raw_path_and_tampered_body():
    inner = RecordingApp()
    app = ASGIMiddleware(inner, [SECRET], mode="request")
    ts = int(time.time())
    headers = request_headers(ts=ts)
    scope = http_scope("POST", "/flights", "from=ZRH&to=LHR", headers, raw_path=False)
    status, _, _ = await drive(app, scope, chunks=(BODY,))
    assert status == 200
    scope = http_scope("POST", "/flights", "from=ZRH&to=LHR", headers)
    status, body, _ = await drive(app, scope, chunks=(b'{"seats":5}',))
    assert status == 403 and json.loads(body)["error"] == "bad_signature"
    assert len(inner.calls) == 1


async def test_asgi_passes_lifespan_and_websocket_through():
    inner = RecordingApp()
    app = ASGIMiddleware(inner, [SECRET], mode="request")

    async def receive():  # pragma: no cover - the inner app does not call it
        return {"type": "lifespan.startup"}

    async def send(message):  # pragma: no cover
        pass

    await app({"type": "lifespan"}, receive, send)
    await app({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    assert [c[0] for c in inner.calls] == ["lifespan", "websocket"]


async def test_asgi_client_disconnect_while_buffering_does_not_call_app():
    inner = RecordingApp()
    app = ASGIMiddleware(inner, [SECRET], mode="request")
    sent = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(http_scope("POST", "/flights", "", request_headers()), receive, send)
    assert inner.calls == [] and sent == []


def test_module_imports_only_standard_library():
    import ast
    import sys

    tree = ast.parse(Path(origin.__file__).read_text(encoding="utf-8"))
    top_level = set()
    for node in tree.body:  # module level only: aiohttp is imported inside the factory
        if isinstance(node, ast.Import):
            top_level.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
    assert top_level <= set(sys.stdlib_module_names), top_level - set(sys.stdlib_module_names)
