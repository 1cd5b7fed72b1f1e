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
    """The first release's path line: the path alone when the query is empty."""
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




# Built from the SPEC recipes again: the request canonical string (path line
# `path + "?" + query`, the "?" always there) and the context binding
# X-Tollgate-Context = v1=<hex HMAC(secret, "tollgate-context-v1\n" + canonical + "\n" +
# one line per context header in a fixed order: "name:value", or "name" when absent or
# empty)>.

CONTEXT_NAMES = ("x-tollgate-payer", "x-tollgate-paygate", "x-tollgate-units",
                 "x-tollgate-remaining", "x-payment", "x-payment-response")


def spec_canonical(method, path, query, ts, request_id, body: bytes) -> str:
    return (f"{method.upper()}\n{path}?{query}\n{ts}\n{request_id}\n"
            f"{hashlib.sha256(body).hexdigest()}")


def spec_context(secret, canonical: str, context: dict[str, str]) -> str:
    lower = {k.lower(): v for k, v in context.items()}
    lines = [f"{n}:{lower[n]}" if lower.get(n) else n for n in CONTEXT_NAMES]
    message = "tollgate-context-v1\n" + canonical + "\n" + "\n".join(lines)
    return "v1=" + hmac.new(secret.encode(), message.encode(), "sha256").hexdigest()


def gateway_headers(mode="request", secret=SECRET, method="POST", path="/v1/bookings", query="",
                    ts=NOW, request_id="req-9", body=b"", context=None,
                    prefix="X-Tollgate") -> dict[str, str]:
    """What the gateway now sends in `mode`: context, request-mode headers, context binding."""
    ctx = dict(info_headers() if context is None else context)
    canonical = spec_canonical(method, path, query, ts, request_id, body)
    h = {**ctx, f"{prefix}-Timestamp": str(ts), f"{prefix}-Request-Id": request_id,
         f"{prefix}-Signature": "v1=" + hmac.new(secret.encode(), canonical.encode(),
                                                 "sha256").hexdigest(),
         "X-Tollgate-Context": spec_context(secret, canonical, ctx)}
    if mode == "hmac":
        h["Sigwei-Auth-Signature"] = spec_hmac(secret, ctx.get("X-Payment", ""),
                                               ctx.get("X-Payment-Response", ""))
    elif mode == "plaintext":
        h["Sigwei-Secret"] = secret
    return h


def hmac_headers(secret=SECRET, ts=NOW, mode="hmac") -> dict[str, str]:
    """A GET /flights in hmac mode, with payment headers, as the gateway sends it now."""
    ctx = {**info_headers(), "X-Payment": b64json(PAYMENT),
           "X-Payment-Response": b64json(PAYMENT_RESPONSE)}
    return gateway_headers(mode, secret, method="GET", path="/flights", ts=ts, context=ctx)


HMAC_REQ = ("GET", "/flights")


def request_headers(secret=SECRET, method="POST", path="/flights", query="from=ZRH&to=LHR",
                    ts=NOW, request_id="req-1", body=b'{"seats":2}') -> dict[str, str]:
    return gateway_headers("request", secret, method, path, query, ts, request_id, body)


def reason(excinfo) -> str:
    return excinfo.value.reason


# ----------------------------------------------------------- hmac mode


def test_hmac_valid_and_payment_decoded():
    paid = verify_hmac(hmac_headers(), [SECRET], *HMAC_REQ, now=NOW)
    assert paid == GatewayPayment(payer="0xPayer", paygate="skyroute", units=10, remaining=90,
                                  payment=PAYMENT, payment_response=PAYMENT_RESPONSE, mode="hmac",
                                  request_id="req-9")


def test_hmac_signing_function_matches_spec():
    assert origin.hmac_signature(SECRET, "a", "b") == spec_hmac(SECRET, "a", "b")
    assert origin.hmac_signature(SECRET, "", "") == spec_hmac(SECRET, "", "")


def test_hmac_missing_payment_headers_count_as_empty():
    headers = {"Sigwei-Auth-Signature": spec_hmac(SECRET, "", "")}
    paid = verify_hmac(headers, [SECRET], require_request_headers=False)
    assert paid.payment is None and paid.payment_response is None and paid.payer is None


