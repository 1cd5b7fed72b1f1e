"""Session lifecycle and the pure arithmetic of an allowance session.

    pending ──► active ──► exhausted ──► active          (the owner approved more)
                  │            │
                  └────────────┴──► revoked | expired | ended

`exhausted` is not final: the allowance can be topped up. `revoked` (the allowance is
gone on chain), `expired` (past `expires_at`) and `ended` (the owner closed it) are.
A session in any non-active state answers 402 with a top-up / new-session link.

Pull lifecycle (collecting kept charges on chain):

    prepared ──► submitted ──► succeeded ──► reconciled   (seen on the mirror)
        │            │
        │            └──► unknown ──► succeeded | failed
        └──► failed                   (charges released for the next pull)
"""

from __future__ import annotations

import hashlib
import secrets

SESSION_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"active"}),
    "active": frozenset({"exhausted", "revoked", "expired", "ended"}),
    "exhausted": frozenset({"active", "revoked", "expired", "ended"}),
    "revoked": frozenset(),
    "expired": frozenset(),
    "ended": frozenset(),
}
LIVE_STATES = ("active", "exhausted")

PULL_TRANSITIONS: dict[str, frozenset[str]] = {
    "prepared": frozenset({"submitted", "succeeded", "failed", "unknown"}),
    "submitted": frozenset({"succeeded", "failed", "unknown"}),
    "unknown": frozenset({"submitted", "succeeded", "failed"}),
    "succeeded": frozenset({"reconciled"}),
    "failed": frozenset(),
    "reconciled": frozenset(),
}
# Pulls whose amount the mirror may not show yet: they still count as outstanding.
UNRECONCILED_PULLS = ("prepared", "submitted", "unknown", "succeeded")


def can_transition(table: dict[str, frozenset[str]], old: str, new: str) -> bool:
    return new in table.get(old, frozenset())


def new_token() -> str:
    """A session token: 32 random bytes, url-safe. Only its hash is stored."""
    return "hs_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # surrogatepass: a header aiohttp decoded from non-UTF-8 bytes hashes to a value no
    # issued token has (tokens are ASCII), instead of raising.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def available(allowance: int, outstanding: int) -> int:
    """What a session can still be charged, in tinybars."""
    return max(allowance - outstanding, 0)


def request_fingerprint(method: str, path_qs: str, body: bytes) -> str:
    """Same key + same request <=> same fingerprint."""
    h = hashlib.sha256()
    h.update(method.upper().encode())
    h.update(b"\n")
    h.update(path_qs.encode())
    h.update(b"\n")
    h.update(hashlib.sha256(body).digest())
    return h.hexdigest()
