"""sessions.ledger and the session records it charges against, on SQLite and on a real
PostgreSQL server (every test runs on both, see conftest `engine`).

The claims under test are single statements; these tests race them for real with
asyncio.gather over separate pooled connections."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import event, func, select
from sqlalchemy.util import await_only

from sessions.ledger import Charged, KeyConflict, Ledger, Refused, Replay
from sessions.lifecycle import new_token
from sessions.records import SessionRecords
from store.schema import session_charges, session_pulls, sessions
from tests.sessions.conftest import OWNER, PRICE, SPENDER, new_session

FRESH = 60.0  # the mirror view must be younger than this


def fresh(clock) -> float:
    return clock.now() - FRESH


async def charge(ledger, clock, session, key=None, fingerprint="fp", amount=PRICE):
    return await ledger.charge(session.id, key or uuid.uuid4().hex, fingerprint, amount,
                               fresh_after=fresh(clock))


async def count(engine, table, **where) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).select_from(table)
        for column, value in where.items():
            query = query.where(table.c[column] == value)
        return (await conn.execute(query)).scalar_one()


# -- the atomic charge -----------------------------------------------------------------


async def test_parallel_calls_serve_exactly_k(engine, ledger, records, clock, open_session):
    k, n = 7, 20
    session = await open_session(allowance=k * PRICE + PRICE // 2)  # K calls and change
    results = await asyncio.gather(*(charge(ledger, clock, session) for _ in range(n)))
    charged = [r for r in results if isinstance(r, Charged)]
    assert len(charged) == k
    assert all(isinstance(r, Refused) for r in results if not isinstance(r, Charged))
    # Each charge saw its own remaining balance: K distinct steps down to the change.
    assert sorted(c.remaining for c in charged) == [i * PRICE + PRICE // 2 for i in range(k)]
    rows = await ledger.charges(session.id)
    assert len(rows) == k and sum(r.amount for r in rows) == k * PRICE
    assert {r.id for r in rows} == {c.charge_id for c in charged}
    after = await records.get(session.id)
    assert (after.outstanding, after.spent, after.calls) == (k * PRICE, k * PRICE, k)
    assert after.available == PRICE // 2
    assert await count(engine, session_charges) == k  # refused calls claimed no key


async def test_parallel_calls_with_different_prices(ledger, records, clock, open_session):
    session = await open_session(allowance=10 * PRICE)
    amounts = [PRICE, 3 * PRICE] * 6
    results = await asyncio.gather(*(charge(ledger, clock, session, amount=a) for a in amounts))
    charged = sum(a for a, r in zip(amounts, results) if isinstance(r, Charged))
    after = await records.get(session.id)
    assert charged <= 10 * PRICE and after.outstanding == after.spent == charged
    assert after.calls == sum(isinstance(r, Charged) for r in results)


async def test_same_key_concurrently_is_charged_once(ledger, records, clock, open_session):
    session = await open_session(allowance=20 * PRICE)
    results = await asyncio.gather(*(charge(ledger, clock, session, key="order-1")
                                     for _ in range(10)))
    charged = [r for r in results if isinstance(r, Charged)]
    assert len(charged) == 1
    assert [r for r in results if not isinstance(r, Charged)] == [KeyConflict("in_flight")] * 9
    after = await records.get(session.id)
    assert (after.spent, after.calls) == (PRICE, 1)

    await ledger.keep(charged[0].charge_id)
    await ledger.record_response(charged[0].charge_id, 201, [("Content-Type", "text/plain"),
                                                             ("X-A", "1")], b"booked")
    again = await asyncio.gather(*(charge(ledger, clock, session, key="order-1")
                                   for _ in range(10)))
    assert again == [Replay(201, [("Content-Type", "text/plain"), ("X-A", "1")], b"booked")] * 10
    after = await records.get(session.id)
    assert (after.spent, after.calls, after.outstanding) == (PRICE, 1, PRICE)


async def test_same_key_other_request_is_reused(ledger, records, clock, open_session):
    session = await open_session(allowance=20 * PRICE)
    first = await charge(ledger, clock, session, key="k", fingerprint="a")
    assert isinstance(first, Charged)
    assert await charge(ledger, clock, session, key="k", fingerprint="b") == KeyConflict("reused")
    await ledger.record_response(first.charge_id, 200, [], b"")
    assert await charge(ledger, clock, session, key="k", fingerprint="b") == KeyConflict("reused")
    assert await charge(ledger, clock, session, key="k", fingerprint="a") == Replay(200, [], b"")
    assert (await records.get(session.id)).calls == 1


async def test_keys_are_per_session(ledger, records, clock, open_session):
    one = await open_session(allowance=5 * PRICE)
    two = await open_session(allowance=5 * PRICE)
    assert isinstance(await charge(ledger, clock, one, key="k"), Charged)
    assert isinstance(await charge(ledger, clock, two, key="k", fingerprint="other"), Charged)


async def test_reverse_gives_the_money_back_and_frees_the_key(ledger, records, clock,
                                                              open_session):
    session = await open_session(allowance=PRICE)
    first = await charge(ledger, clock, session, key="k")
    assert isinstance(first, Charged) and first.remaining == 0
    assert isinstance(await charge(ledger, clock, session), Refused)
    assert await ledger.reverse(first.charge_id) is True
    assert await ledger.reverse(first.charge_id) is False  # not twice
    after = await records.get(session.id)
    assert (after.outstanding, after.spent, after.calls) == (0, 0, 0)
    assert await ledger.charges(session.id) == []
    retry = await charge(ledger, clock, session, key="k", fingerprint="different now")
    assert isinstance(retry, Charged)


async def test_concurrent_reversals_refund_once(ledger, records, clock, open_session):
    session = await open_session(allowance=3 * PRICE)
    first = await charge(ledger, clock, session)
    done = await asyncio.gather(*(ledger.reverse(first.charge_id) for _ in range(8)))
    assert done.count(True) == 1
    after = await records.get(session.id)
    assert (after.outstanding, after.spent, after.calls) == (0, 0, 0)


async def test_a_kept_charge_cannot_be_reversed(ledger, records, clock, open_session):
    session = await open_session(allowance=3 * PRICE)
    first = await charge(ledger, clock, session)
    await ledger.keep(first.charge_id)
    assert await ledger.reverse(first.charge_id) is False
    (row,) = await ledger.charges(session.id)
    assert row.state == "kept"
    assert (await records.get(session.id)).outstanding == PRICE


async def test_refused_for_funds_claims_no_key(engine, ledger, records, clock, open_session):
    session = await open_session(allowance=PRICE)
    refused = await charge(ledger, clock, session, key="k", amount=2 * PRICE)
    assert isinstance(refused, Refused)
    assert refused.session.id == session.id and refused.session.state == "active"
    assert await count(engine, session_charges) == 0
    # The key is free: the same key, a request that fits, is charged.
    assert isinstance(await charge(ledger, clock, session, key="k", fingerprint="x"), Charged)


async def test_refusals_for_the_session_state(engine, ledger, records, clock, open_session):
    expiring = await open_session(allowance=5 * PRICE, ttl=100, owner="0.0.1998")
    stale = await open_session(allowance=5 * PRICE, owner="0.0.1999")
    states = {state: await open_session(allowance=5 * PRICE, owner=f"0.0.{2000 + i}")
              for i, state in enumerate(("revoked", "ended"))}
    for state, s in states.items():
        assert await records.move(s.id, state)
    clock.advance(100)
    got = await charge(ledger, clock, expiring)
    assert isinstance(got, Refused) and got.session.expires_at <= clock.now()
    # stale: the mirror view is older than the caller's freshness bound
    got = await ledger.charge(stale.id, "k", "fp", PRICE, fresh_after=stale.mirror_at)
    assert isinstance(got, Refused) and got.session.mirror_at == stale.mirror_at
    for state, s in states.items():
        got = await charge(ledger, clock, s)
        assert isinstance(got, Refused) and got.session.state == state
    assert await ledger.charge("no-such-session", "k", "fp", PRICE,
                               fresh_after=0) == Refused(None)
    assert await count(engine, session_charges) == 0
    for s in (expiring, stale, *states.values()):
        after = await records.get(s.id)
        assert (after.outstanding, after.spent, after.calls) == (0, 0, 0)


async def test_exhausted_is_a_label_what_is_left_decides(ledger, records, clock, open_session):
    """A session marked exhausted (nothing fitted a moment ago) is charged again once money
    is back, e.g. a concurrent call's charge was reversed: no wait for the next refresh."""
    session = await open_session(allowance=PRICE)
    first = await charge(ledger, clock, session)
    assert isinstance(await charge(ledger, clock, session), Refused)
    assert await records.move(session.id, "exhausted")
    assert await ledger.reverse(first.charge_id)
    again = await charge(ledger, clock, session)
    assert isinstance(again, Charged) and again.remaining == 0
    assert (await records.get(session.id)).state == "active"


