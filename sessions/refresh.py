"""Keeping each owner's view of their allowance fresh, from the mirror, on a TTL.

Per owner, never per session or per request: a worker refreshes (owner, spender) rows whose
view is older than a third of the TTL, with one allowance read however many sessions the
owner has; a charge requires a view younger than the TTL, so with the mirror down sessions
run on their cached allowance for at most the TTL, then answer 503.

A mirror that answers 429 is left alone for as long as its Retry-After says (or
`RATE_LIMIT_PAUSE` without one): the pass stops at the first 429, and no pass asks again
before then. Other failures leave that owner's view as it was and go on with the next.

Order matters for safety: pulls are checked on the mirror *before* the allowance is
read, so a pull is only taken out of `outstanding` when the allowance read after it
already reflects it. The other order could count a pull's amount as available twice.
"""

from __future__ import annotations

import logging
from typing import Callable

from chains.hedera.mirror import MirrorRateLimited, MirrorUnavailable
from sessions.activation import Mirror
from sessions.records import Session, SessionRecords
from store.clock import Clock

log = logging.getLogger("tollgate.sessions.refresh")

RATE_LIMIT_PAUSE = 10.0  # seconds, after a 429 that does not say when to come back
RATE_LIMIT_PAUSE_MAX = 600.0  # a Retry-After longer than this is not taken at its word


class Refresher:
    def __init__(self, records: SessionRecords, mirror: Mirror, clock: Clock,
                 unit_price: Callable[[str], int], ttl: float) -> None:
        self.records = records
        self.allowances = records.allowances
        self.mirror = mirror
        self.clock = clock
        self.unit_price = unit_price
        self.ttl = ttl
        self.paused_until = 0.0  # no mirror request before this (a 429's Retry-After)

    async def refresh_owner(self, owner: str, spender: str) -> None:
        """Read the mirror for one owner and record what it says for all their sessions.
        Raises MirrorUnavailable (MirrorRateLimited on 429): the cached view stays."""
        seen = []
        for pull in await self.records.owner_pulls(owner, spender, states=("succeeded",)):
            if await self.mirror.transaction(pull.tx_id):
                seen.append(pull.id)
        allowance = await self.mirror.crypto_allowance(owner, spender)
        await self.allowances.apply_mirror(
            owner, spender, allowance=allowance.amount if allowance else None,
            reconciled_pull_ids=seen, unit_price=self.unit_price)

    async def refresh(self, session: Session) -> Session | None:
        """Refresh the owner of `session`; the session as it is afterwards."""
        await self.refresh_owner(session.owner, session.spender)
        return await self.records.get(session.id)

    def _pause(self, exc: MirrorRateLimited) -> None:
        wait = RATE_LIMIT_PAUSE if exc.retry_after is None else exc.retry_after
        self.paused_until = self.clock.now() + min(max(wait, 0.0), RATE_LIMIT_PAUSE_MAX)
        log.warning("mirror rate-limited us (%s); no refresh before %.0f", exc,
                    self.paused_until)

    async def work_once(self, limit: int = 50) -> int:
        """One pass; how many owners were refreshed."""
        if self.clock.now() < self.paused_until:
            return 0
        owners = await self.allowances.lease_for_refresh(
            lease_seconds=max(self.ttl, 5), limit=limit, older_than=self.ttl / 3)
        done = 0
        for i, (owner, spender) in enumerate(owners):
            try:
                await self.refresh_owner(owner, spender)
                done += 1
                continue
            except MirrorRateLimited as exc:
                self._pause(exc)
                for rest in owners[i:]:  # asked again after the pause, by whoever is first
                    await self.allowances.release(*rest)
                break
            except MirrorUnavailable as exc:
                log.warning("mirror unavailable while refreshing %s: %s", owner, exc)
            except Exception:  # one bad owner must not leave the others leased and stale
                log.exception("refreshing %s failed", owner)
            await self.allowances.release(owner, spender)
        return done
