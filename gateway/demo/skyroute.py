"""SkyRoute: the sample origin of the demo. A travel API that serves only traffic the
gateway signed, verified with `gateway.origin` in a few lines, as a provider would.

    python -m gateway.demo.skyroute --port 9001 --secret-env SKYROUTE_SECRET
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Sequence

from aiohttp import web

from gateway.origin import aiohttp_middleware

_FLIGHTS = [
    {"id": "SR101", "from": "ZRH", "to": "LIS", "departs": "2026-12-01T07:40", "fare_chf": 129},
    {"id": "SR202", "from": "ZRH", "to": "OSL", "departs": "2026-12-01T09:15", "fare_chf": 174},
]
_HOTELS = [{"id": "H-LIS-1", "city": "LIS", "name": "Casa do Rio", "night_eur": 98}]


def _payer(request: web.Request) -> str | None:
    paid = request.get("tollgate")
    return paid.payer if paid else None


async def flights(request: web.Request) -> web.Response:
    return web.json_response({"flights": _FLIGHTS, "payer": _payer(request)})


async def hotels(request: web.Request) -> web.Response:
    return web.json_response({"hotels": _HOTELS, "payer": _payer(request)})


async def holds(request: web.Request) -> web.Response:
    return web.json_response({"hold": "HOLD-7F3A", "expires_in": 900, "payer": _payer(request)},
                             status=201)


async def bookings(request: web.Request) -> web.Response:
    return web.json_response({"booking": "BK-19C2", "status": "confirmed",
                              "payer": _payer(request)}, status=201)


def create_origin(secrets: Sequence[str] | Callable[[], Sequence[str]],
                  mode: str = "request") -> web.Application:
    app = web.Application(middlewares=[aiohttp_middleware(secrets, mode=mode)])
    app.router.add_get("/v1/flights", flights)
    app.router.add_get("/v1/hotels", hotels)
    app.router.add_post("/v1/holds", holds)
    app.router.add_post("/v1/bookings", bookings)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="SkyRoute sample origin")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--secret-env", default="SKYROUTE_SECRET")
    parser.add_argument("--mode", default="request", choices=["hmac", "plaintext", "request"])
    args = parser.parse_args()
    secret = os.environ.get(args.secret_env)
    if not secret:
        raise SystemExit(f"set {args.secret_env} to the paygate's origin secret")
    web.run_app(create_origin([secret], args.mode), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
