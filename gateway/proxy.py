"""The paid reverse proxy: match a paygate, take payment through a rail, forward, stream.

    route match -> units == 0 ---------------------------------------------> forward
                -> no payment header --------------------------------------> 402 challenge
                -> rail.accept: Charge ------------------------------------> forward
                                StoredResponse (same payment again) -------> replay
                                PaymentRejected -----------------------------> 402 + reason
    forward -> origin status -> rail.complete (keep / reverse / settle) -> stream to client
            -> rail.record (what was served, for replays)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from functools import lru_cache

from aiohttp import web
from yarl import URL

from gateway import forward, request_context
from gateway.challenge import challenge, paywall_html, wants_html
from gateway.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    TollgateError,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.origin_headers import origin_auth_headers
from gateway.rails.base import (
    RETRY_HEADER,
    Charge,
    PaidRequest,
    PaymentRejected,
    Priced,
    StoredResponse,
)
from gateway.routing import Match, path_problem, strip_prefix
from gateway.state import GATEWAY, Gateway
from gateway.upstream import UpstreamBroken, UpstreamFailed, UpstreamResponse

log = logging.getLogger("tollgate.proxy")

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# The path rule is a pure function of the raw path, and most traffic repeats a few paths:
# remembered for short paths only, so the cache stays small whatever callers send.
_cached_path_problem = lru_cache(maxsize=4096)(path_problem)


def _path_problem(raw_path: str) -> str | None:
    return _cached_path_problem(raw_path) if len(raw_path) <= 256 else path_problem(raw_path)


class _Body:
    """The request body, streamed by default and buffered only when someone needs it
    whole (request-signing auth mode, a rail fingerprinting the request)."""

    def __init__(self, request: web.Request, cap: int) -> None:
        self._request = request
        self._cap = cap
        # no Content-Length and not chunked: the body is empty, nothing to read
        self._data: bytes | None = None if request.body_exists else b""

    async def read(self) -> bytes:
        if self._data is None:
            self._data = await forward.read_capped(self._request.content.iter_any(), self._cap)
        return self._data

    def sha256_hex(self) -> str | None:
        """The body's digest when it is already known (read, or empty), else None."""
        if self._data is None:
            return None
        return _EMPTY_SHA256 if not self._data else hashlib.sha256(self._data).hexdigest()

    def payload(self):
        if not self._request.body_exists:
            return None
        if self._data is not None:
            return self._data
        return forward.capped_stream(self._request.content.iter_any(), self._cap)


