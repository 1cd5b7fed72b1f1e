"""The proxy's own HTTP/1.1 client for origins (gateway.upstream), through a real gateway,
against raw TCP origins that answer exactly the bytes each test needs: keep-alive reuse,
interim 1xx answers, bodies delimited by the end of the connection, chunked uploads, a
connection the origin drops as a request arrives, and answers that are not HTTP."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import pytest

HANG_GUARD = 10


def config(target: str, **overrides) -> dict:
    return {"paygates": [{"id": "api", "prefix": "/api", "target": target,
                          "default_units": 0, **overrides}]}


@dataclass
class RawOrigin:
    """A loopback TCP server: `script(request_head, body, n)` returns the bytes to answer
    the n-th request of the whole server (counting from 0) and whether to close after."""
    script: object
    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> "RawOrigin":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = await _read_body(reader, head)
                n = len(self.requests)
                self.requests.append((head, body))
                answer, close = self.script(head, body, n)
                if answer:
                    writer.write(answer)
                    await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        out = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return out
            out += chunk[:-2]
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def drops_the_second_request(head, body, n):
    """Answers the first request keeping the connection, then drops the connection when
    the next request arrives on it, without answering (as an origin timing out an idle
    connection at that moment does); answers every later one."""
    if n == 1:
        return b"", True
    return ok(b"answer %d" % n), False


@pytest.fixture
async def raw_origin():
    started: list[RawOrigin] = []

    async def make(script) -> RawOrigin:
        o = await RawOrigin(script).start()
        started.append(o)
        return o
    yield make
    for o in started:
        await o.stop()


async def test_sequential_calls_reuse_one_connection(raw_origin, gateway, http):
    o = await raw_origin(lambda head, body, n: (ok(b"call %d" % n), False))
    gw = await gateway(config(o.url))
    for i in range(5):
        async with http.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 200
            assert await resp.read() == b"call %d" % i
    assert o.connections == 1
    assert len(o.requests) == 5


async def test_connection_close_answer_is_not_reused(raw_origin, gateway, http):
    o = await raw_origin(lambda head, body, n: (ok(extra=b"Connection: close\r\n"), True))
    gw = await gateway(config(o.url))
    for _ in range(3):
        async with http.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 200 and await resp.read() == b"hello"
    assert o.connections == 3


async def test_interim_100_continue_is_skipped(raw_origin, gateway, http):
    o = await raw_origin(lambda head, body, n: (
        b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"the real answer"), False))
    gw = await gateway(config(o.url))
    async with http.post(f"{gw.url}/api/x", data=b"payload") as resp:
        assert resp.status == 200
        assert await resp.read() == b"the real answer"
    assert o.requests[0][1] == b"payload"


async def test_body_delimited_by_the_end_of_the_connection(raw_origin, gateway, http):
    o = await raw_origin(lambda head, body, n: (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"until close" * 1000, True))
    gw = await gateway(config(o.url))
    async with http.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 200
        assert await resp.read() == b"until close" * 1000
    async with http.get(f"{gw.url}/api/x") as resp:  # a new connection for the next one
        assert resp.status == 200
    assert o.connections == 2


async def test_chunked_answer_and_chunked_upload(raw_origin, gateway, http):
    o = await raw_origin(lambda head, body, n: (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", False))
    # signing the request reads the body whole first: the Sigwei-only setting streams it
    gw = await gateway(config(o.url, origin_auth={"mode": "hmac", "sign_request": False}))

    async def parts():
        for piece in (b"one,", b"two,", b"three"):
            yield piece
            await asyncio.sleep(0)
    async with http.post(f"{gw.url}/api/upload", data=parts()) as resp:
        assert resp.status == 201
        assert await resp.read() == b"hello world"
    head, body = o.requests[0]
    assert body == b"one,two,three"
    assert b"transfer-encoding: chunked" in head.lower()


async def test_idempotent_call_is_resent_when_a_kept_connection_was_dropped(
        raw_origin, gateway, http):
    o = await raw_origin(drops_the_second_request)
    gw = await gateway(config(o.url))
    async with http.get(f"{gw.url}/api/x") as resp:
        assert await resp.read() == b"answer 0"
    async with asyncio.timeout(HANG_GUARD):
        async with http.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 200
            assert await resp.read() == b"answer 2"
    assert o.connections == 2


async def test_post_is_never_sent_twice_when_a_kept_connection_was_dropped(
        raw_origin, gateway, http):
    o = await raw_origin(drops_the_second_request)
    gw = await gateway(config(o.url))
    async with http.get(f"{gw.url}/api/x") as resp:
        assert await resp.read() == b"answer 0"
    async with asyncio.timeout(HANG_GUARD):
        async with http.post(f"{gw.url}/api/order", data=b"buy one") as resp:
            assert resp.status == 502
            assert (await resp.json())["error"] == "upstream_error"
    posts = [r for r in o.requests if r[0].startswith(b"POST")]
    assert len(posts) == 1  # the origin may have acted on it: not sent again


@pytest.mark.parametrize("answer", [
    b"this is not http\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nbody",
    b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n",
])
async def test_an_answer_that_is_not_http_is_502(raw_origin, gateway, http, answer):
    o = await raw_origin(lambda head, body, n: (answer, True))
    gw = await gateway(config(o.url))
    async with asyncio.timeout(HANG_GUARD):
        async with http.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 502
            assert (await resp.json())["error"] == "upstream_error"


async def test_origin_closing_before_the_announced_length_breaks_the_answer(
        raw_origin, gateway, http):
    o = await raw_origin(lambda head, body, n: (
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", True))
    gw = await gateway(config(o.url))
    async with asyncio.timeout(HANG_GUARD):
        async with http.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 200
            with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
                await resp.read()


async def test_request_head_carries_no_client_framing_or_expect(raw_origin, gateway, raw_http):
    o = await raw_origin(lambda head, body, n: (ok(), False))
    gw = await gateway(config(o.url))
    resp = await raw_http(gw.port, b"POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
                                   b"Connection: close\r\nX-Custom: kept\r\n\r\nabcd")
    assert resp.status == 200
    head, body = o.requests[0]
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "POST /x HTTP/1.1"
    names = [line.split(":")[0].lower() for line in lines[1:] if line]
    assert names.count("content-length") == 1 and names.count("host") == 1
    assert "x-custom" in names and "expect" not in names
    assert body == b"abcd"


async def test_a_whole_chunked_answer_over_the_cap_is_never_served_as_complete(
        raw_origin, gateway, http):
    body = b"x" * 500  # arrives whole in one read, with no Content-Length to refuse early
    o = await raw_origin(lambda head, b, n: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body), False))
    gw = await gateway(config(o.url, max_response_bytes=100))
    async with asyncio.timeout(HANG_GUARD):
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            async with http.get(f"{gw.url}/api/x") as resp:
                await resp.read()


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 (IP SAN) and its key, written as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tollgate test origin")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "origin.pem", tmp_path / "origin.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


async def _tls_origin(cert_file, key_file):
    import ssl

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def handler(request):
        return web.json_response({"path": request.path, "tls": request.secure})
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server(ssl=ctx)
    return server


async def test_an_https_origin_is_verified_and_kept_alive(gateway, http, tmp_path, monkeypatch):
    cert_file, key_file = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # the gateway trusts this origin's CA
    server = await _tls_origin(cert_file, key_file)
    try:
        gw = await gateway(config(f"https://127.0.0.1:{server.port}"))
        for _ in range(3):
            async with http.get(f"{gw.url}/api/secure") as resp:
                assert resp.status == 200
                assert await resp.json() == {"path": "/secure", "tls": True}
    finally:
        await server.close()


async def test_an_https_origin_with_an_untrusted_certificate_is_502(gateway, http, tmp_path):
    cert_file, key_file = _self_signed(tmp_path)  # SSL_CERT_FILE not set: not trusted
    server = await _tls_origin(cert_file, key_file)
    try:
        gw = await gateway(config(f"https://127.0.0.1:{server.port}"))
        async with http.get(f"{gw.url}/api/secure") as resp:
            assert resp.status == 502
            assert (await resp.json())["error"] == "upstream_error"
    finally:
        await server.close()


async def test_bytes_after_a_complete_answer_never_reach_a_later_call(raw_origin, gateway, http):
    """An origin that sends a second, unasked-for answer after the first: the connection
    is dropped, and the next call gets its own answer on a new connection."""
    o = await raw_origin(lambda head, body, n: (
        ok(b"answer %d" % n) + (ok(b"smuggled") if n == 0 else b""), False))
    gw = await gateway(config(o.url))
    async with http.get(f"{gw.url}/api/x") as resp:
        assert await resp.read() == b"answer 0"
    await asyncio.sleep(0.05)
    async with http.get(f"{gw.url}/api/x") as resp:
        assert await resp.read() == b"answer 1"
    assert o.connections == 2
