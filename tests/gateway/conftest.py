"""Shared fixtures for gateway tests: real origins and real gateways on loopback.

    origin(handler=None) -> Origin
        An aiohttp server on 127.0.0.1, port 0. Without a handler it echoes what it
        received as JSON. Every request it gets is recorded in `Origin.requests` (a
        `Seen`) before the handler runs, so "the origin was never called" is checkable.

    gateway(config: dict, *, clock=None) -> GatewayHandle
        A full gateway (gateway.app.create_app) built from a config dict parsed with
        gateway.config.parse_config, served on 127.0.0.1, port 0, with its own temporary
        SQLite database and master key file. The dict needs only what the test cares
        about; the factory fills in database paths, an unset master-key env var name and
        `server.allow_private_targets = true` (origins live on loopback).

    http -> aiohttp.ClientSession for calling gateways and origins.

    raw_http(port, request_bytes) -> RawResponse
        Sends bytes as-is over a socket and reads the whole answer (for requests no
        well-behaved client library would send).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.app import create_app
from gateway.config import Config, parse_config
from gateway.state import GATEWAY, Gateway
from store.clock import Clock

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """One request as the origin received it."""

    method: str
    raw_path: str  # the request target as it came over the wire (percent-encoded, with query)
    path: str
    query_string: str
    headers: CIMultiDict[str]
    body: bytes | None = None  # set by the echo handler once it has read the body
    body_complete: bool = False  # the echo handler read the whole body without error
    done: asyncio.Event = field(default_factory=asyncio.Event)


SEEN = web.RequestKey("seen", Seen)


@dataclass
class Origin:
    url: str  # http://127.0.0.1:<port>
    port: int
    requests: list[Seen]
    server: TestServer

    async def wait_done(self, timeout: float = 5.0) -> None:
        """Wait until the origin has finished every request it received so far."""
        async with asyncio.timeout(timeout):
            for seen in list(self.requests):
                await seen.done.wait()


@dataclass
class GatewayHandle:
    url: str  # http://127.0.0.1:<port>
    port: int
    config: Config
    app: web.Application
    server: TestServer
    db_path: Path
    master_key_file: Path

    @property
    def gw(self) -> Gateway:
        return self.app[GATEWAY]


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def echo(request: web.Request) -> web.Response:
    """Default origin handler: read the body, answer with what arrived."""
    seen = request[SEEN]
    body = await request.read()
    seen.body = body
    seen.body_complete = True
    return web.json_response({
        "method": request.method,
        "raw_path": request.raw_path,
        "path": request.path,
        "query_string": request.query_string,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    })


def _recording_middleware(origin_requests: list[Seen]):
    @web.middleware
    async def record(request: web.Request, handler):
        seen = Seen(request.method, request.raw_path, request.path, request.query_string,
                    CIMultiDict(request.headers))
        origin_requests.append(seen)
        request[SEEN] = seen
        try:
            return await handler(request)
        finally:
            seen.done.set()
    return record


@pytest.fixture
async def origin():
    servers: list[TestServer] = []

    async def make(handler: Handler | None = None) -> Origin:
        requests: list[Seen] = []
        app = web.Application(middlewares=[_recording_middleware(requests)],
                              client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handler or echo)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server(shutdown_timeout=1)
        servers.append(server)
        return Origin(f"http://127.0.0.1:{server.port}", server.port, requests, server)

    yield make
    for server in reversed(servers):
        await server.close()


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture
async def gateway(tmp_path):
    servers: list[TestServer] = []

    async def make(config: dict, *, clock: Clock | None = None, prepare=None) -> GatewayHandle:
        work = tmp_path / f"gw-{uuid.uuid4().hex[:8]}"
        db_dir = work / "db"
        db_path = db_dir / "tollgate.db"
        key_file = work / "master.key"
        defaults = {
            "server": {"allow_private_targets": True},
            "database": {
                "url": f"sqlite+aiosqlite:///{db_path}",
                # a variable nobody sets, so the key file is used
                "master_key_env": f"TOLLGATE_TEST_UNSET_{uuid.uuid4().hex.upper()}",
                "master_key_file": str(key_file),
            },
        }
        cfg = parse_config(_merge(defaults, config))
        app = create_app(cfg, clock=clock)
        if prepare is not None:  # e.g. put app state the demo adds, before start-up
            prepare(app)
        server = TestServer(app, host="127.0.0.1", port=0)
        servers.append(server)  # closed at teardown even when start-up fails
        await server.start_server(shutdown_timeout=1)
        return GatewayHandle(f"http://127.0.0.1:{server.port}", server.port, cfg, app, server,
                             db_path, key_file)

    yield make
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def _raw_http(port: int, request: bytes, timeout: float = 5.0) -> RawResponse:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            data = await reader.read()  # until the server closes (send Connection: close)
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return RawResponse(status, headers, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


@pytest.fixture
def raw_http():
    return _raw_http


@pytest.fixture
def settler_key(monkeypatch, evm_devnet):
    """The devnet's gas-paying key in the env var x402 test configs name (SETTLER_ENV)."""
    from tests.gateway.x402_support import SETTLER_ENV

    monkeypatch.setenv(SETTLER_ENV, evm_devnet.settler.private_key)
