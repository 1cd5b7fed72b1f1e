"""The gateway's own Hedera account talking to consensus nodes, through hiero-sdk-python.

The SDK is imported here only, and this module only when a Hedera rail is configured:
`import hiero_sdk_python` costs a second or two. Every SDK call blocks (gRPC with sleeps
between retries), so each runs in a worker thread.

Exactly-once: a transaction is frozen and signed into bytes first (`prepare_*`), the
caller stores bytes and id, and only then `submit`s. Submitting the same bytes again is
harmless (the node answers DUPLICATE_TRANSACTION and nothing happens twice). A fresh SDK
client is built for each submission: after one transport error an SDK client marks its
node unhealthy and refuses to use it for several seconds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from chains.hedera.ids import AccountId, TransactionId

VALID_DURATION = 120  # seconds: the SDK's and the network's default validity window


@dataclass(frozen=True)
class Prepared:
    tx_id: str  # SDK form, 0.0.123@1700000000.000000001
    tx_bytes: bytes
    valid_until: float  # unix seconds after which the network refuses it


@dataclass(frozen=True)
class Submitted:
    """`status` is the receipt status name (SUCCESS, AMOUNT_EXCEEDS_ALLOWANCE, ...), or a
    precheck failure name, or DUPLICATE_TRANSACTION with `receipt` from the first
    submission when the node still has it. `reached_consensus` says whether the status is
    a receipt (fees were charged, the outcome is final)."""

    status: str
    reached_consensus: bool


class HederaUnavailable(Exception):
    """The node could not be asked; the outcome of a submission is unknown."""


class HederaNetwork:
    def __init__(self, *, network: str, nodes: dict[str, str] | None, account_id: str,
                 private_key: str) -> None:
        import hiero_sdk_python as sdk  # deliberately lazy, see the module docstring

        self._sdk = sdk
        self.network = network
        self.nodes = nodes
        self.account_id = account_id
        self._account = sdk.AccountId.from_string(account_id)
        try:
            self._key = sdk.PrivateKey.from_string(private_key)
        except Exception:
            raise ValueError("the Hedera private key does not parse (use DER hex)") from None
        self.public_key_bytes = self._key.public_key().to_bytes_raw()

    def _client(self):
        sdk = self._sdk
        if self.nodes:
            client = sdk.Client.for_network(
                {addr: sdk.AccountId.from_string(acct) for addr, acct in self.nodes.items()},
                network_name=self.network.split(":", 1)[-1])
        elif self.network == "hedera:mainnet":
            client = sdk.Client.for_mainnet()
        elif self.network == "hedera:testnet":
            client = sdk.Client.for_testnet()
        else:
            raise ValueError(f"no nodes configured for {self.network}")
        client.set_operator(self._account, self._key)
        return client

    # -- pulls: the spender takes from an owner's allowance ------------------------------

    async def prepare_approved_transfer(self, owner: str, dest: str, amount: int,
                                        memo: str = "") -> Prepared:
        """Freeze and sign `owner -amount (approved) / dest +amount`, paid by the gateway."""
        if amount <= 0:
            raise ValueError("amount must be positive")
        return await asyncio.to_thread(self._prepare_transfer, owner, dest, amount, memo)

    def _prepare_transfer(self, owner: str, dest: str, amount: int, memo: str) -> Prepared:
        sdk = self._sdk
        client = self._client()
        try:
            tx_id = sdk.TransactionId.generate(self._account)
            tx = (sdk.TransferTransaction()
                  .add_approved_hbar_transfer(sdk.AccountId.from_string(owner), -amount)
                  .add_hbar_transfer(sdk.AccountId.from_string(dest), amount)
                  .set_transaction_id(tx_id)
                  .set_transaction_memo(memo))
            tx.freeze_with(client)
            tx.sign(self._key)
            start = tx_id.valid_start.seconds + tx_id.valid_start.nanos / 1e9
            return Prepared(_sdk_tx_id(tx_id), tx.to_bytes(), start + VALID_DURATION)
        finally:
            client.close()

    # -- submission -----------------------------------------------------------------------

    async def submit(self, tx_bytes: bytes, *, cosign: bool = False) -> Submitted:
        """Submit signed bytes (adding the gateway's signature when `cosign`) and wait for
        the receipt. Raises HederaUnavailable when the node could not be reached."""
        return await asyncio.to_thread(self._submit, tx_bytes, cosign)

    def _submit(self, tx_bytes: bytes, cosign: bool) -> Submitted:
        sdk = self._sdk
        from hiero_sdk_python.exceptions import MaxAttemptsError, PrecheckError

        client = self._client()
        try:
            tx = sdk.Transaction.from_bytes(tx_bytes)
            if cosign:
                tx.sign(self._key)
            try:
                receipt = tx.execute(client, timeout=30)
            except PrecheckError as exc:
                name = sdk.ResponseCode(exc.status).name
                if name == "DUPLICATE_TRANSACTION":
                    return self._receipt_of(client, tx.transaction_id)
                return Submitted(name, False)
            except MaxAttemptsError as exc:
                raise HederaUnavailable(str(exc)) from exc
            except RuntimeError as exc:  # "All nodes are unhealthy"
                raise HederaUnavailable(str(exc)) from exc
            return Submitted(sdk.ResponseCode(receipt.status).name, True)
        finally:
            client.close()

    async def receipt(self, tx_id: str) -> str | None:
        """The receipt status a node still holds for `tx_id` (nodes keep receipts for a
        few minutes after consensus), or None when it has none. Raises HederaUnavailable."""
        return await asyncio.to_thread(self._receipt_status, tx_id)

    def _receipt_status(self, tx_id: str) -> str | None:
        sdk = self._sdk
        from hiero_sdk_python.exceptions import MaxAttemptsError, PrecheckError

        client = self._client()
        try:
            query = sdk.TransactionGetReceiptQuery().set_transaction_id(
                sdk.TransactionId.from_string(tx_id))
            query.set_max_attempts(3)  # a "not found" answer is final enough here
            try:
                receipt = query.execute(client, timeout=10)
            except (PrecheckError, MaxAttemptsError) as exc:
                # The SDK retries RECEIPT_NOT_FOUND until its timeout, then wraps it.
                last = exc if isinstance(exc, PrecheckError) else exc.last_error
                if isinstance(last, PrecheckError) and \
                        sdk.ResponseCode(last.status).name == "RECEIPT_NOT_FOUND":
                    return None
                raise HederaUnavailable(f"receipt query failed: {exc}") from exc
            except RuntimeError as exc:  # "All nodes are unhealthy"
                raise HederaUnavailable(str(exc)) from exc
            name = sdk.ResponseCode(receipt.status).name
            return None if name in ("UNKNOWN", "RECEIPT_NOT_FOUND") else name
        finally:
            client.close()

    def _receipt_of(self, client, tx_id) -> Submitted:
        """The first submission's receipt, for a resubmission the node saw before."""
        sdk = self._sdk
        from hiero_sdk_python.exceptions import MaxAttemptsError, PrecheckError

        try:
            receipt = sdk.TransactionGetReceiptQuery().set_transaction_id(tx_id).execute(client)
        except (PrecheckError, MaxAttemptsError, RuntimeError) as exc:
            raise HederaUnavailable(f"duplicate, and its receipt is unavailable: {exc}") from exc
        return Submitted(sdk.ResponseCode(receipt.status).name, True)


def _sdk_tx_id(tx_id) -> str:
    return TransactionId(AccountId.parse(str(tx_id.account_id)), tx_id.valid_start.seconds,
                         tx_id.valid_start.nanos).to_sdk()
