"""The devnet: anvil up on loopback, TestUSDC deployed with the right domain, payers funded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_typed_data

from chains.evm.devnet import DevnetError, EvmDevnet
from chains.evm.rpc import RpcError, revert_reason, selector
from tests.chains.evm.conftest import TRANSFER_TYPES, token_domain

REPO_ROOT = Path(__file__).resolve().parents[3]


async def test_token_metadata(evm_devnet, evm_rpc):
    token = evm_devnet.token_address
    assert evm_devnet.rpc_url.startswith("http://127.0.0.1:")
    assert await evm_rpc.chain_id() == evm_devnet.chain_id == 31337
    assert await evm_rpc.token_name(token) == "USD Coin"
    assert await evm_rpc.token_version(token) == "2"
    assert await evm_rpc.decimals(token) == 6


async def test_domain_separator_matches_eip712(evm_devnet, evm_rpc):
    # eth_account's own EIP-712 encoder is the independent reference for the domain hash.
    signable = encode_typed_data(
        domain_data=token_domain(evm_devnet),
        message_types=TRANSFER_TYPES,
        message_data={"from": evm_devnet.payers[0].address, "to": evm_devnet.merchant.address, "value": 1,
                      "validAfter": 0, "validBefore": 1, "nonce": bytes(32)},
    )
    assert await evm_rpc.domain_separator(evm_devnet.token_address) == bytes(signable.header)


async def test_payers_funded_poor_is_not(evm_devnet, evm_rpc):
    token, block = evm_devnet.token_address, evm_devnet.ready_block
    for payer in evm_devnet.payers:
        assert await evm_rpc.balance_of(token, payer.address, block) == evm_devnet.mint_amount == 1_000_000_000
    assert await evm_rpc.balance_of(token, evm_devnet.poor.address, block) == 0
    assert await evm_rpc.balance_of(token, evm_devnet.merchant.address, block) == 0
    assert await evm_rpc.get_balance(evm_devnet.settler.address) > 10**18  # gas money


def test_accounts_have_distinct_roles_and_matching_keys(evm_devnet):
    accounts = evm_devnet.accounts()
    assert len({a.address for a in accounts}) == len(accounts)
    assert [a.role for a in accounts][:3] == ["deployer", "settler", "merchant"]
    for account in accounts:
        assert Account.from_key(account.private_key).address == account.address
    # anvil's first dev account: a known constant, so the derivation path is the right one
    assert evm_devnet.deployer.address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def test_describe_has_what_a_person_needs(evm_devnet):
    info = json.loads(json.dumps(evm_devnet.describe()))  # JSON-serialisable
    assert info["rpc_url"] == evm_devnet.rpc_url
    assert info["network"] == "eip155:31337"
    assert info["token"] == {"address": evm_devnet.token_address, "name": "USD Coin", "version": "2",
                             "symbol": "USDC", "decimals": 6}
    assert info["accounts"]["settler"]["private_key"] == evm_devnet.settler.private_key
    assert info["accounts"]["merchant"]["address"] == evm_devnet.merchant.address
    assert [p["address"] for p in info["accounts"]["payers"]] == [p.address for p in evm_devnet.payers]
    assert info["accounts"]["poor"]["address"] == evm_devnet.poor.address


async def test_only_owner_can_mint(evm_devnet, evm_rpc):
    data = selector("mint(address,uint256)") + encode(["address", "uint256"], [evm_devnet.poor.address, 1])
    with pytest.raises(RpcError) as err:
        await evm_rpc.eth_call(evm_devnet.token_address, data, sender=evm_devnet.payers[0].address)
    assert err.value.is_revert
    assert revert_reason(err.value.data) == "Ownable: caller is not the owner"
    await evm_rpc.eth_call(evm_devnet.token_address, data, sender=evm_devnet.deployer.address)  # owner may


def test_missing_anvil_says_how_to_install(tmp_path):
    with pytest.raises(DevnetError, match="npm ci"):
        EvmDevnet.start(anvil_path=tmp_path / "anvil")


def test_stop_kills_anvil():
    # A second, short-lived chain (interval mining this time): proves stop() frees the node.
    with EvmDevnet.start(payers=1, block_time=0.1, gas_limit=60_000_000) as devnet:
        gas_limit = devnet.request("eth_getBlockByNumber", ["latest", False])["gasLimit"]
        url = devnet.rpc_url
        proc = devnet._proc
        assert devnet.running
    assert int(gas_limit, 16) == 60_000_000  # options reach anvil
    assert proc.poll() is not None
    assert not devnet.running
    with pytest.raises(httpx.ConnectError):
        httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})


def test_cli_prints_description_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "chains.evm.devnet", "--json", "--payers", "1"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        for line in proc.stdout:  # bounded by pytest-timeout
            lines.append(line)
            if line.rstrip() == "}":
                break
        info = json.loads("".join(lines))
        assert info["token"]["name"] == "USD Coin" and len(info["accounts"]["payers"]) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.post(info["rpc_url"], json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
