"""The application's typed state: everything a handler needs, in one object under one
`web.AppKey`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import Config
from gateway.rails.base import Rail
from gateway.routing import Router
from store.clock import Clock
from store.secrets import OriginSecrets, SecretStore

_SECRET_TTL = 5.0  # seconds: a rotation made by another instance is seen this fast
_SECRET_REFRESH = 4.0  # seconds: past this age one background read renews the entry


@dataclass
class Gateway:
    config: Config
    router: Router
    engine: AsyncEngine
    secret_store: SecretStore
    clock: Clock
    rails: dict[str, Rail] = field(default_factory=dict)
    evm: Any = None  # gateway.rails.evm.EvmChains when [evm] networks are configured
    hedera: Any = None  # gateway.rails.registry.HederaLink when a Hedera rail is configured
    resolver: Any = None  # gateway.forward.GuardedResolver of `origins` (runtime paygates widen it)
    origins: Any = None  # gateway.upstream.OriginPool: the proxy's connections to origins
    _secrets: dict[str, tuple[float, OriginSecrets]] = field(default_factory=dict)
    _secret_reads: dict[str, asyncio.Task] = field(default_factory=dict)
    _secret_epoch: int = 0

    async def origin_secrets(self, paygate_id: str) -> OriginSecrets:
        """The paygate's secrets, never older than _SECRET_TTL: an entry is stamped with
        the time its read *started*. Requests never queue on the store while the entry is
        fresh; one read renews it in the background once it is _SECRET_REFRESH old, and
        concurrent misses share one read instead of each querying the store."""
        hit = self._secrets.get(paygate_id)
        if hit is not None:
            age = time.monotonic() - hit[0]
            if age < _SECRET_REFRESH:
                return hit[1]
            if age < _SECRET_TTL:
                self._secret_read(paygate_id)
                return hit[1]
        # shield: a caller that gives up must not cancel the read others are waiting on
        return await asyncio.shield(self._secret_read(paygate_id))

    def _secret_read(self, paygate_id: str) -> asyncio.Task:
        task = self._secret_reads.get(paygate_id)
        if task is None:
            task = asyncio.ensure_future(self._read_secret(paygate_id))
            self._secret_reads[paygate_id] = task
            task.add_done_callback(lambda t: self._secret_read_done(paygate_id, t))
        return task

    def _secret_read_done(self, paygate_id: str, task: asyncio.Task) -> None:
        if self._secret_reads.get(paygate_id) is task:
            del self._secret_reads[paygate_id]
        if not task.cancelled():
            task.exception()  # a failed background read is retried by the next caller

    async def _read_secret(self, paygate_id: str) -> OriginSecrets:
        started, epoch = time.monotonic(), self._secret_epoch
        pg = self.config.paygate(paygate_id)
        grace = pg.origin_auth.rotation_grace_seconds if pg else 0
        value = await self.secret_store.get(paygate_id) or \
            await self.secret_store.ensure(paygate_id, None, grace)
        if epoch == self._secret_epoch:  # not read across a forget_secret: may be cached
            self._secrets[paygate_id] = (started, value)
        return value

    def forget_secret(self, paygate_id: str) -> None:
        """Drop the cached entry (after a rotation by this process); a read already under
        way neither fills the cache nor is handed to later callers."""
        self._secrets.pop(paygate_id, None)
        self._secret_reads.pop(paygate_id, None)
        self._secret_epoch += 1

    def resource_url(self, request: web.Request) -> str:
        base = self.config.server.public_url or f"{request.scheme}://{request.host}"
        return base + request.raw_path


GATEWAY = web.AppKey("gateway", Gateway)
