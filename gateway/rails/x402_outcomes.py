"""Group commit for settlement bookkeeping: writes that arrive together share one durable
write.

A batch transaction settles hundreds of payments at once; recording each outcome in its own
database transaction would make the store, not the chain, the limit. :class:`GroupWriter`
collects the writes that are waiting at the same moment, hands them to one ``flush`` call
(one database transaction) and answers each caller with its own result only once that
transaction has committed: nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupWriter(Generic[T, R]):
    """``await write(item)`` -> this item's result from ``flush(items) -> results``."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._flush = flush
        self._pending: list[tuple[T, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def write(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return await future

    async def _run(self) -> None:
        await asyncio.sleep(0)  # writers woken in the same pass join this group
        while self._pending:
            group, self._pending = self._pending, []
            try:
                results = await self._flush([item for item, _ in group])
            except BaseException as exc:
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception)
                                             else RuntimeError(f"write abandoned: {exc!r}"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(group, results):
                if not future.done():
                    future.set_result(result)


__all__ = ["GroupWriter"]
