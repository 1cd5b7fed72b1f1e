"""A provider's own Starlette app, charged per call through a Tollgate paygate (middleware
mode), wrapped by the ASGI middleware.

    TOLLGATE_URL=http://127.0.0.1:8402 TOLLGATE_PAYGATE=weather \
    TOLLGATE_KEY=pk_... TOLLGATE_SECRET=sk_... uvicorn examples.middleware_starlette:app
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.middleware_client import TollgateASGI


async def forecast(request: Request) -> JSONResponse:
    paid = request.scope["tollgate"]
    return JSONResponse({"forecast": "rain", "payer": paid["payer"], "units": paid["units"]})


async def broken(request: Request) -> JSONResponse:
    return JSONResponse({"error": "down"}, status_code=503)


def make_app(gateway_url: str, paygate: str, key_id: str, secret: str) -> TollgateASGI:
    inner = Starlette(routes=[Route("/forecast", forecast), Route("/broken", broken)])
    return TollgateASGI(inner, gateway_url, paygate, key_id, secret)


if "TOLLGATE_URL" in os.environ:
    app = make_app(os.environ["TOLLGATE_URL"], os.environ["TOLLGATE_PAYGATE"],
                   os.environ["TOLLGATE_KEY"], os.environ["TOLLGATE_SECRET"])
