"""Talking to the origin: which headers cross, and streaming bodies both ways with caps.

Nothing here buffers a whole response: bodies move chunk by chunk (SSE events reach the
client as the origin writes them). Caps are enforced while streaming.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, AsyncIterator, Iterable, Mapping

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from multidict import CIMultiDict

from gateway.errors import BadRequest, PayloadTooLarge
from gateway.ssrf import is_private_host

if TYPE_CHECKING:
    from gateway.upstream import UpstreamResponse

log = logging.getLogger("tollgate.forward")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})

# Set by the gateway itself, or the caller's payment credentials: a caller must not be
# able to forge them towards the origin, and the origin must not see them raw.
_CALLER_MUST_NOT_SET = frozenset({
    "host", "payment-signature", "x-payment", "x-payment-response", "payment-response",
    "x-hedera-session-id", "sigwei-auth-signature", "sigwei-secret",
    "x-forwarded-proto", "x-forwarded-host", "forwarded",
})
_GATEWAY_PREFIXES = ("x-tollgate-", "sigwei-")
_REQUEST_DROP = HOP_BY_HOP | _CALLER_MUST_NOT_SET

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\t\x20-\x7e]*")


def check_headers(headers: Iterable[tuple[str, str]]) -> None:
    """Refuse header names that are not tokens and values outside visible ASCII, tab and
    space (control characters, and non-ASCII bytes the gateway will not pass on)."""
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise BadRequest(f"header name {name!r} has invalid characters", code="invalid_header")
        if not _VALUE.fullmatch(value):
            raise BadRequest(f"header {name} has invalid characters", code="invalid_header")


def request_headers_for_origin(
    incoming: Iterable[tuple[str, str]],
    *,
    client_ip: str,
    proto: str,
    host: str,
    strip: Iterable[str] = (),
) -> CIMultiDict[str]:
    """The caller's headers minus hop-by-hop, gateway-owned and credential headers, plus
    X-Forwarded-For (appended), X-Forwarded-Proto and X-Forwarded-Host."""
    drop = _REQUEST_DROP
    extra: set[str] = {s.lower() for s in strip} if strip else set()
    kept = []
    forwarded_for = []
    for name, value in incoming:
        lname = name.lower()
        if lname == "connection":
            extra.update(t.strip().lower() for t in value.split(",") if t.strip())
        if lname in drop or lname.startswith(_GATEWAY_PREFIXES):
            continue
        if lname == "x-forwarded-for":
            forwarded_for.append(value)
            continue
        kept.append((lname, name, value))
    if extra:  # named by Connection or by the rail: hop-by-hop / not for the origin
        kept = [h for h in kept if h[0] not in extra]
        if "x-forwarded-for" in extra:
            forwarded_for = []
    out: CIMultiDict[str] = CIMultiDict()
    for _, name, value in kept:
        out.add(name, value)
    forwarded_for.append(client_ip)
    out["X-Forwarded-For"] = ", ".join(forwarded_for)
    out["X-Forwarded-Proto"] = proto
    out["X-Forwarded-Host"] = host
    return out


def response_headers_for_client(upstream: Mapping[str, str] | Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    items = upstream.items() if isinstance(upstream, Mapping) else upstream
    kept = []
    named: set[str] = set()  # header names the Connection header lists
    for name, value in items:
        lname = name.lower()
        if lname == "connection":
            named.update(t.strip().lower() for t in value.split(",") if t.strip())
        if lname not in HOP_BY_HOP:
            kept.append((lname, name, value))
    out: CIMultiDict[str] = CIMultiDict()
    for lname, name, value in kept:
        if lname not in named:
            out.add(name, value)
    return out


def declared_length(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("Content-Length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest("Content-Length is not a number", code="invalid_header")
    return int(raw)


async def capped_stream(chunks: AsyncIterator[bytes], cap: int) -> AsyncIterator[bytes]:
    """Pass a request body through, refusing it once it passes `cap` bytes."""
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > cap:
            raise PayloadTooLarge(f"request body is larger than {cap} bytes")
        yield chunk


async def read_capped(chunks: AsyncIterator[bytes], cap: int) -> bytes:
    parts = []
    async for chunk in capped_stream(chunks, cap):
        parts.append(chunk)
    return b"".join(parts)


class ResponseTooLarge(Exception):
    pass


async def iter_response(upstream: "UpstreamResponse", cap: int) -> AsyncIterator[bytes]:
    """The origin's body as it arrives, stopping with ResponseTooLarge past `cap` bytes."""
    seen = 0
    async for chunk in upstream.chunks():
        seen += len(chunk)
        if seen > cap:
            raise ResponseTooLarge(f"origin response is larger than {cap} bytes")
        yield chunk


class TargetRefused(OSError):
    """An origin host resolved only to addresses the SSRF guard refuses."""


class GuardedResolver(AbstractResolver):
    """DNS for origin connections that refuses local and cloud-metadata names and drops
    every address `gateway.ssrf` refuses, except for hosts whose paygate allows
    private targets. A config can only check targets written as IP literals or known
    names; this checks what a name resolves to, at connect time, so a public name
    pointing at 10.0.0.1 (or ::ffff:127.0.0.1) is refused too."""

    def __init__(self, allowed_private_hosts: set[str],
                 inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()  # the DNS lookup itself (a seam for tests)
        self.allow_private(allowed_private_hosts)

    def allow_private(self, hosts: set[str]) -> None:
        """Replace the hosts that may resolve to private addresses (paygates changed)."""
        self._allowed = {h.lower() for h in hosts}

    async def resolve(self, host: str, port: int = 0, family: int = 0):
        allowed = host.lower() in self._allowed
        if not allowed and is_private_host(host):
            raise TargetRefused(f"{host} is a local or metadata name")
        infos = await self._inner.resolve(host, port, family)
        if allowed:
            return infos
        public = [i for i in infos if not is_private_host(i["host"])]
        if not public:
            raise TargetRefused(f"{host} resolves only to private addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()
