"""Prometheus metrics (`/metrics`, the text exposition format of `prometheus-client`).

Two kinds, named so an operator can tell them apart:

- **This instance** (counters and histograms, counted as things happen):
  `tollgate_requests_total{paygate,rail,status}`, `tollgate_request_seconds{paygate}`,
  `tollgate_chain_calls_total{service,call,outcome}`, `tollgate_chain_call_seconds{service}`
  (EVM JSON-RPC and Hedera mirror calls, reported by `chains.callstats`).
- **The whole store** (`tollgate_store_*`, read with a few SQL queries at scrape time, so
  the paid path counts nothing): payments by rail, settlement mode and state; deferred
  exposure (open deferred payments, atomic units per asset); the oldest open payment's age;
  session charges kept but not yet pulled vs pulled on chain; the settlement lag histogram
  (served -> settled, observed for payments settled since this process started). Every
  instance reports the same store values: aggregate them with `max`, not `sum`.

Labels are bounded: paygate ids and rail names come from the config (unmatched requests
are `paygate="none"`), HTTP status codes, state names; never a payer, path or token.
Amounts are exact integers in the store; Prometheus samples are floats, so an amount past
2**53 atomic units is shown rounded.

Exposure: off unless `[metrics] enabled = true`; on its own listener (`host`, `port`) by
default, so it need not be reachable from where paid traffic comes in; with no `port`,
`/metrics` on the main listener.
"""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from chains import callstats
from gateway.config import Config
from gateway.state import GATEWAY
from store.schema import payments, session_charges, session_pulls, webhook_deliveries

