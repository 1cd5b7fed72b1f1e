"""sessions.pulls.PullWorker against the local Hedera network, with SessionRecords on
SQLite: kept charges are collected on chain once per session per window, exactly once,
through busy nodes, lost answers, duplicate records, a down mirror and a crash.

Money is checked where it lands: the owner's and the destination's consensus balances
(the gateway's spender pays the fees, so the owner loses exactly what was pulled)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from chains.hedera.mirror import MirrorClient
from sessions.ledger import Charged, Ledger
from sessions.pulls import MIRROR_MARGIN, PullWorker
from sessions.records import SessionRecords
from store.clock import ManualClock
from tests.gateway.session_support import approve
from tests.sessions.conftest import PRICE, new_session

WINDOW = 60.0
LEASE = 60.0  # PullWorker leases the pulls it resolves for 60 s


@pytest.fixture
def clock():
    return ManualClock()  # starts at the real time: the network checks validity windows


@pytest.fixture
def records(sqlite_engine, clock):
    return SessionRecords(sqlite_engine, clock)


@pytest.fixture
def ledger(sqlite_engine, clock):
    return Ledger(sqlite_engine, clock)


@pytest.fixture(scope="module")
def chain(hedera_devnet):
    from chains.hedera.network import HederaNetwork

    spender = hedera_devnet.account("spender")
    return HederaNetwork(network="hedera:devnet", nodes=hedera_devnet.network_map(),
                         account_id=spender.account_id, private_key=spender.private_key)


@pytest.fixture
async def mirror(hedera_devnet):
    async with MirrorClient(hedera_devnet.mirror_url, timeout=2.0) as client:
        yield client


class Setup:
    """One destination account and helpers to open funded sessions and charge them."""

    def __init__(self, net, make_account, records, ledger, clock, chain, mirror):
        self.net, self.make_account = net, make_account
        self.records, self.ledger, self.clock = records, ledger, clock
        self.chain, self.mirror = chain, mirror
        self.dest = make_account(balance=0)
        self.spender = net.account("spender")

    def worker(self) -> PullWorker:
        return PullWorker(self.records, self.chain, self.mirror, self.clock,
                          destination=lambda paygate_id: self.dest.account_id, window=WINDOW)

    async def session(self, allowance: int = 20 * PRICE):
        owner = self.make_account()
        await approve(self.net, owner, allowance)
        session = await new_session(self.records, allowance=allowance, owner=owner.account_id,
                                    spender=self.spender.account_id)
        return owner, session

    async def calls(self, session, n: int) -> None:
        for _ in range(n):
            # freshness of the mirror view is not what these tests are about
            got = await self.ledger.charge(session.id, uuid.uuid4().hex, "fp", PRICE,
                                           fresh_after=0)
            assert isinstance(got, Charged)
            await self.ledger.keep(got.charge_id)

    def balances(self, owner) -> tuple[int, int]:
        return self.net.balance(owner), self.net.balance(self.dest)

    async def tx_records(self, tx_id: str) -> list[str]:
        return [r.result for r in await self.mirror.transaction(tx_id) or []]


@pytest.fixture
def setup(hedera_devnet, hedera_account, records, ledger, clock, chain, mirror):
    return Setup(hedera_devnet, hedera_account, records, ledger, clock, chain, mirror)


async def only_pull(records, session_id, state):
    pulls = await records.pulls(session_id, states=(state,))
    assert len(pulls) == 1, pulls
    return pulls[0]


async def all_pulls(records, session_id):
    return await records.pulls(session_id, states=(
        "prepared", "submitted", "unknown", "succeeded", "failed", "reconciled"))


# -- batching -----------------------------------------------------------------------------


async def test_one_pull_per_session_per_window(setup, records, clock):
    (alice, a), (bob, b) = await setup.session(), await setup.session()
    await setup.calls(a, 5)
    await setup.calls(b, 2)
    before_a, before_b, before_dest = setup.net.balance(alice), setup.net.balance(bob), \
        setup.net.balance(setup.dest)
    worker = setup.worker()
    assert await worker.work_once() == 0  # the charges are younger than the window
    clock.advance(WINDOW + 1)
    # Two instances in the same pass: each session is still pulled once.
    done = await asyncio.gather(worker.work_once(), setup.worker().work_once())
    assert sum(done) == 2
    assert (await only_pull(records, a.id, "succeeded")).amount == 5 * PRICE
    assert (await only_pull(records, b.id, "succeeded")).amount == 2 * PRICE
    assert len(await all_pulls(records, a.id)) == len(await all_pulls(records, b.id)) == 1
    assert setup.net.balance(alice) == before_a - 5 * PRICE
    assert setup.net.balance(bob) == before_b - 2 * PRICE
    assert setup.net.balance(setup.dest) == before_dest + 7 * PRICE
    assert await worker.work_once() == 0  # nothing is pulled twice

    await setup.calls(a, 3)
    clock.advance(WINDOW / 2)
    assert await worker.work_once() == 0  # the new calls wait for their window
    clock.advance(WINDOW / 2 + 1)
    assert await worker.work_once() == 1
    amounts = sorted(p.amount for p in await all_pulls(records, a.id))
    assert amounts == [3 * PRICE, 5 * PRICE]
    assert setup.net.balance(alice) == before_a - 8 * PRICE
    assert setup.net.balance(setup.dest) == before_dest + 10 * PRICE
    allowance = await setup.mirror.crypto_allowance(alice.account_id, setup.spender.account_id)
    assert allowance.amount == 12 * PRICE
    charges = await setup.ledger.charges(a.id)
    assert len(charges) == 8 and all(c.pull_id is not None for c in charges)


async def test_pending_charges_wait_for_their_outcome(setup, records, clock):
    owner, s = await setup.session()
    await setup.calls(s, 2)
    running = await setup.ledger.charge(s.id, "running", "fp", PRICE, fresh_after=0)
    assert isinstance(running, Charged)  # the origin has not answered yet: not kept
    clock.advance(WINDOW + 1)
    assert await setup.worker().work_once() == 1
    assert (await only_pull(records, s.id, "succeeded")).amount == 2 * PRICE
    await setup.ledger.keep(running.charge_id)
    clock.advance(WINDOW + 1)
    assert await setup.worker().work_once() == 1
    assert sorted(p.amount for p in await all_pulls(records, s.id)) == [PRICE, 2 * PRICE]


# -- faults ----------------------------------------------------------------------------


async def test_busy_node_is_retried_and_pulls_once(setup, records, clock, hedera_mirror_faults):
    owner, s = await setup.session()
    await setup.calls(s, 4)
    before_owner, before_dest = setup.balances(owner)
    clock.advance(WINDOW + 1)
    hedera_mirror_faults.fail_next_submissions(1, "busy")
    assert await setup.worker().work_once() == 1
    pull = await only_pull(records, s.id, "succeeded")
    assert pull.amount == 4 * PRICE
    assert await setup.tx_records(pull.tx_id) == ["SUCCESS"]
    assert setup.balances(owner) == (before_owner - 4 * PRICE, before_dest + 4 * PRICE)


async def test_duplicate_reaching_consensus_moves_money_once(setup, records, clock,
                                                             hedera_mirror_faults):
    owner, s = await setup.session()
    await setup.calls(s, 3)
    before_owner, before_dest = setup.balances(owner)
    hedera_mirror_faults.set_duplicates_reach_consensus(True)
    hedera_mirror_faults.fail_next_submissions(1, "lost")  # executed, the answer dropped
    clock.advance(WINDOW + 1)
    worker = setup.worker()
    await worker.work_once()
    pull = await only_pull(records, s.id, "unknown")
    clock.advance(6)
    assert await worker.work_once() == 1  # resubmits the stored bytes
    done = await only_pull(records, s.id, "succeeded")
    assert (done.id, done.tx_id) == (pull.id, pull.tx_id)
    assert await setup.tx_records(pull.tx_id) == ["SUCCESS", "DUPLICATE_TRANSACTION"]
    assert setup.balances(owner) == (before_owner - 3 * PRICE, before_dest + 3 * PRICE)
    assert len(await all_pulls(records, s.id)) == 1


async def test_bytes_expired_unseen_fail_and_are_pulled_anew(setup, records, clock, chain):
    owner, s = await setup.session()
    await setup.calls(s, 2)
    before_owner, before_dest = setup.balances(owner)
    # Stored, then never sent (the submission never reached any node).
    prepared = await chain.prepare_approved_transfer(owner.account_id, setup.dest.account_id,
                                                     2 * PRICE, memo="lost before sending")
    stale = await records.prepare_pull(session_id=s.id, owner=owner.account_id, amount=2 * PRICE,
                                       cutoff=clock.now(), tx_id=prepared.tx_id,
                                       tx_bytes=prepared.tx_bytes,
                                       valid_until=prepared.valid_until)
    worker = setup.worker()
    clock.set(prepared.valid_until + 1)  # past the window, within the mirror margin
    assert await worker.work_once() == 1
    assert (await only_pull(records, s.id, "prepared")).id == stale  # not final yet
    assert all(c.pull_id == stale for c in await setup.ledger.charges(s.id))

    clock.set(prepared.valid_until + MIRROR_MARGIN + LEASE + 1)
    assert await worker.work_once() == 1
    failed = await only_pull(records, s.id, "failed")
    assert failed.id == stale
    assert all(c.pull_id is None for c in await setup.ledger.charges(s.id))  # released
    assert await setup.tx_records(prepared.tx_id) == []

    assert await worker.work_once() == 1  # the next pass: a new pull, new bytes
    fresh = await only_pull(records, s.id, "succeeded")
    assert fresh.id != stale and fresh.tx_id != prepared.tx_id and fresh.amount == 2 * PRICE
    assert setup.balances(owner) == (before_owner - 2 * PRICE, before_dest + 2 * PRICE)
    assert all(c.pull_id == fresh.id for c in await setup.ledger.charges(s.id))


async def test_mirror_down_while_resolving_changes_nothing(setup, records, clock,
                                                           hedera_mirror_faults):
    owner, s = await setup.session()
    await setup.calls(s, 3)
    before_owner, before_dest = setup.balances(owner)
    clock.advance(WINDOW + 1)
    worker = setup.worker()
    hedera_mirror_faults.fail_next_submissions(1, "lost")
    await worker.work_once()
    pull = await only_pull(records, s.id, "unknown")
    # Past the validity window: only the mirror can say what happened, and it is down.
    hedera_mirror_faults.set_mirror_down(True)
    clock.set(pull.valid_until + MIRROR_MARGIN + 1)
    assert await worker.work_once() == 1
    clock.advance(LEASE + 1)
    assert await worker.work_once() == 1
    assert (await only_pull(records, s.id, "unknown")).id == pull.id
    assert all(c.pull_id == pull.id for c in await setup.ledger.charges(s.id))
    hedera_mirror_faults.set_mirror_down(False)
    assert await worker.work_once() == 0  # still leased from the last try
    clock.advance(LEASE + 1)
    assert await worker.work_once() == 1
    assert (await only_pull(records, s.id, "succeeded")).id == pull.id
    assert setup.balances(owner) == (before_owner - 3 * PRICE, before_dest + 3 * PRICE)
    assert await worker.work_once() == 0


async def test_crash_between_prepare_and_submit_resubmits_the_stored_bytes(setup, records,
                                                                           clock, chain):
    owner, s = await setup.session()
    await setup.calls(s, 3)
    before_owner, before_dest = setup.balances(owner)
    clock.advance(WINDOW + 1)
    # What _pull_session does up to the crash: sum, sign, store. No submit.
    amount = await records.unpulled(s.id, clock.now())
    prepared = await chain.prepare_approved_transfer(owner.account_id, setup.dest.account_id,
                                                     amount)
    pull_id = await records.prepare_pull(session_id=s.id, owner=owner.account_id, amount=amount,
                                         cutoff=clock.now(), tx_id=prepared.tx_id,
                                         tx_bytes=prepared.tx_bytes,
                                         valid_until=prepared.valid_until)
    assert pull_id is not None and amount == 3 * PRICE
    assert setup.balances(owner) == (before_owner, before_dest)
    # A restarted gateway: fresh workers, nothing in memory.
    assert await setup.worker().work_once() == 0  # too young to be taken for abandoned
    clock.advance(6)
    done = await asyncio.gather(setup.worker().work_once(), setup.worker().work_once())
    assert sorted(done) == [0, 1]  # leased by one of them
    pull = await only_pull(records, s.id, "succeeded")
    assert (pull.id, pull.tx_id, pull.tx_bytes) == (pull_id, prepared.tx_id, prepared.tx_bytes)
    assert await setup.tx_records(prepared.tx_id) == ["SUCCESS"]
    assert setup.balances(owner) == (before_owner - 3 * PRICE, before_dest + 3 * PRICE)
    clock.advance(LEASE + 1)
    assert await setup.worker().work_once() == 0
    assert len(await all_pulls(records, s.id)) == 1


async def test_a_mirror_lagging_past_the_margin_does_not_pull_twice(setup, records, clock,
                                                                    hedera_mirror_faults):
    owner, s = await setup.session()
    await setup.calls(s, 2)
    before_owner, _ = setup.balances(owner)
    clock.advance(WINDOW + 1)
    worker = setup.worker()
    hedera_mirror_faults.fail_next_submissions(1, "lost")  # it did reach consensus
    await worker.work_once()
    pull = await only_pull(records, s.id, "unknown")
    hedera_mirror_faults.set_mirror_lag(3600)  # the mirror is up, answering, but behind
    clock.set(pull.valid_until + MIRROR_MARGIN + 1)
    await worker.work_once()
    await worker.work_once()
    assert setup.net.balance(owner) == before_owner - 2 * PRICE


# -- the allowance caps a pull --------------------------------------------------------------


async def test_a_pull_never_asks_for_more_than_the_allowance(setup, records, clock):
    """Charges beyond what the mirror says is left are not sent to be refused (each refusal
    costs a fee, every window): the oldest charges that fit are pulled, the rest wait."""
    owner, s = await setup.session(allowance=10 * PRICE)
    for _ in range(3):
        await setup.calls(s, 1)
        clock.advance(0.001)  # charges made at one instant are pulled together or not at all
    await approve(setup.net, owner, 2 * PRICE)  # the owner cuts the allowance
    await records.apply_mirror(s.id, allowance=2 * PRICE, reconciled_pull_ids=[],
                               unit_price=PRICE)
    before_owner, before_dest = setup.balances(owner)
    clock.advance(WINDOW + 1)
    worker = setup.worker()
    await worker.work_once()
    pull = await only_pull(records, s.id, "succeeded")
    assert pull.amount == 2 * PRICE
    assert setup.balances(owner) == (before_owner - 2 * PRICE, before_dest + 2 * PRICE)
    clock.advance(WINDOW + 1)
    assert await worker.work_once() == 0  # the third charge does not fit: nothing is sent
    assert [p.state for p in await all_pulls(records, s.id)] == ["succeeded"]
    assert await records.unpulled(s.id, clock.now()) == PRICE


async def test_charges_abandoned_mid_call_are_reversed(setup, records, ledger, clock):
    """A gateway that died between charging and answering leaves a pending charge: after
    the longest call could have lasted, the worker gives the money back."""
    owner, s = await setup.session(allowance=5 * PRICE)
    got = await ledger.charge(s.id, "died-here", "fp", PRICE, fresh_after=0)
    assert isinstance(got, Charged)
    worker = PullWorker(records, setup.chain, setup.mirror, clock,
                        destination=lambda _: setup.dest.account_id, window=WINDOW,
                        ledger=ledger, abandon_after=900)
    assert await worker.work_once() == 0
    assert (await records.get(s.id)).outstanding == PRICE
    clock.advance(901)
    assert await worker.work_once() == 1
    after = await records.get(s.id)
    assert (after.outstanding, after.spent, after.calls) == (0, 0, 0)
    again = await ledger.charge(s.id, "died-here", "fp", PRICE, fresh_after=0)
    assert isinstance(again, Charged)  # the key is free for the retry


# -- a pull refused for allowance reasons -----------------------------------------------------


def pull_submissions(net, spender_id: str) -> int:
    """Pulls that reached consensus (each one cost the spender a fee), read from the
    devnet's own record of consensus."""
    num = int(spender_id.rsplit(".", 1)[1])
    with net.ledger.lock:
        return sum(1 for recs in net.ledger.records.values() for r in recs
                   if r.key.payer == num and r.memo.startswith(b"tollgate pull"))


