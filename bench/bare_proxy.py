"""The 1.0x reference for the gateway benchmarks: a plain aiohttp pass-through proxy.

Usage: python bench/bare_proxy.py PORT TARGET_URL

Forwards every request (method, path, query, headers, body) to TARGET_URL over one
pooled client session and streams nothing: it reads the whole answer and sends it back,
as the gateway does. No payment, no routing, no store, no access log.
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}


def main(port: int, target: str) -> None:
    async def client_ctx(app: web.Application):
        app["http"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        yield
        await app["http"].close()

    async def proxy(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = await request.read()
        async with request.app["http"].request(request.method, target + request.path_qs,
                                               headers=headers, data=body or None) as r:
            payload = await r.read()
            out = {k: v for k, v in r.headers.items() if k.lower() not in HOP}
            return web.Response(status=r.status, headers=out, body=payload)

    app = web.Application()
    app.cleanup_ctx.append(client_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2].rstrip("/"))
