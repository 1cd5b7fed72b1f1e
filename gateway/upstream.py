"""The proxy's HTTP/1.1 client for origins: pooled keep-alive connections, llhttp parsing.

aiohttp's client was a third of the gateway's CPU per proxied call (request building,
tracing hooks, cookie and redirect machinery the proxy never uses). This client does what
the proxy needs and nothing else:

- one `transport.write` for the request head and a body already in memory; a streamed
  body goes out as it arrives (raw under the caller's Content-Length, else chunked);
- the response parsed by llhttp (`httptools`): interim 1xx answers skipped, the body handed
  over in the chunks it arrives in, reading paused while the proxy lags behind;
- connections kept alive per origin (scheme, host, port) and reused most-recent first;
  one idle longer than `idle_seconds`, or closed by the origin, is never reused;
- names resolved through the gateway's SSRF-guarded resolver (cached `dns_ttl` seconds),
  every address it returns tried in turn;
- timeouts without tasks: `connect_timeout` per connection attempt, `read_timeout` for
  the response head and then between body chunks.

A request on a reused connection that the origin closed before answering a single byte
(it timed the idle connection out as the request went out) is sent once more on a new
connection when that is safe: an idempotent method with a body in memory (RFC 9110
9.2.2). Any other failure is `UpstreamFailed` (before a response) or `UpstreamBroken`
(during its body); a streamed request body that passes its cap raises the cap's own error.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import AsyncIterator, Iterable

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods whose request carries a body by definition: without one, say Content-Length: 0.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Set by this client from the body it sends; the caller's values never cross.
_FRAMING = frozenset({"content-length", "transfer-encoding", "host", "expect"})
_HIGH_WATER = 256 * 1024  # buffered body bytes at which reading from the origin pauses
_LOW_WATER = 64 * 1024


class UpstreamFailed(ConnectionError):
    """No response from the origin: connection refused, reset, closed, unparsable."""


class _ClosedUnanswered(UpstreamFailed):
    """A reused connection ended before the origin sent a byte of its answer."""


class UpstreamBroken(ConnectionError):
    """The origin's response broke off (or became unparsable) before its end."""