# -- one allowance, however many sessions -------------------------------------------------


async def test_sessions_of_one_owner_share_one_allowance(engine, ledger, records, clock,
                                                         open_session):
    k, n = 10, 60
    tabs = [await open_session(allowance=k * PRICE) for _ in range(3)]
    results = await asyncio.gather(*(charge(ledger, clock, tabs[i % 3]) for i in range(n)))
    charged = [r for r in results if isinstance(r, Charged)]
    assert len(charged) == k
    assert sorted(c.remaining for c in charged) == [i * PRICE for i in range(k)]
    views = [await records.get(t.id) for t in tabs]
    assert sum(v.spent for v in views) == k * PRICE and sum(v.calls for v in views) == k
    assert {(v.allowance, v.outstanding) for v in views} == {(k * PRICE, k * PRICE)}
    owner = await records.allowances.get(OWNER, SPENDER)
    assert (owner.allowance, owner.outstanding) == (k * PRICE, k * PRICE)
    # another owner's allowance is theirs alone
    stranger = await open_session(allowance=PRICE, owner="0.0.1003")
    assert isinstance(await charge(ledger, clock, stranger), Charged)


async def test_an_older_mirror_read_never_overwrites_a_newer_one(records, clock, open_session):
    """An activation's allowance read joins the owner's row only if it started after the
    row's last read: an older one could predate a pull already taken out of outstanding."""
    first = await open_session(allowance=10 * PRICE)
    clock.advance(5)
    await records.apply_mirror(first.id, allowance=6 * PRICE, reconciled_pull_ids=[],
                               unit_price=PRICE)
    nonce, _ = await records.issue_nonce("pg", OWNER, 600)
    late = await records.create_session(nonce=nonce, token=new_token(), paygate_id="pg",
                                        owner=OWNER, spender=SPENDER, allowance=10 * PRICE,
                                        ttl=3600, read_at=clock.now() - 1)
    assert (late.allowance, late.mirror_at) == (6 * PRICE, clock.now())
    clock.advance(5)
    nonce, _ = await records.issue_nonce("pg", OWNER, 600)
    newer = await records.create_session(nonce=nonce, token=new_token(), paygate_id="pg",
                                         owner=OWNER, spender=SPENDER, allowance=8 * PRICE,
                                         ttl=3600, read_at=clock.now())
    assert newer.allowance == 8 * PRICE


