"""Helpers for session tests: a paygate config on the local Hedera network, and the
owner's side (approve an allowance with the SDK, sign a challenge) done as a wallet would."""

from __future__ import annotations

import asyncio
import uuid

KEY_ENV = "TOLLGATE_TEST_HEDERA_KEY"
UNIT_PRICE = 5_000_000  # tinybars: 0.05 HBAR per unit


def session_config(net, origin_url: str, *, paygate_id: str = "sky", prefix: str = "/sky",
                   hedera: dict | None = None, extra_paygates: list | None = None,
                   rules: list | None = None, server: dict | None = None) -> dict:
    spender = net.account("spender")
    return {
        **({"server": server} if server else {}),
        "assets": {"hbar": {"type": "hbar", "network": "hedera:devnet"}},
        "hedera": {"network": "hedera:devnet", "nodes": net.network_map(),
                   "mirror_url": net.mirror_url, "account_id": spender.account_id,
                   "private_key_env": KEY_ENV, "mirror_ttl_seconds": 30,
                   "pull_interval_seconds": 3600, **(hedera or {})},
        "paygates": [{"id": paygate_id, "prefix": prefix, "target": origin_url,
                      "rails": ["hedera-session"], "prices": {"hbar": "0.05"},
                      "pay_to": {"hedera": net.account("merchant").account_id},
                      "rules": [{"method": "POST", "path": "/v1/bookings", "units": 3},
                                *(rules or [])]},
                     *(extra_paygates or [])],
    }


async def approve(net, owner, amount: int, memo: str = "") -> str:
    """The owner approves `amount` tinybars to the gateway's spender; returns the tx id."""
    def run() -> str:
        import hiero_sdk_python as sdk

        client = net.sdk_client(owner)
        try:
            tx = (sdk.AccountAllowanceApproveTransaction()
                  .approve_hbar_allowance(owner.sdk_account_id(),
                                          net.account("spender").sdk_account_id(),
                                          sdk.Hbar.from_tinybars(amount))
                  .set_transaction_memo(memo))
            receipt = tx.execute(client)
            assert sdk.ResponseCode(receipt.status).name == "SUCCESS", receipt.status
            return str(tx.transaction_id)
        finally:
            client.close()
    return await asyncio.to_thread(run)


def sign_message(account, message: str) -> str:
    """What a wallet's hedera_signMessage returns, hex encoded."""
    import hiero_sdk_python as sdk

    data = message.encode()
    prefixed = b"\x19Hedera Signed Message:\n" + str(len(data)).encode() + data
    return sdk.PrivateKey.from_string(account.private_key).sign(prefixed).hex()


async def open_session(http, g, net, owner, *, allowance: int, paygate: str = "sky") -> str:
    """Challenge, approve with the memo, activate: the session token."""
    async with http.post(g.url + "/api/sessions/challenge",
                         json={"account_id": owner.account_id, "paygate": paygate}) as r:
        assert r.status == 200, await r.text()
        ch = await r.json()
    tx_id = await approve(net, owner, allowance, memo=ch["memo"])
    async with http.post(g.url + "/api/sessions/activate",
                         json={"accountId": owner.account_id, "paygateId": paygate,
                               "nonce": ch["nonce"], "transactionId": tx_id}) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["token"]


def call_headers(token: str, key: str | None = None) -> dict[str, str]:
    return {"X-Hedera-Session-Id": token, "Idempotency-Key": key or uuid.uuid4().hex}
