"""The application's typed state: everything a handler needs, in one object under one
`web.AppKey`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import Config
from gateway.rails.base import Rail
from gateway.routing import Router
from store.clock import Clock
from store.secrets import OriginSecrets, SecretStore

_SECRET_TTL = 5.0  # seconds: a rotation made by another instance is seen this fast


@dataclass
class Gateway:
    config: Config
    router: Router
    engine: AsyncEngine
    secret_store: SecretStore
    clock: Clock
    http: aiohttp.ClientSession
    rails: dict[str, Rail] = field(default_factory=dict)
    evm: Any = None  # gateway.rails.evm.EvmChains when [evm] networks are configured
    hedera: Any = None  # gateway.rails.registry.HederaLink when a Hedera rail is configured
    resolver: Any = None  # gateway.forward.GuardedResolver of `http` (runtime paygates widen it)
    _secrets: dict[str, tuple[float, OriginSecrets]] = field(default_factory=dict)

    async def origin_secrets(self, paygate_id: str) -> OriginSecrets:
        hit = self._secrets.get(paygate_id)
        if hit and time.monotonic() - hit[0] < _SECRET_TTL:
            return hit[1]
        pg = self.config.paygate(paygate_id)
        grace = pg.origin_auth.rotation_grace_seconds if pg else 0
        value = await self.secret_store.get(paygate_id) or \
            await self.secret_store.ensure(paygate_id, None, grace)
        self._secrets[paygate_id] = (time.monotonic(), value)
        return value

    def forget_secret(self, paygate_id: str) -> None:
        self._secrets.pop(paygate_id, None)

    def resource_url(self, request: web.Request) -> str:
        base = self.config.server.public_url or f"{request.scheme}://{request.host}"
        return base + request.raw_path


GATEWAY = web.AppKey("gateway", Gateway)