# -- mirror reads ----------------------------------------------------------------------


async def test_apply_mirror_revocation(ledger, records, clock, open_session):
    session = await open_session(allowance=5 * PRICE)
    after = await records.apply_mirror(session.id, allowance=None, reconciled_pull_ids=[],
                                       unit_price=PRICE)
    assert (after.state, after.allowance) == ("revoked", 0)
    assert isinstance(await charge(ledger, clock, session), Refused)
    # final: a later allowance does not bring it back
    again = await records.apply_mirror(session.id, allowance=9 * PRICE, reconciled_pull_ids=[],
                                       unit_price=PRICE)
    assert again.state == "revoked"


async def test_apply_mirror_exhausted_then_topped_up(ledger, records, clock, open_session):
    session = await open_session(allowance=5 * PRICE)
    for _ in range(2):
        assert isinstance(await charge(ledger, clock, session), Charged)
    # the owner cut the allowance: what is left after the outstanding charges is too little
    clock.advance(1)
    low = await records.apply_mirror(session.id, allowance=3 * PRICE - 1, reconciled_pull_ids=[],
                                     unit_price=PRICE)
    assert (low.state, low.allowance, low.outstanding, low.mirror_at) == \
        ("exhausted", 3 * PRICE - 1, 2 * PRICE, clock.now())
    assert isinstance(await charge(ledger, clock, session), Refused)
    topped = await records.apply_mirror(session.id, allowance=3 * PRICE, reconciled_pull_ids=[],
                                        unit_price=PRICE)
    assert topped.state == "active" and topped.available == PRICE
    got = await charge(ledger, clock, session)
    assert isinstance(got, Charged) and got.remaining == 0


async def test_apply_mirror_expires_a_live_session(records, clock, open_session):
    session = await open_session(allowance=5 * PRICE, ttl=10)
    clock.advance(10)
    after = await records.apply_mirror(session.id, allowance=5 * PRICE, reconciled_pull_ids=[],
                                       unit_price=PRICE)
    assert after.state == "expired"
    assert await records.apply_mirror("missing", allowance=1, reconciled_pull_ids=[],
                                      unit_price=PRICE) is None