@pytest.mark.parametrize("owner_does", ["cut", "revoke"])
async def test_a_refused_pull_waits_for_the_mirror_and_backs_off(owner_does, setup, records,
                                                                 clock):
    """The owner lowers (or revokes) the allowance behind the gateway's back. The pull
    that meets it is refused on chain; the next one is made only after the mirror was
    read again, never in a loop: count what reached consensus."""
    from sessions.refresh import Refresher

    owner, s = await setup.session(allowance=10 * PRICE)
    for _ in range(3):
        await setup.calls(s, 1)
        clock.advance(0.001)
    await approve(setup.net, owner, PRICE if owner_does == "cut" else 0)
    before = pull_submissions(setup.net, setup.spender.account_id)
    owner_before, dest_before = setup.balances(owner)
    worker = setup.worker()
    clock.advance(WINDOW + 1)
    await worker.work_once()
    assert pull_submissions(setup.net, setup.spender.account_id) == before + 1
    (refused,) = await records.pulls(s.id, states=("failed",))
    assert refused.error in ("AMOUNT_EXCEEDS_ALLOWANCE", "SPENDER_DOES_NOT_HAVE_ALLOWANCE")
    for _ in range(20):  # many passes, no mirror read in between: nothing is sent
        clock.advance(WINDOW + 1)
        await worker.work_once()
    assert pull_submissions(setup.net, setup.spender.account_id) == before + 1

    refresher = Refresher(records, setup.mirror, clock, lambda _: PRICE, ttl=30.0)
    await refresher.refresh(await records.get(s.id))
    for _ in range(20):
        clock.advance(WINDOW + 1)
        await worker.work_once()
        await refresher.work_once()
    sent = pull_submissions(setup.net, setup.spender.account_id) - before
    if owner_does == "cut":
        # One pull of what the allowance still covers; the rest is never tried.
        assert sent == 2
        assert [p.amount for p in await records.pulls(s.id, states=("succeeded", "reconciled"))] \
            == [PRICE]
        assert setup.balances(owner) == (owner_before - PRICE, dest_before + PRICE)
    else:
        assert sent == 1
        assert (await records.get(s.id)).state == "revoked"
        assert setup.balances(owner) == (owner_before, dest_before)


