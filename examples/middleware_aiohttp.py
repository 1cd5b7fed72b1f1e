"""A provider's own aiohttp app, charged per call through a Tollgate paygate (middleware
mode): the app keeps its domain, the gateway only decides and settles.

    TOLLGATE_URL=http://127.0.0.1:8402 TOLLGATE_PAYGATE=weather \
    TOLLGATE_KEY=pk_... TOLLGATE_SECRET=sk_... python examples/middleware_aiohttp.py
"""

from __future__ import annotations

import os

from aiohttp import web

from gateway import middleware_client
from gateway.middleware_client import authorize_middleware


async def forecast(request: web.Request) -> web.Response:
    paid = request[middleware_client.TOLLGATE]
    return web.json_response({"forecast": "sunny", "payer": paid["payer"],
                              "units": paid["units"]})


async def broken(request: web.Request) -> web.Response:
    return web.json_response({"error": "down"}, status=503)


def make_app(gateway_url: str, paygate: str, key_id: str, secret: str) -> web.Application:
    app = web.Application(middlewares=[authorize_middleware(gateway_url, paygate, key_id, secret)])
    app.router.add_get("/forecast", forecast)
    app.router.add_get("/broken", broken)
    return app


if __name__ == "__main__":
    env = os.environ
    web.run_app(make_app(env["TOLLGATE_URL"], env["TOLLGATE_PAYGATE"], env["TOLLGATE_KEY"],
                         env["TOLLGATE_SECRET"]), host="127.0.0.1", port=8080)
