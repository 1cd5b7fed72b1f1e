"""Settle signed EIP-3009 authorizations on chain with the gateway's own gas-paying key.

Flow and contracts:

1. :meth:`Settler.submit` simulates ``transferWithAuthorization`` (``eth_estimateGas``), then
   allocates a nonce, signs, hands the signed bytes and hash to ``persist`` and only then
   broadcasts, all under one lock; it returns the transaction hash. A simulated revert raises
   :class:`SettlementRejected` and nothing is sent. Whatever crashes after ``persist``,
   recovery re-sends those very bytes (same hash) or looks the hash up: it never builds a
   competing transaction while the persisted one can still be mined.
2. :meth:`Settler.wait_receipt` polls for the receipt for at most ``timeout`` seconds.
3. :meth:`Settler.await_outcome` maps that to a :class:`SettleOutcome`: mined ok -> ``settled``,
   reverted -> ``failed`` with a reason, not mined in time -> ``unknown`` (never ``failed``:
   the transaction may still be mined).
4. :meth:`Settler.reconcile` resolves an ``unknown`` from chain state and the persisted
   bytes: the receipt if there is one; else the pooled transaction (pending); else the
   persisted bytes are sent again.

A payment is ``settled`` only on a successful receipt of our transaction, or on an
``AuthorizationUsed`` log whose transaction moved this authorization's value from the payer
to its payee. ``authorizationState == true`` alone proves nothing: the payer may have
cancelled the authorization (``cancelAuthorization``) or used its nonce for another transfer;
both are ``failed`` with ``invalid_exact_evm_nonce_already_used``.

The chain makes double settlement impossible (the token refuses a used nonce), so resubmitting
an authorization is always safe for the payer; it may only cost the gateway a reverted tx's gas.

Nonces: one Settler per key per process. Its lock serialises nonce allocation and sending,
which also avoids anvil's stuck-queue behaviour with concurrent sends from one key. The next
nonce is cached and re-read from the chain (``pending``) whenever a send fails in a way that
leaves it in doubt. Several processes may share a key: their nonce conflicts are retried, and
when retries run out the attempt is ``unknown`` (:class:`NonceConflict`), never ``failed``.
Persisted bytes whose account nonce another transaction took can never be mined: only then,
and only while the authorization is unused, does :meth:`reconcile` report the attempt dead
(``failed`` with ``settlement_pending``) so that the caller builds, persists and sends a new one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable, Literal

from eth_abi import encode as abi_encode
from eth_utils import to_checksum_address

from chains.evm.eip712 import address_of
from chains.evm.rpc import RpcClient, RpcError, RpcUnavailable, from_hex, revert_reason, selector
from chains.evm.usage import NONCE_ALREADY_USED, SETTLEMENT_PENDING, item_paid, used_outcome
from chains.payments import SettleOutcome

__all__ = [
    "TransferAuthorization",
    "TxReceipt",
    "SettleOutcome",
    "SettlementRejected",
    "SendUncertain",
    "NonceConflict",
    "Persist",
    "Settler",
    "encode_transfer_with_authorization",
    "split_signature",
    "reason_code",
]

TRANSFER_WITH_AUTHORIZATION = selector(
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
)

# Persist the signed transaction (hash, raw bytes) before it is broadcast.
Persist = Callable[[str, bytes], Awaitable[None]]

# Used when simulation is off; a transferWithAuthorization costs ~60-90k gas.
DEFAULT_GAS_LIMIT = 150_000
SUBMIT_CONCURRENCY = 16  # below the RPC client's connection pool (32)

# Revert-message fragments (FiatToken / TestUSDC wording) -> x402 errorReason codes.
# Order matters: the first match wins.
_REASON_CODES = (
    ("used or canceled", "invalid_exact_evm_nonce_already_used"),
    ("not yet valid", "invalid_exact_evm_payload_authorization_valid_after"),
    ("expired", "invalid_exact_evm_payload_authorization_valid_before"),
    ("invalid signature", "invalid_exact_evm_payload_signature"),
    ("exceeds balance", "insufficient_funds"),
)


def reason_code(message: str | None) -> str:
    """Map a token revert message to an x402 ``errorReason`` (``unexpected_settle_error`` if unknown)."""
    text = (message or "").lower()
    for fragment, code in _REASON_CODES:
        if fragment in text:
            return code
    return "unexpected_settle_error"


@dataclass(frozen=True)
class TransferAuthorization:
    """The signed EIP-3009 message. ``value`` in atomic units; times in unix seconds."""

    from_: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes  # 32 bytes


@dataclass(frozen=True)
class TxReceipt:
    tx_hash: str
    success: bool
    block_number: int
    gas_used: int
    to: str | None = None  # the contract called: the token, or a batch contract
    logs: tuple = ()

    @property
    def status(self) -> Literal["success", "reverted"]:
        return "success" if self.success else "reverted"

    @classmethod
    def from_rpc(cls, tx_hash: str, receipt: dict) -> "TxReceipt":
        return cls(
            tx_hash=tx_hash,
            success=int(receipt["status"], 16) == 1,
            block_number=int(receipt["blockNumber"], 16),
            gas_used=int(receipt["gasUsed"], 16),
            to=receipt.get("to"),
            logs=tuple(receipt.get("logs") or ()),
        )


class SettlementRejected(Exception):
    """Simulation says the transfer would revert; nothing was sent."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SendUncertain(RpcUnavailable):
    """The node became unreachable while a signed transaction was being sent.

    It may or may not be in the pool: store ``tx_hash`` and reconcile. Subclasses
    RpcUnavailable so code that only maps outages to 503 still does the right thing.
    """

    def __init__(self, tx_hash: str, message: str):
        super().__init__(message)
        self.tx_hash = tx_hash


