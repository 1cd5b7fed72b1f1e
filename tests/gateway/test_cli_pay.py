"""`tollgate pay URL` (as `python -m gateway pay`) in a subprocess against an in-process
gateway on loopback and the devnet."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from chains.payments import PaymentStore
from tests.gateway.x402_support import PRICE, token_balance, x402_config

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 60.0  # bound only; a run takes a few seconds (eth_account import)


pytestmark = pytest.mark.usefixtures("settler_key")


async def tollgate_pay(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TOLLGATE_PAYER_KEY"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "pay", *args, cwd=REPO, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def paid_route(gateway, origin, evm_devnet):
    o = await origin()
    g = await gateway(x402_config(evm_devnet, o.url))
    return g, o


async def test_pay_prints_200_and_the_receipt(paid_route, evm_devnet):
    g, o = paid_route
    payer = evm_devnet.payers[0]
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    code, out, err = await tollgate_pay(g.url + "/sky/v1/flights?from=ZRH",
                                        "--key", payer.private_key, "--max", "0.01")
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines[0] == "HTTP 200"
    receipt_lines = [line for line in lines if line.startswith("receipt: ")]
    assert len(receipt_lines) == 1
    receipt = json.loads(receipt_lines[0].removeprefix("receipt: "))
    assert receipt["success"] is True and receipt["payer"] == payer.address
    mined = evm_devnet.request("eth_getTransactionReceipt", [receipt["transaction"]])
    assert int(mined["status"], 16) == 1
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PRICE
    assert len(o.requests) == 1
    assert "not paid" not in err


async def test_max_below_the_price_pays_nothing(paid_route, evm_devnet):
    g, o = paid_route
    payer = evm_devnet.payers[0]
    payer_before = token_balance(evm_devnet, payer.address)
    code, out, err = await tollgate_pay(g.url + "/sky/v1/flights",
                                        "--key", payer.private_key, "--max", "0.0005")
    assert code == 1, (out, err)
    assert out.splitlines()[0] == "HTTP 402"
    assert "not paid" in err and "per-request maximum" in err
    assert token_balance(evm_devnet, payer.address) == payer_before
    assert o.requests == []
    assert await PaymentStore(g.gw.engine, g.gw.clock).counts() == {}


async def test_missing_key_is_a_usage_error(paid_route):
    g, o = paid_route
    code, out, err = await tollgate_pay(g.url + "/sky/v1/flights", "--max", "0.01")
    assert code == 2, (out, err)
    assert "--key" in err
    assert o.requests == []


async def test_a_bad_max_is_a_usage_error():
    code, out, err = await tollgate_pay("http://127.0.0.1:9/x", "--key", "0x" + "11" * 32,
                                        "--max", "lots")
    assert code == 2
    assert "--max 'lots' is not an amount" in err
