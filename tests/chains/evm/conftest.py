"""Fixtures for the EVM chain layer, on the session's one anvil + TestUSDC.

``evm_devnet`` (session) comes from tests/conftest.py: a started EvmDevnet with automine.
``evm_rpc`` (session): an :class:`chains.evm.rpc.RpcClient` on it.
``evm_settler`` (session): a :class:`chains.evm.settle.Settler` using the devnet's settler key.
``sign_authorization`` (function): builds and signs an EIP-3009 TransferWithAuthorization.
"""

from __future__ import annotations

import os

import pytest
from eth_account import Account

from chains.evm.devnet import EvmDevnet
from chains.evm.rpc import RpcClient
from chains.evm.settle import Settler, TransferAuthorization
from tests.support.eip3009 import TRANSFER_TYPES



def token_domain(devnet: EvmDevnet) -> dict:
    return {
        "name": devnet.token_name,
        "version": devnet.token_version,
        "chainId": devnet.chain_id,
        "verifyingContract": devnet.token_address,
    }


@pytest.fixture(scope="session")
async def evm_rpc(evm_devnet):
    async with RpcClient(evm_devnet.rpc_url) as rpc:
        yield rpc


@pytest.fixture(scope="session")
async def evm_settler(evm_devnet, evm_rpc):
    return Settler(evm_rpc, evm_devnet.settler.private_key)


@pytest.fixture
def sign_authorization(evm_devnet):
    """``sign(payer, value=..., to=merchant, valid_after=0, valid_before=now+1h, nonce=random)``
    -> (TransferAuthorization, 65-byte signature). ``payer`` is a DevAccount."""

    def sign(payer, value=1_000, *, to=None, valid_after=0, valid_before=None, nonce=None):
        if valid_before is None:
            now = int(evm_devnet.request("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
            valid_before = now + 3600
        auth = TransferAuthorization(
            from_=payer.address,
            to=to or evm_devnet.merchant.address,
            value=value,
            valid_after=valid_after,
            valid_before=valid_before,
            nonce=nonce or os.urandom(32),
        )
        message = {
            "from": auth.from_,
            "to": auth.to,
            "value": auth.value,
            "validAfter": auth.valid_after,
            "validBefore": auth.valid_before,
            "nonce": auth.nonce,
        }
        signed = Account.sign_typed_data(payer.private_key, token_domain(evm_devnet), TRANSFER_TYPES, message)
        return auth, bytes(signed.signature)

    return sign
