"""Collecting kept charges on chain: one approved transfer per session per window, exactly
once.

1. Sum the session's kept, unpulled charges up to a cutoff time.
2. Freeze and sign the approved transfer for that sum (nothing sent yet).
3. Store the bytes and the transaction id and tie the charges to the pull, in one
   transaction: from here on a crash loses nothing.
4. Submit. A retry resubmits the same bytes (the node answers DUPLICATE_TRANSACTION and
   nothing happens twice); after the validity window the mirror decides; only a pull
   known to have failed releases its charges for a new pull.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from sessions.ledger import Ledger
from sessions.records import Pull, SessionRecords
from store.clock import Clock

log = logging.getLogger("tollgate.sessions.pulls")

MIRROR_MARGIN = 30.0  # seconds past the validity window before "not on the mirror" is final


class Chain(Protocol):
    async def prepare_approved_transfer(self, owner: str, dest: str, amount: int, memo: str = ""): ...
    async def submit(self, tx_bytes: bytes, *, cosign: bool = False): ...
    async def receipt(self, tx_id: str) -> str | None: ...


class Mirror(Protocol):
    async def transaction(self, tx_id: str): ...


class PullWorker:
    def __init__(self, records: SessionRecords, chain: Chain, mirror: Mirror, clock: Clock, *,
                 destination: Callable[[str], str], window: float,
                 ledger: Ledger | None = None, abandon_after: float = 900.0) -> None:
        self.records = records
        self.ledger = ledger
        self.abandon_after = abandon_after
        self.chain = chain
        self.mirror = mirror
        self.clock = clock
        self.destination = destination  # paygate id -> account the pulled HBAR goes to
        self.window = window

    async def work_once(self) -> int:
        done = 0
        now = self.clock.now()
        await self.records.drop_expired_nonces(older_than=now - 86400)
        if self.ledger is not None:
            # Charges still pending long after any request could have finished belong to
            # a gateway that died mid-call: nothing was answered, so give the money back.
            done += await self.ledger.reverse_abandoned(older_than=now - self.abandon_after)
        for session_id in await self.records.sessions_to_pull(older_than=now - self.window):
            done += await self._pull_session(session_id, cutoff=now)
        for pull in await self.records.lease_pulls(("prepared", "submitted", "unknown"),
                                                   lease_seconds=60, limit=20, older_than=5):
            done += 1
            await self._resolve(pull)
        return done

    async def _pull_session(self, session_id: str, cutoff: float) -> int:
        session = await self.records.get(session_id)
        if session is None:
            return 0
        # Never ask for more than the allowance can give: a refused pull still costs a
        # fee, and would be refused again every window. What pulls in flight took from
        # the allowance may not show in the mirror's view yet.
        in_flight = sum(p.amount for p in await self.records.pulls(session_id))
        cutoff, amount = await self.records.pull_cutoff(
            session_id, cutoff, cap=session.allowance - in_flight)
        if amount <= 0:
            return 0
        prepared = await self.chain.prepare_approved_transfer(
            session.owner, self.destination(session.paygate_id), amount,
            memo=f"tollgate pull {session_id[:8]}")
        pull_id = await self.records.prepare_pull(
            session_id=session_id, owner=session.owner, amount=amount, cutoff=cutoff,
            tx_id=prepared.tx_id, tx_bytes=prepared.tx_bytes, valid_until=prepared.valid_until)
        if pull_id is None:
            return 0  # charges moved under us; the next pass sums again
        pull = Pull(pull_id, session_id, session.owner, amount, prepared.tx_id,
                    prepared.tx_bytes, "prepared", prepared.valid_until)
        await self._submit(pull)
        return 1

    async def _submit(self, pull: Pull) -> None:
        from chains.hedera.network import HederaUnavailable

        try:
            result = await self.chain.submit(pull.tx_bytes)
        except HederaUnavailable as exc:
            log.warning("pull %s: node unavailable (%s); will resubmit", pull.tx_id, exc)
            await self.records.move_pull(pull.id, pull.state, "unknown", error="node unavailable")
            return
        if result.status == "SUCCESS":
            await self.records.move_pull(pull.id, (pull.state, "submitted"), "succeeded")
            log.info("pulled %d tinybars from %s (%s)", pull.amount, pull.owner, pull.tx_id)
        elif result.status == "TRANSACTION_EXPIRED":
            # Resubmitted after its window: the first submission may still have made it.
            await self._by_mirror(pull)
        else:
            # Refused at precheck or failed at consensus: this transaction will never
            # succeed. Over-pulls end here too (AMOUNT_EXCEEDS_ALLOWANCE).
            log.warning("pull %s failed: %s", pull.tx_id, result.status)
            await self.records.move_pull(pull.id, (pull.state, "submitted"), "failed",
                                         error=result.status)

    async def _resolve(self, pull: Pull) -> None:
        """A pull whose outcome we did not learn: resubmit the same bytes while they are
        valid, else ask the mirror."""
        if self.clock.now() < pull.valid_until:
            await self._submit(pull)
        else:
            await self._by_mirror(pull)

    async def _by_mirror(self, pull: Pull) -> None:
        from chains.hedera.mirror import MirrorUnavailable, pick_record

        try:
            records = await self.mirror.transaction(pull.tx_id)
        except MirrorUnavailable:
            return  # try again on the next pass
        record = pick_record(records or [])
        if record is not None and record.succeeded:
            await self.records.move_pull(pull.id, pull.state, "succeeded")
        elif record is not None:
            await self.records.move_pull(pull.id, pull.state, "failed", error=record.result)
        elif self.clock.now() > pull.valid_until + MIRROR_MARGIN:
            # Not on the mirror: before calling it lost (and pulling its charges again),
            # ask a node, which keeps receipts for a while: the mirror may just be late.
            from chains.hedera.network import HederaUnavailable

            try:
                status = await self.chain.receipt(pull.tx_id)
            except HederaUnavailable:
                return  # decide on a later pass
            if status == "SUCCESS":
                await self.records.move_pull(pull.id, pull.state, "succeeded")
            else:
                await self.records.move_pull(pull.id, pull.state, "failed",
                                             error=status or "expired unseen")
