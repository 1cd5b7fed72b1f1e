"""Collecting kept charges on chain: one approved transfer per session per window, exactly
once, never more than the owner's allowance (shared by all their sessions) can give.

0. Lease the owner's pulls (one instance at a time per owner, so what each pull may take
   from the one allowance is decided by one worker). The lease is refused while a pull
   the chain refused for allowance reasons waits for a fresh mirror read and its back-off.
1. Sum the session's kept, unpulled charges up to a cutoff time, within what the owner's
   allowance leaves after the pulls still in flight.
2. Freeze and sign the approved transfer for that sum (nothing sent yet).
3. Store the bytes and the transaction id and tie the charges to the pull, in one
   transaction: from here on a crash loses nothing.
4. Submit. A retry resubmits the same bytes (the node answers DUPLICATE_TRANSACTION and
   nothing happens twice); after the validity window the mirror decides; only a pull
   known to have failed releases its charges for a new pull.

A pull refused with SPENDER_DOES_NOT_HAVE_ALLOWANCE or AMOUNT_EXCEEDS_ALLOWANCE means the
gateway's view of the allowance is wrong (the owner lowered or revoked it): the owner's
view is made stale and the owner's pulls wait for a mirror read and a back-off that doubles
with each refusal in a row, so a refusal is never retried in a loop (each one costs a fee).
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from sessions.ledger import Ledger
from sessions.records import Pull, SessionRecords
from store.clock import Clock

log = logging.getLogger("tollgate.sessions.pulls")

MIRROR_MARGIN = 30.0  # seconds past the validity window before "not on the mirror" is final
PULL_LEASE = 60.0  # seconds an instance holds an owner's pulls
# Receipt statuses that say the allowance is not what the gateway believes.
ALLOWANCE_REFUSALS = frozenset({"SPENDER_DOES_NOT_HAVE_ALLOWANCE", "AMOUNT_EXCEEDS_ALLOWANCE"})


class Chain(Protocol):
    async def prepare_approved_transfer(self, owner: str, dest: str, amount: int, memo: str = ""): ...
    async def submit(self, tx_bytes: bytes, *, cosign: bool = False): ...
    async def receipt(self, tx_id: str) -> str | None: ...


class Mirror(Protocol):
    async def transaction(self, tx_id: str): ...


class PullWorker:
    def __init__(self, records: SessionRecords, chain: Chain, mirror: Mirror, clock: Clock, *,
                 destination: Callable[[str], str], window: float,
                 ledger: Ledger | None = None,
                 abandon_after: float | Callable[[], float] = 900.0) -> None:
        self.records = records
        self.ledger = ledger
        self.abandon_after = abandon_after
        self.chain = chain
        self.mirror = mirror
        self.clock = clock
        self.destination = destination  # paygate id -> account the pulled HBAR goes to
        self.window = window
        self.allowances = records.allowances

    async def work_once(self) -> int:
        done = 0
        now = self.clock.now()
        await self.records.drop_expired_nonces(older_than=now - 86400)
        if self.ledger is not None:
            # Charges still pending long after any request could have finished belong to
            # a gateway that died mid-call: nothing was answered, so give the money back.
            wait = self.abandon_after() if callable(self.abandon_after) else self.abandon_after
            done += await self.ledger.reverse_abandoned(older_than=now - wait)
        for owner, spender in await self.allowances.pull_candidates(older_than=now - self.window):
            done += await self._pull_owner(owner, spender, cutoff=now)
        for pull in await self.records.lease_pulls(("prepared", "submitted", "unknown"),
                                                   lease_seconds=60, limit=20, older_than=5):
            done += 1
            await self._resolve(pull)
        return done

    async def _pull_owner(self, owner: str, spender: str, cutoff: float) -> int:
        lease = await self.allowances.lease_for_pull(owner, spender, PULL_LEASE)
        if lease is None:
            return 0
        made, pulled = 0, False
        try:
            # Never ask for more than the allowance can give: a refused pull still costs a
            # fee. What pulls in flight took from it may not show in the mirror's view yet.
            cap = lease.allowance - await self.records.in_flight(owner, spender)
            for session_id in await self.records.sessions_to_pull(owner, spender, cutoff):
                if cap <= 0:
                    break
                amount, status = await self._pull_session(session_id, cutoff, cap)
                if status is None:
                    continue
                made += 1
                if status in ALLOWANCE_REFUSALS:
                    break  # `_submit` marked the owner: no more pulls until the mirror says
                pulled = pulled or status == "SUCCESS"
                cap -= amount
        finally:
            await self.allowances.end_pull(
                owner, spender, pulled=pulled,
                idle_until=None if made else self.clock.now() + self.window)
        return made

    async def _pull_session(self, session_id: str, cutoff: float,
                            cap: int) -> tuple[int, str | None]:
        """Pull the oldest of the session's charges that fit in `cap`: (amount, outcome),
        outcome None when nothing was sent."""
        session = await self.records.get(session_id)
        if session is None:
            return 0, None
        cutoff, amount = await self.records.pull_cutoff(session_id, cutoff, cap=cap)
        if amount <= 0:
            return 0, None
        prepared = await self.chain.prepare_approved_transfer(
            session.owner, self.destination(session.paygate_id), amount,
            memo=f"tollgate pull {session_id[:8]}")
        pull_id = await self.records.prepare_pull(
            session_id=session_id, owner=session.owner, amount=amount, cutoff=cutoff,
            tx_id=prepared.tx_id, tx_bytes=prepared.tx_bytes, valid_until=prepared.valid_until)
        if pull_id is None:
            return 0, None  # charges moved under us; the next pass sums again
        pull = Pull(pull_id, session_id, session.owner, amount, prepared.tx_id,
                    prepared.tx_bytes, "prepared", prepared.valid_until)
        return amount, await self._submit(pull)

    async def _submit(self, pull: Pull) -> str:
        """Submit the stored bytes; the status the node answered ("unknown" when it could
        not be asked)."""
        from chains.hedera.network import HederaUnavailable

        try:
            result = await self.chain.submit(pull.tx_bytes)
        except HederaUnavailable as exc:
            log.warning("pull %s: node unavailable (%s); will resubmit", pull.tx_id, exc)
            await self.records.move_pull(pull.id, pull.state, "unknown", error="node unavailable")
            return "unknown"
        if result.status == "SUCCESS":
            await self.records.move_pull(pull.id, (pull.state, "submitted"), "succeeded")
            log.info("pulled %d tinybars from %s (%s)", pull.amount, pull.owner, pull.tx_id)
        elif result.status == "TRANSACTION_EXPIRED":
            # Resubmitted after its window: the first submission may still have made it.
            await self._by_mirror(pull)
        else:
            # Refused at precheck or failed at consensus: this transaction will never
            # succeed. Over-pulls end here too (AMOUNT_EXCEEDS_ALLOWANCE).
            await self._failed(pull, (pull.state, "submitted"), result.status)
        return result.status

    async def _failed(self, pull: Pull, olds, status: str) -> None:
        log.warning("pull %s failed: %s", pull.tx_id, status)
        if await self.records.move_pull(pull.id, olds, "failed", error=status) and \
                status in ALLOWANCE_REFUSALS:
            session = await self.records.get(pull.session_id)
            if session is not None:
                backoff = await self.allowances.refused(session.owner, session.spender)
                log.warning("the allowance of %s is below what we counted; no pull before a "
                            "fresh mirror read and %.0f s", session.owner, backoff)

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
            await self._failed(pull, pull.state, record.result)
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
                await self._failed(pull, pull.state, status or "expired unseen")