def test_hmac_header_lookup_is_case_insensitive():
    headers = {k.lower(): v for k, v in hmac_headers().items()}
    assert verify_hmac(headers, [SECRET], *HMAC_REQ, now=NOW).payer == "0xPayer"
    headers = {k.upper(): v for k, v in hmac_headers().items()}
    assert verify_hmac(headers, [SECRET], *HMAC_REQ, now=NOW).units == 10


def test_hmac_multidict_headers():
    from multidict import CIMultiDict

    assert verify_hmac(CIMultiDict(hmac_headers()), [SECRET], *HMAC_REQ, now=NOW).paygate == "skyroute"


def test_hmac_wrong_secret_fails():
    with pytest.raises(OriginAuthError) as e:
        verify_hmac(hmac_headers(secret="other"), [SECRET], *HMAC_REQ, now=NOW)
    assert reason(e) == "bad_signature"


def test_hmac_previous_secret_accepted_only_when_passed():
    headers = hmac_headers(secret=PREVIOUS)
    assert verify_hmac(headers, [SECRET, PREVIOUS], *HMAC_REQ, now=NOW).mode == "hmac"
    with pytest.raises(OriginAuthError):
        verify_hmac(headers, [SECRET], *HMAC_REQ, now=NOW)


def test_hmac_tampered_payment_fails():
    headers = hmac_headers()
    headers["X-Payment-Response"] = b64json({**PAYMENT_RESPONSE, "payer": "0xEvil"})
    with pytest.raises(OriginAuthError) as e:
        verify_hmac(headers, [SECRET], *HMAC_REQ, now=NOW)
    assert reason(e) == "bad_signature"


def test_hmac_missing_signature():
    headers = hmac_headers()
    del headers["Sigwei-Auth-Signature"]
    with pytest.raises(OriginAuthError) as e:
        verify_hmac(headers, [SECRET], *HMAC_REQ, now=NOW)
    assert reason(e) == "missing_signature"


def test_no_secret_configured():
    for secrets in ([], [""], ""):
        with pytest.raises(OriginAuthError) as e:
            verify_hmac(hmac_headers(), secrets, *HMAC_REQ, now=NOW)
        assert reason(e) == "missing_secret"


def test_single_string_secret_is_accepted():
    assert verify_hmac(hmac_headers(), SECRET, *HMAC_REQ, now=NOW).mode == "hmac"


# ----------------------------------------------------------- plaintext mode


def test_plaintext_valid_wrong_previous_missing():
    headers = {k.lower(): v for k, v in hmac_headers(mode="plaintext").items()}
    assert verify_plaintext(headers, [SECRET], *HMAC_REQ, now=NOW).paygate == "skyroute"
    old = hmac_headers(secret=PREVIOUS, mode="plaintext")
    assert verify_plaintext(old, [SECRET, PREVIOUS], *HMAC_REQ, now=NOW).mode == "plaintext"
    assert verify_plaintext({"Sigwei-Secret": PREVIOUS}, [SECRET, PREVIOUS],
                            require_request_headers=False).mode == "plaintext"
    with pytest.raises(OriginAuthError) as e:
        verify_plaintext({**headers, "sigwei-secret": "nope"}, [SECRET], *HMAC_REQ, now=NOW)
    assert reason(e) == "bad_signature"
    with pytest.raises(OriginAuthError) as e:
        verify_plaintext(info_headers(), [SECRET], *HMAC_REQ, now=NOW)
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
    canonical = f"GET\n/a?\n{NOW}\nr\n{hashlib.sha256(b'').hexdigest()}".encode()
    assert origin.request_canonical("get", "/a", NOW, "r", b"") == canonical
    assert origin.request_canonical_from_digest("GET", "/a", NOW, "r",
                                                hashlib.sha256(b"").hexdigest()) == canonical