async def handle(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    path = request.path
    # The path rule: refuse, before pricing, any spelling an origin could route elsewhere.
    problem = _path_problem(request.rel_url.raw_path)
    if problem is not None:
        raise BadRequest(problem, code="invalid_path")
    forward.check_headers(request.headers.items())
    match = gw.router.match_cached(request.method, request.host, path)
    if match is None:
        raise NotFound(f"no paygate serves {path}")
    pg = match.paygate
    if pg.kind == "files":  # paying answers a download URL, nothing is forwarded
        from gateway import files_serve
        return await files_serve.handle_paid(request, match)
    cap = pg.max_request_bytes or gw.config.server.max_request_bytes
    length = forward.declared_length(request.headers)
    if length is not None and length > cap:
        raise PayloadTooLarge(f"request body is larger than {cap} bytes")
    body = _Body(request, cap)
    if match.units == 0:
        return await _forward(request, gw, match, body, None, None)

    path_qs = request.raw_path
    priced = Priced(pg, match.units, gw.resource_url(request), request.method, path_qs)

    rails = [gw.rails[name] for name in pg.rails]
    rail = next((r for r in rails if r.carries_payment(request.headers)), None)
    if rail is None:
        return _challenge_response(request, priced, rails)
    paid = PaidRequest(request.method, path_qs, request.headers, request.remote or "", body.read)
    try:
        outcome = await rail.accept(paid, priced)
    except PaymentRejected as rej:
        return _challenge_response(request, priced, rails, rej)
    if isinstance(outcome, StoredResponse):
        return _replay(outcome)
    return await _forward(request, gw, match, body, outcome, priced)


def _challenge_response(request: web.Request, priced: Priced, rails, rej: PaymentRejected | None = None):
    error = rej.reason if rej else "payment required"
    extra = {"message": rej.message, **rej.extra} if rej else None
    body, headers = challenge(priced, [r.offer(priced) for r in rails], error, extra)
    if wants_html(request.headers):
        return web.Response(status=402, text=paywall_html(body), content_type="text/html",
                            headers=headers)
    return web.json_response(body, status=402, headers=headers)


def _replay(stored: StoredResponse) -> web.Response:
    if not stored.complete:
        # Half a body is not the paid answer: say what happened rather than serve it as 200.
        raise UpstreamError("the response to this payment broke off before its end (the "
                            "origin or the connection failed); a truncated body is not replayed")
    resp = web.Response(status=stored.status, body=stored.body)
    for name, value in stored.headers:
        if name.lower() not in ("content-length", "transfer-encoding"):
            resp.headers.add(name, value)
    resp.headers["X-Tollgate-Replay"] = "true"
    return resp


async def _forward(request: web.Request, gw: Gateway, match: Match, body: _Body,
                   charge: Charge | None, priced: Priced | None) -> web.StreamResponse:
    """Forward to the origin and stream its answer back; `charge` and `priced` are None
    on a free route."""
    pg = match.paygate
    upstream_url, upstream_path_qs = _upstream_target(pg.target, pg.prefix, request.raw_path,
                                                      match.subpath)
    secrets = await gw.origin_secrets(pg.id)
    digest = _EMPTY_SHA256
    if pg.origin_auth.signs_request:
        # The signature header precedes the body, so a body is read whole (within the
        # cap) once; a request without one signs the constant empty-body digest.
        digest = body.sha256_hex()
        if digest is None:
            await body.read()
            digest = body.sha256_hex()
    headers = forward.request_headers_for_origin(
        request.headers.items(), client_ip=request.remote or "", proto=request.scheme,
        host=request.host, strip=charge.strip_headers if charge else ())
    headers.update(origin_auth_headers(
        mode=pg.origin_auth.mode, secret=secrets.current, paygate_id=pg.id, units=match.units,
        payer=charge.payer if charge else "", x_payment=charge.x_payment if charge else "",
        x_payment_response=charge.x_payment_response if charge else "",
        remaining=charge.remaining if charge else None, method=request.method,
        path_qs=upstream_path_qs, body_sha256_hex=digest, now=gw.clock.now(),
        sign_request=pg.origin_auth.signs_request, header_prefix=pg.origin_auth.header_prefix,
        legacy_path_line=pg.origin_auth.legacy_path_line,
        plan=charge.origin_headers.get("X-Tollgate-Plan") if charge else None))
    if charge is not None and charge.origin_headers:
        headers.update(charge.origin_headers)
    request_id = request_context.request_id(request)
    if request_id is not None:  # the caller's when sane, else the gateway's own
        headers[request_context.REQUEST_ID] = request_id

    rail = gw.rails[charge.rail] if charge else None
    request_context.note_payer(request, charge.payer if charge else None)
    try:
        upstream = await _open_upstream(gw, request.method, upstream_url, headers, body.payload(),
                                        pg.timeout_seconds)
    except BaseException as exc:
        if charge is not None and rail is not None:
            _note_receipt(exc, await rail.complete(
                charge, 504 if isinstance(exc, UpstreamTimeout) else 502))
        raise
    try:
        length = upstream.content_length
        if length is not None and length > pg.max_response_bytes:
            raise UpstreamError(f"origin response is larger than {pg.max_response_bytes} bytes",
                                code="upstream_response_too_large")
        try:
            receipt = await rail.complete(charge, upstream.status) if charge and rail else {}
        except PaymentRejected as rej:
            # `after` settlement failed: the caller gets the 402, not the origin's answer.
            return _challenge_response(request, priced, [gw.rails[n] for n in pg.rails], rej)
        return await _stream_back(request, upstream, pg.max_response_bytes, receipt,
                                  charge, rail)
    except UpstreamError as exc:
        if charge is not None and rail is not None:
            _note_receipt(exc, await rail.complete(charge, 502))
        raise
    finally:
        upstream.release()


def _note_receipt(exc: BaseException, receipt: dict[str, str]) -> None:
    """An origin failure after a `before` settlement: the error carries the receipt and
    the rail's note that a retry with the same payment is forwarded."""
    if isinstance(exc, TollgateError) and RETRY_HEADER in receipt:
        exc.headers.update(receipt)
        exc.message = f"{exc.message}; {receipt[RETRY_HEADER]}"


def _upstream_target(target: str, prefix: str, raw_path_qs: str, decoded_sub: str) -> tuple[URL, str]:
    """The origin URL and its request target (path?query) exactly as sent on the wire:
    the caller's own percent-encoding is kept (so `%3F` stays in the path and the
    `request` signature covers what the origin receives), under the target's base path."""
    if not raw_path_qs.startswith("/"):  # absolute-form request target
        url = URL(raw_path_qs, encoded=True)
        raw_path_qs = url.raw_path + (f"?{url.raw_query_string}" if url.raw_query_string else "")
    raw_path, _, raw_query = raw_path_qs.partition("?")
    sub = strip_prefix(prefix, raw_path)
    if sub is None:  # the prefix itself came percent-encoded: re-encode the decoded rest
        sub = URL.build(path=decoded_sub).raw_path
    origin, base_path = _target_base(target)
    path_qs = base_path + sub + (f"?{raw_query}" if raw_query else "")
    return URL(origin + path_qs, encoded=True), path_qs


@lru_cache(maxsize=256)
def _target_base(target: str) -> tuple[str, str]:
    """A paygate target's origin (scheme://host:port) and base path without its
    trailing slash, parsed once per target."""
    base = URL(target)
    return str(base.origin()), base.raw_path.rstrip("/")


async def _open_upstream(gw: Gateway, method: str, url: URL, headers, data, timeout: float):
    try:
        return await gw.origins.request(method, url, headers.items(), data,
                                        connect_timeout=min(timeout, 10), read_timeout=timeout)
    except TimeoutError:
        raise UpstreamTimeout(f"origin did not answer within {timeout:g} s") from None
    except PayloadTooLarge:
        raise
    except forward.TargetRefused as exc:
        return _refused_target(exc)
    except (UpstreamFailed, OSError) as exc:
        log.warning("origin unreachable: %s %s: %s", method, url, exc)
        raise UpstreamError("origin is unreachable") from None


def _refused_target(exc: Exception):
    log.warning("origin refused by the SSRF guard: %s", exc)
    raise UpstreamError("the origin's address is not allowed (loopback/private)",
                        code="target_not_allowed") from None


async def _stream_back(request: web.Request, upstream: UpstreamResponse, cap: int,
                       receipt: dict[str, str], charge: Charge | None, rail) -> web.StreamResponse:
    # HEAD, 204 and 304 answers carry no body but may announce one's length: streamed.
    whole = (upstream.body_if_complete(cap)
             if request.method != "HEAD" and upstream.status not in (204, 304) else None)
    if whole is not None:
        return await _send_whole(request, upstream, whole, receipt, charge, rail)
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    resp.headers.update(forward.response_headers_for_client(upstream.headers.items()))
    resp.headers.update(receipt)
    if upstream.content_length is not None:
        resp.content_length = upstream.content_length
    await resp.prepare(request)
    kept: list[bytes] | None = [] if charge is not None else None
    keep_limit = getattr(rail, "replay_max_bytes", None)
    # A paid answer's last chunk waits until the answer is recorded: a caller never holds
    # a whole paid answer the store does not know was served (see _record).
    held: bytes | None = None
    size = 0
    complete = False
    try:
        async for chunk in forward.iter_response(upstream, cap):
            size += len(chunk)
            if kept is not None:
                kept.append(chunk)
                if keep_limit is not None and size > keep_limit:
                    kept = None  # too large to replay: the rail records only the fact
            if charge is None:
                await resp.write(chunk)
                continue
            if held is not None:
                await resp.write(held)
            held = chunk
        complete = True
    except forward.ResponseTooLarge as exc:
        log.warning("aborting response for %s: %s", request.path, exc)
    except ConnectionResetError:  # aiohttp's write error when the client left
        log.info("client went away during %s", request.path)
    except (UpstreamBroken, TimeoutError) as exc:
        log.warning("origin broke off the response for %s: %s", request.path, exc or type(exc).__name__)
    if charge is not None and rail is not None:
        stored_headers = [(k, v) for k, v in resp.headers.items()]
        recorded = await _record(request, rail, charge, StoredResponse(
            upstream.status, stored_headers, b"".join(kept) if kept is not None else b"",
            complete=complete, body_kept=kept is not None, body_size=size))
        complete = complete and recorded
    if complete and held is not None:
        try:
            await resp.write(held)
        except ConnectionResetError:
            log.info("client went away during %s", request.path)
            complete = False
    if not complete:
        # The client must see a broken response, not a clean end of a truncated body.
        if request.transport is not None:
            request.transport.abort()
        return resp
    await resp.write_eof()
    return resp


async def _record(request: web.Request, rail, charge: Charge, stored: StoredResponse) -> bool:
    """The rail's record of what was served (a served x402 payment settles, a session or
    token charge is kept; a retry is answered from it). Shielded: a caller hanging up must
    not cancel it. False when the store failed it: the caller then gets a broken answer,
    and the unrecorded call is reversed (session, token) or voided (x402) later."""
    try:
        await asyncio.shield(rail.record(charge, stored))
        return True
    except Exception:
        log.exception("could not record the answer to %s %s; the caller gets a broken "
                      "response", request.method, request.path)
        return False


async def _send_whole(request: web.Request, upstream: UpstreamResponse, body: bytes,
                      receipt: dict[str, str], charge: Charge | None, rail) -> web.Response:
    """The origin's whole answer, already read, sent in one response: the origin's headers
    minus hop-by-hop ones. A paid answer is recorded first; if the store fails that, the
    caller gets the store's 503 instead, and the unrecorded call is reversed or voided."""
    headers = forward.response_headers_for_client(upstream.headers.items())
    headers.update(receipt)
    headers.popall("Content-Length", None)
    if charge is not None and rail is not None:
        keep_limit = getattr(rail, "replay_max_bytes", None)
        kept = keep_limit is None or len(body) <= keep_limit
        await asyncio.shield(rail.record(charge, StoredResponse(
            upstream.status, list(headers.items()), body if kept else b"", complete=True,
            body_kept=kept, body_size=len(body))))
    return web.Response(status=upstream.status, reason=upstream.reason, body=body,
                        headers=headers)