async def _pulled(ledger, records, clock, session, calls: int) -> str:
    """`calls` kept charges collected by one pull that succeeded on chain."""
    for _ in range(calls):
        got = await charge(ledger, clock, session)
        await ledger.keep(got.charge_id)
    pull_id = await records.prepare_pull(
        session_id=session.id, owner=session.owner, amount=calls * PRICE, cutoff=clock.now(),
        tx_id=f"0.0.1002@{int(clock.now())}.{uuid.uuid4().int % 10**9:09d}",
        tx_bytes=b"signed", valid_until=clock.now() + 120)
    assert pull_id is not None
    assert await records.move_pull(pull_id, "prepared", "succeeded")
    return pull_id


async def test_a_reconciled_pull_leaves_outstanding_exactly_once(ledger, records, clock,
                                                                 open_session):
    session = await open_session(allowance=10 * PRICE)
    pull_id = await _pulled(ledger, records, clock, session, 3)
    assert (await records.get(session.id)).outstanding == 3 * PRICE
    # The mirror now shows the pull and the allowance it spent.
    first = await records.apply_mirror(session.id, allowance=7 * PRICE,
                                       reconciled_pull_ids=[pull_id], unit_price=PRICE)
    assert (first.allowance, first.outstanding, first.available) == (7 * PRICE, 0, 7 * PRICE)
    second = await records.apply_mirror(session.id, allowance=7 * PRICE,
                                        reconciled_pull_ids=[pull_id], unit_price=PRICE)
    assert (second.outstanding, second.available) == (0, 7 * PRICE)
    (pull,) = await records.pulls(session.id, states=("reconciled",))
    assert pull.id == pull_id
    assert (first.spent, first.calls) == (3 * PRICE, 3)


async def test_concurrent_mirror_reads_reconcile_once(ledger, records, clock, open_session):
    session = await open_session(allowance=10 * PRICE)
    pull_id = await _pulled(ledger, records, clock, session, 2)
    assert isinstance(await charge(ledger, clock, session), Charged)  # not pulled yet
    await asyncio.gather(*(records.apply_mirror(session.id, allowance=8 * PRICE,
                                                reconciled_pull_ids=[pull_id], unit_price=PRICE)
                           for _ in range(6)))
    after = await records.get(session.id)
    assert (after.outstanding, after.available) == (PRICE, 7 * PRICE)


async def test_only_succeeded_pulls_of_this_owner_are_reconciled(ledger, records, clock,
                                                                 open_session):
    mine = await open_session(allowance=10 * PRICE)
    other = await open_session(allowance=10 * PRICE, owner="0.0.1003")
    other_pull = await _pulled(ledger, records, clock, other, 2)
    got = await charge(ledger, clock, mine)
    await ledger.keep(got.charge_id)
    submitted = await records.prepare_pull(
        session_id=mine.id, owner=mine.owner, amount=PRICE, cutoff=clock.now(),
        tx_id="0.0.1002@1700000000.000000007", tx_bytes=b"signed", valid_until=clock.now() + 120)
    assert await records.move_pull(submitted, "prepared", "submitted")
    after = await records.apply_mirror(mine.id, allowance=10 * PRICE,
                                       reconciled_pull_ids=[other_pull, submitted],
                                       unit_price=PRICE)
    assert after.outstanding == PRICE  # neither the other session's pull nor a pending one
    assert [p.state for p in await records.pulls(mine.id)] == ["submitted"]
    assert [p.state for p in await records.pulls(other.id)] == ["succeeded"]
    theirs = await records.apply_mirror(other.id, allowance=8 * PRICE,
                                        reconciled_pull_ids=[other_pull], unit_price=PRICE)
    assert theirs.outstanding == 0


# -- pulls claim the charges they collect ------------------------------------------------


async def test_prepare_pull_claims_each_charge_once(engine, ledger, records, clock, open_session):
    session = await open_session(allowance=10 * PRICE)
    for _ in range(4):
        await ledger.keep((await charge(ledger, clock, session)).charge_id)
    pending = await charge(ledger, clock, session)  # not kept: not pulled
    assert isinstance(pending, Charged)
    assert await records.unpulled(session.id, clock.now()) == 4 * PRICE

    async def prepare(i: int):
        return await records.prepare_pull(
            session_id=session.id, owner=session.owner, amount=4 * PRICE, cutoff=clock.now(),
            tx_id=f"0.0.1002@1700000000.{i:09d}", tx_bytes=b"signed",
            valid_until=clock.now() + 120)

    made = [p for p in await asyncio.gather(*(prepare(i) for i in range(5))) if p]
    assert len(made) == 1
    assert await count(engine, session_pulls) == 1  # the losers stored nothing
    assert await records.unpulled(session.id, clock.now()) == 0
    assert await prepare(99) is None  # a stale sum stores nothing either
    # a failed pull gives its charges back for the next one
    assert await records.move_pull(made[0], "prepared", "failed", error="test")
    assert await records.unpulled(session.id, clock.now()) == 4 * PRICE


