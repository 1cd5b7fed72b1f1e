"""Build the aiohttp application from a validated config.

`build_app(config)` wires the store, origin secrets, rails and routes; start-up work
(migrations on SQLite, secrets from env vars, rail clients) runs in the app's cleanup
context so that `tollgate serve`, tests and the demo share one path.
"""

from __future__ import annotations

import logging
import os
from typing import AsyncIterator
from urllib.parse import urlsplit

from aiohttp import web

from gateway import (admin, authorize, checkout, facilitator, files_serve, health, metrics, proxy,
                     request_context, sessions_api, wallet)
from gateway.config import Config, ConfigError
from gateway.errors import TollgateError
from gateway.forward import GuardedResolver
from gateway.logs import quiet_malformed_requests
from gateway.rails.registry import build_rails, evm_chains
from gateway.routing import Router
from gateway.state import GATEWAY, Gateway
from gateway.upstream import OriginPool
from store import migrations
from store.clock import Clock, SystemClock
from store.crypto import load_master_key
from store.db import create_engine, is_sqlite
from store.secrets import SecretStore

log = logging.getLogger("tollgate.app")

MAX_HEADER_FIELD = 16 * 1024


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Turn every client fault into `{"error", "message"}` JSON; log and hide bugs."""
    try:
        return await handler(request)
    except TollgateError as exc:
        return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status, "bad_request" if exc.status < 500 else "internal_error")
        return web.json_response({"error": code, "message": exc.reason}, status=exc.status)
    except Exception as exc:
        down = request_context.store_down(exc)
        if down is not None:
            return web.json_response(down.body(), status=down.status, headers=down.headers)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(
            {"error": "internal_error", "message": "internal error"}, status=500)


def build_app(config: Config, *, clock: Clock | None = None) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware], client_max_size=config.server.max_request_bytes,
        # Room for x402 payment headers past 8 KiB, so the gateway (not the HTTP parser)
        # refuses them with a proper 402 reason.
        handler_args={"max_field_size": MAX_HEADER_FIELD, "max_line_size": MAX_HEADER_FIELD})
    app.cleanup_ctx.append(_lifecycle(config, clock or SystemClock()))
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/health", health.healthz)  # HashToll's name
    app.router.add_get("/readyz", health.readyz)
    return app


def add_proxy_routes(app: web.Application) -> None:
    """The catch-all proxy route: registered last so specific routes win."""
    app.router.add_route("*", "/{tail:.*}", proxy.handle)


def _lifecycle(config: Config, clock: Clock):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        engine = create_engine(config.database.url)
        resolver = GuardedResolver(_private_ok(config))
        try:
            if is_sqlite(engine):
                await migrations.migrate(engine)
            else:
                await migrations.ensure_current(engine)
            box = load_master_key(config.database.master_key_env, config.database.master_key_file)
            secret_store = SecretStore(engine, box, clock)
            for i, pg in enumerate(config.paygates):
                wanted = None
                if pg.origin_auth.secret_env:
                    wanted = os.environ.get(pg.origin_auth.secret_env)
                    if not wanted:
                        raise ConfigError(
                            f"paygates[{i}].origin_auth.secret_env: environment variable "
                            f"{pg.origin_auth.secret_env} is not set")
                await secret_store.ensure(pg.id, wanted, pg.origin_auth.rotation_grace_seconds)
            gw = Gateway(config=config, router=Router(config.paygates), engine=engine,
                         secret_store=secret_store, clock=clock, resolver=resolver,
                         origins=OriginPool(resolver))
            app[GATEWAY] = gw  # first, so a failure below still closes what was started
            await evm_chains(gw)
            await build_rails(gw)
            yield
        finally:
            gw_state = app.get(GATEWAY)
            for rail in (gw_state.rails.values() if gw_state else ()):
                close = getattr(rail, "aclose", None)
                if close is not None:
                    await close()
            if gw_state is not None and gw_state.evm is not None:
                await gw_state.evm.aclose()
            if gw_state is not None and gw_state.hedera is not None:
                await gw_state.hedera.aclose()
            if gw_state is not None and gw_state.origins is not None:
                await gw_state.origins.close()
            await engine.dispose()
    return ctx


def _private_ok(config: Config) -> set[str]:
    """Target hosts whose paygate may reach loopback/private addresses."""
    out = set()
    for pg in config.paygates:
        allow = pg.allow_private_target if pg.allow_private_target is not None \
            else config.server.allow_private_targets
        if allow:
            out.add(urlsplit(pg.target).hostname or "")
    return out


def create_app(config: Config, *, clock: Clock | None = None) -> web.Application:
    """The full gateway: built-in routes, then the proxy catch-all."""
    quiet_malformed_requests()
    app = build_app(config, clock=clock)
    request_context.install(app)  # X-Request-Id, access lines, store faults -> 503
    metrics.add(app, config)  # /metrics when [metrics] enabled
    facilitator.add_routes(app)
    sessions_api.add_routes(app)
    checkout.add_routes(app)  # plans, prepaid tokens: /checkout, /api/checkout, /api/tokens
    wallet.add_routes(app)  # the wallet page at /, /api/paygates, /api/wallet/*
    admin.add_routes(app)
    authorize.add_routes(app)  # middleware mode: /v1/authorize, signed like the admin API
    files_serve.add_routes(app)  # paid files' signed download URLs
    add_proxy_routes(app)
    return app
