"""`tollgate keys create|list|revoke`: admin API keys from a shell on the gateway host.

    tollgate keys create -c tollgate.toml --provider acme     # a provider key
    tollgate keys create -c tollgate.toml --operator          # an operator key
    tollgate keys list   -c tollgate.toml
    tollgate keys revoke -c tollgate.toml pk_...

`create` prints the key id and its secret once, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

from gateway.config import ConfigError, load_config


def register(sub) -> None:
    p = sub.add_parser("keys", help="admin API keys")
    ksub = p.add_subparsers(dest="action", required=True)
    for name, help_ in (("create", "create a key and print its secret once"),
                        ("list", "list keys"), ("revoke", "revoke a key")):
        kp = ksub.add_parser(name, help=help_)
        kp.add_argument("-c", "--config", default="tollgate.toml", help="TOML config file")
        if name == "create":
            kp.add_argument("--provider", help="the provider whose resources the key manages")
            kp.add_argument("--operator", action="store_true", help="a key that manages all")
        if name == "revoke":
            kp.add_argument("key_id")
        kp.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.action == "create":
        if not args.operator and not args.provider:
            raise ConfigError("keys create: give --provider NAME or --operator")
        if args.provider and not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", args.provider):
            raise ConfigError("keys create: --provider must be lowercase letters, digits, "
                              "- or _ (at most 63)")
    return asyncio.run(_async(config, args))


async def _async(config, args) -> int:
    from store.api_keys import KeyStore
    from store.clock import SystemClock
    from store.crypto import load_master_key
    from store.db import create_engine
    from store.migrations import migrate

    engine = create_engine(config.database.url)  # creates the SQLite directory
    try:
        await migrate(engine)
        box = load_master_key(config.database.master_key_env, config.database.master_key_file)
        keys = KeyStore(engine, box, SystemClock())
        if args.action == "create":
            key, secret = await keys.create(args.provider, args.operator)
            print(json.dumps({**key.public(), "secret": secret}))
        elif args.action == "list":
            for key in await keys.list():
                print(json.dumps(key.public()))
        else:
            if not await keys.revoke(args.key_id):
                raise ConfigError(f"no active key {args.key_id!r}")
            print(json.dumps({"id": args.key_id, "revoked": True}))
    finally:
        await engine.dispose()
    return 0
