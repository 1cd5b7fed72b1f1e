"""Liveness and readiness. `/healthz` and `/health` (HashToll's name) answer alike."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import Unavailable
from gateway.state import GATEWAY
from store.db import ping


async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The gateway can take paid traffic: its store answers."""
    gw = request.app[GATEWAY]
    try:
        await ping(gw.engine)
    except Exception as exc:  # any store failure means not ready
        raise Unavailable(f"store is unreachable: {type(exc).__name__}", code="store_unavailable")
    return web.json_response({"status": "ready", "store": gw.engine.dialect.name})
