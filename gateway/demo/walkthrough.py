"""`tollgate demo`: a local devnet, the SkyRoute origin and the gateway on SQLite, then a
walkthrough of what a caller sees, step by step. The gateway keeps serving afterwards
(until Ctrl-C) unless `--once`.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from chains.x402 import decode_header
from gateway.demo.plans_steps import PLAN, middleware_paygate, middleware_walkthrough, \
    plan_walkthrough

SETTLER_ENV = "TOLLGATE_DEMO_SETTLER_KEY"
SECRET_ENV = "TOLLGATE_DEMO_SKYROUTE_SECRET"
HEDERA_KEY_ENV = "TOLLGATE_DEMO_HEDERA_KEY"
TINYBAR_PER_HBAR = 100_000_000


def demo_config(devnet, hedera, origin_url: str, port: int, workdir: Path) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "allow_private_targets": True,
                   "public_url": f"http://127.0.0.1:{port}"},  # named in session activations
        "database": {"url": f"sqlite+aiosqlite:///{workdir / 'tollgate.db'}",
                     "master_key_file": str(workdir / "master.key"),
                     "master_key_env": "TOLLGATE_DEMO_MASTER_KEY"},
        "assets": {"usdc": {"type": "eip3009", "network": devnet.network,
                            "address": devnet.token_address, "decimals": 6,
                            "eip712_name": devnet.token_name,
                            "eip712_version": devnet.token_version},
                   "hbar": {"type": "hbar", "network": hedera.network}},
        "evm": {devnet.network: {"rpc_url": devnet.rpc_url, "settler_key_env": SETTLER_ENV}},
        "hedera": {"network": hedera.network, "nodes": hedera.network_map(),
                   "mirror_url": hedera.mirror_url,
                   "account_id": hedera.account("spender").account_id,
                   "private_key_env": HEDERA_KEY_ENV, "pull_interval_seconds": 2},
        "paygates": [{
            "id": "skyroute", "prefix": "/skyroute", "target": origin_url,
            "description": "SkyRoute flights, hotels, holds and bookings",
            "rails": ["x402-evm", "hedera-session"],
            "prices": {"usdc": "0.001", "hbar": "0.05"},
            "pay_to": {"evm": devnet.merchant.address,
                       "hedera": hedera.account("merchant").account_id},
            "default_units": 1,
            "rules": [{"method": "GET", "path": "/v1/flights*", "units": 1},
                      {"method": "GET", "path": "/v1/hotels*", "units": 1},
                      {"method": "POST", "path": "/v1/holds", "units": 10},
                      {"method": "POST", "path": "/v1/bookings", "units": 25}],
            "origin_auth": {"mode": "request", "secret_env": SECRET_ENV},
            "plans": [PLAN],  # units on a prepaid token, bought with x402
        }, {
            # Paid files: paying answers a presigned link instead of the bytes.
            "id": "reports", "prefix": "/reports", "kind": "files", "target": origin_url,
            "provider": "skyroute", "description": "SkyRoute's quarterly traffic report",
            "rails": ["x402-evm"], "prices": {"usdc": "0.01"},
            "pay_to": {"evm": devnet.merchant.address}, "default_units": 1,
        }, middleware_paygate(devnet, origin_url)],
        "files": {"directory": str(workdir / "files"), "url_ttl_seconds": 600},
    }


def _toml(config: dict[str, Any]) -> str:
    """Just enough TOML for the demo config (written so a person can read and reuse it)."""
    def key(k: str) -> str:  # bare when TOML allows it, else quoted (node addresses)
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else value(k)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    for section in ("server", "database"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in config[section].items()]
        lines.append("")
    for name, asset in config["assets"].items():
        lines.append(f"[assets.{name}]")
        lines += [f"{k} = {value(v)}" for k, v in asset.items()]
        lines.append("")
    for net, cfg in config["evm"].items():
        lines.append(f'[evm."{net}"]')
        lines += [f"{k} = {value(v)}" for k, v in cfg.items()]
        lines.append("")
    lines.append("[hedera]")
    lines += [f"{k} = {value(v)}" for k, v in config["hedera"].items()]
    lines.append("")
    for pg in config["paygates"]:
        lines.append("[[paygates]]")
        lines += [f"{k} = {value(v)}" for k, v in pg.items()]
        lines.append("")
    return "\n".join(lines)


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


class Steps:
    def __init__(self) -> None:
        self.n = 0

    def say(self, title: str, detail: str = "") -> None:
        self.n += 1
        print(f"\n[{self.n}] {title}", flush=True)
        if detail:
            for line in detail.splitlines():
                print(f"    {line}", flush=True)


async def run(port: int = 8402, once: bool = False, workdir: Path = Path("var/demo")) -> int:
    from chains.evm.devnet import EvmDevnet
    from gateway.app import create_app
    from gateway.client import PayingClient
    from gateway.config import parse_config
    from gateway.demo.dev_signer import install as install_dev_signer
    from gateway.demo.skyroute import create_origin

    if workdir.exists():
        shutil.rmtree(workdir)  # a fresh chain needs a fresh ledger
    workdir.mkdir(parents=True)
    steps = Steps()
    from chains.hedera.devnet import HederaDevnet

    devnet = await asyncio.to_thread(EvmDevnet.start, payers=1)
    hedera = await asyncio.to_thread(HederaDevnet().start)
    runners: list[web.AppRunner] = []
    try:
        secret = secrets.token_urlsafe(32)
        os.environ[SECRET_ENV] = secret
        os.environ[SETTLER_ENV] = devnet.settler.private_key
        os.environ[HEDERA_KEY_ENV] = hedera.account("spender").private_key
        origin_port = _free_port(9001)
        runners.append(await _serve(create_origin([secret]), origin_port))
        origin_url = f"http://127.0.0.1:{origin_port}"
        port = _free_port(port)
        config_dict = demo_config(devnet, hedera, origin_url, port, workdir)
        (workdir / "tollgate.toml").write_text(_toml(config_dict))
        app = create_app(parse_config(config_dict))
        # The wallet page may sign for bob and carol (alice spends in the walkthrough):
        # a devnet-only signer holding keys this demo generated on its local network.
        install_dev_signer(app, hedera.network, {n: hedera.account(n) for n in ("bob", "carol")})
        runners.append(await _serve(app, port))
        gw = f"http://127.0.0.1:{port}"
        payer = devnet.payers[0]
        steps.say("Started a local devnet, the SkyRoute origin and the gateway", "\n".join([
            f"anvil       {devnet.rpc_url} ({devnet.network}), test USDC {devnet.token_address}",
            f"hedera      node {hedera.grpc_address}, mirror {hedera.mirror_url}",
            f"SkyRoute    {origin_url} (accepts only gateway-signed requests)",
            f"gateway     {gw} (config written to {workdir / 'tollgate.toml'})",
            f"payer       {payer.address}",
        ]))
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.get(gw + "/healthz")
            steps.say("Health", f"GET /healthz -> {r.status_code} {r.text}")
            r = await http.get(origin_url + "/v1/flights")
            steps.say("Calling SkyRoute directly, without the gateway",
                      f"GET {origin_url}/v1/flights -> {r.status_code} {r.json()['error']}")
            r = await http.get(gw + "/skyroute/v1/flights")
            offer = decode_header(r.headers["PAYMENT-REQUIRED"], max_len=65536)["accepts"][0]
            steps.say("Calling through the gateway without paying", (
                f"GET /skyroute/v1/flights -> {r.status_code}\n"
                f"PAYMENT-REQUIRED: {offer['amount']} atomic units of {offer['asset']} "
                f"on {offer['network']} to {offer['payTo']}"))
        async with PayingClient(evm_key=payer.private_key, spend_limit=100_000) as client:
            r = await client.get(gw + "/skyroute/v1/flights")
            receipt = client.last_receipt or {}
            steps.say("Paying with x402 on the local chain", (
                f"GET /skyroute/v1/flights -> {r.status_code}, {len(r.json()['flights'])} flights\n"
                f"receipt: success={receipt.get('success')} tx={receipt.get('transaction')}"))
            costs = []
            for method, path in (("GET", "/v1/hotels"), ("POST", "/v1/holds"),
                                 ("POST", "/v1/bookings")):
                before = client.spent.total(devnet.token_address)
                r = await client.request(method, gw + "/skyroute" + path)
                paid = client.spent.total(devnet.token_address) - before
                costs.append(f"{method:4} {path:13} -> {r.status_code}, paid {paid} "
                             f"atomic units ({paid // 1000} units)")
            steps.say("Per-route costs (1 unit = 0.001 USDC)", "\n".join(costs))
            steps.say("Spent in total",
                      f"{client.spent.total(devnet.token_address)} atomic units of test USDC")
            await _file_walkthrough(steps, gw, app, client, devnet.token_address)
            await plan_walkthrough(steps, gw, client, devnet.token_address)
            await middleware_walkthrough(steps, gw, app, devnet, client)
        await _session_walkthrough(steps, gw, hedera)
        bob = hedera.account("bob").account_id
        wallet = f"{gw}/?paygate=skyroute&account={bob}"
        steps.say("The wallet page", (
            f"{wallet}\n"
            f"Open it, choose \"Use this demo account\" (bob, {bob}; devnet only), approve an "
            "allowance,\nopen a session, call SkyRoute from the page, top up, revoke."))
        if once:
            return 0
        print(f"\nThe gateway keeps serving on {gw} — try:\n"
              f"    the wallet page: {wallet}\n"
              f"    .venv/bin/tollgate pay {gw}/skyroute/v1/flights --key {payer.private_key}\n"
              "    .venv/bin/tollgate pay --session <token from the wallet page> "
              f"{gw}/skyroute/v1/flights\n"
              "Ctrl-C to stop.", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        await asyncio.to_thread(devnet.stop)
        await asyncio.to_thread(hedera.stop)


async def _file_walkthrough(steps: Steps, gw: str, app: web.Application, client,
                            token: str) -> None:
    """The provider uploads a file through the signed admin API; a caller buys it with
    x402 and downloads a range of it from the presigned link."""
    from gateway.admin.auth import sign
    from gateway.admin.common import ADMIN

    key, secret = await app[ADMIN].keys.create("skyroute", False)
    data = b"".join(f"{i:05d} SkyRoute quarterly traffic\n".encode() for i in range(2000))
    boundary = "tollgate-demo"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"q3.txt\"\r\nContent-Type: text/plain\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    path = "/api/v1/paygates/reports/files/q3.txt"
    ts = str(int(time.time()))
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.put(gw + path, content=body, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}", "X-PAY-Key": key.id,
            "X-PAY-Timestamp": ts, "X-PAY-Signature": sign(secret, ts, "PUT", path, body)})
        made = r.json()
        before = client.spent.total(token)
        bought = await client.get(gw + "/reports/q3.txt")
        link = bought.json()
        part = await http.get(link["url"], headers={"Range": "bytes=0-63"})
    paid = client.spent.total(token) - before
    steps.say("A paid file, delivered by presigned link", (
        f"PUT {path} (signed admin API) -> {r.status_code}, {made.get('size')} bytes, "
        f"sha256 {str(made.get('sha256'))[:16]}...\n"
        f"GET /reports/q3.txt -> {bought.status_code}, paid {paid} atomic units: "
        f"{link['url'][:len(gw) + 40]}...\n"
        f"GET <link> with Range: bytes=0-63 -> {part.status_code} "
        f"{part.headers.get('Content-Range')}: {part.content[:28].decode()!r}..."))


def hbar(tinybars: int) -> str:
    from gateway.config import format_atomic

    return format_atomic(tinybars, 8)


async def _session_walkthrough(steps: Steps, gw: str, hedera) -> None:
    """A person's session: approve 0.2 HBAR once, then spend it call by call."""
    from gateway.demo.wallet import approve_allowance

    alice = hedera.account("alice")
    merchant_before = hedera.balance("merchant")
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(gw + "/api/sessions/challenge",
                            json={"account_id": alice.account_id, "paygate": "skyroute"})
        ch = r.json()
        allowance = 20 * TINYBAR_PER_HBAR // 100  # 0.2 HBAR = four calls at 0.05
        tx_id = await approve_allowance(hedera, alice, ch["spender"], allowance, ch["memo"])
        r = await http.post(gw + "/api/sessions/activate", json={
            "account_id": alice.account_id, "paygate": "skyroute", "nonce": ch["nonce"],
            "transaction_id": tx_id})
        token = r.json()["token"]
        steps.say("A Hedera allowance session", (
            f"{alice.account_id} approved 0.2 HBAR to the gateway ({ch['spender']}) "
            f"with memo {ch['memo']}\n"
            f"POST /api/sessions/activate -> {r.status_code}, token {token[:12]}..."))
        lines = []
        for i in range(5):
            r = await http.get(gw + "/skyroute/v1/flights", headers={
                "X-Hedera-Session-Id": token, "Idempotency-Key": f"demo-call-{i}"})
            if r.status_code == 200:
                lines.append(f"call {i + 1}: 200, remaining "
                             f"{hbar(int(r.headers['X-Tollgate-Remaining']))} HBAR")
            else:
                body = r.json()
                lines.append(f"call {i + 1}: {r.status_code} {body['error']}, "
                             f"top up at {body.get('top_up_url')}")
        r = await http.get(gw + "/api/sessions/current", headers={"X-Hedera-Session-Id": token})
        view = r.json()
        lines.append(f"session: {view['state']}, {view['calls']} calls, "
                     f"{hbar(view['spent'])} HBAR spent")
        steps.say("Spending from the session until it runs out (0.05 HBAR per call)",
                  "\n".join(lines))
    for _ in range(100):  # the pull worker collects within its 2 s window
        if hedera.balance("merchant") > merchant_before:
            break
        await asyncio.sleep(0.1)
    pulled = hedera.balance("merchant") - merchant_before
    steps.say("Charges pulled on chain in one approved transfer",
              f"merchant received {hbar(pulled)} HBAR")


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner
