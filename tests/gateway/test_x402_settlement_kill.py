"""Deferred settlement survives `kill -9`: real `tollgate serve` processes on one database
(SQLite file, PostgreSQL), anvil with blocks mined by hand so that settlements are in flight
when the process dies. Every served payment must settle exactly once, before its
authorization expires, checked on chain. With a batch contract, several batch transactions
are in flight (or persisted and not yet sent) at the kill; each payment settles by its own
transfer inside one of them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from chains.evm.settle import TransferAuthorization
from chains.evm.usage import item_paid
from store.db import create_engine_unpooled
from store.schema import payments
from tests.gateway.test_x402_settlement import automine_off, challenge_req
from tests.gateway.test_x402_settlement_recovery import authorization_used, db_url, postgres_server  # noqa: F401
from tests.gateway.x402_support import PRICE, sign_payment, token_balance, x402_config

pytestmark = pytest.mark.usefixtures("settler_key")

REPO = Path(__file__).resolve().parents[2]
NET_WAIT = 30.0  # bound on any wait; never a pass criterion
PAYMENTS = 30
BATCH_ITEMS = 8  # with a batch contract: four batches, several in flight at the kill


def _toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def to_toml(config: dict) -> str:
    """Enough TOML for a gateway config: tables, arrays of tables, inline values."""
    out = []
    for name, section in config.items():
        if isinstance(section, list):
            for item in section:
                out.append(f"[[{name}]]")
                out += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in item.items()]
            continue
        out.append(f"[{name}]")
        out += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in section.items()]
    return "\n".join(out) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Serve:
    """One `python -m gateway serve` process."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.port = free_port()
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "-c", str(config_path),
             "--port", str(self.port)],
            cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
            stdout=self.log, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, http) -> None:
        async with asyncio.timeout(NET_WAIT):
            while True:
                assert self.proc.poll() is None, "the gateway exited"
                try:
                    async with http.get(self.url + "/sky/v1/flights") as r:
                        if r.status == 402:
                            return
                except OSError:
                    pass
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=NET_WAIT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=NET_WAIT)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def pending_settlements(devnet) -> int:
    address = devnet.settler.address
    return (int(devnet.request("eth_getTransactionCount", [address, "pending"]), 16)
            - int(devnet.request("eth_getTransactionCount", [address, "latest"]), 16))


async def wait_until(predicate, what: str) -> None:
    async with asyncio.timeout(NET_WAIT):
        while not predicate():
            await asyncio.sleep(0.05)
    assert predicate(), what


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("mined", ["after_restart", "while_down"])
async def test_kill_9_mid_settlement_every_served_payment_settles_once_in_time(
        origin, http, evm_devnet, db_url, tmp_path, mined, batched):  # noqa: F811
    o = await origin()
    extra = {"deferred_max_timeout_seconds": 60}
    if batched:
        extra |= {"batch_contract": evm_devnet.batch_address, "batch_max_items": BATCH_ITEMS}
    config = x402_config(evm_devnet, o.url, settlement="deferred", evm_extra=extra)
    config["server"] = {"allow_private_targets": True, "settlement_interval_seconds": 0.2,
                        "settlement_lease_seconds": 2, "shutdown_grace_seconds": 1}
    config["database"] = {"url": db_url, "master_key_env": "TOLLGATE_TEST_UNSET_MASTER",
                          "master_key_file": str(tmp_path / "master.key")}
    config_path = tmp_path / "tollgate.toml"
    config_path.write_text(to_toml(config))
    merchant = evm_devnet.merchant.address
    merchant_before = token_balance(evm_devnet, merchant)
    payers = evm_devnet.payers
    payers_before = {p.address: token_balance(evm_devnet, p.address) for p in payers}

    first = Serve(config_path, tmp_path / "first.log")
    second = None
    try:
        with automine_off(evm_devnet):
            await first.ready(http)
            req = await challenge_req(http, first.url + "/sky/v1/flights")
            assert req["maxTimeoutSeconds"] == 60
            signed_at = time.time()
            headers = [sign_payment(evm_devnet, payers[i % len(payers)], req,
                                    valid_before=int(signed_at) + req["maxTimeoutSeconds"])
                       for i in range(PAYMENTS)]
            for header in headers:
                async with http.get(first.url + "/sky/v1/flights",
                                    headers={"PAYMENT-SIGNATURE": header}) as r:
                    assert r.status == 200, await r.text()
            # Settlements in flight (sent, not mined) at the kill.
            await wait_until(lambda: pending_settlements(evm_devnet) >= (2 if batched else 20),
                             "settlements in flight")
            first.kill()
            if mined == "while_down":
                evm_devnet.request("evm_mine")

            second = Serve(config_path, tmp_path / "second.log")
            await second.ready(http)
            engine = create_engine_unpooled(db_url)
            try:
                async with asyncio.timeout(3 * NET_WAIT):
                    while True:
                        async with engine.connect() as conn:
                            rows = (await conn.execute(select(
                                payments.c.state, payments.c.tx_hash, payments.c.valid_before,
                                payments.c.payload))).all()
                        if all(r.state == "settled" for r in rows):
                            break
                        assert not [r for r in rows if r.state in ("failed", "void")], rows
                        evm_devnet.request("evm_mine")
                        await asyncio.sleep(0.2)
            finally:
                await engine.dispose()
    finally:
        first.stop()
        if second is not None:
            second.stop()

    assert len(rows) == PAYMENTS
    assert len(o.requests) == PAYMENTS
    # Exactly once, on chain: each authorization used, each by its own mined transfer
    # before it expired, and the money moved once per payment.
    if batched:  # a few batch transactions, each paying its own items
        assert len({r.tx_hash for r in rows}) < PAYMENTS
    else:
        assert len({r.tx_hash for r in rows}) == PAYMENTS
    for r in rows:
        auth = json.loads(r.payload)["payment"]["payload"]["authorization"]
        assert authorization_used(evm_devnet, auth["from"], auth["nonce"])
        receipt = evm_devnet.request("eth_getTransactionReceipt", [r.tx_hash])
        assert int(receipt["status"], 16) == 1
        transfer = TransferAuthorization(auth["from"], auth["to"], int(auth["value"]),
                                         int(auth["validAfter"]), int(auth["validBefore"]),
                                         bytes.fromhex(auth["nonce"][2:]))
        assert item_paid(receipt["logs"], evm_devnet.token_address, transfer)
        block = evm_devnet.request("eth_getBlockByNumber", [receipt["blockNumber"], False])
        assert int(block["timestamp"], 16) < int(auth["validBefore"]) == r.valid_before
    assert token_balance(evm_devnet, merchant) == merchant_before + PAYMENTS * PRICE
    for i, p in enumerate(payers):
        count = len(range(i, PAYMENTS, len(payers)))
        assert token_balance(evm_devnet, p.address) == payers_before[p.address] - count * PRICE
