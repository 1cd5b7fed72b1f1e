"""Token reads of payments verified together, sent together: one JSON-RPC round trip.

:class:`CoalescingReader` is a :class:`chains.evm.verify.ChainReader`. Every
``authorization_state`` and ``balance_of`` asked for during one pass of the event loop
(the payments whose requests were handled in that pass) goes to the node as one JSON-RPC
batch of ``eth_call`` requests, sent at the start of the next pass. Each caller gets its
own answer, read at the block the node answers the batch at: the read still happens for
every payment (it is what refuses an authorization used elsewhere), only the round trips
are shared.

Errors: a transport failure fails every read of that batch (:class:`RpcUnavailable`);
a node's error object (a revert) fails only the read it answers (:class:`RpcError`).
Caching is not done here: :class:`chains.evm.verify.CachedChainReader` wraps this.
"""

from __future__ import annotations

import asyncio

from eth_abi import decode as abi_decode

from chains.evm.rpc import RpcClient, RpcUnavailable, from_hex, selector, to_hex
from chains.evm.eip712 import address_bytes

_SEL_BALANCE_OF = selector("balanceOf(address)")
_SEL_AUTH_STATE = selector("authorizationState(address,bytes32)")
MAX_BATCH = 200  # eth_calls per HTTP request; a pass with more sends several


class CoalescingReader:
    def __init__(self, rpc: RpcClient, *, max_batch: int = MAX_BATCH) -> None:
        self._rpc = rpc
        self._max = max_batch
        self._pending: list[tuple[dict, asyncio.Future]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self.round_trips = 0  # batches sent (for tests and benches)
        self.reads = 0  # eth_calls sent

    async def authorization_state(self, token: str, authorizer: str, nonce: bytes) -> bool:
        if len(nonce) != 32:
            raise ValueError("an EIP-3009 nonce is 32 bytes")
        data = _SEL_AUTH_STATE + bytes(12) + address_bytes(authorizer) + bytes(nonce)
        return abi_decode(["bool"], await self._read(token, data))[0]

    async def balance_of(self, token: str, owner: str) -> int:
        data = _SEL_BALANCE_OF + bytes(12) + address_bytes(owner)
        return abi_decode(["uint256"], await self._read(token, data))[0]

    def _read(self, token: str, data: bytes) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(({"to": token, "data": to_hex(data)}, future))
        if not self._scheduled:
            # After the callbacks of this pass: every read asked for in it joins.
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), self._max):
            task = asyncio.ensure_future(self._send(pending[i:i + self._max]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, part: list[tuple[dict, asyncio.Future]]) -> None:
        self.round_trips += 1
        self.reads += len(part)
        try:
            results = await self._rpc.call_batch([("eth_call", [tx, "latest"]) for tx, _ in part])
        except Exception as exc:
            for _tx, future in part:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _tx, future in part:
                if not future.done():
                    future.set_exception(RpcUnavailable("the read was abandoned"))
            raise
        for (_tx, future), result in zip(part, results):
            if future.done():  # its caller went away
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(from_hex(result))