class NonceConflict(Exception):
    """Every send attempt hit a nonce conflict (another process sending from the same key).

    Nothing is known to be pooled; ``tx_hash`` is the last signed (and persisted) attempt.
    Retryable: the caller treats the settlement as ``unknown`` and reconciles it.
    """

    def __init__(self, tx_hash: str, message: str):
        super().__init__(message)
        self.tx_hash = tx_hash


def split_signature(signature: bytes | str) -> tuple[int, bytes, bytes]:
    """65-byte ``r || s || v`` -> ``(v, r, s)``; v of 0/1 (some wallets) becomes 27/28.

    Everything else is passed through untouched: judging s or v is the token's job (and the
    off-chain verifier's), and a bad signature must surface as a revert reason.
    """
    raw = from_hex(signature) if isinstance(signature, str) else bytes(signature)
    if len(raw) != 65:
        raise ValueError(f"signature must be 65 bytes, got {len(raw)}")
    v = raw[64]
    if v in (0, 1):
        v += 27
    return v, raw[:32], raw[32:64]


def encode_transfer_with_authorization(auth: TransferAuthorization, signature: bytes | str) -> bytes:
    """Calldata for ``transferWithAuthorization(from,to,value,validAfter,validBefore,nonce,v,r,s)``."""
    if len(auth.nonce) != 32:
        raise ValueError("an EIP-3009 nonce is 32 bytes")
    v, r, s = split_signature(signature)
    types = ["address", "address", "uint256", "uint256", "uint256", "bytes32", "uint8", "bytes32", "bytes32"]
    values = [to_checksum_address(auth.from_), to_checksum_address(auth.to), auth.value,
              auth.valid_after, auth.valid_before, auth.nonce, v, r, s]  # fmt: skip
    args = abi_encode(types, values)
    return TRANSFER_WITH_AUTHORIZATION + args


def _is_already_pooled(message: str) -> bool:
    text = message.lower()
    return "already known" in text or "already imported" in text  # geth / anvil wording


def _is_nonce_error(message: str) -> bool:
    text = message.lower()
    return any(
        fragment in text
        for fragment in ("nonce too low", "nonce too high", "invalid nonce", "replacement transaction underpriced")
    )


