"""CLI commands that drive chains: `devnet`, `pay`. Heavy imports stay inside the
commands so `tollgate serve` starts fast."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from decimal import Decimal, InvalidOperation


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devnet", help="run local chains: anvil with a test USDC token, and a "
                                      "local Hedera network (consensus node + mirror)")
    p.add_argument("--port", type=int, help="anvil port (default: a free one)")
    p.add_argument("--hedera-grpc-port", type=int, default=0, help="Hedera node port (default: free)")
    p.add_argument("--hedera-mirror-port", type=int, default=0,
                   help="Hedera mirror port (default: free)")
    p.add_argument("--block-time", type=float, help="seconds between blocks (default: automine)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=cmd_devnet)

    p = sub.add_parser("demo", help="devnet + sample origin + gateway, and a paid walkthrough")
    p.add_argument("--port", type=int, default=8402, help="gateway port (default 8402)")
    p.add_argument("--once", action="store_true", help="exit after the walkthrough")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pay", help="call a URL, paying its 402 with x402 or from a Hedera session")
    p.add_argument("url")
    p.add_argument("-X", "--method", default="GET")
    p.add_argument("-d", "--data", help="request body")
    p.add_argument("-H", "--header", action="append", default=[], help="extra header 'Name: value'")
    p.add_argument("--key", default=os.environ.get("TOLLGATE_PAYER_KEY"),
                   help="EVM private key (default: $TOLLGATE_PAYER_KEY)")
    p.add_argument("--session", default=os.environ.get("TOLLGATE_SESSION"),
                   help="spend from this Hedera allowance session token instead "
                        "(default: $TOLLGATE_SESSION); retries reuse the call's idempotency key")
    p.add_argument("--max", dest="max_amount",
                   help="most to pay for this call, in atomic units (e.g. 1000) or with a "
                        "decimal point in whole tokens of 6 decimals (e.g. 0.01)")
    p.set_defaults(func=cmd_pay)


def cmd_devnet(args) -> int:
    from chains.evm.devnet import EvmDevnet
    from chains.hedera.devnet import HederaDevnet

    devnet = EvmDevnet.start(port=args.port, block_time=args.block_time)
    hedera = HederaDevnet(grpc_port=args.hedera_grpc_port,
                          mirror_port=args.hedera_mirror_port).start()
    try:
        info = {"evm": devnet.describe(), "hedera": hedera.describe()}
        if args.json:
            print(json.dumps(info, indent=2), flush=True)
        else:
            _print_devnet(info["evm"])
            _print_hedera(info["hedera"])
            print("Ctrl-C to stop.", flush=True)
        stop = asyncio.Event()
        loop = asyncio.new_event_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.run_until_complete(stop.wait())
    finally:
        hedera.stop()
        devnet.stop()
    return 0


def cmd_demo(args) -> int:
    from gateway.demo.walkthrough import run

    return asyncio.run(run(port=args.port, once=args.once))


def _print_devnet(info: dict) -> None:
    tok = info["token"]
    print(f"EVM devnet   {info['rpc_url']}  ({info['network']})")
    print(f"test token   {tok['address']}  {tok['name']} v{tok['version']}, {tok['decimals']} decimals")
    if info.get("batch_contract"):
        print(f"batch        {info['batch_contract']}  SettlementBatch (evm batch_contract)")
    accts = info["accounts"]
    for role in ("deployer", "settler", "merchant"):
        a = accts[role]
        print(f"{role:12} {a['address']}  key {a['private_key']}")
    for p in accts["payers"] + [accts["poor"]]:
        print(f"{p['role']:12} {p['address']}  key {p['private_key']}")


def _print_hedera(info: dict) -> None:
    print(f"\nHedera node  {info['grpc']} (node {info['node_account_id']}), "
          f"mirror {info['mirror_url']}  ({info['network']})")
    print(f"hedera.nodes = {{ \"{info['grpc']}\" = \"{info['node_account_id']}\" }}")
    from gateway.config import format_atomic

    for name, a in info["accounts"].items():
        print(f"{name:12} {a['account_id']:10} {a['key_type']:16} "
              f"{format_atomic(a['balance_tinybars'], 8):>10} HBAR  key {a['private_key']}")


def parse_max(value: str | None) -> int | None:
    """`1000` -> 1000 atomic units; `0.01` -> 10000 (a 6-decimal token)."""
    if value is None:
        return None
    try:
        if "." in value:
            amount = Decimal(value) * 10**6
            if amount != amount.to_integral_value():
                raise ValueError
            return int(amount)
        return int(value)
    except (InvalidOperation, ValueError):
        print(f"tollgate pay: --max {value!r} is not an amount", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_pay(args) -> int:
    from gateway.client import PayingClient

    if not args.key and not args.session:
        print("tollgate pay: give --key (or set TOLLGATE_PAYER_KEY) or --session",
              file=sys.stderr)
        return 2
    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            print(f"tollgate pay: header {h!r} is not 'Name: value'", file=sys.stderr)
            return 2
        headers[name.strip()] = value.strip()
    max_amount = parse_max(args.max_amount)

    async def run() -> int:
        session = args.session or None
        async with PayingClient(evm_key=None if session else args.key, session=session,
                                max_per_request=max_amount) as client:
            resp = await client.request(args.method, args.url, headers=headers,
                                        content=args.data.encode() if args.data else None)
            print(f"HTTP {resp.status_code}")
            sys.stdout.write(resp.text + ("\n" if not resp.text.endswith("\n") else ""))
            if client.last_receipt is not None:
                print("receipt: " + json.dumps(client.last_receipt))
            if client.last_remaining is not None:
                print(f"remaining: {client.last_remaining} tinybars")
            if client.last_refusal:
                print(f"not paid: {client.last_refusal}", file=sys.stderr)
            return 0 if resp.status_code < 400 else 1

    return asyncio.run(run())
