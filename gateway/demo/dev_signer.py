"""A devnet-only signer for the demo's wallet page: it signs with the demo accounts' keys,
which the demo generated itself on the local network. It exists so the wallet page can be
tried without a browser wallet; it is put on the app by `tollgate demo` only, refuses any
network but `hedera:devnet`, and is never offered for testnet or mainnet.

The two functions below are what any wallet does, and the browser tests' injected
signer uses them too: sign the transaction bytes the gateway prepared, and sign a message
the way `hedera_signMessage` does (see sessions.proof).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

LOCAL_NETWORK = "hedera:devnet"


def sign_transaction(private_key_der: str, tx_b64: str) -> str:
    """Add the key's signature to the frozen transaction; base64 of the signed bytes."""
    import hiero_sdk_python as sdk

    tx = sdk.Transaction.from_bytes(base64.b64decode(tx_b64))
    tx.sign(sdk.PrivateKey.from_string(private_key_der))
    return base64.b64encode(tx.to_bytes()).decode()


def sign_message(private_key_der: str, message: str) -> str:
    """`hedera_signMessage`: the key's signature of the prefixed message, hex."""
    import hiero_sdk_python as sdk

    data = message.encode()
    prefixed = b"\x19Hedera Signed Message:\n" + str(len(data)).encode() + data
    return sdk.PrivateKey.from_string(private_key_der).sign(prefixed).hex()


def install(app, network: str, accounts: dict[str, Any]) -> "DevSigner":
    """Put a dev signer for `accounts` on a gateway app before it starts (demo only)."""
    from gateway.wallet import DEV_SIGNER

    signer = DevSigner(network, accounts)
    app[DEV_SIGNER] = signer
    return signer


class DevSigner:
    """Signs for the named demo accounts of a local network (`handle` answers the page)."""

    def __init__(self, network: str, accounts: dict[str, Any]) -> None:
        if network != LOCAL_NETWORK:
            raise ValueError("the dev signer works on the local devnet only")
        self._accounts = {a.account_id: a for a in accounts.values()}
        self._names = {a.account_id: name for name, a in accounts.items()}

    def accounts(self) -> list[dict[str, str]]:
        return [{"name": self._names[i], "account_id": i} for i in self._accounts]

    async def handle(self, data: dict[str, Any]) -> dict[str, str]:
        from gateway.errors import BadRequest

        account = self._accounts.get(str(data.get("account_id")))
        if account is None:
            raise BadRequest("not a demo account", code="invalid_account_id")
        if isinstance(data.get("transaction"), str):
            try:
                signed = await asyncio.to_thread(sign_transaction, account.private_key,
                                                 data["transaction"])
            except Exception:
                raise BadRequest("not a transaction", code="invalid_transaction") from None
            return {"transaction": signed}
        if isinstance(data.get("message"), str):
            return {"signature": sign_message(account.private_key, data["message"])}
        raise BadRequest("give transaction or message", code="invalid_request")