def test_request_without_query_keeps_the_question_mark():
    headers = request_headers(method="GET", path="/hotels", query="", body=b"")
    assert verify_request("GET", "/hotels", headers, b"", [SECRET], now=NOW).mode == "request"
    # "/hotels?" as received is the same target.
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
    assert verify("hmac", *HMAC_REQ, hmac_headers(), b"", [SECRET], now=NOW).mode == "hmac"
    assert verify("plaintext", *HMAC_REQ, hmac_headers(mode="plaintext"), b"", [SECRET],
                  now=NOW).mode == "plaintext"
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

        resp = await client.get("/flights", headers=hmac_headers(secret="other", ts=int(time.time())))
        assert resp.status == 403
        data = await resp.json()
        assert data["error"] == "bad_signature" and data["message"]

        resp = await client.get("/flights", headers=hmac_headers(ts=int(time.time())))
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
        old = request_headers(secret=PREVIOUS, ts=ts, request_id="req-2")  # req-1 was used
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
    app = ASGIMiddleware(inner, [SECRET], mode="hmac")
    status, body, _ = await drive(app, http_scope("GET", "/flights", "",
                                                  hmac_headers(ts=int(time.time()))))
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


FREE_CONTEXT = {"X-Tollgate-Payer": "", "X-Tollgate-Paygate": "skyroute", "X-Tollgate-Units": "0"}


@pytest.mark.parametrize("strict", [True, False])
def test_free_route_hmac_signature_cannot_buy_a_booking(strict):
    """The reported attack: the hmac signature of a free call is HMAC(secret, "|"), the
    same on every call; sent straight to the origin for POST /v1/bookings claiming 25
    units it must not pass as a paid booking."""
    bare = {"X-Tollgate-Payer": "0xPayer", "X-Tollgate-Paygate": "skyroute",
            "X-Tollgate-Units": "25", "Sigwei-Auth-Signature": spec_hmac(SECRET, "", "")}
    opts = {"now": NOW, "require_request_headers": strict}
    if strict:
        with pytest.raises(OriginAuthError) as e:
            verify("hmac", "POST", "/v1/bookings", bare, b"", [SECRET], **opts)
        assert reason(e) == "missing_signature"
    else:  # a Sigwei-only origin: the unsigned claims are not believed
        paid = verify("hmac", "POST", "/v1/bookings", bare, b"", [SECRET], **opts)
        assert (paid.payer, paid.units, paid.paygate) == (None, None, None)
    # the whole header set of a free call, replayed for a booking with units raised
    free = gateway_headers("hmac", method="GET", path="/v1/status", context=FREE_CONTEXT)
    free["X-Tollgate-Units"] = "25"
    for target in ("/v1/bookings", "/v1/status"):
        with pytest.raises(OriginAuthError) as e:
            verify("hmac", "POST" if target == "/v1/bookings" else "GET", target, free, b"",
                   [SECRET], **opts)
        assert reason(e) in ("bad_signature", "bad_context")


@pytest.mark.parametrize("mode", ["request", "hmac", "plaintext"])
@pytest.mark.parametrize("name, value", [
    ("X-Tollgate-Payer", "0xSomeoneElse"), ("X-Tollgate-Units", "1"),
    ("X-Tollgate-Paygate", "cheap"), ("X-Tollgate-Remaining", "1000000"),
])
def test_swapped_payment_context_fails(mode, name, value):
    headers = gateway_headers(mode)
    assert verify(mode, "POST", "/v1/bookings", headers, b"", [SECRET], now=NOW).units == 10
    headers[name] = value
    with pytest.raises(OriginAuthError) as e:
        verify(mode, "POST", "/v1/bookings", headers, b"", [SECRET], now=NOW)
    assert reason(e) == "bad_context"


