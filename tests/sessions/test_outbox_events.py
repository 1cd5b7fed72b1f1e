"""Webhook events are written at their sources, in the transaction of the change: session
activation, revocation, expiry, exhaustion, a charge crossing a low-allowance threshold,
and x402 payments settling or failing. A change that does not happen writes nothing."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from chains.payments import NewPayment, PaymentStore
from store import outbox
from store.schema import webhook_events
from tests.sessions.conftest import PRICE



async def events(engine) -> list[tuple[str, str | None, dict]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(webhook_events)
                                   .order_by(webhook_events.c.created_at))).all()
    return [(r.type, r.paygate_id, json.loads(r.data)) for r in rows]


async def test_session_lifecycle_events(engine, records, open_session):
    s = await open_session(allowance=10 * PRICE)
    assert [(t, p) for t, p, _ in await events(engine)] == [("session.activated", "pg")]
    assert await records.move(s.id, "exhausted", only_from=("active",))
    assert await records.move(s.id, "revoked")
    assert not await records.move(s.id, "revoked")  # no change, no event
    kinds = [t for t, _, _ in await events(engine)]
    assert kinds == ["session.activated", "allowance.exhausted", "session.revoked"]
    other = await open_session(allowance=PRICE, owner="0.0.2002")
    assert await records.move(other.id, "expired")
    last = (await events(engine))[-1]
    assert last[0] == "session.expired" and last[2]["session"] == other.id


async def test_replayed_activation_writes_no_event(engine, records):
    from sessions.lifecycle import new_token
    nonce, _ = await records.issue_nonce("pg", "0.0.1001", 600)
    kw = dict(nonce=nonce, paygate_id="pg", owner="0.0.1001", spender="0.0.1002",
              allowance=PRICE, ttl=60)
    assert await records.create_session(token=new_token(), **kw) is not None
    assert await records.create_session(token=new_token(), **kw) is None
    assert [t for t, _, _ in await events(engine)] == ["session.activated"]


async def test_allowance_low_only_when_a_threshold_is_crossed(engine, ledger, clock,
                                                              open_session):
    s = await open_session(allowance=10 * PRICE)
    outbox.set_low_thresholds([3 * PRICE + 1])
    try:
        for i in range(9):
            charged = await ledger.charge(s.id, f"k{i}", "fp", PRICE,
                                          fresh_after=clock.now() - 60)
            assert charged.remaining == (9 - i) * PRICE
    finally:
        outbox.set_low_thresholds([])
    low = [(p, d) for t, p, d in await events(engine) if t == "allowance.low"]
    assert low == [("pg", {"session": s.id, "owner": s.owner, "remaining": 3 * PRICE,
                           "previous": 4 * PRICE})]


async def test_payment_settled_and_failed_events(engine, clock):
    store = PaymentStore(engine, clock)

    def payment(n: int) -> NewPayment:
        return NewPayment(claim_key=f"net|asset|payer|{n}", payment_identifier=None,
                          fingerprint=f"f{n}", rail="x402-evm", paygate_id="sky",
                          network="eip155:31337", asset="0xasset", payer="0xpayer",
                          pay_to="0xpayto", amount=2**200 + n, settlement="after", payload={})
    a, b = await store.claim(payment(1)), await store.claim(payment(2))
    assert await store.transition(a, "verified", "settling")
    assert await store.transition(a, "settling", "settled", tx_hash="0xabc")
    assert not await store.transition(a, "settling", "settled")  # no change, no event
    assert await store.transition(b, "verified", "settling")
    assert await store.transition(b, "settling", "failed", error="invalid_signature")
    got = [(t, p, d["payment"], d["amount"], d["tx_hash"], d["error"])
           for t, p, d in await events(engine)]
    assert got == [("payment.settled", "sky", a, str(2**200 + 1), "0xabc", None),
                   ("payment.failed", "sky", b, str(2**200 + 2), None, "invalid_signature")]