class Settler:
    """Submits EIP-3009 transfers from one gas-paying key and resolves their outcome.

    ``rpc`` is shared and not closed by the Settler. ``simulate=True`` runs ``eth_estimateGas``
    first so a doomed transfer is rejected with its reason without spending gas; the estimate
    (plus 25 %) becomes the gas limit. With ``simulate=False`` the fixed ``gas_limit`` is used.
    """

    def __init__(
        self,
        rpc: RpcClient,
        private_key: str | bytes,
        *,
        simulate: bool = True,
        gas_limit: int = DEFAULT_GAS_LIMIT,
        send_attempts: int = 6,
    ):
        self.rpc = rpc
        self._key = private_key
        self._account = None  # eth_account loads at the first signature, not at start-up
        self.address: str = address_of(private_key)
        self.simulate = simulate
        self.gas_limit = gas_limit
        self._send_attempts = send_attempts
        self._lock = asyncio.Lock()
        # Submissions preparing at once (simulate, fees): more would only queue for the RPC
        # client's connections, where a wait counts against the connect timeout.
        self._preparing = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        self._next_nonce: int | None = None  # cache only; None = ask the chain

    def _signer(self):
        if self._account is None:
            from eth_account import Account  # ~0.5 s to import: not on the start-up path

            self._account = Account.from_key(self._key)
        return self._account

    # ------------------------------------------------------------ submit

    async def submit(
        self,
        token: str,
        auth: TransferAuthorization,
        signature: bytes | str,
        *,
        simulate: bool | None = None,
        persist: Persist | None = None,
    ) -> str:
        """Broadcast ``transferWithAuthorization`` and return the tx hash (0x-hex).

        ``persist(tx_hash, raw)`` runs for every signed transaction before it is sent; if it
        raises, nothing is sent. Raises SettlementRejected (simulated revert; nothing sent),
        RpcUnavailable (node down before signing; nothing sent), SendUncertain (down while
        sending: keep its tx_hash), NonceConflict (nonce races outlasted the retries:
        retryable) or RpcError (the node refused the transaction, e.g. no gas money).
        """
        token = to_checksum_address(token)
        data = encode_transfer_with_authorization(auth, signature)
        simulate = self.simulate if simulate is None else simulate
        async with self._preparing:
            chain_id = await self.rpc.chain_id()
            if simulate:
                gas, fees = await asyncio.gather(self._simulate(token, data), self.rpc.fee_estimate())
            else:
                gas, fees = self.gas_limit, await self.rpc.fee_estimate()
        tx = {
            "type": 2,
            "chainId": chain_id,
            "to": token,
            "value": 0,
            "data": data,
            "gas": gas,
            "maxFeePerGas": fees.max_fee_per_gas,
            "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
        }
        return await self._send(tx, persist)

    async def _simulate(self, token: str, data: bytes) -> int:
        try:
            estimate = await self.rpc.estimate_gas({"from": self.address, "to": token, "data": "0x" + data.hex()})
        except RpcError as exc:
            if not exc.is_revert:
                raise
            detail = revert_reason(exc.data) or exc.message
            raise SettlementRejected(reason_code(detail), detail) from exc
        return estimate + estimate // 4

    async def _send(self, tx: dict, persist: Persist | None) -> str:
        async with self._lock:
            last_error: RpcError | None = None
            tx_hash = ""
            for _ in range(self._send_attempts):
                if self._next_nonce is None:
                    self._next_nonce = await self.rpc.get_transaction_count(self.address, "pending")
                nonce = self._next_nonce
                signed = self._signer().sign_transaction({**tx, "nonce": nonce})
                tx_hash = "0x" + bytes(signed.hash).hex()
                raw = bytes(signed.raw_transaction)
                if persist is not None:
                    # Written before any node can see it: recovery re-sends these bytes.
                    await persist(tx_hash, raw)
                try:
                    await self.rpc.send_raw_transaction(raw)
                except RpcUnavailable as exc:
                    # The pool may or may not hold it: forget the cached nonce, hand out the hash.
                    self._next_nonce = None
                    raise SendUncertain(tx_hash, str(exc)) from exc
                except RpcError as exc:
                    if _is_already_pooled(exc.message):
                        # These exact bytes are already pooled (a retried send): it is our tx.
                        self._next_nonce = nonce + 1
                        return tx_hash
                    if _is_nonce_error(exc.message):
                        # Another process used the key, or the pool dropped something: resync.
                        # The refused bytes can never be mined with this nonce taken; the next
                        # attempt's bytes replace them in the store.
                        self._next_nonce = None
                        last_error = exc
                        continue
                    raise  # refused outright; the nonce was not consumed, the cache stays valid
                self._next_nonce = nonce + 1
                return tx_hash
            raise NonceConflict(tx_hash, f"nonce conflicts on every attempt: {last_error}")

    # ------------------------------------------------------------ outcome

    async def wait_receipt(
        self, tx_hash: str, timeout: float, *, poll_interval: float = 0.02, max_interval: float = 0.5
    ) -> TxReceipt | None:
        """Poll for the receipt for at most ``timeout`` seconds; None if not mined by then.

        Node outages during the wait are tolerated until the deadline (they prove nothing
        about the transaction). Backoff doubles from ``poll_interval`` up to ``max_interval``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = poll_interval
        while True:
            remaining = deadline - loop.time()
            try:
                receipt = await asyncio.wait_for(self.rpc.get_transaction_receipt(tx_hash), max(remaining, 0.001))
            except (RpcUnavailable, asyncio.TimeoutError):
                receipt = None
            if receipt:
                return TxReceipt.from_rpc(tx_hash, receipt)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, max_interval)

    async def await_outcome(
        self, tx_hash: str, timeout: float, token: str | None = None, auth: TransferAuthorization | None = None
    ) -> SettleOutcome:
        """Wait for ``tx_hash`` and classify it; ``unknown`` if it is not mined within ``timeout``.

        With ``token`` and ``auth``, a revert because the authorization was already used is
        resolved from the chain (used by another transaction for this payment: settled).
        """
        receipt = await self.wait_receipt(tx_hash, timeout)
        if receipt is None:
            return SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING, f"not mined within {timeout:g}s")
        try:
            return await self._classify(receipt, token, auth)
        except RpcUnavailable as exc:  # only the revert reason / log lookups can get here
            return SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING, f"reverted; lookup failed: {exc}")

    async def settle(
        self,
        token: str,
        auth: TransferAuthorization,
        signature: bytes | str,
        *,
        timeout: float = 30.0,
        on_submitted: Callable[[str], Awaitable[None]] | None = None,
        persist: Persist | None = None,
        simulate: bool | None = None,
    ) -> SettleOutcome:
        """submit + await_outcome in one call.

        ``persist(tx_hash, raw)`` runs before each broadcast (see :meth:`submit`);
        ``on_submitted(tx_hash)`` after it, before waiting. Only RpcUnavailable before
        anything was signed escapes (nothing happened: map to 503).
        """
        try:
            tx_hash = await self.submit(token, auth, signature, simulate=simulate, persist=persist)
        except SettlementRejected as exc:
            if exc.reason == NONCE_ALREADY_USED:
                # Used already: by an earlier attempt of ours, by someone else for this very
                # payment (settled), or cancelled / spent on another transfer (failed).
                try:
                    return await self._used_outcome(token, auth, None)
                except RpcUnavailable as down:
                    return SettleOutcome("unknown", None, SETTLEMENT_PENDING, f"node unavailable: {down}")
            return SettleOutcome("failed", None, exc.reason, exc.detail)
        except (SendUncertain, NonceConflict) as exc:
            if on_submitted is not None:
                await on_submitted(exc.tx_hash)
            return SettleOutcome("unknown", exc.tx_hash, SETTLEMENT_PENDING, str(exc))
        except RpcError as exc:
            return SettleOutcome("failed", None, "unexpected_settle_error", f"node refused the transaction: {exc}")
        if on_submitted is not None:
            await on_submitted(tx_hash)
        return await self.await_outcome(tx_hash, timeout, token, auth)

    async def reconcile(
        self, token: str, auth: TransferAuthorization, tx_hash: str | None = None, raw_tx: bytes | None = None
    ) -> SettleOutcome:
        """Resolve an ``unknown`` settlement from chain state; never raises for an outage.

        In order: a receipt for ``tx_hash`` decides (settled / failed as mined). An
        authorization used on chain is ``settled`` only if an ``AuthorizationUsed`` log's
        transaction moved this payment's value to its payee; cancelled or spent otherwise
        it is ``failed``. ``tx_hash`` still pooled: ``unknown``. Otherwise the persisted
        ``raw_tx`` is sent again (``unknown``: same hash, in flight again), unless its
        account nonce was taken by another transaction: then it can never be mined and the
        attempt is dead (``failed`` with ``settlement_pending``; resubmitting the
        authorization is safe). Unused, nothing pooled and nothing persisted: ``failed``.
        """
        try:
            if tx_hash:
                receipt = await self.rpc.get_transaction_receipt(tx_hash)
                if receipt:
                    return await self._classify(TxReceipt.from_rpc(tx_hash, receipt), token, auth)
            if await self.rpc.authorization_state(token, auth.from_, auth.nonce):
                return await self._used_outcome(token, auth, tx_hash)
            if tx_hash and await self.rpc.get_transaction_by_hash(tx_hash) is not None:
                return SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING, "transaction is pending")
            if raw_tx:
                return await self._resend(tx_hash, raw_tx)
            return SettleOutcome(
                "failed", tx_hash, "invalid_transaction_state", "not settled: no receipt and authorization unused"
            )
        except RpcUnavailable as exc:
            return SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING, f"node unavailable: {exc}")

    async def _resend(self, tx_hash: str | None, raw_tx: bytes) -> SettleOutcome:
        try:
            await self.rpc.send_raw_transaction(raw_tx)
        except RpcError as exc:
            if _is_already_pooled(exc.message):
                return SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING, "transaction is pending")
            if _is_nonce_error(exc.message):
                return SettleOutcome("failed", tx_hash, SETTLEMENT_PENDING,
                                     "the persisted transaction's nonce was used by another transaction")
            return SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING, f"re-sending refused: {exc}")
        return SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING, "re-sent the persisted transaction")

    async def _used_outcome(self, token: str, auth: TransferAuthorization, tx_hash: str | None) -> SettleOutcome:
        return await used_outcome(self.rpc, token, auth, tx_hash)

    async def _classify(
        self, receipt: TxReceipt, token: str | None = None, auth: TransferAuthorization | None = None
    ) -> SettleOutcome:
        if receipt.success and token is not None and auth is not None and receipt.to \
                and receipt.to.lower() != token.lower():
            # A batch transaction: it succeeds whatever happened to each transfer in it.
            return await self._batch_item_outcome(receipt, token, auth)
        if receipt.success:
            return SettleOutcome(
                "settled", receipt.tx_hash, block_number=receipt.block_number, gas_used=receipt.gas_used
            )
        detail = await self._revert_detail(receipt) or "reverted on chain (reason unavailable)"
        if reason_code(detail) == NONCE_ALREADY_USED and token is not None and auth is not None:
            try:
                used = await self._used_outcome(token, auth, receipt.tx_hash)
            except RpcUnavailable:
                used = None
            if used is not None and used.state != "failed":
                return used  # someone else's transaction settled this very payment
        return SettleOutcome(
            "failed",
            receipt.tx_hash,
            reason_code(detail),
            detail,
            block_number=receipt.block_number,
            gas_used=receipt.gas_used,
        )

    async def _batch_item_outcome(
        self, receipt: TxReceipt, token: str, auth: TransferAuthorization
    ) -> SettleOutcome:
        """This authorization's fate in a mined batch transaction (see chains.evm.batch).

        ``settled`` only if the receipt's token logs show this very transfer. Otherwise: used
        on chain by something else -> whatever :func:`used_outcome` finds (another transaction
        of ours may have paid it); still unused -> ``failed`` with ``settlement_pending``: this
        attempt is over and never will pay, so the caller may settle the authorization again
        while it is valid (the token refuses a second use of its nonce)."""
        if item_paid(list(receipt.logs), token, auth):
            return SettleOutcome("settled", receipt.tx_hash, block_number=receipt.block_number,
                                 gas_used=receipt.gas_used)
        if await self.rpc.authorization_state(token, auth.from_, auth.nonce):
            return await self._used_outcome(token, auth, receipt.tx_hash)
        return SettleOutcome("failed", receipt.tx_hash, SETTLEMENT_PENDING,
                             "not transferred in its batch transaction; the authorization is unused",
                             block_number=receipt.block_number)

    async def _revert_detail(self, receipt: TxReceipt) -> str | None:
        """Recover a revert message by replaying the tx as eth_call on its block's state.

        Receipts carry no revert data. Replaying on the post-block state reproduces the usual
        causes (nonce already used, expired, bad signature, balance) without keeping anything
        in memory but the hash.
        """
        tx = await self.rpc.get_transaction_by_hash(receipt.tx_hash)
        if not tx or not tx.get("to"):
            return None
        try:
            await self.rpc.eth_call(
                tx["to"], from_hex(tx.get("input")), receipt.block_number, sender=tx["from"], gas=int(tx["gas"], 16)
            )
        except RpcError as exc:
            if exc.is_revert:
                return revert_reason(exc.data) or exc.message
            return None
        if receipt.gas_used >= int(tx["gas"], 16):
            return "out of gas"
        return None
