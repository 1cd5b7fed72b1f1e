"""The webhook outbox: events written in the transaction of the change that caused them.

    await emit(conn, "session.revoked", paygate_id="skyroute", data={...})

`conn` is the caller's open transaction: the event exists if and only if the change
commits. The delivery worker (gateway.webhooks) fans events out to the endpoints that
want them and delivers them later; writing an event costs one INSERT and nothing else,
so the paths that emit (charges, settlements) stay cheap.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from store.schema import webhook_events

EVENT_TYPES = (
    "session.activated", "session.revoked", "session.expired",
    "allowance.low", "allowance.exhausted",
    "payment.settled", "payment.failed",
    "secret.rotated", "paygate.changed",
)


async def emit(conn: AsyncConnection, event_type: str, *, paygate_id: str | None = None,
               provider: str | None = None, data: dict[str, Any],
               now: float | None = None) -> str:
    """Add one event to the outbox inside `conn`'s transaction; returns its id.
    `provider` may be left out: the worker finds it from the paygate."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    event_id = "evt_" + secrets.token_hex(12)
    await conn.execute(insert(webhook_events).values(
        id=event_id, type=event_type, paygate_id=paygate_id, provider=provider,
        data=json.dumps(data, sort_keys=True, default=str),
        created_at=time.time() if now is None else now, fanned_out=0))
    return event_id
