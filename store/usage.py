"""Usage and revenue, read from what the payment rails already store.

Every paid call is one row: an x402 payment (`payments`) or a session charge
(`session_charges`, with its session's paygate and owner). Each is reported with its
paygate, rail, network, asset, payer, amount (integer atomic units) and one of three
money states:

- x402: `settled`; `failed` (failed or void: no money moved); anything else `pending`.
- session charges: `settled` once the pull that collected them succeeded on chain;
  otherwise `pending` (in flight, kept but not pulled yet, or in a pull not confirmed).
  A reversed charge is gone (nothing was charged).

Sums are made in Python: uint256 amounts must not pass through SQL arithmetic on SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from store.schema import payments, session_charges, session_pulls, sessions


@dataclass(frozen=True)
class Paid:
    paygate_id: str
    rail: str
    network: str
    asset: str
    payer: str
    amount: int
    state: str  # settled | pending | failed
    at: float


def _x402_state(state: str) -> str:
    if state == "settled":
        return "settled"
    return "failed" if state in ("failed", "void") else "pending"


async def paid_calls(engine: AsyncEngine, paygate_ids: Iterable[str], since: float,
                     until: float, hedera_network: str = "hedera") -> list[Paid]:
    ids = list(paygate_ids)
    if not ids:
        return []
    out: list[Paid] = []
    async with engine.connect() as conn:
        rows = (await conn.execute(select(
            payments.c.paygate_id, payments.c.rail, payments.c.network, payments.c.asset,
            payments.c.payer, payments.c.amount, payments.c.state, payments.c.created_at)
            .where(payments.c.paygate_id.in_(ids), payments.c.created_at >= since,
                   payments.c.created_at < until))).all()
        out += [Paid(r.paygate_id, r.rail, r.network, r.asset, r.payer, int(r.amount),
                     _x402_state(r.state), r.created_at) for r in rows]
        rows = (await conn.execute(select(
            sessions.c.paygate_id, sessions.c.owner, session_charges.c.amount,
            session_charges.c.state, session_pulls.c.state.label("pull_state"),
            session_charges.c.created_at)
            .select_from(session_charges
                         .join(sessions, sessions.c.id == session_charges.c.session_id)
                         .outerjoin(session_pulls,
                                    session_pulls.c.id == session_charges.c.pull_id))
            .where(sessions.c.paygate_id.in_(ids), session_charges.c.created_at >= since,
                   session_charges.c.created_at < until))).all()
        out += [Paid(r.paygate_id, "hedera-session", hedera_network, "hbar", r.owner,
                     int(r.amount),
                     "settled" if r.pull_state in ("succeeded", "reconciled") else "pending",
                     r.created_at) for r in rows]
    return out
