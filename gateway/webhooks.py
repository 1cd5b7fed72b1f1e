"""Webhook delivery: a background worker in every instance, over the durable outbox.

Each round (every `admin.webhook_interval_seconds`): fan new outbox events out to the
endpoints that want them, lease due deliveries, POST each one signed
(`gateway.origin.sign_webhook`), and record the outcome. A 2xx answer is delivered; anything
else (refused connection, timeout, other status, redirect) is retried after
`backoff * 2**(tries-1)` seconds (at most `webhook_backoff_max_seconds`) with full
jitter on the upper half, and is `failed` after `webhook_max_attempts` tries. The lease
outlives one attempt (timeout + margin), so no two instances send the same delivery at
once. An instance that shuts down hands back what it is sending; one that dies
mid-attempt leaves it to be retried when the lease lapses (the receiver may then see the
event id twice, never two different ids for one event).

Endpoint URLs that point at private addresses are refused at creation unless
`server.allow_private_targets`; delivery resolves names through the same guarded
resolver as origins, so a public name that resolves privately is refused too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.resolver import DefaultResolver

from gateway.forward import GuardedResolver
from gateway.origin import WEBHOOK_EVENT_HEADER as EVENT_HEADER
from gateway.origin import WEBHOOK_ID_HEADER as ID_HEADER
from gateway.origin import WEBHOOK_SIGNATURE_HEADER as SIGNATURE_HEADER
from gateway.origin import sign_webhook
from store import outbox
from store.webhooks import Job, WebhookStore

if TYPE_CHECKING:
    from gateway.admin.runtime import AdminState
    from gateway.state import Gateway

log = logging.getLogger("tollgate.webhooks")

_LEASE_MARGIN = 30.0  # seconds a lease outlives the attempt's own timeout
_BATCH = 20


def retry_delay(tries: int, base: float, cap: float, rnd: random.Random = random) -> float:
    """Exponential back-off with jitter: uniform in [d/2, d], d = min(cap, base * 2**(tries-1))."""
    d = min(cap, base * 2 ** max(tries - 1, 0))
    return rnd.uniform(d / 2, d)


def http_session(gw: "Gateway") -> aiohttp.ClientSession:
    allow = gw.config.server.allow_private_targets
    resolver = DefaultResolver() if allow else GuardedResolver(set())
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        connector=aiohttp.TCPConnector(limit=50, resolver=resolver, force_close=True))


class Deliverer:
    def __init__(self, gw: "Gateway", store: WebhookStore) -> None:
        self.gw = gw
        self.store = store
        self.owner = "wk_" + secrets.token_hex(8)

    async def round(self, http: aiohttp.ClientSession) -> int:
        """One pass; how many deliveries were attempted."""
        cfg = self.gw.config.admin
        await self.store.fan_out()
        jobs = await self.store.lease(self.owner, cfg.webhook_timeout_seconds + _LEASE_MARGIN,
                                      _BATCH)
        try:
            await asyncio.gather(*(self.attempt(http, job) for job in jobs))
        except asyncio.CancelledError:
            # Shutting down: hand the unfinished ones back at once rather than leave them
            # leased (another instance would wait for the lease to lapse). A receiver may
            # have got one already; it is sent again with the same event id.
            await asyncio.shield(self.store.release([j.delivery_id for j in jobs], self.owner))
            raise
        return len(jobs)

    async def attempt(self, http: aiohttp.ClientSession, job: Job) -> None:
        cfg = self.gw.config.admin
        headers = {"Content-Type": "application/json", ID_HEADER: job.event_id,
                   EVENT_HEADER: job.event_type,
                   SIGNATURE_HEADER: sign_webhook(job.secret, job.body, int(self.gw.clock.now())),
                   "User-Agent": "Tollgate-Webhooks/1"}
        status, error = None, ""
        try:
            async with http.post(job.url, data=job.body, headers=headers, allow_redirects=False,
                                 timeout=aiohttp.ClientTimeout(total=cfg.webhook_timeout_seconds)
                                 ) as resp:
                status = resp.status
                await resp.content.read(1024)  # a little, then drop the connection
            if 200 <= status < 300:
                await self.store.delivered(job.delivery_id, self.owner, status)
                return
            error = f"answered {status}"
        except asyncio.TimeoutError:
            error = f"no answer within {cfg.webhook_timeout_seconds} s"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        tries = job.attempts + 1
        retry_at = None
        if tries < cfg.webhook_max_attempts:
            retry_at = self.gw.clock.now() + retry_delay(
                tries, cfg.webhook_backoff_seconds, cfg.webhook_backoff_max_seconds)
        await self.store.attempt_failed(job.delivery_id, self.owner, status, error, retry_at)


async def run(gw: "Gateway", admin: "AdminState") -> None:
    """The worker: until cancelled. Failures of the store are logged and retried."""
    store = WebhookStore(gw.engine, admin.box, gw.clock)
    worker = Deliverer(gw, store)
    refresh = 0
    async with http_session(gw) as http:
        while True:
            try:
                if refresh <= 0:
                    outbox.set_low_thresholds(await store.low_thresholds())
                    refresh = 5
                refresh -= 1
                await worker.round(http)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery round failed")
            await asyncio.sleep(gw.config.admin.webhook_interval_seconds)