log = logging.getLogger("tollgate.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_OPEN = ("verified", "queued", "settling", "unknown")

REQUESTS = Counter("tollgate_requests", "Requests answered, by paygate, rail and HTTP status",
                   ["paygate", "rail", "status"], registry=REGISTRY)
REQUEST_SECONDS = Histogram("tollgate_request_seconds", "Time to answer a request",
                            ["paygate"], buckets=_LATENCY, registry=REGISTRY)
CHAIN_CALLS = Counter("tollgate_chain_calls", "Calls to EVM RPC nodes and the Hedera mirror",
                      ["service", "call", "outcome"], registry=REGISTRY)
CHAIN_SECONDS = Histogram("tollgate_chain_call_seconds", "Latency of chain service calls",
                          ["service"], buckets=_LATENCY, registry=REGISTRY)
STORE_UP = Gauge("tollgate_store_up", "1 when the last scrape could read the store",
                 registry=REGISTRY)
PAYMENTS = Gauge("tollgate_store_payments", "x402 payments by rail, settlement mode and state",
                 ["rail", "settlement", "state"], registry=REGISTRY)
EXPOSURE = Gauge("tollgate_store_deferred_exposure_atomic",
                 "Open deferred payments (served, not yet settled), atomic units",
                 ["network", "asset"], registry=REGISTRY)
OLDEST_OPEN = Gauge("tollgate_store_oldest_open_payment_seconds",
                    "Age of the oldest payment not yet settled, failed or void (0: none)",
                    registry=REGISTRY)
SESSION_KEPT = Gauge("tollgate_store_session_unpulled_atomic",
                     "Session charges kept (served) and not yet pulled on chain, tinybars",
                     registry=REGISTRY)
SESSION_PULLED = Gauge("tollgate_store_session_pulled_atomic",
                       "Session charges pulled on chain (succeeded pulls), tinybars",
                       registry=REGISTRY)
SESSION_PULLS = Gauge("tollgate_store_session_pulls", "Session pulls by state", ["state"],
                      registry=REGISTRY)
WEBHOOK_DELIVERIES = Gauge("tollgate_store_webhook_deliveries",
                           "Webhook deliveries by state (pending = the backlog)", ["state"],
                           registry=REGISTRY)
SETTLEMENT_LAG = Histogram("tollgate_store_settlement_lag_seconds",
                           "Served (payment accepted) to settled, for payments settled since "
                           "this process started", buckets=_LAG, registry=REGISTRY)


# Labelled children, looked up once: `labels()` takes a lock and builds a key per call. The
# labels are bounded (paygate and rail ids from the config, HTTP statuses).
_counted: dict[tuple[str | None, str | None, int], tuple] = {}


def request_done(paygate: str | None, rail: str | None, status: int, seconds: float) -> None:
    key = (paygate, rail, status)
    children = _counted.get(key)
    if children is None:
        if len(_counted) >= 10_000:
            _counted.clear()
        children = _counted[key] = (
            REQUESTS.labels(paygate or "none", rail or "none", str(status)),
            REQUEST_SECONDS.labels(paygate or "none"))
    children[0].inc()
    children[1].observe(seconds)


def _chain_call(service: str, call: str, outcome: str, seconds: float) -> None:
    CHAIN_CALLS.labels(service, call, outcome).inc()
    CHAIN_SECONDS.labels(service).observe(seconds)


callstats.observe(_chain_call)


class _StoreScrape:
    """The store gauges of one gateway; the lag cursor moves with each scrape."""

    def __init__(self) -> None:
        self.since = time.time()

    async def refresh(self, gw) -> None:
        now = gw.clock.now()
        async with gw.engine.connect() as conn:
            by_state = (await conn.execute(
                select(payments.c.rail, payments.c.settlement, payments.c.state,
                       func.count()).group_by(payments.c.rail, payments.c.settlement,
                                              payments.c.state))).all()
            open_deferred = (await conn.execute(
                select(payments.c.network, payments.c.asset, payments.c.amount)
                .where(payments.c.settlement == "deferred", payments.c.state.in_(_OPEN)))).all()
            oldest = (await conn.execute(select(func.min(payments.c.created_at))
                                         .where(payments.c.state.in_(_OPEN)))).scalar()
            settled = (await conn.execute(
                select(payments.c.created_at, payments.c.updated_at)
                .where(payments.c.state == "settled", payments.c.updated_at > self.since,
                       payments.c.updated_at <= now))).all()
            unpulled = (await conn.execute(
                select(func.coalesce(func.sum(session_charges.c.amount), 0))
                .where(session_charges.c.state == "kept",
                       session_charges.c.pull_id.is_(None)))).scalar()
            pulls = (await conn.execute(
                select(session_pulls.c.state, func.count(),
                       func.coalesce(func.sum(session_pulls.c.amount), 0))
                .group_by(session_pulls.c.state))).all()
            deliveries = dict((await conn.execute(
                select(webhook_deliveries.c.state, func.count())
                .group_by(webhook_deliveries.c.state))).all())
        PAYMENTS.clear()
        for rail, settlement, state, count in by_state:
            PAYMENTS.labels(rail, settlement, state).set(count)
        EXPOSURE.clear()
        sums: dict[tuple[str, str], int] = {}
        for network, asset, amount in open_deferred:  # exact integers, summed in Python
            sums[(network, asset)] = sums.get((network, asset), 0) + int(amount)
        for (network, asset), total in sums.items():
            EXPOSURE.labels(network, asset).set(total)
        OLDEST_OPEN.set(max(0.0, now - oldest) if oldest is not None else 0.0)
        for created, updated in settled:
            SETTLEMENT_LAG.observe(max(0.0, updated - created))
        self.since = max([self.since] + [u for _, u in settled])
        SESSION_KEPT.set(int(unpulled))
        SESSION_PULLS.clear()
        pulled = 0
        for state, count, amount in pulls:
            SESSION_PULLS.labels(state).set(count)
            if state == "succeeded":
                pulled = int(amount)
        SESSION_PULLED.set(pulled)
        for state in ("pending", "delivered", "failed"):
            WEBHOOK_DELIVERIES.labels(state).set(deliveries.get(state, 0))


_SCRAPE = web.AppKey("tollgate_metrics_scrape", _StoreScrape)


def _handler(main: web.Application):
    async def metrics(request: web.Request) -> web.Response:
        gw = main.get(GATEWAY)
        if gw is not None:
            try:
                await main[_SCRAPE].refresh(gw)
                STORE_UP.set(1)
            except Exception as exc:  # a scrape still answers: the store is what is down
                log.warning("metrics: store unavailable: %s", type(exc).__name__)
                STORE_UP.set(0)
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
    return metrics


def add(app: web.Application, config: Config) -> None:
    """Expose `/metrics` as `config.metrics` says (nothing when disabled)."""
    cfg = config.metrics
    if not cfg.enabled:
        return
    app[_SCRAPE] = _StoreScrape()
    if cfg.port is None:
        app.router.add_get("/metrics", _handler(app))
        return

    async def listener(main: web.Application) -> AsyncIterator[None]:
        side = web.Application()
        side.router.add_get("/metrics", _handler(main))
        runner = web.AppRunner(side, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, cfg.host, cfg.port).start()
        log.info("metrics on http://%s:%s/metrics", cfg.host, cfg.port)
        try:
            yield
        finally:
            await runner.cleanup()

    app.cleanup_ctx.append(listener)
