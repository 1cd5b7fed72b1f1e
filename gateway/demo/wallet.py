"""What a person's wallet does in the demo: approve an HBAR allowance with a memo."""

from __future__ import annotations

import asyncio


async def approve_allowance(net, owner, spender: str, tinybars: int, memo: str) -> str:
    """Approve `tinybars` from `owner` to `spender` on the local network; the tx id."""
    def run() -> str:
        import hiero_sdk_python as sdk

        client = net.sdk_client(owner)
        try:
            tx = (sdk.AccountAllowanceApproveTransaction()
                  .approve_hbar_allowance(owner.sdk_account_id(), sdk.AccountId.from_string(spender),
                                          sdk.Hbar.from_tinybars(tinybars))
                  .set_transaction_memo(memo))
            tx.execute(client)
            return str(tx.transaction_id)
        finally:
            client.close()
    return await asyncio.to_thread(run)
