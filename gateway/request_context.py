"""Per-request context: the request id, what the request was (paygate, rail, units, payer),
and what became of it (status, outcome, duration), for logs and metrics.

A middleware, installed by `install(app)` around the app's error middleware (which turns
`store_down` faults into 503):

- `outer` (first): takes the caller's `X-Request-Id` when it is sane (1-128 characters of
  `A-Za-z0-9._:-`), else makes one; the proxy sends it to the origin (in place of an insane
  one) and every answer carries it back. When the request ends it writes one access line
  (`tollgate.access`) and counts the request in `gateway.metrics`.
- `store_down`: a store that cannot be reached (connection refused or lost, too many
  clients, pool exhausted) is the gateway's fault of capacity, not a bug: 503
  `store_unavailable`, never a 500. Nothing was charged by a statement that did not run,
  and the caller may retry.

Labels stay bounded: the paygate id and rail name come from the config, never from the
request; the path is logged without its query string (which may carry a caller's keys).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
from dataclasses import dataclass

import sqlalchemy.exc
from aiohttp import web

from gateway import metrics
from gateway.access_log import write_info_line
from gateway.errors import Unavailable
from gateway.state import GATEWAY
from store.ids import random_hex

REQUEST_ID = "X-Request-Id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access_log = logging.getLogger("tollgate.access")
# The current request's id, for every log line written while serving it.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tollgate_request_id", default=None)


@dataclass
class RequestContext:
    request_id: str
    started: float
    paygate: str | None = None
    rail: str | None = None
    units: int | None = None
    payer: str | None = None
    replayed: bool = False


CONTEXT = web.RequestKey("tollgate_context", RequestContext)


def install(app: web.Application) -> None:
    """Add the middleware and the response stamp to a not-yet-frozen app."""
    app.middlewares.insert(0, outer)
    app.on_response_prepare.append(_stamp)


def request_id(request: web.Request) -> str | None:
    """The request's id: the caller's X-Request-Id when sane, else one made here."""
    ctx = request.get(CONTEXT)
    return ctx.request_id if ctx is not None else None


def note_payer(request: web.Request, payer: str | None) -> None:
    """Called by the proxy once a payment is accepted: who paid, for the access line."""
    ctx = request.get(CONTEXT)
    if ctx is not None and payer:
        ctx.payer = payer


@web.middleware
async def outer(request: web.Request, handler):
    rid = request.headers.get(REQUEST_ID, "")
    if not _SANE_ID.fullmatch(rid):
        rid = random_hex()  # the proxy sends the origin this one, not the caller's
    ctx = RequestContext(rid, time.monotonic())
    request[CONTEXT] = ctx  # aiohttp prepares a returned response with this request
    _classify(request, ctx)
    token = current_request_id.set(rid)
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    except BaseException:
        status = 499 if not request.transport or request.transport.is_closing() else 500
        raise
    finally:
        _done(request, ctx, status)
        current_request_id.reset(token)


def store_down(exc: BaseException) -> Unavailable | None:
    """A store that cannot be reached (connection refused or lost, too many clients, pool
    exhausted) is the gateway's fault of capacity, not a bug: 503 `store_unavailable`,
    never a 500. Nothing was charged by a statement that did not run. None: another fault."""
    if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                        sqlalchemy.exc.TimeoutError, sqlalchemy.exc.DisconnectionError)):
        return _store_down(exc)
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated or _sqlstate(exc).startswith(_UNAVAILABLE_SQLSTATES):
            return _store_down(exc)
        return None
    if isinstance(exc, (ConnectionRefusedError, ConnectionResetError)):
        # asyncpg's connect raises these unwrapped when the server is not there
        return _store_down(exc)
    return None


# SQLSTATE classes that mean "the server is not taking work", not "your statement is
# wrong": connection exception, insufficient resources (too many clients), operator
# intervention (shutting down, starting up, admin shutdown).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


def _sqlstate(exc: sqlalchemy.exc.DBAPIError) -> str:
    for candidate in (exc.orig, getattr(exc.orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return ""


def _store_down(exc: BaseException) -> Unavailable:
    logging.getLogger("tollgate.store").warning("store unavailable: %s", type(exc).__name__)
    return Unavailable("the store is unavailable; nothing was charged, retry later",
                       code="store_unavailable", headers={"Retry-After": "1"})


async def _stamp(request: web.Request, response: web.StreamResponse) -> None:
    ctx = request.get(CONTEXT)
    if ctx is not None:
        response.headers[REQUEST_ID] = ctx.request_id
        ctx.replayed = response.headers.get("X-Tollgate-Replay") == "true"


def _classify(request: web.Request, ctx: RequestContext) -> None:
    gw = request.app.get(GATEWAY)
    if gw is None:
        return
    try:
        match = gw.router.match_cached(request.method, request.host, request.path)
    except Exception:  # a path the proxy will refuse; it says why
        return
    if match is None:
        return
    pg = match.paygate
    ctx.paygate, ctx.units = pg.id, match.units
    for name in pg.rails:
        rail = gw.rails.get(name)
        if rail is not None and rail.carries_payment(request.headers):
            ctx.rail = name
            break


def _outcome(status: int, replayed: bool) -> str:
    if replayed:
        return "replayed"
    if status < 400:
        return "served"
    if status == 402:
        return "payment_required"
    if status == 499:
        return "client_gone"
    return "refused" if status < 500 else "failed"


def _done(request: web.Request, ctx: RequestContext, status: int) -> None:
    seconds = time.monotonic() - ctx.started
    outcome = _outcome(status, ctx.replayed)
    metrics.request_done(ctx.paygate, ctx.rail, status, seconds)
    if not access_log.isEnabledFor(logging.INFO):
        return
    message = f"{request.method} {request.path} {status} {outcome} {seconds * 1000:.1f}ms"
    if write_info_line(access_log, message):
        return  # the text format: the line is all there is to write
    access_log.info(
        "%s", message,
        extra={"request_id": ctx.request_id, "method": request.method, "path": request.path,
               "status": status, "outcome": outcome, "duration_ms": round(seconds * 1000, 1),
               "paygate": ctx.paygate, "rail": ctx.rail, "units": ctx.units,
               "payer": ctx.payer})
