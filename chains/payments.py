"""x402 payments the gateway has accepted: the replay guard, the settlement state machine
and the responses served, for every chain.

State machine (a payment row is created already `verified`, by the claim):

    verified ──► settling ──► settled
        │            │    └──► failed
        │            └──────► unknown ──► settled | failed   (reconciled from the chain)
        ├──► queued ──► settling ...                         (deferred settlement)
        └──► void                                            (origin failed: not settled)

`unknown` is a real state: the settlement was sent and its outcome is not known yet. It is
never answered with a fresh 402 and never settled a second time; the settlement worker
resolves it from the chain.

Leases: whoever works a payment (`settling`, or a worker pass on `queued`/`unknown`) holds
a short lease (`lease_owner`, `lease_until`) and renews it while working; a row whose lease
lapsed belongs to a dead or stalled instance and any instance takes it over at once. The
worker takes rows in order of their authorization's expiry (`valid_before`).

The claim is one statement: `INSERT ... ON CONFLICT DO NOTHING RETURNING id`. Whoever
inserts the row owns the payment. Anyone else presenting it is a replay: the rail decides
(gateway.rails.x402) whether that replay may have the stored response, which this store
keeps with the request it answered, its time and whether its body was kept.

Amounts are uint256 (store.schema.Uint256) and are summed here in Python, exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from chains import payment_units as units
from chains import settlement_units as sunits
from store import outbox
from store.clock import Clock
from store.ids import random_hex
from store.pgbatch import PgBatch
from store.schema import payment_responses, payments, settlement_txs
from store.writer import sqlite_writer

TRANSITIONS: dict[str, frozenset[str]] = {
    "verified": frozenset({"settling", "queued", "void"}),
    "queued": frozenset({"settling"}),
    "settling": frozenset({"settled", "failed", "unknown"}),
    "unknown": frozenset({"settling", "settled", "failed"}),
    "settled": frozenset(),
    "failed": frozenset(),
    "void": frozenset(),
}
# Payments whose money may still move: they count towards a payer's deferred exposure.
OPEN_STATES = units.OPEN_STATES


class IllegalTransition(Exception):
    pass


def check_transition(old: str, new: str) -> None:
    if new not in TRANSITIONS.get(old, ()):
        raise IllegalTransition(f"payment cannot go from {old} to {new}")


@dataclass(frozen=True)
class SettleOutcome:
    """Result of a settlement attempt.

    ``settled``: the authorization is used on chain (``tx_hash`` is the settling transaction
    when known). ``failed``: it did not and will not settle through this attempt; ``reason`` is
    an x402 errorReason code and ``detail`` the revert message or explanation. ``unknown``:
    not resolved yet; keep ``tx_hash`` and reconcile later (every chain's scheme returns
    this same shape).
    """

    state: Literal["settled", "failed", "unknown"]
    tx_hash: str | None = None
    reason: str | None = None
    detail: str | None = None
    block_number: int | None = None
    gas_used: int | None = None

    @property
    def settled(self) -> bool:
        return self.state == "settled"


@dataclass(frozen=True)
class NewPayment:
    claim_key: str  # network|asset|payer|nonce: unique on chain, so unique here
    payment_identifier: str | None
    fingerprint: str  # sha256 of the payment payload: same payment <=> same fingerprint
    rail: str
    paygate_id: str
    network: str
    asset: str
    payer: str
    pay_to: str
    amount: int
    settlement: str
    payload: dict[str, Any]
    valid_before: float | None = None  # the authorization's expiry (unix s); settle order
    request_digest: str | None = None  # the request this payment pays for (see schema)
    forward_until: float | None = None  # `before`: the first origin call's forward lease
    client_digest: str | None = None  # who first presented it (see schema)


@dataclass(frozen=True)
class PaymentRow:
    id: str
    claim_key: str
    payment_identifier: str | None
    fingerprint: str
    rail: str
    paygate_id: str
    network: str
    asset: str
    payer: str
    pay_to: str
    amount: int
    state: str
    settlement: str
    payload: dict[str, Any]
    tx_hash: str | None
    error: str | None
    attempts: int
    raw_tx: bytes | None = None  # the signed settlement transaction, persisted before sending
    lease_owner: str | None = None
    valid_before: float | None = None
    request_digest: str | None = None
    forward_until: float | None = None
    created_at: float = 0.0
    client_digest: str | None = None

    @classmethod
    def from_row(cls, r: Any) -> "PaymentRow":
        return cls(r.id, r.claim_key, r.payment_identifier, r.request_fingerprint, r.rail,
                   r.paygate_id, r.network, r.asset, r.payer, r.pay_to, int(r.amount), r.state,
                   r.settlement, json.loads(r.payload), r.tx_hash, r.error, r.attempts,
                   bytes.fromhex(r.raw_tx) if r.raw_tx else None, r.lease_owner,
                   r.valid_before, r.request_digest, r.forward_until, r.created_at,
                   r.client_digest)


@dataclass(frozen=True)
class Stored:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool
    created_at: float = 0.0
    body_kept: bool = True  # False: the body was over the size limit and is not stored
    body_size: int | None = None  # bytes served, when known


@dataclass(frozen=True)
class TxPersist:
    """Persists one payment's signed settlement transaction before it is sent: called as
    ``await persist(tx_hash, raw)``. A batch settler that holds several of these for one
    store writes the batch once and links them all (:meth:`PaymentStore.persist_batch`)."""

    store: "PaymentStore"
    payment_id: str

    async def __call__(self, tx_hash: str, raw: bytes | None = None) -> None:
        await self.store.set_tx_hash(self.payment_id, tx_hash, raw)


class PaymentStore:
    """The hot writes (claim, transition, store_response) are group-committed: on SQLite
    units of work of the store's writer (store.writer), on PostgreSQL batches of one
    statement each (store.pgbatch; claims through migration 9's function). Each returns
    once committed, and concurrent ones share the commit (see chains.payment_units).

    On SQLite every other write (the settlement worker's leases, start-settling, tx
    hashes, outcomes; forwards and purges) is a unit of the same writer too
    (chains.settlement_units): no SQLAlchemy transaction holds the file's write lock
    while the writer waits for it. On PostgreSQL outcomes and tx hashes are batched; the
    worker's once-per-pass writes (lease, renew, start-settling, persist_batch) stay
    SQLAlchemy transactions, which lock only their rows there."""

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._writer = sqlite_writer(engine) if engine.dialect.name == "sqlite" else None
        if self._writer is None:
            self._claims = PgBatch(engine, units.pg_claims)
            self._responses = PgBatch(engine, units.pg_store_responses)
            self._moves = PgBatch(engine, units.pg_transitions)
            self._outcomes = PgBatch(engine, sunits.pg_outcomes)
            self._tx_hashes = PgBatch(engine, sunits.pg_tx_hashes)

    async def claim(self, p: NewPayment, exposure_limit: int | None = None) -> str | None:
        """Insert the payment; its id if this call owns it, None if the claim key or the
        payment identifier is taken. With `exposure_limit`, the insert also requires that
        the payer's open payments on this network and asset stay within it (deferred
        settlement): None then too, and `find` tells the two cases apart."""
        now = self._clock.now()
        pid = random_hex()
        values = dict(
            id=pid, claim_key=p.claim_key, payment_identifier=p.payment_identifier,
            request_fingerprint=p.fingerprint, rail=p.rail, paygate_id=p.paygate_id,
            network=p.network, asset=p.asset, payer=p.payer, pay_to=p.pay_to, amount=p.amount,
            state="verified", settlement=p.settlement, payload=json.dumps(p.payload),
            tx_hash=None, error=None, attempts=0, lease_until=None, created_at=now, updated_at=now,
            request_digest=p.request_digest, forward_until=p.forward_until,
            client_digest=p.client_digest, valid_before=p.valid_before)
        try:
            units.uint256_text(p.amount)
        except ValueError as exc:  # as SQLAlchemy reports a bad bind value
            raise StatementError(str(exc), "INSERT INTO payments", None, exc) from exc
        if self._writer is not None:
            try:
                # committed, not yet fsynced: nothing is answered before the call's
                # record, which is (store.writer); a crash of the process loses nothing
                owned = await self._writer.run(functools.partial(
                    units.claim, values, exposure_limit), fsync=False)
            except units.OverExposed:
                return None
            return pid if owned else None
        outcome = await self._claims.run(units.pg_claim_item(values, exposure_limit))
        return pid if outcome == units.CLAIMED else None

    async def find(self, claim_key: str, paygate_id: str,
                   payment_identifier: str | None) -> PaymentRow | None:
        """The payment that holds this claim key, or this paygate's payment identifier."""
        cond = payments.c.claim_key == claim_key
        if payment_identifier:
            cond = or_(cond, and_(payments.c.paygate_id == paygate_id,
                                  payments.c.payment_identifier == payment_identifier))
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(payments).where(cond).limit(1))).first()
        return PaymentRow.from_row(row) if row else None

    async def get(self, payment_id: str) -> PaymentRow | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(payments).where(payments.c.id == payment_id))).first()
        return PaymentRow.from_row(row) if row else None

    async def transition(self, payment_id: str, old: str | Iterable[str], new: str, *,
                         tx_hash: str | None = None, error: str | None = None,
                         lease: tuple[str, float] | None = None,
                         retry_after: float | None = None) -> bool:
        """Move from `old` (one state or several) to `new` if the row is still there;
        False if someone else moved it first. Illegal transitions raise.

        `lease=(owner, seconds)` gives the row to `owner` for `seconds` (renew it while
        working); `retry_after` frees it for anyone that many seconds from now. A final
        state frees it."""
        olds = [old] if isinstance(old, str) else list(old)
        for o in olds:
            check_transition(o, new)
        now = self._clock.now()
        values: dict[str, Any] = {"state": new, "updated_at": now}
        if tx_hash is not None:
            values["tx_hash"] = tx_hash
        if error is not None:
            values["error"] = error
        if new == "settling":
            values["attempts"] = payments.c.attempts + 1
        if lease is not None:
            values["lease_owner"], values["lease_until"] = lease[0], now + lease[1]
        elif retry_after is not None:
            values["lease_owner"], values["lease_until"] = None, now + retry_after
        if new in ("settled", "failed", "void"):
            values["lease_until"] = None
            values["lease_owner"] = None
        if self._writer is None and len(olds) == 1 and values.keys() == {"state", "updated_at"}:
            # A plain state move (the request path's): batched.
            return await self._moves.run((payment_id, olds[0], new, now))
        if self._writer is not None:
            bump = values.pop("attempts", None) is not None
            return await self._writer.run(functools.partial(
                units.transition, payment_id, olds, values, bump))
        async with self._engine.begin() as conn:
            res = await conn.execute(update(payments).where(
                payments.c.id == payment_id, payments.c.state.in_(olds)).values(**values))
            if res.rowcount == 1:
                await outbox.payment_finished(conn, payment_id, new)
        return res.rowcount == 1

    async def set_tx_hash(self, payment_id: str, tx_hash: str, raw_tx: bytes | None = None) -> None:
        """Record the settlement transaction; with `raw_tx`, its signed bytes (before they
        are sent, so that recovery re-sends them rather than build a competing one)."""
        now = self._clock.now()
        raw_hex = None if raw_tx is None else raw_tx.hex()
        if self._writer is not None:
            await self._writer.run(functools.partial(
                sunits.set_tx_hash, payment_id, tx_hash, raw_hex, now))
        else:
            await self._tx_hashes.run((payment_id, tx_hash, raw_hex, now))

    async def start_settling(self, payment_ids: Iterable[str], old: str, owner: str,
                             lease_seconds: float) -> set[str]:
        """Move many rows from `old` to `settling` in one write, leased to `owner` (the
        worker's pass); the ids that moved (others were moved by someone else first)."""
        check_transition(old, "settling")
        ids = list(payment_ids)
        if not ids:
            return set()
        now = self._clock.now()
        if self._writer is not None:
            return await self._writer.run(functools.partial(
                sunits.start_settling, ids, old, owner, now, now + lease_seconds))
        async with self._engine.begin() as conn:
            rows = (await conn.execute(update(payments).where(
                payments.c.id.in_(ids), payments.c.state == old).values(
                state="settling", updated_at=now, attempts=payments.c.attempts + 1,
                lease_owner=owner, lease_until=now + lease_seconds)
                .returning(payments.c.id))).scalars().all()
        return set(rows)

    async def record_outcome(self, payment_id: str, old: str | Iterable[str], new: str, *,
                             tx_hash: str | None = None, error: str | None = None,
                             retry_after: float | None = None) -> bool:
        """A settlement outcome: :meth:`transition` with these arguments, group-committed
        with the outcomes (and, on SQLite, every other write) that arrive together: a
        batch transaction's hundreds of outcomes share one durable write. False: someone
        else moved the row first."""
        w = dict(payment_id=payment_id, old=old, new=new, tx_hash=tx_hash, error=error,
                 retry_after=retry_after)
        now = self._clock.now()
        olds, values = _outcome_values(w, now)
        if self._writer is not None:
            return await self._writer.run(functools.partial(
                units.transition, payment_id, olds, values, False))
        return await self._outcomes.run((
            payment_id, ",".join(olds), new, tx_hash, error,
            None if retry_after is None else now + retry_after, now))

    async def record_outcomes(self, writes: list[dict[str, Any]]) -> list[bool]:
        """Several settlement outcomes in one durable write: each write is the keyword
        arguments of :meth:`record_outcome`; one result per write (False: someone else
        moved the row first)."""
        now = self._clock.now()
        moves = [(w["payment_id"], *_outcome_values(w, now)) for w in writes]
        if self._writer is not None:
            return await self._writer.run(functools.partial(sunits.outcomes, moves))
        statements = [update(payments).where(payments.c.id == pid, payments.c.state.in_(olds))
                      .values(**values) for pid, olds, values in moves]
        out = []
        async with self._engine.begin() as conn:
            for w, stmt in zip(writes, statements):
                moved = (await conn.execute(stmt)).rowcount == 1
                if moved:  # its webhook event commits with it
                    await outbox.payment_finished(conn, w["payment_id"], w["new"])
                out.append(moved)
        return out

    async def persist_batch(self, payment_ids: Iterable[str], tx_hash: str, raw_tx: bytes) -> None:
        """One durable write before a batch transaction is sent: its signed bytes (once, in
        `settlement_txs`) and its hash on every payment in it. Recovery finds the bytes by
        the hash (`lease` returns them as the row's `raw_tx`) and re-sends them."""
        ids = list(payment_ids)
        now = self._clock.now()
        if self._writer is not None:
            await self._writer.run(functools.partial(
                sunits.persist_batch, ids, tx_hash, raw_tx.hex(), now))
            return
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        async with self._engine.begin() as conn:
            await conn.execute(dialect.insert(settlement_txs).values(
                tx_hash=tx_hash, raw_tx=raw_tx.hex(), created_at=now).on_conflict_do_nothing())
            await conn.execute(update(payments).where(payments.c.id.in_(ids))
                               .values(tx_hash=tx_hash, raw_tx=None, updated_at=now))

    async def _with_batch_raw(self, conn, rows: list[PaymentRow]) -> list[PaymentRow]:
        """Rows whose transaction is a batch get its persisted bytes as their `raw_tx`."""
        want = {r.tx_hash for r in rows if r.tx_hash and r.raw_tx is None}
        if not want:
            return rows
        found = dict((await conn.execute(select(settlement_txs.c.tx_hash, settlement_txs.c.raw_tx)
                                         .where(settlement_txs.c.tx_hash.in_(want)))).all())
        return [dataclasses.replace(r, raw_tx=bytes.fromhex(found[r.tx_hash]))
                if r.raw_tx is None and r.tx_hash in found else r for r in rows]

    async def lease(self, states: Iterable[str], lease_seconds: float, limit: int,
                    older_than: float = 0, owner: str | None = None) -> list[PaymentRow]:
        """Take up to `limit` rows in `states` whose lease is free or lapsed (and that were
        last touched `older_than` seconds ago), soonest-expiring authorization first; they
        are `owner`'s for `lease_seconds`. Several gateway instances can run the worker at
        once without working the same row, and a dead instance's rows are taken over as
        soon as its lease lapses."""
        now = self._clock.now()
        states = list(states)
        if self._writer is not None:
            raw_rows, found = await self._writer.run(functools.partial(
                sunits.lease, states, now, older_than, lease_seconds, limit, owner))
            out = [PaymentRow.from_row(r) for r in raw_rows]
            out = [dataclasses.replace(r, raw_tx=bytes.fromhex(found[r.tx_hash]))
                   if r.raw_tx is None and r.tx_hash in found else r for r in out]
            out.sort(key=lambda r: (r.valid_before is None, r.valid_before or 0))
            return out
        free = or_(payments.c.lease_until.is_(None), payments.c.lease_until < now)
        async with self._engine.begin() as conn:
            ids = (await conn.execute(
                select(payments.c.id).where(
                    payments.c.state.in_(states),
                    payments.c.updated_at <= now - older_than, free)
                .order_by(payments.c.valid_before.is_(None), payments.c.valid_before,
                          payments.c.updated_at).limit(limit))).scalars().all()
            if not ids:
                return []
            rows = (await conn.execute(
                update(payments).where(payments.c.id.in_(ids), free)
                .values(lease_until=now + lease_seconds, lease_owner=owner)
                .returning(*payments.c))).all()
            out = await self._with_batch_raw(conn, [PaymentRow.from_row(r) for r in rows])
        out.sort(key=lambda r: (r.valid_before is None, r.valid_before or 0))
        return out

    async def renew(self, payment_ids: Iterable[str], owner: str, lease_seconds: float) -> int:
        """Extend `owner`'s leases on these rows (the heartbeat); returns how many it held."""
        ids = list(payment_ids)
        if not ids:
            return 0
        if self._writer is not None:
            return await self._writer.run(functools.partial(
                sunits.renew, ids, owner, self._clock.now() + lease_seconds))
        async with self._engine.begin() as conn:
            res = await conn.execute(update(payments).where(
                payments.c.id.in_(ids), payments.c.lease_owner == owner,
                payments.c.state.in_(OPEN_STATES))
                .values(lease_until=self._clock.now() + lease_seconds))
        return res.rowcount

    async def release(self, payment_id: str, retry_after: float | None = None) -> None:
        """Free the row now, or for anyone `retry_after` seconds from now."""
        until = None if retry_after is None else self._clock.now() + retry_after
        if self._writer is not None:
            await self._writer.run(functools.partial(sunits.release, payment_id, until))
            return
        async with self._engine.begin() as conn:
            await conn.execute(update(payments).where(payments.c.id == payment_id)
                               .values(lease_until=until, lease_owner=None))

    async def store_response(self, payment_id: str, status: int, headers: list[tuple[str, str]],
                             body: bytes, complete: bool, *, body_kept: bool = True,
                             body_size: int | None = None, queue: bool = False) -> None:
        """Remember what was served for this payment (first writer wins). With
        `body_kept=False` only the fact is kept: `body` is dropped (it was too large).
        With `queue`, a `verified` deferred payment moves to `queued` in the same write
        (on PostgreSQL: right after it; a crash between leaves a served `verified` row,
        which the worker settles)."""
        now = self._clock.now()
        row = (payment_id, status, json.dumps(headers), body if body_kept else b"",
               int(complete), now, int(body_kept),
               len(body) if body_size is None else body_size)
        if self._writer is not None:
            await self._writer.run(functools.partial(units.store_response, row, queue=queue))
            return
        await self._responses.run(row)
        if queue:
            await self._moves.run((payment_id, "verified", "queued", now))

    async def response(self, payment_id: str) -> Stored | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(payment_responses).where(
                payment_responses.c.payment_id == payment_id))).first()
        return None if row is None else _stored(row)

    async def progress(self, payment_id: str) -> tuple[Stored | None, PaymentRow | None]:
        """The stored response of a payment (if any) and its row, read on one connection:
        a replay polls this while the first request writes, and on SQLite's single pooled
        connection every extra checkout lets the poller jump the writer's place in line."""
        async with self._engine.connect() as conn:
            resp = (await conn.execute(select(payment_responses).where(
                payment_responses.c.payment_id == payment_id))).first()
            row = None if resp is not None else (await conn.execute(
                select(payments).where(payments.c.id == payment_id))).first()
        stored = None if resp is None else _stored(resp)
        return stored, (PaymentRow.from_row(row) if row else None)

    async def purge_responses(self, created_before: float) -> int:
        """Delete stored responses older than the retention limit; how many went."""
        if self._writer is not None:
            return await self._writer.run(functools.partial(
                sunits.purge_responses, created_before))
        async with self._engine.begin() as conn:
            res = await conn.execute(payment_responses.delete().where(
                payment_responses.c.created_at < created_before))
        return res.rowcount

    async def take_forward(self, payment_id: str, until: float) -> bool:
        """Own the next origin call of a `before` payment whose last one failed (its
        `forward_until` is due): True for exactly one caller, who holds it until `until`
        (a crash then frees it again)."""
        if self._writer is not None:
            return await self._writer.run(functools.partial(
                sunits.take_forward, payment_id, self._clock.now(), until))
        async with self._engine.begin() as conn:
            res = await conn.execute(update(payments).where(
                payments.c.id == payment_id, payments.c.forward_until.is_not(None),
                payments.c.forward_until <= self._clock.now()).values(forward_until=until))
        return res.rowcount == 1

    async def set_forward(self, payment_id: str, until: float | None) -> None:
        """`now`: the origin call failed, a retry may forward; None: served, no more."""
        if self._writer is not None:
            await self._writer.run(functools.partial(sunits.set_forward, payment_id, until))
            return
        async with self._engine.begin() as conn:
            await conn.execute(update(payments).where(payments.c.id == payment_id)
                               .values(forward_until=until))

    async def counts(self) -> dict[str, int]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(payments.c.state, func.count()).group_by(
                payments.c.state))).all()
        return {state: n for state, n in rows}


def _outcome_values(w: dict[str, Any], now: float) -> tuple[list[str], dict[str, Any]]:
    """The states a settlement outcome `w` may move from, and the columns it sets."""
    olds = [w["old"]] if isinstance(w["old"], str) else list(w["old"])
    for o in olds:
        check_transition(o, w["new"])
    values: dict[str, Any] = {"state": w["new"], "updated_at": now}
    if w.get("tx_hash") is not None:
        values["tx_hash"] = w["tx_hash"]
    if w.get("error") is not None:
        values["error"] = w["error"]
    if w.get("retry_after") is not None:
        values["lease_owner"], values["lease_until"] = None, now + w["retry_after"]
    if w["new"] in ("settled", "failed", "void"):
        values["lease_owner"], values["lease_until"] = None, None
    return olds, values


def _stored(row: Any) -> Stored:
    return Stored(row.status, [tuple(h) for h in json.loads(row.headers)], bytes(row.body),
                  bool(row.complete), row.created_at, bool(row.body_kept), row.body_size)