def test_context_headers_added_or_removed_fail():
    ctx = {"X-Tollgate-Payer": "0xPayer", "X-Tollgate-Paygate": "skyroute", "X-Tollgate-Units": "10"}
    headers = gateway_headers(context=ctx)
    verify_request("POST", "/v1/bookings", headers, b"", [SECRET], now=NOW)
    for name, value in (("X-Tollgate-Remaining", "5"), ("X-Payment", b64json(PAYMENT))):
        with pytest.raises(OriginAuthError) as e:
            verify_request("POST", "/v1/bookings", {**headers, name: value}, b"", [SECRET], now=NOW)
        assert reason(e) == "bad_context"
    dropped = {k: v for k, v in headers.items() if k != "X-Tollgate-Units"}
    with pytest.raises(OriginAuthError) as e:
        verify_request("POST", "/v1/bookings", dropped, b"", [SECRET], now=NOW)
    assert reason(e) == "bad_context"
    unbound = {k: v for k, v in headers.items() if k != "X-Tollgate-Context"}
    with pytest.raises(OriginAuthError) as e:
        verify_request("POST", "/v1/bookings", unbound, b"", [SECRET], now=NOW)
    assert reason(e) == "missing_context"


def test_context_binds_the_payment_headers():
    ctx = {**info_headers(), "X-Payment": b64json(PAYMENT), "X-Payment-Response": b64json(PAYMENT_RESPONSE)}
    headers = gateway_headers("hmac", context=ctx)
    paid = verify("hmac", "POST", "/v1/bookings", headers, b"", [SECRET], now=NOW)
    assert paid.payment == PAYMENT and paid.payment_response == PAYMENT_RESPONSE
    # a payment header set captured from another call, with its own valid Sigwei signature
    other = b64json({**PAYMENT_RESPONSE, "transaction": "0xother"})
    swapped = {**headers, "X-Payment-Response": other,
               "Sigwei-Auth-Signature": spec_hmac(SECRET, ctx["X-Payment"], other)}
    with pytest.raises(OriginAuthError) as e:
        verify("hmac", "POST", "/v1/bookings", swapped, b"", [SECRET], now=NOW)
    assert reason(e) == "bad_context"


def test_replayed_request_id_is_refused_with_the_cache():
    headers = gateway_headers()
    cache = origin.ReplayCache()
    verify("request", "POST", "/v1/bookings", headers, b"", [SECRET], now=NOW, replay_cache=cache)
    with pytest.raises(OriginAuthError) as e:
        verify("request", "POST", "/v1/bookings", headers, b"", [SECRET], now=NOW + 299,
               replay_cache=cache)
    assert reason(e) == "replayed_request"
    # without a cache the verifier alone cannot tell (the timestamp window still applies)
    verify("request", "POST", "/v1/bookings", headers, b"", [SECRET], now=NOW)
    # a forged request with a seen id does not evict or refresh anything
    forged = {**headers, "X-Tollgate-Signature": "v1=" + "0" * 64}
    with pytest.raises(OriginAuthError) as e:
        verify("request", "POST", "/v1/bookings", forged, b"", [SECRET], now=NOW, replay_cache=cache)
    assert reason(e) == "bad_signature"


def test_replay_cache_is_bounded_and_forgets_expired_ids():
    cache = origin.ReplayCache(capacity=2)
    for rid in ("a", "b", "c"):
        verify("request", "POST", "/v1/bookings", gateway_headers(request_id=rid), b"", [SECRET],
               now=NOW, replay_cache=cache)
    assert len(cache) == 2  # "a", the oldest, was evicted
    with pytest.raises(OriginAuthError):
        verify("request", "POST", "/v1/bookings", gateway_headers(request_id="c"), b"", [SECRET],
               now=NOW, replay_cache=cache)
    late = gateway_headers(request_id="d", ts=NOW + 1000)
    verify("request", "POST", "/v1/bookings", late, b"", [SECRET], now=NOW + 1000,
           replay_cache=cache)
    assert len(cache) == 1  # b and c could no longer pass the timestamp check


async def test_middlewares_refuse_a_replayed_request_by_default():
    async with TestClient(TestServer(_app("request", [SECRET]), host="127.0.0.1")) as client:
        headers = gateway_headers(method="GET", path="/flights", ts=int(time.time()))
        assert (await client.get("/flights", headers=headers)).status == 200
        resp = await client.get("/flights", headers=headers)
        assert resp.status == 403 and (await resp.json())["error"] == "replayed_request"
    inner = RecordingApp()
    app = ASGIMiddleware(inner, [SECRET], mode="hmac")
    headers = gateway_headers("hmac", method="GET", path="/flights", ts=int(time.time()))
    assert (await drive(app, http_scope("GET", "/flights", "", headers)))[0] == 200
    status, body, _ = await drive(app, http_scope("GET", "/flights", "", headers))
    assert status == 403 and json.loads(body)["error"] == "replayed_request"
    assert len(inner.calls) == 1


