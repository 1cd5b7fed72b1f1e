"""The webhook outbox's fan-out under a burst of events, on SQLite and PostgreSQL: every
event becomes exactly one delivery per endpoint that wants it, even with two workers
(instances) fanning out at the same time, and a provider's endpoint never hears another
provider's events."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import func, select

from store import migrations
from store.clock import ManualClock
from store.outbox import emit
from store.schema import webhook_deliveries, webhook_events
from store.webhooks import WebhookStore
from tests.store.test_store import box, pg_engine, postgres, sqlite_engine  # noqa: F401


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request):
    return request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")


async def test_a_burst_fans_out_once_per_endpoint_with_two_workers(engine):
    await migrations.migrate(engine)
    secrets_box = box()
    clock = ManualClock()
    stores = [WebhookStore(engine, secrets_box, clock) for _ in range(2)]
    operator = await stores[0].create(None, "https://ops.example/hook", "s" * 32,
                                      ["session.activated"], None)
    acme = await stores[0].create("acme", "https://acme.example/hook", "t" * 32,
                                  ["session.activated"], None)
    await stores[0].create("other", "https://other.example/hook", "u" * 32,
                           ["session.activated"], None)
    async with engine.begin() as conn:
        for i in range(1200):
            await emit(conn, "session.activated", paygate_id="sky", provider="acme",
                       data={"n": i})
    taken = [0, 0]

    async def worker(i: int) -> None:
        while True:
            got = await stores[i].fan_out()
            if not got:
                return
            taken[i] += got
    await asyncio.gather(worker(0), worker(1))
    assert sum(taken) == 1200
    async with engine.connect() as conn:
        per_endpoint = dict((await conn.execute(select(
            webhook_deliveries.c.endpoint_id, func.count()).group_by(
            webhook_deliveries.c.endpoint_id))).all())
        per_event = (await conn.execute(select(func.count()).select_from(
            select(webhook_deliveries.c.event_id).group_by(webhook_deliveries.c.event_id)
            .having(func.count() != 2).subquery()))).scalar_one()
        left = (await conn.execute(select(func.count()).where(
            webhook_events.c.fanned_out == 0))).scalar_one()
    assert per_endpoint == {operator.id: 1200, acme.id: 1200}  # "other" hears nothing
    assert per_event == 0 and left == 0
    jobs = await stores[0].lease("w", 30, 5)
    assert {json.loads(j.body)["type"] for j in jobs} == {"session.activated"}