async def test_after_a_refusal_the_next_pull_waits_for_the_back_off(setup, records, clock):
    from sessions.allowances import REFUSAL_BACKOFF, refusal_backoff
    from sessions.refresh import Refresher

    owner, s = await setup.session(allowance=10 * PRICE)
    for _ in range(2):
        await setup.calls(s, 1)
        clock.advance(0.001)  # charges made at one instant are pulled together or not at all
    await approve(setup.net, owner, PRICE)
    before = pull_submissions(setup.net, setup.spender.account_id)
    worker = setup.worker()
    clock.advance(WINDOW + 1)
    await worker.work_once()  # refused: AMOUNT_EXCEEDS_ALLOWANCE
    refresher = Refresher(records, setup.mirror, clock, lambda _: PRICE, ttl=30.0)
    clock.advance(1)
    await refresher.refresh(await records.get(s.id))  # the mirror read comes at once...
    await worker.work_once()
    clock.advance(REFUSAL_BACKOFF - 2)
    await worker.work_once()
    assert pull_submissions(setup.net, setup.spender.account_id) == before + 1  # ...the pull not
    clock.advance(1)
    await worker.work_once()
    assert pull_submissions(setup.net, setup.spender.account_id) == before + 2
    assert [p.amount for p in await records.pulls(s.id, states=("succeeded",))] == [PRICE]
    assert [refusal_backoff(n) for n in (1, 2, 3, 20)] == \
        [REFUSAL_BACKOFF, 2 * REFUSAL_BACKOFF, 4 * REFUSAL_BACKOFF, 3600.0]
