"""The provider admin API under `/api/v1/` (signed with X-PAY headers, see
`gateway.admin.auth`), and what runs behind it: runtime paygates (`runtime`), webhook
delivery (`gateway.webhooks`).

    add_routes(app)   mounts the API and starts its background tasks with the app
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from aiohttp import web

from gateway.admin import (discovery, files_api, keys_api, openapi, paygates_api, secrets_api,
                           tokens_api, usage_api, webhooks_api)
from gateway.admin.auth import ADMIN_KEY, PUBLIC_PATHS, authenticate
from gateway.admin.common import ADMIN, admin_of, gw_of
from gateway.admin.runtime import AdminState, poll, reload
from gateway.state import GATEWAY
from store.api_keys import KeyStore, purge_signatures
from store.crypto import load_master_key
from store.paygates import PaygateStore


PREFIX = "/api/v1"


def _signed(handler):
    """The handler, behind X-PAY signature checking (unless its path is public)."""
    async def run(request: web.Request) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS:
            gw, admin = gw_of(request), admin_of(request)
            request[ADMIN_KEY] = await authenticate(request, admin.keys, gw.engine,
                                                    gw.clock.now())
        return await handler(request)
    return run


class _Mount:
    """Routes added under PREFIX on the main app, each behind `_signed`. Not a sub-app:
    a path under the prefix that is no admin route still reaches the proxy (a paygate
    may own `/api/...`)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    @property
    def router(self) -> "_Mount":
        return self

    def _add(self, method: str, path: str, handler) -> None:
        self._app.router.add_route(method, PREFIX + path, _signed(handler))

    def add_get(self, path, handler):
        self._add("GET", path, handler)

    def add_post(self, path, handler):
        self._add("POST", path, handler)

    def add_put(self, path, handler):
        self._add("PUT", path, handler)

    def add_patch(self, path, handler):
        self._add("PATCH", path, handler)

    def add_delete(self, path, handler):
        self._add("DELETE", path, handler)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    box = load_master_key(gw.config.database.master_key_env,
                          gw.config.database.master_key_file)
    admin = AdminState(gw.config, KeyStore(gw.engine, box, gw.clock),
                       PaygateStore(gw.engine, gw.clock), box)
    app[ADMIN] = admin
    await admin.paygates.apply_config(
        [pg.model_dump(mode="json", exclude_defaults=True) | {"id": pg.id}
         for pg in gw.config.paygates])
    await reload(gw, admin, force=True)
    tasks = [asyncio.create_task(poll(gw, admin)), asyncio.create_task(_purge(gw))]
    from gateway import webhooks
    tasks.append(asyncio.create_task(webhooks.run(gw, admin)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _purge(gw) -> None:
    while True:
        await asyncio.sleep(60)
        with contextlib.suppress(Exception):
            await purge_signatures(gw.engine, gw.clock.now())


def add_routes(app: web.Application) -> None:
    api = _Mount(app)
    keys_api.add_routes(api)
    paygates_api.add_routes(api)
    secrets_api.add_routes(api)
    webhooks_api.add_routes(api)
    usage_api.add_routes(api)
    files_api.add_routes(api, app)
    tokens_api.add_routes(api)
    openapi.add_routes(api)  # public
    discovery.add_routes(app)  # public
    app.cleanup_ctx.append(_lifecycle)