def test_request_path_line_keeps_the_question_mark_and_old_form_is_accepted_for_now():
    canonical = spec_canonical("GET", "/hotels", "", NOW, "r", b"")
    assert canonical.startswith("GET\n/hotels?\n")
    assert origin.request_canonical("get", "/hotels", NOW, "r", b"") == canonical.encode()
    assert origin.request_canonical("get", "/hotels?", NOW, "r", b"") == canonical.encode()
    new = gateway_headers(method="GET", path="/hotels", context={})
    assert verify_request("GET", "/hotels", new, b"", [SECRET], now=NOW).request_id == "req-9"
    old = {"X-Tollgate-Timestamp": str(NOW), "X-Tollgate-Request-Id": "r",
           "X-Tollgate-Signature": spec_request(SECRET, "GET", "/hotels", "", NOW, "r", b"")}
    assert verify_request("GET", "/hotels", old, b"", [SECRET], now=NOW).request_id == "r"


def test_payfence_header_prefix():
    headers = gateway_headers(prefix="X-PayFence", query="a=1")
    paid = verify("request", "POST", "/v1/bookings?a=1", headers, b"", [SECRET], now=NOW,
                  header_prefix="X-PayFence")
    assert paid.units == 10
    with pytest.raises(OriginAuthError) as e:
        verify("request", "POST", "/v1/bookings?a=1", headers, b"", [SECRET], now=NOW)
    assert reason(e) == "missing_signature"


def test_gateway_signing_matches_the_recipes_and_the_v1_verifier():
    from gateway.origin_headers import origin_auth_headers
    from tests.gateway.origin_v1_recipe import V1AuthError, verify_request as v1_verify

    def sign(path_qs, **kw):
        return origin_auth_headers(
            mode="request", secret=SECRET, paygate_id="skyroute", units=25, payer="0xPayer",
            x_payment=b64json(PAYMENT), x_payment_response="", remaining=None, method="POST",
            path_qs=path_qs, body_sha256_hex=hashlib.sha256(BODY).hexdigest(), now=NOW, **kw)

    h = sign("/v1/bookings?x=1")
    canonical = spec_canonical("POST", "/v1/bookings", "x=1", NOW, h["X-Tollgate-Request-Id"], BODY)
    ctx = {k: h[k] for k in ("X-Tollgate-Payer", "X-Tollgate-Paygate", "X-Tollgate-Units", "X-Payment")}
    assert h["X-Tollgate-Context"] == spec_context(SECRET, canonical, ctx)
    assert v1_verify("POST", "/v1/bookings?x=1", h, BODY, [SECRET], now=NOW)
    assert verify("request", "POST", "/v1/bookings?x=1", h, BODY, [SECRET], now=NOW).units == 25
    # without a query the path line changed (the "?" is there now): v1 copies refuse it
    # unless the paygate keeps the old path line for them
    with pytest.raises(V1AuthError):
        v1_verify("POST", "/v1/bookings", sign("/v1/bookings"), BODY, [SECRET], now=NOW)
    legacy = sign("/v1/bookings", legacy_path_line=True)
    assert v1_verify("POST", "/v1/bookings", legacy, BODY, [SECRET], now=NOW)
    assert verify("request", "POST", "/v1/bookings", legacy, BODY, [SECRET], now=NOW).units == 25


def test_an_empty_context_header_counts_as_absent():
    """A free call carries `X-Tollgate-Payer: ` (empty); a proxy that drops empty
    headers on the way must not break the binding, and it changes no claim."""
    headers = gateway_headers(method="GET", path="/v1/status", context=FREE_CONTEXT)
    without = {k: v for k, v in headers.items() if k != "X-Tollgate-Payer"}
    for h in (headers, without):
        paid = verify_request("GET", "/v1/status", h, b"", [SECRET], now=NOW)
        assert paid.payer is None and paid.units == 0