class _Conn(asyncio.Protocol):
    """One connection to an origin; serves one exchange at a time."""

    def __init__(self, pool: "OriginPool", key: tuple) -> None:
        self.pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.exchanges = 0  # responses completed on this connection
        self._resp: UpstreamResponse | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._write_paused: asyncio.Future | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        # one parser for the connection's life: llhttp reads keep-alive answers in turn
        self._parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        resp, parser = self._resp, self._parser
        if resp is None or resp._complete:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        resp._got_bytes = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.close()
            resp._fail(f"unparsable response from the origin: {exc}")

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp = self._resp
        if resp is not None and not resp._complete:
            if resp._headers_done and resp._until_close:
                resp._finish()  # a body delimited by the end of the connection
            else:
                resp._fail("the origin closed the connection" + (f": {exc}" if exc else ""))
        waiter, self._write_paused = self._write_paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        if self._write_paused is None:
            self._write_paused = self.pool.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self._write_paused = self._write_paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks (while a response is being read)
    def _unasked(self) -> bool:
        """A message after the answer was complete (an origin answering twice, or
        pipelining gone wrong): nothing of it may reach anyone; the connection is dropped."""
        if self._resp is None or self._resp._complete:
            self.close()
            return True
        return False

    def on_status(self, status: bytes) -> None:
        if not self._unasked():
            self._resp._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._unasked():
            self._resp._raw_headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self._unasked():
            return
        resp, parser = self._resp, self._parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim: the real answer follows
            resp._reason, resp._raw_headers = b"", []
            return
        resp._on_head(status, parser.should_keep_alive())
        if resp._head_only:  # HEAD: llhttp would wait for the body Content-Length announces
            resp._keep_alive = False
            resp._finish()

    def on_body(self, body: bytes) -> None:
        resp = self._resp
        if resp._complete:
            return
        resp._chunks.append(body)
        resp._buffered += len(body)
        if resp._buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            resp._reading_paused = True
        resp._wake()

    def on_message_complete(self) -> None:
        resp = self._resp
        if resp is not None and resp._headers_done and not resp._complete:
            resp._finish()

    # -- the client's side
    def start(self, resp: "UpstreamResponse") -> None:
        self._resp = resp

    def done_with(self, reusable: bool) -> None:
        self._resp = None
        if reusable and not self.closed:
            self.exchanges += 1
            self.pool._put_back(self)
        else:
            self.close()

    async def drain(self) -> None:
        if self._write_paused is not None:
            await self._write_paused

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """The origin's status line and headers; the body is read with `chunks()`. Always
    `release()` it (in a `finally`): the connection goes back to the pool only when the
    body was read to its end and the origin keeps the connection alive."""

    def __init__(self, conn: _Conn, method: str, read_timeout: float) -> None:
        self._conn = conn
        self._loop = conn.pool.loop
        self._read_timeout = read_timeout
        self._head_only = method == "HEAD"
        self._reason = b""
        self._raw_headers: list[tuple[str, str]] = []
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._until_close = False
        self._got_bytes = False
        self._error: str | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._waiter: asyncio.Future | None = None
        self._sender: asyncio.Task | None = None
        self._released = False
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content_length: int | None = None

    # -- events from the connection
    def _on_head(self, status: int, keep_alive: bool) -> None:
        self.status = status
        self.reason = self._reason.decode("latin-1").strip()
        self.headers = CIMultiDictProxy(CIMultiDict(self._raw_headers))
        self._keep_alive = keep_alive
        raw_length = self.headers.get("Content-Length")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if raw_length is not None and raw_length.isdigit() and not chunked:
            self.content_length = int(raw_length)
        no_body = self._head_only or status in (204, 304)
        self._until_close = raw_length is None and not chunked and not no_body
        if self._until_close:
            self._keep_alive = False
        self._headers_done = True
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, message: str) -> None:
        if self._error is None and not self._complete:
            self._error = message
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, what: str) -> None:
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(self._read_timeout, _expire, waiter, what,
                                      self._read_timeout)
        try:
            await waiter
        finally:
            timer.cancel()

    # -- the caller's side
    async def _head(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise UpstreamFailed(self._error)
            await self._wait("the origin's response")

    def body_if_complete(self, limit: int) -> bytes | None:
        """The whole body when all of it has arrived already (typical for small answers)
        and is at most `limit` bytes; the chunks are then consumed. Else None, and
        nothing is consumed."""
        if not self._complete or self._error is not None or self._buffered > limit:
            return None
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; UpstreamBroken if it breaks off, TimeoutError if the
        origin is silent for longer than the read timeout."""
        chunks = self._chunks
        while True:
            while chunks:
                chunk = chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered < _LOW_WATER:
                    self._reading_paused = False
                    if self._conn.transport is not None:
                        self._conn.transport.resume_reading()
                yield chunk
            if self._complete:
                return
            if self._error is not None:
                raise UpstreamBroken(self._error)
            await self._wait("the next part of the origin's body")

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        sender = self._sender
        sent = sender is None or (sender.done() and not sender.cancelled()
                                  and sender.exception() is None)
        if sender is not None and not sender.done():
            sender.cancel()
        reusable = (self._complete and self._keep_alive and self._error is None and sent
                    and not self._chunks)
        self._conn.done_with(reusable)


def _expire(waiter: asyncio.Future, what: str, seconds: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"{what} did not arrive within {seconds:g} s"))


class OriginPool:
    """Keep-alive connections to origins, shared by every proxied request of a gateway."""

    def __init__(self, resolver, *, idle_seconds: float = 15.0, max_idle: int = 256,
                 dns_ttl: float = 60.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self._resolver = resolver
        self._idle_seconds = idle_seconds
        self._max_idle = max_idle
        self._dns_ttl = dns_ttl
        self._ssl = ssl_context
        self._idle: dict[tuple, list[_Conn]] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[dict]]] = {}
        self._closed = False

    async def request(self, method: str, url: URL, headers: Iterable[tuple[str, str]],
                      body: bytes | AsyncIterator[bytes] | None, *, connect_timeout: float,
                      read_timeout: float) -> UpstreamResponse:
        """Send one request and return once the origin's status line and headers are in.
        `url` is encoded as it goes on the wire; header values must be visible ASCII."""
        host, port, tls = url.raw_host or "", url.port or (443 if url.scheme == "https" else 80), \
            url.scheme == "https"
        key = (tls, host, port)
        head = _request_head(method, url, host, port, tls, headers, body)
        replayable = not isinstance(body, AsyncIterator) and method in IDEMPOTENT
        conn = self._pooled(key)
        if conn is not None:
            try:
                return await self._exchange(conn, method, head, body, read_timeout)
            except _ClosedUnanswered as exc:
                if not replayable:
                    raise UpstreamFailed(str(exc)) from None
        conn = await self._connect(key, host, port, tls, connect_timeout)
        return await self._exchange(conn, method, head, body, read_timeout)

    async def _exchange(self, conn: _Conn, method: str, head: bytes, body, read_timeout: float):
        resp = UpstreamResponse(conn, method, read_timeout)
        conn.start(resp)
        transport = conn.transport
        try:
            if body is None or isinstance(body, (bytes, bytearray)):
                transport.write(head + body if body else head)
            else:
                transport.write(head)
                resp._sender = asyncio.ensure_future(_send_stream(conn, resp, body, head))
            await resp._head()
        except BaseException as exc:
            resp._keep_alive = False
            if resp._sender is not None and resp._sender.done() and not resp._sender.cancelled():
                exc = resp._sender.exception()
                resp.release()
                if exc is not None and not isinstance(exc, ConnectionError):
                    raise exc from None  # the caller's body passed its cap, or failed
                raise
            resp.release()
            if isinstance(exc, UpstreamFailed) and conn.exchanges and not resp._got_bytes:
                raise _ClosedUnanswered(str(exc)) from None
            raise
        return resp

    def _pooled(self, key: tuple) -> _Conn | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._idle_seconds:
                return conn
            conn.close()
        return None

    def _put_back(self, conn: _Conn) -> None:
        if self._closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def _addresses(self, host: str, port: int) -> list[dict]:
        cached = self._dns.get((host, port))
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._dns_ttl:
            return cached[1]
        infos = await self._resolver.resolve(host, port)
        self._dns[(host, port)] = (now, infos)
        return infos

    async def _connect(self, key: tuple, host: str, port: int, tls: bool,
                       timeout: float) -> _Conn:
        ssl_ctx = None
        if tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ssl_ctx = self._ssl
        last: Exception | None = None
        for info in await self._addresses(host, port):
            try:
                async with asyncio.timeout(timeout):
                    _, conn = await self.loop.create_connection(
                        lambda: _Conn(self, key), info["host"], info["port"], family=info["family"],
                        ssl=ssl_ctx, server_hostname=host if tls else None)
                return conn
            except TimeoutError:
                last = TimeoutError(f"connecting to {host}:{port} took over {timeout:g} s")
            except OSError as exc:
                last = exc
        if isinstance(last, TimeoutError):
            raise last
        raise UpstreamFailed(f"cannot connect to {host}:{port}: {last}")

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


async def _send_stream(conn: _Conn, resp: UpstreamResponse, body: AsyncIterator[bytes],
                       head: bytes) -> None:
    """Send a streamed body (raw when the head announced a length, else chunked); on
    failure the connection is closed so the response wait ends at once."""
    chunked = b"Transfer-Encoding: chunked\r\n" in head
    transport = conn.transport
    try:
        async for chunk in body:
            if conn.closed:
                return
            if chunk:
                transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain()
        if chunked and not conn.closed:
            transport.write(b"0\r\n\r\n")
    except BaseException:
        conn.close()
        resp._fail("the request body could not be sent")
        raise


def _request_head(method: str, url: URL, host: str, port: int, tls: bool,
                  headers: Iterable[tuple[str, str]], body) -> bytes:
    target = url.raw_path_qs or "/"
    default_port = 443 if tls else 80
    host_value = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_value = f"{host_value}:{port}"
    parts = [f"{method} {target} HTTP/1.1\r\nHost: {host_value}\r\n"]
    length: str | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in _FRAMING:
            if lname == "content-length":
                length = value
            continue
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} cannot be sent")
        parts.append(f"{name}: {value}\r\n")
    if body is None:
        if method in _BODY_METHODS:
            parts.append("Content-Length: 0\r\n")
    elif isinstance(body, (bytes, bytearray)):
        parts.append(f"Content-Length: {len(body)}\r\n")
    elif length is not None and length.isdigit():
        parts.append(f"Content-Length: {length}\r\n")
    else:
        parts.append("Transfer-Encoding: chunked\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


__all__ = ["OriginPool", "UpstreamBroken", "UpstreamFailed", "UpstreamResponse"]
