"""Gateway configs for bench_all.py, and the pre-timing work: signed x402 payments, session
tokens and idempotency keys."""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

SETTLER_ENV = "TOLLGATE_BENCH_SETTLER_KEY"
HEDERA_KEY_ENV = "TOLLGATE_BENCH_HEDERA_KEY"
SESSION_PRICE = "0.00000001"  # 1 tinybar a call: allowances never run out during a run
SESSION_ALLOWANCE = 10**11  # tinybars, per session


def _server(port: int, work: Path) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
allow_private_targets = true
session_api_per_minute = 0

[database]
url = "sqlite+aiosqlite:///{work / 'tollgate.db'}"
master_key_env = "TOLLGATE_BENCH_UNSET_MASTER_KEY"
master_key_file = "{work / 'master.key'}"
"""


def x402_config(devnet, origin_url: str, port: int, work: Path, settlement: str,
                batch: bool = False) -> str:
    """x402-evm paygate /sky with `settlement`; GET /sky/v1/status is a free route. `batch`:
    settle through the devnet's SettlementBatch contract (many payments a transaction). It
    also sells a plan on prepaid tokens (the /v1/authorize run spends from one)."""
    batch_line = f'batch_contract = "{devnet.batch_address}"' if batch else ""
    return _server(port, work) + f"""
[assets.usdc]
type = "eip3009"
network = "{devnet.network}"
address = "{devnet.token_address}"
decimals = 6
eip712_name = "{devnet.token_name}"
eip712_version = "{devnet.token_version}"

[evm."{devnet.network}"]
rpc_url = "{devnet.rpc_url}"
settler_key_env = "{SETTLER_ENV}"
deferred_exposure_limit = {10**15}
{batch_line}

[[paygates]]
id = "sky"
prefix = "/sky"
target = "{origin_url}"
prices = {{ usdc = "0.001" }}
pay_to = {{ evm = "{devnet.merchant.address}" }}
settlement = "{settlement}"
rails = ["x402-evm", "prepaid-token"]

[[paygates.plans]]
id = "bench"
units = 1000000000
prices = {{ usdc = "1" }}

[[paygates.rules]]
method = "GET"
path = "/v1/status"
units = 0
"""


def session_config(net, origin_url: str, port: int, work: Path) -> str:
    """hedera-session paygate /sky on the local Hedera network. The mirror TTL and pull
    interval are an hour: no mirror read and no pull happens during a run, so the figure
    is the per-call path only."""
    nodes = ", ".join(f'"{k}" = "{v}"' for k, v in net.network_map().items())
    return _server(port, work) + f"""
[assets.hbar]
type = "hbar"
network = "hedera:devnet"

[hedera]
network = "hedera:devnet"
nodes = {{ {nodes} }}
mirror_url = "{net.mirror_url}"
account_id = "{net.account('spender').account_id}"
private_key_env = "{HEDERA_KEY_ENV}"
mirror_ttl_seconds = 3600
pull_interval_seconds = 3600

[[paygates]]
id = "sky"
prefix = "/sky"
target = "{origin_url}"
rails = ["hedera-session"]
prices = {{ hbar = "{SESSION_PRICE}" }}
pay_to = {{ hedera = "{net.account('merchant').account_id}" }}
"""


async def insert_sessions(db_url: str, count: int, owner: str, spender: str) -> list[str]:
    """Open `count` sessions straight in the store (nonce + session, as activation does)
    and return their tokens. The owner's allowance on the devnet must cover them."""
    from sessions.lifecycle import new_token
    from sessions.records import SessionRecords
    from store.clock import SystemClock
    from store.db import create_engine
    from store.migrations import migrate

    engine = create_engine(db_url)
    try:
        await migrate(engine)
        records = SessionRecords(engine, SystemClock())
        tokens = []
        for _ in range(count):
            nonce, _ = await records.issue_nonce("sky", owner, 600)
            token = new_token()
            if await records.create_session(nonce=nonce, token=token, paygate_id="sky",
                                            owner=owner, spender=spender,
                                            allowance=SESSION_ALLOWANCE, ttl=86400) is None:
                raise RuntimeError("session not created")
            tokens.append(token)
        return tokens
    finally:
        await engine.dispose()


def session_lines(tokens: list[str], count: int) -> list[dict[str, str]]:
    """`count` calls with distinct idempotency keys, round-robin over `tokens`."""
    return [{"X-Hedera-Session-Id": tokens[i % len(tokens)], "Idempotency-Key": uuid.uuid4().hex}
            for i in range(count)]


def _sign(job: tuple) -> list[str]:
    from chains.evm.codec import build_exact_evm_payload
    from chains.x402 import PaymentRequirements, encode_header

    keys, wire, count, valid_before = job
    try:  # the parent is pinned to the load core; signing (untimed) may use every core
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    except OSError:
        pass
    req = PaymentRequirements.model_validate(wire)
    now = int(time.time())
    return [encode_header({"x402Version": 2, "accepted": wire,
                           "payload": build_exact_evm_payload(keys[i % len(keys)], req, now=now,
                                                              valid_before=valid_before).to_wire(),
                           "extensions": {}})
            for i in range(count)]


def signed_lines(payer_keys: list[str], requirements_wire: dict, count: int,
                 valid_seconds: int = 3600) -> list[dict[str, str]]:
    """`count` distinct signed x402 payments (one per request), signed on every core."""
    valid_before = int(time.time()) + valid_seconds
    workers = 2
    per = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    jobs = [(payer_keys[i::workers] or payer_keys, requirements_wire, n, valid_before)
            for i, n in enumerate(per) if n]
    if count <= 200:
        headers = [h for job in jobs for h in _sign(job)]
    else:
        with ProcessPoolExecutor(len(jobs), mp_context=get_context("spawn")) as pool:
            headers = [h for chunk in pool.map(_sign, jobs) for h in chunk]
    return [{"PAYMENT-SIGNATURE": h} for h in headers]


async def issue_token(db_url: str, paygate_id: str, plan_id: str) -> str:
    """A prepaid token with a billion units, written straight into a gateway's store."""
    from sessions.tokens import Tokens
    from store.clock import SystemClock
    from store.db import create_engine

    engine = create_engine(db_url)
    try:
        token, _ = await Tokens(engine, SystemClock()).issue(paygate_id, plan_id, 10**9, 1)
    finally:
        await engine.dispose()
    return token
