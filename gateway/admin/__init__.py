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

from gateway.admin import discovery, keys_api, openapi, paygates_api, secrets_api, usage_api, webhooks_api
from gateway.admin.auth import ADMIN_KEY, PUBLIC_PATHS, authenticate
from gateway.admin.common import ADMIN, admin_of, gw_of
from gateway.admin.runtime import AdminState, poll, reload
from gateway.state import GATEWAY
from store.api_keys import KeyStore, purge_signatures
from store.crypto import load_master_key
from store.paygates import PaygateStore


@web.middleware
async def _signed(request: web.Request, handler):
    if request.path not in PUBLIC_PATHS:
        gw, admin = gw_of(request), admin_of(request)
        request[ADMIN_KEY] = await authenticate(request, admin.keys, gw.engine, gw.clock.now())
    return await handler(request)


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
    api = web.Application(middlewares=[_signed])
    keys_api.add_routes(api)
    paygates_api.add_routes(api)
    secrets_api.add_routes(api)
    webhooks_api.add_routes(api)
    usage_api.add_routes(api)
    openapi.add_routes(api)  # public
    app.add_subapp("/api/v1", api)
    discovery.add_routes(app)  # public
    app.cleanup_ctx.append(_lifecycle)