# -- activation nonces ------------------------------------------------------------------


async def test_a_nonce_opens_one_session_under_concurrency(engine, records, clock):
    nonce, _ = await records.issue_nonce("pg", OWNER, 600)

    async def activate():
        return await records.create_session(nonce=nonce, token=new_token(), paygate_id="pg",
                                            owner=OWNER, spender=SPENDER, allowance=PRICE,
                                            ttl=3600)

    opened = [s for s in await asyncio.gather(*(activate() for _ in range(10))) if s]
    assert len(opened) == 1
    assert await count(engine, sessions) == 1
    assert (await records.nonce(nonce)).used_at == clock.now()


async def test_an_expired_nonce_opens_nothing(engine, records, clock):
    nonce, expires = await records.issue_nonce("pg", OWNER, 600)
    clock.set(expires)
    assert await records.create_session(nonce=nonce, token=new_token(), paygate_id="pg",
                                        owner=OWNER, spender=SPENDER, allowance=PRICE,
                                        ttl=3600) is None
    assert await count(engine, sessions) == 0


async def test_session_found_by_token_only(records, open_session):
    token = new_token()
    nonce, _ = await records.issue_nonce("pg", OWNER, 600)
    session = await records.create_session(nonce=nonce, token=token, paygate_id="pg",
                                           owner=OWNER, spender=SPENDER, allowance=PRICE,
                                           ttl=3600)
    assert (await records.by_token(token)).id == session.id
    assert await records.by_token(new_token()) is None


async def test_a_key_freed_while_its_retry_looks_it_up_is_not_reused(postgres_engine, clock):
    """The retry's claim meets the first call's row, which is reversed (origin failed) before
    the retry reads it: the key is free again, so the answer is "retry", not "another
    request". The window is pressed open with a hook before that read; it needs
    interleaved transactions, which only the PostgreSQL store has."""
    engine = postgres_engine
    ledger = Ledger(engine, clock)
    session = await new_session(SessionRecords(engine, clock), allowance=5 * PRICE)
    first = await charge(ledger, clock, session, key="k")
    assert isinstance(first, Charged)
    reversed_now = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("SELECT session_charges.") and not reversed_now:
            reversed_now.append(await_only(ledger.reverse(first.charge_id)))

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        retry = await charge(ledger, clock, session, key="k")
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before)
    assert reversed_now == [True]
    assert retry == KeyConflict("in_flight")
    assert isinstance(await charge(ledger, clock, session, key="k"), Charged)


# -- the in-process session cache ----------------------------------------------------------


async def test_a_stale_cached_session_never_spends(engine, ledger, records, clock):
    """The rail finds a call's session in a short-TTL cache; a session revoked (or
    drained) since it was cached must still get no charge: the charge decides on the
    store's state, never on the cached one."""
    token = new_token()
    assert await records.identity(token) is None  # not cached: it may exist a moment later
    nonce, _ = await records.issue_nonce("pg", OWNER, 600)
    session = await records.create_session(nonce=nonce, token=token, paygate_id="pg",
                                           owner=OWNER, spender=SPENDER, allowance=5 * PRICE,
                                           ttl=3600)
    cached = await records.identity(token)
    assert cached is not None and cached.id == session.id and cached.state == "active"
    assert await records.move(session.id, "revoked")
    stale = await records.identity(token)
    assert stale.state == "active"  # the cache is stale...
    got = await ledger.charge(stale.id, "k", "fp", PRICE, fresh_after=fresh(clock))
    assert isinstance(got, Refused) and got.session.state == "revoked"  # ...and spends nothing
    after = await records.get(session.id)
    assert (after.outstanding, after.spent, after.calls) == (0, 0, 0)
    assert await count(engine, session_charges) == 0


async def test_a_charge_kept_with_its_response_in_one_write(engine, ledger, records, clock,
                                                             open_session):
    session = await open_session(allowance=5 * PRICE)
    got = await charge(ledger, clock, session, key="k")
    await ledger.record_response(got.charge_id, 200, [("A", "b")], b"body", keep=True)
    failed = await charge(ledger, clock, session, key="k2")
    await ledger.record_response(failed.charge_id, 500, [], b"", keep=False)
    states = {r.id: r.state for r in await ledger.charges(session.id)}
    assert states == {got.charge_id: "kept", failed.charge_id: "pending"}
    assert await ledger.reverse(got.charge_id) is False  # kept: no longer reversible
    assert await charge(ledger, clock, session, key="k") == Replay(200, [("A", "b")], b"body")
