"""Keeping each live session's view of its allowance fresh, from the mirror, on a TTL.

Never per request: a worker refreshes sessions whose view is older than a third of the
TTL; a charge requires a view younger than the TTL, so with the mirror down sessions run
on their cached allowance for at most the TTL, then answer 503.

Order matters for safety: pulls are checked on the mirror *before* the allowance is
read, so a pull is only taken out of `outstanding` when the allowance read after it
already reflects it. The other order could count a pull's amount as available twice.
"""

from __future__ import annotations

import logging
from typing import Callable

from chains.hedera.mirror import MirrorUnavailable
from sessions.activation import Mirror
from sessions.records import Session, SessionRecords
from store.clock import Clock

log = logging.getLogger("tollgate.sessions.refresh")


class Refresher:
    def __init__(self, records: SessionRecords, mirror: Mirror, clock: Clock,
                 unit_price: Callable[[str], int], ttl: float) -> None:
        self.records = records
        self.mirror = mirror
        self.clock = clock
        self.unit_price = unit_price
        self.ttl = ttl

    async def refresh(self, session: Session) -> Session | None:
        """Read the mirror for one session and record what it says. Raises
        MirrorUnavailable (the session keeps its cached view)."""
        seen = []
        for pull in await self.records.pulls(session.id, states=("succeeded",)):
            record = await self.mirror.transaction(pull.tx_id)
            if record:
                seen.append(pull.id)
        allowance = await self.mirror.crypto_allowance(session.owner, session.spender)
        return await self.records.apply_mirror(
            session.id, allowance=allowance.amount if allowance else None,
            reconciled_pull_ids=seen, unit_price=self.unit_price(session.paygate_id))

    async def work_once(self, limit: int = 50) -> int:
        sessions = await self.records.lease_live(lease_seconds=max(self.ttl, 5), limit=limit,
                                                 older_than=self.ttl / 3)
        for s in sessions:
            try:
                after = await self.refresh(s)
            except MirrorUnavailable as exc:
                log.warning("mirror unavailable while refreshing session %s: %s", s.id, exc)
                await self.records.release(s.id)
                continue
            except Exception:  # one bad session must not leave the others leased and stale
                log.exception("refreshing session %s failed", s.id)
                await self.records.release(s.id)
                continue
            if after is not None and after.state != s.state:
                log.info("session %s: %s -> %s", s.id, s.state, after.state)
        return len(sessions)
