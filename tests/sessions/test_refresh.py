"""sessions.refresh.Refresher against the local Hedera network's mirror: the order of
reads that keeps a pull from being counted as available twice, and the leases that keep
several gateway instances from refreshing the same session in one pass."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from sqlalchemy import event
from sqlalchemy.util import await_only

from chains.hedera.mirror import MirrorClient
from sessions.ledger import Charged, Ledger
from sessions.pulls import PullWorker
from sessions.records import SessionRecords
from sessions.refresh import Refresher
from tests.gateway.session_support import approve
from tests.sessions.conftest import PRICE, new_session

TTL = 30.0
LAG = 4.0  # mirror ingestion lag used to hold a pull back (ample for a slow machine)


class CountingMirror:
    """The real mirror client, counting the allowance reads made through it."""

    def __init__(self, inner: MirrorClient) -> None:
        self.inner = inner
        self.allowance_reads: list[str] = []

    async def crypto_allowance(self, owner: str, spender: str):
        self.allowance_reads.append(owner)
        return await self.inner.crypto_allowance(owner, spender)

    async def transaction(self, tx_id: str):
        return await self.inner.transaction(tx_id)


class CatchingUpMirror(CountingMirror):
    """The real mirror client; the devnet's mirror lag is lifted right after an allowance
    read, as if ingestion caught up at that moment."""

    def __init__(self, inner: MirrorClient, net) -> None:
        super().__init__(inner)
        self.net = net

    async def crypto_allowance(self, owner: str, spender: str):
        try:
            return await super().crypto_allowance(owner, spender)
        finally:
            self.net.set_mirror_lag(0)


@pytest.fixture
async def mirror(hedera_devnet):
    async with MirrorClient(hedera_devnet.mirror_url, timeout=2.0) as client:
        yield client


def refresher(records, mirror, clock) -> Refresher:
    return Refresher(records, mirror, clock, lambda paygate_id: PRICE, ttl=TTL)


async def keep_calls(ledger, session, n: int) -> None:
    for _ in range(n):
        got = await ledger.charge(session.id, uuid.uuid4().hex, "fp", PRICE, fresh_after=0)
        assert isinstance(got, Charged)
        await ledger.keep(got.charge_id)


# -- ordering ----------------------------------------------------------------------------


async def test_a_pull_leaves_outstanding_only_once_the_mirror_shows_it(
        sqlite_engine, clock, mirror, hedera_devnet, hedera_account, hedera_mirror_faults):
    from chains.hedera.network import HederaNetwork

    records, ledger = SessionRecords(sqlite_engine, clock), Ledger(sqlite_engine, clock)
    spender, owner, dest = hedera_devnet.account("spender"), hedera_account(), hedera_account()
    await approve(hedera_devnet, owner, 10 * PRICE)
    approved_at = time.time()
    session = await new_session(records, allowance=10 * PRICE, owner=owner.account_id,
                                spender=spender.account_id)
    await keep_calls(ledger, session, 4)

    # Hold back what happens from now on, but not the approval: it must be older than
    # the lag before the lag is switched on.
    await asyncio.sleep(max(0.0, approved_at + LAG + 0.2 - time.time()))
    hedera_mirror_faults.set_mirror_lag(LAG)
    chain = HederaNetwork(network="hedera:devnet", nodes=hedera_devnet.network_map(),
                          account_id=spender.account_id, private_key=spender.private_key)
    puller = PullWorker(records, chain, mirror, clock, destination=lambda _: dest.account_id,
                        window=0)
    assert await puller.work_once() == 1
    (pull,) = await records.pulls(session.id, states=("succeeded",))
    assert pull.amount == 4 * PRICE

    worker = refresher(records, mirror, clock)
    held = await worker.refresh(session)
    clock.advance(TTL)
    assert await worker.work_once() == 1
    held_again = await records.get(session.id)
    # The precondition of what follows: the mirror still did not show the pull.
    assert await mirror.transaction(pull.tx_id) is None, \
        f"the mirror caught up within {LAG} s; the test could not hold the pull back"
    for view in (held, held_again):
        # The mirror's allowance does not reflect the pull yet, so neither may outstanding.
        assert (view.allowance, view.outstanding, view.available) == \
            (10 * PRICE, 4 * PRICE, 6 * PRICE)
    assert [p.state for p in await records.pulls(session.id)] == ["succeeded"]

    # The mirror catches up in the middle of a refresh, right after the allowance read:
    # that read still predates the pull, so the pull must stay outstanding for now.
    catching_up = refresher(records, CatchingUpMirror(mirror, hedera_devnet), clock)
    mid = await catching_up.refresh(held_again)
    assert (mid.allowance, mid.outstanding, mid.available) == (10 * PRICE, 4 * PRICE, 6 * PRICE)
    assert await mirror.transaction(pull.tx_id)  # caught up now
    seen = await worker.refresh(mid)
    assert (seen.allowance, seen.outstanding, seen.available) == (6 * PRICE, 0, 6 * PRICE)
    assert [p.state for p in await records.pulls(session.id, states=("reconciled",))] == \
        ["reconciled"]
    again = await worker.refresh(seen)
    assert (again.allowance, again.outstanding) == (6 * PRICE, 0)
    assert (again.spent, again.calls, again.state) == (4 * PRICE, 4, "active")


# -- leases ------------------------------------------------------------------------------


class LeaseRendezvous:
    """Presses the race between instances: each statement that sets a session lease waits
    (bounded) until `parties` of them are about to run, so every instance has chosen its
    sessions before any of them takes a lease."""

    def __init__(self, engine, parties: int, timeout: float = 5.0) -> None:
        self.engine, self.parties, self.timeout = engine.sync_engine, parties, timeout
        self.arrived = 0
        self.all_here = asyncio.Event()

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        if not statement.startswith("UPDATE session_allowances SET lease_until="):
            return
        self.arrived += 1
        if self.arrived >= self.parties:
            self.all_here.set()
            return
        try:
            await_only(asyncio.wait_for(self.all_here.wait(), self.timeout))
        except TimeoutError:
            pass  # fewer instances got this far: nothing left to line up

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._before)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._before)


async def test_instances_do_not_refresh_the_same_owner_in_one_pass(
        engine, clock, mirror, hedera_devnet, hedera_account):
    records = SessionRecords(engine, clock)
    spender = hedera_devnet.account("spender")
    owners = [hedera_account() for _ in range(3)]
    ids = set()
    for owner in owners:  # two sessions each: the refresh is the owner's
        await approve(hedera_devnet, owner, 10 * PRICE)
        ids |= {(await new_session(records, allowance=10 * PRICE, owner=owner.account_id,
                                   spender=spender.account_id)).id for _ in range(2)}
    mirrors = [CountingMirror(mirror) for _ in range(4)]
    workers = [refresher(records, m, clock) for m in mirrors]
    assert await workers[0].work_once() == 0  # every view is fresh
    clock.advance(TTL / 3)

    # On PostgreSQL the instances' transactions interleave: line them up. The SQLite store
    # has a single pooled connection, so there its transactions run one after another.
    racing = engine.dialect.name == "postgresql"
    with LeaseRendezvous(engine, len(workers) if racing else 1) as rendezvous:
        done = await asyncio.gather(*(w.work_once() for w in workers))
    if racing:
        assert rendezvous.arrived >= len(workers)  # the race was run
    assert sum(done) == len(owners)
    reads = [owner_id for m in mirrors for owner_id in m.allowance_reads]
    assert sorted(reads) == sorted(o.account_id for o in owners)
    for sid in ids:
        after = await records.get(sid)
        assert after.mirror_at == clock.now() and after.state == "active"
    assert await asyncio.gather(*(w.work_once() for w in workers)) == [0] * 4  # fresh again


async def test_a_held_lease_blocks_others_until_it_expires(engine, clock, mirror, hedera_devnet,
                                                           hedera_account):
    records = SessionRecords(engine, clock)
    spender, owner = hedera_devnet.account("spender"), hedera_account()
    await approve(hedera_devnet, owner, 10 * PRICE)
    session = await new_session(records, allowance=10 * PRICE, owner=owner.account_id,
                                spender=spender.account_id)
    clock.advance(TTL / 3)
    # An instance leased the owner and died before refreshing it.
    assert await records.allowances.lease_for_refresh(TTL, 50, TTL / 3) == \
        [(owner.account_id, spender.account_id)]
    counting = CountingMirror(mirror)
    worker = refresher(records, counting, clock)
    assert await worker.work_once() == 0
    clock.advance(TTL + 1)
    assert await worker.work_once() == 1
    assert counting.allowance_reads == [owner.account_id]


async def test_mirror_down_releases_the_lease_and_keeps_the_view(
        sqlite_engine, clock, mirror, hedera_devnet, hedera_account, hedera_mirror_faults):
    records = SessionRecords(sqlite_engine, clock)
    spender, owner = hedera_devnet.account("spender"), hedera_account()
    await approve(hedera_devnet, owner, 10 * PRICE)
    session = await new_session(records, allowance=10 * PRICE, owner=owner.account_id,
                                spender=spender.account_id)
    clock.advance(TTL / 3)
    worker = refresher(records, mirror, clock)
    hedera_mirror_faults.set_mirror_down(True)
    assert await worker.work_once() == 0  # asked, nothing refreshed
    kept = await records.get(session.id)
    assert (kept.state, kept.allowance, kept.mirror_at) == ("active", 10 * PRICE,
                                                            session.mirror_at)
    hedera_mirror_faults.set_mirror_down(False)
    assert await worker.work_once() == 1  # released at once, not held for the lease
    assert (await records.get(session.id)).mirror_at == clock.now()


# -- one mirror read per owner, and back-off on 429 --------------------------------------------


def allowance_reads(net, owner_id: str, since: int) -> int:
    return sum(1 for path in net.mirror_requests(since)
               if path.startswith(f"/api/v1/accounts/{owner_id}/allowances/crypto"))


async def test_mirror_reads_do_not_grow_with_the_sessions_of_one_owner(
        engine, clock, mirror, hedera_devnet, hedera_account):
    records = SessionRecords(engine, clock)
    spender = hedera_devnet.account("spender")
    worker = refresher(records, mirror, clock)
    reads = {}
    for n in (1, 5):
        owner = hedera_account()
        await approve(hedera_devnet, owner, 10 * PRICE)
        ids = [(await new_session(records, allowance=10 * PRICE, owner=owner.account_id,
                                  spender=spender.account_id)).id for _ in range(n)]
        clock.advance(TTL / 3)
        mark = len(hedera_devnet.mirror_requests())
        for _ in range(3):  # three refresh periods
            await worker.work_once()
            clock.advance(TTL / 3)
        reads[n] = allowance_reads(hedera_devnet, owner.account_id, mark)
        for sid in ids:
            assert (await records.get(sid)).mirror_at >= clock.now() - TTL / 3
    assert reads[1] == reads[5] == 3


async def test_mirror_429_pauses_refresh_for_retry_after(
        sqlite_engine, clock, mirror, hedera_devnet, hedera_account, hedera_mirror_faults):
    records = SessionRecords(sqlite_engine, clock)
    spender = hedera_devnet.account("spender")
    owners = [hedera_account() for _ in range(3)]
    for owner in owners:
        await approve(hedera_devnet, owner, 10 * PRICE)
        await new_session(records, allowance=10 * PRICE, owner=owner.account_id,
                          spender=spender.account_id)
    worker = refresher(records, mirror, clock)
    clock.advance(TTL / 3)
    hedera_mirror_faults.set_mirror_rate_limited(True, retry_after=7)
    mark = len(hedera_devnet.mirror_requests())
    await worker.work_once()
    assert len(hedera_devnet.mirror_requests(mark)) == 1  # the 429 stops the pass at once
    for _ in range(6):  # within Retry-After: the mirror is not asked again
        clock.advance(1)
        await worker.work_once()
    assert len(hedera_devnet.mirror_requests(mark)) == 1
    hedera_mirror_faults.set_mirror_rate_limited(False)
    clock.advance(1.5)
    assert await worker.work_once() == len(owners)
    for owner in owners:
        assert allowance_reads(hedera_devnet, owner.account_id, mark) >= 1
