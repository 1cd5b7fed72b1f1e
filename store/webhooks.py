"""Webhook endpoints and deliveries.

An event in the outbox (`store.outbox`) is fanned out once: the worker that flips its
`fanned_out` flag from 0 to 1 creates, in the same transaction, one delivery per endpoint
that wants it. A delivery is leased (`lease_owner`, `lease_until`) by the instance that
sends it; a lease outlives one attempt (the attempt's timeout plus a margin), so two
instances never hold the same delivery at once. Outcomes are recorded only by the lease
holder. After `max_attempts` failed tries a delivery is `failed`; redelivery puts it back.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from store.clock import Clock
from store.crypto import SecretBox
from store.schema import runtime_paygates, webhook_deliveries, webhook_endpoints, webhook_events


@dataclass(frozen=True)
class Endpoint:
    id: str
    provider: str | None
    url: str
    events: list[str]
    low_threshold: int | None
    enabled: bool
    created_at: float

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "provider": self.provider, "url": self.url,
                "events": self.events, "low_threshold": self.low_threshold,
                "enabled": self.enabled, "created_at": self.created_at}

    def wants(self, event_type: str, data: dict[str, Any]) -> bool:
        if not self.enabled or ("*" not in self.events and event_type not in self.events):
            return False
        if event_type == "allowance.low":  # crossed this endpoint's own threshold
            t = self.low_threshold
            return t is not None and int(data["remaining"]) < t <= int(data["previous"])
        return True


def _endpoint(r) -> Endpoint:
    return Endpoint(r.id, r.provider, r.url, json.loads(r.events),
                    None if r.low_threshold is None else int(r.low_threshold),
                    bool(r.enabled), r.created_at)


@dataclass(frozen=True)
class Job:
    """One leased delivery, with what it sends."""

    delivery_id: str
    attempts: int  # tries made before this one
    url: str
    secret: str
    event_id: str
    event_type: str
    body: bytes


class WebhookStore:
    def __init__(self, engine: AsyncEngine, box: SecretBox, clock: Clock) -> None:
        self._engine = engine
        self._box = box
        self._clock = clock

    # -- endpoints --------------------------------------------------------------------

    async def create(self, provider: str | None, url: str, secret: str, events: list[str],
                     low_threshold: int | None) -> Endpoint:
        eid, now = "wh_" + secrets.token_hex(12), self._clock.now()
        async with self._engine.begin() as conn:
            await conn.execute(insert(webhook_endpoints).values(
                id=eid, provider=provider, url=url, secret_sealed=self._box.seal(secret),
                events=json.dumps(events), low_threshold=low_threshold, enabled=1,
                created_at=now))
        return Endpoint(eid, provider, url, events, low_threshold, True, now)

    async def endpoints(self, provider: str | None = None, *,
                        everyone: bool = False) -> list[Endpoint]:
        query = select(webhook_endpoints).order_by(webhook_endpoints.c.created_at)
        if not everyone:
            query = query.where(webhook_endpoints.c.provider == provider)
        async with self._engine.connect() as conn:
            return [_endpoint(r) for r in (await conn.execute(query)).all()]

    async def endpoint(self, endpoint_id: str) -> Endpoint | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(webhook_endpoints).where(
                webhook_endpoints.c.id == endpoint_id))).first()
        return _endpoint(row) if row else None

    async def update(self, endpoint_id: str, **values: Any) -> None:
        if "events" in values:
            values["events"] = json.dumps(values["events"])
        if "secret" in values:
            values["secret_sealed"] = self._box.seal(values.pop("secret"))
        if "enabled" in values:
            values["enabled"] = int(values["enabled"])
        async with self._engine.begin() as conn:
            await conn.execute(update(webhook_endpoints)
                               .where(webhook_endpoints.c.id == endpoint_id).values(**values))

    async def delete(self, endpoint_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(webhook_deliveries).where(
                webhook_deliveries.c.endpoint_id == endpoint_id,
                webhook_deliveries.c.state != "delivered"))
            await conn.execute(delete(webhook_endpoints)
                               .where(webhook_endpoints.c.id == endpoint_id))

    async def low_thresholds(self) -> list[int]:
        async with self._engine.connect() as conn:
            return [int(v) for v in (await conn.execute(
                select(webhook_endpoints.c.low_threshold).where(
                    webhook_endpoints.c.low_threshold.is_not(None),
                    webhook_endpoints.c.enabled == 1))).scalars()]

    # -- fan-out and delivery -----------------------------------------------------------

    async def fan_out(self, limit: int = 1000) -> int:
        """Turn events not fanned out yet into deliveries; how many events were taken.

        Up to `limit` events in ONE write transaction (claim them all, then their
        deliveries): on SQLite every write transaction holds the file's write lock, which
        the hot path's group-commit writer waits for; one per event made a burst of
        settlement events stall paid requests for as long as the fan-out ran."""
        async with self._engine.connect() as conn:
            events = (await conn.execute(select(webhook_events).where(
                webhook_events.c.fanned_out == 0).order_by(webhook_events.c.created_at)
                .limit(limit))).all()
        if not events:
            return 0
        async with self._engine.begin() as conn:
            claimed = set((await conn.execute(update(webhook_events).where(
                webhook_events.c.id.in_([ev.id for ev in events]),
                webhook_events.c.fanned_out == 0).values(fanned_out=1)
                .returning(webhook_events.c.id))).scalars())  # others: another instance's
            endpoints = [_endpoint(r) for r in (await conn.execute(select(webhook_endpoints)))]
            if not endpoints or not claimed:
                return len(claimed)
            paygates = {ev.paygate_id for ev in events if ev.provider is None and ev.paygate_id}
            owners = dict((await conn.execute(select(
                runtime_paygates.c.id, runtime_paygates.c.provider).where(
                runtime_paygates.c.id.in_(paygates))))) if paygates else {}
            now = self._clock.now()
            rows = []
            for ev in events:
                if ev.id not in claimed:
                    continue
                provider = ev.provider
                if provider is None and ev.paygate_id is not None:
                    provider = owners.get(ev.paygate_id)
                data = json.loads(ev.data)
                # an operator's endpoint (no provider) hears every provider's events
                for ep in endpoints:
                    if (ep.provider is None or (provider is not None and ep.provider == provider)) \
                            and ep.wants(ev.type, data):
                        rows.append(dict(
                            id="dlv_" + secrets.token_hex(12), event_id=ev.id,
                            endpoint_id=ep.id, state="pending", attempts=0,
                            next_attempt_at=now, lease_owner=None, lease_until=None,
                            last_status=None, last_error=None, delivered_at=None,
                            created_at=now))
            if rows:
                await conn.execute(insert(webhook_deliveries), rows)
        return len(claimed)

    async def lease(self, owner: str, lease_seconds: float, limit: int) -> list[Job]:
        """Take up to `limit` pending deliveries that are due and not held by anyone."""
        now = self._clock.now()
        free = or_(webhook_deliveries.c.lease_until.is_(None),
                   webhook_deliveries.c.lease_until < now)
        due = and_(webhook_deliveries.c.state == "pending",
                   webhook_deliveries.c.next_attempt_at <= now, free)
        async with self._engine.begin() as conn:
            ids = (await conn.execute(select(webhook_deliveries.c.id).where(due)
                                      .order_by(webhook_deliveries.c.next_attempt_at)
                                      .limit(limit))).scalars().all()
            if not ids:
                return []
            got = (await conn.execute(update(webhook_deliveries).where(
                webhook_deliveries.c.id.in_(ids), due)
                .values(lease_owner=owner, lease_until=now + lease_seconds)
                .returning(webhook_deliveries.c.id))).scalars().all()
        if not got:
            return []
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(webhook_deliveries.c.id, webhook_deliveries.c.attempts,
                       webhook_endpoints.c.url, webhook_endpoints.c.secret_sealed,
                       webhook_events.c.id.label("event_id"), webhook_events.c.type,
                       webhook_events.c.paygate_id, webhook_events.c.data,
                       webhook_events.c.created_at)
                .join(webhook_endpoints,
                      webhook_endpoints.c.id == webhook_deliveries.c.endpoint_id)
                .join(webhook_events, webhook_events.c.id == webhook_deliveries.c.event_id)
                .where(webhook_deliveries.c.id.in_(list(got)),
                       webhook_deliveries.c.lease_owner == owner))).all()
        return [Job(r.id, int(r.attempts), r.url, self._box.open(r.secret_sealed),
                    r.event_id, r.type, json.dumps({
                        "id": r.event_id, "type": r.type, "created_at": r.created_at,
                        "paygate": r.paygate_id, "data": json.loads(r.data)},
                        sort_keys=True).encode()) for r in rows]

    async def delivered(self, delivery_id: str, owner: str, status: int) -> bool:
        async with self._engine.begin() as conn:
            done = await conn.execute(update(webhook_deliveries).where(
                webhook_deliveries.c.id == delivery_id,
                webhook_deliveries.c.lease_owner == owner,
                webhook_deliveries.c.state == "pending").values(
                state="delivered", attempts=webhook_deliveries.c.attempts + 1,
                last_status=status, last_error=None, delivered_at=self._clock.now(),
                lease_owner=None, lease_until=None))
        return done.rowcount == 1

    async def attempt_failed(self, delivery_id: str, owner: str, status: int | None,
                             error: str, retry_at: float | None) -> bool:
        """Record a failed try: pending again at `retry_at`, or `failed` when None."""
        values: dict[str, Any] = {"attempts": webhook_deliveries.c.attempts + 1,
                                  "last_status": status, "last_error": error[:200],
                                  "lease_owner": None, "lease_until": None}
        if retry_at is None:
            values["state"] = "failed"
        else:
            values["next_attempt_at"] = retry_at
        async with self._engine.begin() as conn:
            done = await conn.execute(update(webhook_deliveries).where(
                webhook_deliveries.c.id == delivery_id,
                webhook_deliveries.c.lease_owner == owner,
                webhook_deliveries.c.state == "pending").values(**values))
        return done.rowcount == 1

    async def release(self, delivery_ids: list[str], owner: str) -> None:
        """Give back leases without counting a try (the instance is shutting down)."""
        if not delivery_ids:
            return
        async with self._engine.begin() as conn:
            await conn.execute(update(webhook_deliveries).where(
                webhook_deliveries.c.id.in_(delivery_ids),
                webhook_deliveries.c.lease_owner == owner).values(
                lease_owner=None, lease_until=None))

    async def deliveries(self, endpoint_id: str, state: str | None = None,
                         limit: int = 100) -> list[dict[str, Any]]:
        query = (select(webhook_deliveries, webhook_events.c.type)
                 .join(webhook_events, webhook_events.c.id == webhook_deliveries.c.event_id)
                 .where(webhook_deliveries.c.endpoint_id == endpoint_id)
                 .order_by(webhook_deliveries.c.created_at.desc()).limit(limit))
        if state is not None:
            query = query.where(webhook_deliveries.c.state == state)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [{"id": r.id, "event_id": r.event_id, "type": r.type, "state": r.state,
                 "attempts": int(r.attempts), "next_attempt_at": r.next_attempt_at,
                 "last_status": r.last_status, "last_error": r.last_error,
                 "delivered_at": r.delivered_at, "created_at": r.created_at} for r in rows]

    async def redeliver(self, endpoint_id: str, delivery_id: str) -> bool:
        """A `failed` (or `delivered`) delivery goes back to pending with fresh tries."""
        async with self._engine.begin() as conn:
            done = await conn.execute(update(webhook_deliveries).where(
                webhook_deliveries.c.id == delivery_id,
                webhook_deliveries.c.endpoint_id == endpoint_id,
                webhook_deliveries.c.state.in_(("failed", "delivered"))).values(
                state="pending", attempts=0, next_attempt_at=self._clock.now(),
                lease_owner=None, lease_until=None, delivered_at=None))
        return done.rowcount == 1
