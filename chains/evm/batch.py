"""Settle many EIP-3009 authorizations in one transaction through the SettlementBatch contract.

:meth:`BatchSettler.settle` has the contract of :meth:`chains.evm.settle.Settler.settle` (one
authorization in, one :class:`SettleOutcome` out), but the authorizations of concurrent
callers that arrive together go into one transaction. Each caller is answered only once its
own transfer is known: ``settled`` only when the mined receipt carries the token's
``AuthorizationUsed`` + ``Transfer`` logs for this very authorization.

A batch is sized by what is queued, at most ``max_items`` (the block gas limit bounds it:
about 70k gas a transfer, ~419 per 30M-gas block). One batch is built at a time; while its
transaction is being signed and sent the next one fills up, and no batch waits for another's
receipt (each has its own nonce: batches are pipelined).

Per batch:

1. Simulation (``eth_call`` of the batch; the contract returns one flag per item and the gas
   its loop used, which sizes the gas limit without an estimation search). Items that
   would not transfer leave the batch and go through the single-transaction path of
   :class:`Settler`, which rejects them with their own reason (nothing sent) or, if the chain
   changed in between, sends them alone.
2. The transaction is signed and handed to every item's ``persist`` before it is sent; when
   every item's persist is a :class:`chains.payments.TxPersist` of one store, that is one
   durable write that stores the signed bytes once and links every payment to them.
3. Receipt: per item, the token's logs (settled), the contract's ``TransferFailed`` log (failed
   with the token's revert reason, or ``unknown`` when the reason says nothing), no receipt in
   time or a reverted batch (``unknown``: the worker reconciles it from the chain).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from eth_abi import decode as abi_decode
from eth_utils import keccak

from chains.evm.eip712 import address_bytes, to_checksum_address  # (memoized)
from chains.evm.rpc import RpcError, RpcUnavailable, from_hex, revert_reason, selector, to_hex
from chains.evm.settle import (
    NonceConflict,
    Persist,
    SendUncertain,
    Settler,
    TransferAuthorization,
    reason_code,
    split_signature,
)
from chains.evm.usage import NONCE_ALREADY_USED, SETTLEMENT_PENDING, paid_authorizations, payment_key, used_outcome
from chains.payments import SettleOutcome, TxPersist

__all__ = ["BatchSettler", "encode_batch", "MAX_BATCH_ITEMS"]

log = logging.getLogger("tollgate.evm.batch")

_AUTH_TUPLE = "(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
BATCH_SETTLE = selector(f"settle(address,{_AUTH_TUPLE}[])")
TOPIC_TRANSFER_FAILED = keccak(text="TransferFailed(uint256,bytes)")
MAX_BATCH_ITEMS = 400  # even at GAS_PER_ITEM, inside a 30M-gas block
GAS_PER_ITEM = 60_000  # without simulation; a transfer in a batch uses ~37k (cold payer ~45k)
BATCH_BASE_GAS = 60_000  # the call, ABI decoding and the returned flags


def intrinsic_gas(data: bytes) -> int:
    """21000 plus calldata (16 gas a non-zero byte, 4 a zero byte)."""
    zeros = data.count(0)
    return 21_000 + 16 * (len(data) - zeros) + 4 * zeros


def _word(value: int) -> bytes:
    try:
        return value.to_bytes(32, "big")
    except OverflowError:  # negative, or 2**256 and above
        raise ValueError(f"not a uint256: {value!r}") from None


def _address_word(address: str) -> bytes:
    return bytes(12) + address_bytes(address)


def encode_batch(token: str, items: list[tuple[TransferAuthorization, bytes | str]]) -> bytes:
    """Calldata for ``SettlementBatch.settle(token, authorizations)``.

    Encoded by hand (eth_abi cost ~200 us an item here): every field of the tuple is
    static, so the ABI encoding is the token, the array's offset (64), its length, then
    each tuple's nine 32-byte words in place (tests compare it with eth_abi's)."""
    out = [BATCH_SETTLE, _address_word(token), _word(64), _word(len(items))]
    for auth, signature in items:
        if len(auth.nonce) != 32:
            raise ValueError("an EIP-3009 nonce is 32 bytes")
        v, r, s = split_signature(signature)
        out += (_address_word(auth.from_), _address_word(auth.to), _word(auth.value),
                _word(auth.valid_after), _word(auth.valid_before), bytes(auth.nonce), _word(v),
                r, s)
    return b"".join(out)


@dataclass(eq=False)
class _Item:
    token: str
    auth: TransferAuthorization
    signature: bytes | str
    persist: Persist | None
    future: asyncio.Future = field(repr=False)

    def resolve(self, outcome: SettleOutcome) -> None:
        if not self.future.done():
            self.future.set_result(outcome)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


async def _persist_all(items: list[_Item], tx_hash: str, raw: bytes) -> None:
    """Persist one signed batch for every item before it is sent: one write when they all
    persist into the same store, else one after another (all done before the send)."""
    persists = [it.persist for it in items if it.persist is not None]
    if not persists:
        return
    if all(isinstance(p, TxPersist) for p in persists) and len({id(p.store) for p in persists}) == 1:
        await persists[0].store.persist_batch([p.payment_id for p in persists], tx_hash, raw)
        return
    for p in persists:
        await p(tx_hash, raw)


class BatchSettler:
    """Batches :meth:`settle` calls for one batch contract; sends with ``settler``'s key."""

    def __init__(self, settler: Settler, contract: str, *, max_items: int = 200,
                 linger: float = 0.02, receipt_timeout: float = 30.0,
                 max_in_flight: int = 4) -> None:
        self.settler = settler
        self.rpc = settler.rpc
        self.contract = to_checksum_address(contract)
        self.max_items = max(1, min(max_items, MAX_BATCH_ITEMS))
        self.linger = linger  # how long a first arrival waits for company (less if it fills)
        self.receipt_timeout = receipt_timeout
        self._pending: list[_Item] = []
        self._full = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        # Batches sent and not yet mined, at most `max_in_flight` (about a block's worth at
        # the default sizes): each is priced when it is sent, so none waits behind a long
        # train of others while full blocks raise the base fee past its max fee.
        self._in_flight = asyncio.Semaphore(max(1, max_in_flight))
        self.batches_sent = 0  # counters for benches and logs
        self.items_sent = 0

    async def settle(self, token: str, auth: TransferAuthorization, signature: bytes | str, *,
                     persist: Persist | None = None, timeout: float | None = None) -> SettleOutcome:
        """Queue the authorization for the next batch; its outcome once known (as
        :meth:`Settler.settle`). Exceptions of ``persist`` reach the caller (nothing sent)."""
        item = _Item(to_checksum_address(token), auth, signature, persist,
                     asyncio.get_running_loop().create_future())
        self._pending.append(item)
        if len(self._pending) >= self.max_items:
            self._full.set()  # a full batch need not wait for company
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await item.future

    async def _flush(self) -> None:
        """Send batches while anything is queued, one at a time; then end (the next
        arrival starts a new flusher)."""
        if len(self._pending) < self.max_items:
            self._full.clear()
            try:
                await asyncio.wait_for(self._full.wait(), self.linger)
            except asyncio.TimeoutError:
                pass
        while self._pending:
            token = self._pending[0].token
            batch = [it for it in self._pending if it.token == token][: self.max_items]
            taken = set(map(id, batch))
            self._pending = [it for it in self._pending if id(it) not in taken]
            await self._in_flight.acquire()  # released when the batch is mined (or given up)
            try:
                if not await self._submit(token, batch):
                    self._in_flight.release()
            except Exception as exc:  # persist refused, or a bug: those callers learn it
                self._in_flight.release()
                log.exception("settlement batch of %d failed before it was sent", len(batch))
                for it in batch:
                    it.fail(exc)
            except BaseException as exc:
                self._in_flight.release()
                for it in batch + self._pending:
                    it.fail(exc)
                raise

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _submit(self, token: str, batch: list[_Item]) -> bool:
        """Send one batch; True when a transaction went out (its watcher frees the slot)."""
        data = encode_batch(token, [(it.auth, it.signature) for it in batch])
        gas = BATCH_BASE_GAS + GAS_PER_ITEM * len(batch)
        if self.settler.simulate:
            try:
                flags, used = await self._simulate(data)
            except RpcUnavailable as exc:  # nothing was sent
                for it in batch:
                    it.resolve(SettleOutcome("unknown", None, SETTLEMENT_PENDING, f"node unavailable: {exc}"))
                return False
            except RpcError as exc:  # the batch call itself reverts (not a token?)
                for it in batch:
                    it.resolve(SettleOutcome("failed", None, "unexpected_settle_error",
                                             f"batch simulation reverted: {exc}"))
                return False
            for it, ok in zip(batch, flags):
                if not ok:  # its own reason, or sent alone if the chain changed since
                    self._spawn(self._single(it))
            if not all(flags):
                batch = [it for it, ok in zip(batch, flags) if ok]
                if not batch:
                    return False
                data = encode_batch(token, [(it.auth, it.signature) for it in batch])
            # What the loop used in the simulation (the refused items included: an upper
            # bound for the rest), with room for state that changes before it is mined.
            gas = intrinsic_gas(data) + used + used // 4 + BATCH_BASE_GAS
        try:
            chain_id = await self.rpc.chain_id()
            fees = await self.rpc.fee_estimate()
        except RpcUnavailable as exc:
            for it in batch:
                it.resolve(SettleOutcome("unknown", None, SETTLEMENT_PENDING, f"node unavailable: {exc}"))
            return False
        tx = {"type": 2, "chainId": chain_id, "to": self.contract, "value": 0, "data": data,
              "gas": gas, "maxFeePerGas": fees.max_fee_per_gas,
              "maxPriorityFeePerGas": fees.max_priority_fee_per_gas}

        async def persist(tx_hash: str, raw: bytes) -> None:
            await _persist_all(batch, tx_hash, raw)

        try:
            tx_hash = await self.settler._send(tx, persist)
        except (SendUncertain, NonceConflict) as exc:
            for it in batch:
                it.resolve(SettleOutcome("unknown", exc.tx_hash, SETTLEMENT_PENDING, str(exc)))
            return False
        except RpcUnavailable as exc:  # before anything was signed
            for it in batch:
                it.resolve(SettleOutcome("unknown", None, SETTLEMENT_PENDING, f"node unavailable: {exc}"))
            return False
        except RpcError as exc:
            for it in batch:
                it.resolve(SettleOutcome("failed", None, "unexpected_settle_error",
                                         f"node refused the transaction: {exc}"))
            return False
        self.batches_sent += 1
        self.items_sent += len(batch)
        self._spawn(self._watch(tx_hash, token, batch))
        return True

    async def _simulate(self, data: bytes) -> tuple[list[bool], int]:
        """Per-item flags and the gas the loop used, from an eth_call of the batch."""
        out = await self.rpc.eth_call(self.contract, data, sender=self.settler.address)
        flags, used = abi_decode(["bool[]", "uint256"], out)
        return list(flags), used

    async def _single(self, it: _Item) -> None:
        try:
            it.resolve(await self.settler.settle(it.token, it.auth, it.signature, persist=it.persist,
                                                 timeout=self.receipt_timeout))
        except RpcUnavailable as exc:
            it.resolve(SettleOutcome("unknown", None, SETTLEMENT_PENDING, f"node unavailable: {exc}"))
        except Exception as exc:
            it.fail(exc)

    async def _watch(self, tx_hash: str, token: str, batch: list[_Item]) -> None:
        try:
            await self._watch_one(tx_hash, token, batch)
        finally:
            self._in_flight.release()

    async def _watch_one(self, tx_hash: str, token: str, batch: list[_Item]) -> None:
        try:
            receipt = await self.settler.wait_receipt(tx_hash, self.receipt_timeout)
            if receipt is None:
                for it in batch:
                    it.resolve(SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING,
                                             f"not mined within {self.receipt_timeout:g}s"))
                return
            if not receipt.success:  # nothing in it moved; the worker reconciles and retries
                for it in batch:
                    it.resolve(SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING,
                                             "the batch transaction reverted"))
                return
            logs = list(receipt.logs)
            failures = self._failures(logs)
            paid = paid_authorizations(logs, token)  # one pass, not one per item
            for index, it in enumerate(batch):
                if payment_key(it.auth) in paid:
                    it.resolve(SettleOutcome("settled", tx_hash, block_number=receipt.block_number,
                                             gas_used=receipt.gas_used))
                    continue
                it.resolve(await self._item_failed(tx_hash, token, it, failures.get(index)))
        except Exception as exc:
            for it in batch:
                it.resolve(SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING, f"receipt check failed: {exc}"))

    def _failures(self, logs: list[dict]) -> dict[int, str | None]:
        """index -> the token's revert message, from this contract's TransferFailed logs."""
        out: dict[int, str | None] = {}
        topic = to_hex(TOPIC_TRANSFER_FAILED)
        for entry in logs:
            topics = [str(t).lower() for t in entry.get("topics") or []]
            if str(entry.get("address", "")).lower() != self.contract.lower() or not topics \
                    or topics[0] != topic:
                continue
            (reason,) = abi_decode(["bytes"], from_hex(entry.get("data")))
            out[int(topics[1], 16)] = revert_reason(to_hex(reason)) if reason else None
        return out

    async def _item_failed(self, tx_hash: str, token: str, it: _Item, detail: str | None) -> SettleOutcome:
        code = reason_code(detail)
        try:
            if code == NONCE_ALREADY_USED:  # used since the simulation: by whom?
                return await used_outcome(self.rpc, token, it.auth, tx_hash)
        except RpcUnavailable as exc:
            return SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING, f"node unavailable: {exc}")
        if code == "unexpected_settle_error":  # no reason given (out of gas?): reconcile later
            return SettleOutcome("unknown", tx_hash, SETTLEMENT_PENDING,
                                 f"not transferred in its batch ({detail or 'no reason'})")
        return SettleOutcome("failed", tx_hash, code, detail)
