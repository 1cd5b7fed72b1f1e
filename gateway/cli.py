"""`tollgate` command line (also `python -m gateway`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from gateway.config import ConfigError, load_config


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default="tollgate.toml", help="TOML config file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate", description="Pay-per-call gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    _add_config(p)
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="apply pending schema migrations")
    _add_config(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("paygates", help="paygates of a config")
    psub = p.add_subparsers(dest="action", required=True)
    pl = psub.add_parser("list", help="list paygates, routes and prices")
    _add_config(pl)
    pl.set_defaults(func=cmd_paygates_list)

    p = sub.add_parser("secrets", help="origin secrets of a paygate")
    ssub = p.add_subparsers(dest="action", required=True)
    sg = ssub.add_parser("get", help="print a paygate's current (and previous) secret")
    _add_config(sg)
    sg.add_argument("paygate")
    sg.set_defaults(func=cmd_secrets_get)
    sr = ssub.add_parser("rotate", help="install a new secret, keeping the old one for a grace period")
    _add_config(sr)
    sr.add_argument("paygate")
    sr.add_argument("--value", help="custom secret (default: random)")
    sr.add_argument("--grace", type=int, help="seconds the previous secret stays valid "
                    "(default: the paygate's origin_auth.rotation_grace_seconds)")
    sr.set_defaults(func=cmd_secrets_rotate)

    from gateway import cli_tools  # the chain-facing commands: devnet, demo, pay
    cli_tools.register(sub)
    from gateway.admin import cli_keys  # admin API keys
    cli_keys.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the format gateway.access_log.SERVE_FORMAT names (not imported: it loads aiohttp)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for chatty in ("httpx", "httpcore", "aiohttp.access" if args.command == "demo" else ""):
        if chatty:
            logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        print(f"tollgate: {exc}", file=sys.stderr)
        return 2


def cmd_serve(args) -> int:
    config = load_config(args.config)  # first: a bad config should fail fast

    from aiohttp import web

    from gateway import logs
    from gateway.access_log import batch_stderr_logging, lean_log_records
    from gateway.app import create_app

    server = config.server.model_copy(update={k: v for k, v in
                                              (("host", args.host), ("port", args.port)) if v})
    config = config.model_copy(update={"server": server})
    lean_log_records()
    batch_stderr_logging()
    logs.configure(config)  # [logging] format: text (default) or json lines; after the
    app = create_app(config)  # batched handlers are in place, so they get its formatter
    web.run_app(app, host=config.server.host, port=config.server.port,
                shutdown_timeout=config.server.shutdown_grace_seconds, print=_announce(config),
                access_log=None)  # tollgate.access writes the access line (request_context)
    return 0


def _announce(config):
    def say(_msg: str) -> None:
        print(f"tollgate: serving on http://{config.server.host}:{config.server.port} "
              f"({len(config.paygates)} paygate(s)); Ctrl-C to stop", flush=True)
    return say


def cmd_migrate(args) -> int:
    from store.db import create_engine_unpooled
    from store.migrations import migrate

    config = load_config(args.config)

    async def run() -> list[int]:
        engine = create_engine_unpooled(config.database.url)
        try:
            return await migrate(engine)
        finally:
            await engine.dispose()

    applied = asyncio.run(run())
    print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return 0


def cmd_paygates_list(args) -> int:
    from gateway.config import price_atomic

    config = load_config(args.config)
    for pg in config.paygates:
        prices = ", ".join(f"{price_atomic(config, pg, a)} {a} (atomic)" for a in pg.prices) or "free"
        print(f"{pg.id:16} {pg.host or '*'}{pg.prefix} -> {pg.target}  rails={','.join(pg.rails) or '-'}"
              f"  unit price: {prices}  default units: {pg.default_units}")
        for rule in pg.rules:
            print(f"{'':16}   {rule.method:6} {rule.path} = {rule.units} unit(s)")
    return 0


def _secret_store(config):
    from store.clock import SystemClock
    from store.crypto import load_master_key
    from store.db import create_engine_unpooled
    from store.secrets import SecretStore

    engine = create_engine_unpooled(config.database.url)
    box = load_master_key(config.database.master_key_env, config.database.master_key_file)
    return engine, SecretStore(engine, box, SystemClock())


def cmd_secrets_get(args) -> int:
    config = load_config(args.config)
    pg = config.paygate(args.paygate)
    if pg is None:
        raise ConfigError(f"no paygate {args.paygate!r} in {args.config}")

    async def run():
        from store.migrations import migrate
        engine, store = _secret_store(config)
        try:
            await migrate(engine)
            return await store.ensure(pg.id, None, pg.origin_auth.rotation_grace_seconds)
        finally:
            await engine.dispose()

    s = asyncio.run(run())
    print(json.dumps({"paygate": pg.id, "mode": pg.origin_auth.mode, "current": s.current,
                      "previous": s.previous, "previous_valid_until": s.previous_valid_until}))
    return 0


def cmd_secrets_rotate(args) -> int:
    config = load_config(args.config)
    pg = config.paygate(args.paygate)
    if pg is None:
        raise ConfigError(f"no paygate {args.paygate!r} in {args.config}")
    grace = pg.origin_auth.rotation_grace_seconds if args.grace is None else args.grace

    async def run():
        from store.migrations import migrate
        engine, store = _secret_store(config)
        try:
            await migrate(engine)
            return await store.rotate(pg.id, args.value, grace)
        finally:
            await engine.dispose()

    s = asyncio.run(run())
    print(json.dumps({"paygate": pg.id, "current": s.current,
                      "previous_valid_until": s.previous_valid_until}))
    return 0
