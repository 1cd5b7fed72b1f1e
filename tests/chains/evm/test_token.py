"""TestUSDC's EIP-3009 extras: receiveWithAuthorization and cancelAuthorization."""

from __future__ import annotations

import asyncio
import os

import pytest
from eth_abi import encode
from eth_account import Account
from eth_utils import keccak

from chains.evm.rpc import RpcError, revert_reason, selector
from chains.evm.settle import split_signature
from tests.chains.evm.conftest import token_domain
from tests.support.eip3009 import AUTH_FIELDS

RECEIVE = selector("receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)")
CANCEL = selector("cancelAuthorization(address,bytes32,uint8,bytes32,bytes32)")


async def _send(rpc, sender, token, data):
    """Send from an unlocked anvil dev account; returns the receipt.

    Even under automine anvil mines just after answering the send, so poll (bounded).
    """
    tx_hash = await rpc.call("eth_sendTransaction", [{"from": sender, "to": token, "data": "0x" + data.hex()}])
    for _ in range(500):
        receipt = await rpc.get_transaction_receipt(tx_hash)
        if receipt:
            return receipt
        await asyncio.sleep(0.01)
    raise AssertionError(f"{tx_hash} not mined")


async def test_receive_with_authorization_only_by_the_payee(evm_devnet, evm_rpc):
    token, payer, merchant = evm_devnet.token_address, evm_devnet.payers[0], evm_devnet.merchant
    message = {"from": payer.address, "to": merchant.address, "value": 5, "validAfter": 0,
               "validBefore": 2**48, "nonce": os.urandom(32)}
    signature = Account.sign_typed_data(
        payer.private_key, token_domain(evm_devnet), {"ReceiveWithAuthorization": AUTH_FIELDS}, message
    ).signature
    v, r, s = split_signature(bytes(signature))
    data = RECEIVE + encode(
        ["address", "address", "uint256", "uint256", "uint256", "bytes32", "uint8", "bytes32", "bytes32"],
        [payer.address, merchant.address, 5, 0, 2**48, message["nonce"], v, r, s],
    )
    with pytest.raises(RpcError) as err:
        await evm_rpc.eth_call(token, data, sender=evm_devnet.settler.address)
    assert revert_reason(err.value.data) == "FiatTokenV2: caller must be the payee"

    before = await evm_rpc.balance_of(token, merchant.address)
    receipt = await _send(evm_rpc, merchant.address, token, data)
    assert int(receipt["status"], 16) == 1
    assert await evm_rpc.balance_of(token, merchant.address) == before + 5
    assert await evm_rpc.authorization_state(token, payer.address, message["nonce"]) is True


async def test_cancel_authorization_burns_the_nonce(evm_devnet, evm_rpc, evm_settler, sign_authorization):
    token, payer = evm_devnet.token_address, evm_devnet.payers[1]
    auth, sig = sign_authorization(payer, 5)
    cancel_sig = Account.sign_typed_data(
        payer.private_key,
        token_domain(evm_devnet),
        {"CancelAuthorization": [{"name": "authorizer", "type": "address"}, {"name": "nonce", "type": "bytes32"}]},
        {"authorizer": payer.address, "nonce": auth.nonce},
    ).signature
    v, r, s = split_signature(bytes(cancel_sig))
    data = CANCEL + encode(["address", "bytes32", "uint8", "bytes32", "bytes32"], [payer.address, auth.nonce, v, r, s])

    receipt = await _send(evm_rpc, evm_devnet.poor.address, token, data)  # anyone may relay a cancel
    assert int(receipt["status"], 16) == 1
    (log,) = receipt["logs"]
    assert log["topics"] == [
        "0x" + keccak(text="AuthorizationCanceled(address,bytes32)").hex(),
        "0x" + bytes(12).hex() + payer.address[2:].lower(),
        "0x" + auth.nonce.hex(),
    ]
    assert await evm_rpc.authorization_state(token, payer.address, auth.nonce) is True

    outcome = await evm_settler.settle(token, auth, sig, timeout=10)
    assert (outcome.state, outcome.reason) == ("failed", "invalid_exact_evm_nonce_already_used")
