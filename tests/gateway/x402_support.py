"""Helpers for x402 tests: a paygate config on the devnet and payment headers built
by hand (independently of the gateway's client), good or deliberately bad."""

from __future__ import annotations

import os
import time
from typing import Any

from eth_account import Account

from chains.x402 import decode_header, encode_header
from tests.support.eip3009 import TRANSFER_TYPES

SETTLER_ENV = "TOLLGATE_TEST_SETTLER_KEY"
PRICE = 1000  # atomic units of the test USDC per unit (0.001)



def x402_config(devnet, origin_url: str, *, settlement: str = "after", paygate_id: str = "sky",
                prefix: str = "/sky", evm_extra: dict | None = None, **paygate: Any) -> dict:
    return {
        "assets": {"usdc": {"type": "eip3009", "network": devnet.network,
                            "address": devnet.token_address, "decimals": 6,
                            "eip712_name": devnet.token_name,
                            "eip712_version": devnet.token_version}},
        "evm": {devnet.network: {"rpc_url": devnet.rpc_url, "settler_key_env": SETTLER_ENV,
                                 **(evm_extra or {})}},
        "paygates": [{"id": paygate_id, "prefix": prefix, "target": origin_url,
                      "rails": ["x402-evm"], "prices": {"usdc": "0.001"},
                      "pay_to": {"evm": devnet.merchant.address}, "settlement": settlement,
                      "rules": [{"method": "POST", "path": "/v1/bookings", "units": 25}],
                      **paygate}],
    }


def requirement_from(challenge_header: str) -> dict:
    return decode_header(challenge_header, max_len=65536)["accepts"][0]


def sign_payment(devnet, payer, req: dict, *, key: str | None = None, value: int | None = None,
                 to: str | None = None, valid_after: int | None = None,
                 valid_before: int | None = None, nonce: bytes | None = None,
                 chain_id: int | None = None, name: str | None = None,
                 version: int = 2, accepted: dict | None = None,
                 extensions: dict | None = None) -> str:
    """A PAYMENT-SIGNATURE (v2) or X-PAYMENT (v1) header value, signed with eth_account."""
    now = int(time.time())
    message = {
        "from": payer.address, "to": to or req["payTo"],
        "value": int(req["amount"]) if value is None else value,
        "validAfter": now - 60 if valid_after is None else valid_after,
        "validBefore": now + 300 if valid_before is None else valid_before,
        "nonce": nonce or os.urandom(32),
    }
    domain = {"name": name or req["extra"]["name"], "version": req["extra"]["version"],
              "chainId": chain_id or devnet.chain_id, "verifyingContract": req["asset"]}
    signed = Account.sign_typed_data(key or payer.private_key, domain, TRANSFER_TYPES, message)
    payload = {"signature": "0x" + bytes(signed.signature).hex(),
               "authorization": {"from": message["from"], "to": message["to"],
                                 "value": str(message["value"]),
                                 "validAfter": str(message["validAfter"]),
                                 "validBefore": str(message["validBefore"]),
                                 "nonce": "0x" + message["nonce"].hex()}}
    if version == 1:
        return encode_header({"x402Version": 1, "scheme": "exact", "network": req["network"],
                              "payload": payload})
    return encode_header({"x402Version": 2, "accepted": accepted or req, "payload": payload,
                          "extensions": extensions or {}})


def token_balance(devnet, address: str) -> int:
    from eth_abi import encode

    from chains.evm.rpc import selector
    data = selector("balanceOf(address)") + encode(["address"], [address])
    out = devnet.request("eth_call", [{"to": devnet.token_address, "data": "0x" + data.hex()},
                                      "latest"])
    return int(out, 16)
