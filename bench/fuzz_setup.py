"""Set-up for the gateway fuzzer (bench/fuzz.py): the origin, the gateways' config, and
the material inputs are built from (real 402 requirements, invalid signed payments,
session nonces, proofs and tokens), all on the devnets given."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import aiohttp
from aiohttp import web

from bench.fuzz_inputs import FREE_SUB, Context

SETTLER_ENV = "TOLLGATE_FUZZ_SETTLER_KEY"
HEDERA_ENV = "TOLLGATE_FUZZ_HEDERA_KEY"
MAX_REQUEST_BYTES = 64 * 1024


# -- the origin ---------------------------------------------------------------------------


async def start_origin(report: Callable[[], Any]) -> tuple[web.AppRunner, str]:
    """Answers everything with 200; classifies each call it receives into `report()`
    (`paid_origin_calls`, `unpaid_origin_calls`, `free_origin_calls`)."""
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        parts = request.path.split("/")
        paygate = parts[2] if len(parts) > 2 and parts[1] == "o" else "?"
        free = request.path.startswith(f"/o/{paygate}{FREE_SUB}")
        units = request.headers.get("X-Tollgate-Units")
        payer = request.headers.get("X-Tollgate-Payer", "")
        seen = f"{request.method} {request.raw_path[:300]!r} units={units} payer={payer!r}"
        if payer:
            seen += f" x-payment={_decoded(request.headers.get('X-Payment', ''))}"
        if payer:
            report().paid_origin_calls.append(seen)
        elif units != "0" or not free:
            report().unpaid_origin_calls.append(seen)
        else:
            report().free_origin_calls += 1
        return web.json_response({"ok": True})

    # The gateway's own request-line and header limits: with aiohttp's defaults (8 KiB)
    # the origin refuses long paths the gateway accepts, and its 400 to a HEAD carries a
    # body the gateway's client then cannot parse (a 502 that says nothing about the
    # gateway).
    app = web.Application(handler_args={"max_line_size": 16384, "max_field_size": 16384})
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def _decoded(value: str) -> str:
    try:
        return json.dumps(json.loads(base64.b64decode(value + "=" * (-len(value) % 4))))[:1500]
    except ValueError:
        return repr(value[:300])


# -- the gateways -------------------------------------------------------------------------


def fuzz_config(evm, net, origin_url: str, work: Path, *, per_minute: int,
                database_url: str | None = None) -> dict[str, Any]:
    rules = [{"path": "/free/*", "units": 0}, {"method": "POST", "path": "/v1/bookings", "units": 25}]
    merchant_evm, merchant_hbar = evm.merchant.address, net.account("merchant").account_id

    def pg(pid: str, rails: list[str], **extra: Any) -> dict[str, Any]:
        prices = {}
        if "x402-evm" in rails:
            prices["usdc"] = "0.001"
        if any(r != "x402-evm" for r in rails):
            prices["hbar"] = "0.05"
        return {"id": pid, "prefix": f"/{pid}", "target": f"{origin_url}/o/{pid}", "rails": rails,
                "prices": prices, "pay_to": {"evm": merchant_evm, "hedera": merchant_hbar},
                "rules": rules, **extra}

    return {
        "server": {"allow_private_targets": True, "session_api_per_minute": per_minute,
                   "max_request_bytes": MAX_REQUEST_BYTES},
        "database": {"url": database_url or f"sqlite+aiosqlite:///{work / 'tollgate.db'}",
                     "master_key_env": f"TOLLGATE_FUZZ_UNSET_{uuid.uuid4().hex.upper()}",
                     "master_key_file": str(work / "master.key")},
        "assets": {"usdc": {"type": "eip3009", "network": evm.network, "address": evm.token_address,
                            "decimals": 6, "eip712_name": evm.token_name,
                            "eip712_version": evm.token_version},
                   "hbar": {"type": "hbar", "network": net.network}},
        "evm": {evm.network: {"rpc_url": evm.rpc_url, "settler_key_env": SETTLER_ENV}},
        "hedera": {"network": net.network, "nodes": net.network_map(), "mirror_url": net.mirror_url,
                   "account_id": net.account("spender").account_id, "private_key_env": HEDERA_ENV,
                   "mirror_ttl_seconds": 30, "pull_interval_seconds": 3600},
        "paygates": [pg("evm", ["x402-evm"], settlement="after"),
                     pg("hbar", ["x402-hedera"], settlement="before"),
                     pg("sess", ["hedera-session"]),
                     pg("all", ["x402-evm", "x402-hedera", "hedera-session"], settlement="deferred"),
                     pg("other", ["hedera-session"])],
    }


async def start_gateway(config: dict[str, Any]) -> tuple[web.AppRunner, str]:
    from gateway.app import create_app
    from gateway.config import parse_config

    app = create_app(parse_config(config))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


# -- what the inputs are built from ------------------------------------------------------


async def _approve(net, owner, amount: int, memo: str) -> str:
    def run() -> str:
        import hiero_sdk_python as sdk

        client = net.sdk_client(owner)
        try:
            tx = (sdk.AccountAllowanceApproveTransaction()
                  .approve_hbar_allowance(owner.sdk_account_id(), net.account("spender").sdk_account_id(),
                                          sdk.Hbar.from_tinybars(amount))
                  .set_transaction_memo(memo))
            receipt = tx.execute(client)
            if sdk.ResponseCode(receipt.status).name != "SUCCESS":
                raise RuntimeError(f"approval failed: {receipt.status}")
            return str(tx.transaction_id)
        finally:
            client.close()
    return await asyncio.to_thread(run)


async def _post(http: aiohttp.ClientSession, url: str, body: dict, status: int) -> dict:
    async with http.post(url, json=body) as r:
        if r.status != status:
            raise RuntimeError(f"set-up: {url} answered {r.status}: {await r.text()}")
        return await r.json()


async def build_context(evm, net, http: aiohttp.ClientSession, gw: str, pool: int,
                        slow_inputs: bool) -> Context:
    """Learn the offered requirements from real 402s, sign `pool` invalid payments per
    chain, and open the sessions and nonces the session inputs use."""
    from chains.evm.codec import build_exact_evm_payload
    from chains.hedera.devnet import HBAR
    from chains.hedera.exact_client import build_exact_hedera_payload
    from chains.x402 import PaymentRequirements, decode_header
    from sessions.proof import memo_for, signed_bytes

    reqs: list[dict] = []
    for method, path in (("GET", "/evm/v1/flights"), ("GET", "/hbar/v1/flights"),
                         ("GET", "/all/v1/flights"), ("POST", "/all/v1/bookings")):
        async with http.request(method, gw + path) as r:
            assert r.status == 402, (path, r.status)
            reqs += decode_header(r.headers["PAYMENT-REQUIRED"], max_len=65536)["accepts"]
    evm_reqs = [r for r in reqs if r["network"].startswith("eip155:")]
    hbar_reqs = [r for r in reqs if r["network"].startswith("hedera:")]

    # EVM authorizations, each invalid: no funds, another chain, too little, wrong
    # recipient, expired, not yet valid, or a `from` the signature does not recover to.
    now = int(time.time())
    payer, poor = evm.payers[0], evm.poor
    evm_payloads = []
    for i in range(pool):
        req = PaymentRequirements.model_validate(evm_reqs[i % len(evm_reqs)])
        kind = i % 7
        key, kw = payer.private_key, {}
        if kind == 0:
            key = poor.private_key
        elif kind == 1:
            kw["chain_id"] = 1
        elif kind == 2:  # below the cheapest price, so no route can take it as overpayment
            kw["value"] = min(int(r["amount"]) for r in evm_reqs) - 1
        elif kind == 3:
            req = PaymentRequirements.model_validate({**req.to_wire(), "payTo": poor.address})
        elif kind == 4:
            kw["valid_before"] = now - 30
        elif kind == 5:
            kw["valid_after"] = now + 7200
        else:
            key, kw["from_"] = poor.private_key, payer.address
        evm_payloads.append(build_exact_evm_payload(key, req, now=now, **kw).to_wire())

    # Hedera transfers, each invalid: signed by another key, too little, wrong recipient,
    # expired, not yet valid, or from an account without the funds.
    tag = uuid.uuid4().hex[:8]
    hpayer = net.create_account(f"fuzz-payer-{tag}", "ED25519", 100 * HBAR)
    stranger = net.create_account(f"fuzz-stranger-{tag}", "ECDSA_SECP256K1", 100 * HBAR)
    broke = net.create_account(f"fuzz-broke-{tag}", "ED25519", 1)
    hbar_payloads = []
    for i in range(pool):
        req = dict(hbar_reqs[i % len(hbar_reqs)])
        kind = i % 6
        account, key, kw = hpayer.account_id, hpayer.private_key, {}
        if kind == 0:
            key = stranger.private_key
        elif kind == 1:
            req["amount"] = str(min(int(r["amount"]) for r in hbar_reqs) - 1)
        elif kind == 2:
            req["payTo"] = stranger.account_id
        elif kind == 3:
            kw["now"] = time.time() - 3600
        elif kind == 4:
            kw["now"] = time.time() + 3600
        else:
            account, key = broke.account_id, broke.private_key
        hbar_payloads.append(await asyncio.to_thread(build_exact_hedera_payload, req, account, key, **kw))

    # Sessions: owners with nonces that stay unspent, proofs for a nonce not in the pool,
    # and tokens that can never pay on the fuzzed paygates (ended, or for /other).
    owner = net.create_account(f"fuzz-owner-{tag}", "ED25519", 1000 * HBAR)
    owner_ec = net.create_account(f"fuzz-owner-ec-{tag}", "ECDSA_SECP256K1", 1000 * HBAR)
    holder = net.create_account(f"fuzz-holder-{tag}", "ED25519", 1000 * HBAR)
    unknown = "0.0.987654"
    nonces = []
    for account, paygate in ((owner.account_id, "sess"), (owner.account_id, "all"),
                             (owner_ec.account_id, "sess"), (owner_ec.account_id, "all"),
                             (unknown, "sess"), (holder.account_id, "other")):
        for _ in range(2):
            ch = await _post(http, gw + "/api/sessions/challenge",
                             {"account_id": account, "paygate": paygate}, 200)
            nonces.append((ch["nonce"], account, paygate))
    signatures, tx_ids = [], []
    for acct in (owner, owner_ec):
        outside = await _post(http, gw + "/api/sessions/challenge",
                              {"account_id": acct.account_id, "paygate": "sess"}, 200)
        sig = acct.sdk_private_key().sign(signed_bytes(outside["message"]))
        signatures += [sig.hex(), "0x" + sig.hex(), base64.b64encode(sig).decode()]
        tx_ids.append(await _approve(net, acct, 50 * HBAR, memo_for(outside["nonce"])))
    tokens = []
    for end in (False, True):
        ch = await _post(http, gw + "/api/sessions/challenge",
                         {"account_id": holder.account_id, "paygate": "other"}, 200)
        tx = await _approve(net, holder, 50 * HBAR, ch["memo"])
        tx_ids.append(tx)
        opened = await _post(http, gw + "/api/sessions/activate",
                             {"accountId": holder.account_id, "paygateId": "other",
                              "nonce": ch["nonce"], "transactionId": tx}, 201)
        tokens.append(opened["token"])
        if end:
            async with http.delete(gw + "/api/sessions/current",
                                   headers={"X-Hedera-Session-Id": opened["token"]}) as r:
                assert r.status == 200, r.status
    return Context(evm_reqs, hbar_reqs, evm_payloads, hbar_payloads, tokens, nonces,
                   [owner.account_id, owner_ec.account_id, holder.account_id, unknown,
                    stranger.account_id], tx_ids, signatures, slow_inputs)


async def fresh_postgres_database(server_url: str) -> str:
    """A new, migrated database on a running PostgreSQL server (the gateway only checks
    the schema version on PostgreSQL; it migrates SQLite itself)."""
    from sqlalchemy import text

    from store import migrations
    from store.db import create_engine

    name = "fuzz_" + uuid.uuid4().hex[:12]
    admin = create_engine(server_url)
    try:
        async with admin.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    url = server_url.rsplit("/", 1)[0] + "/" + name
    engine = create_engine(url)
    try:
        await migrations.migrate(engine)
    finally:
        await engine.dispose()
    return url
