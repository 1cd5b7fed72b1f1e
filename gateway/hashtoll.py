"""HashToll's field names and shapes beside ours (PROTOCOLS.md "HashToll"), so its
clients switch with little or no change. Pure translation; the session API and the 402
call these, nothing here decides who may spend what.

- activation request: `userAccountId` = our `account_id`, `productName` = our `paygate`,
  `expiryHours` shortens the session (never past the configured TTL). The proof of
  control (nonce + transaction id or signature) is still required: HashToll opened a
  session for any account id, so anyone could spend anyone's allowance.
- activation answer: `session.id` is the token to send as `x-hedera-session-id`, with
  `session.userId` and `session.expiresAt` (ISO 8601, UTC); our own session id stays in
  `session.session_id`.
- a 402 from a paygate with sessions carries `hedera: {instructions, spenderAccount,
  requiredAmount}`, the amount in HBAR as a decimal string.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from gateway.config import format_atomic
from gateway.errors import BadRequest

REQUEST_NAMES = {"userAccountId": "account_id", "productName": "paygate"}
INSTRUCTIONS = "Please approve more HBAR allowance"
HBAR_DECIMALS = 8


def request_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The request with HashToll's names copied to ours (ours win when both are sent)."""
    out = dict(data)
    for theirs, ours in REQUEST_NAMES.items():
        if theirs in data and ours not in data:
            out[ours] = data[theirs]
    return out


def session_ttl(data: dict[str, Any], configured: float) -> float:
    """The session's lifetime: `expiryHours` if given, capped by the configured TTL."""
    hours = data.get("expiryHours")
    if hours is None:
        return configured
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) \
            or not math.isfinite(hours) or hours <= 0:
        raise BadRequest("expiryHours must be a positive number of hours",
                         code="invalid_expiry_hours")
    return min(float(hours) * 3600, configured)


def iso8601(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def activation_answer(body: dict[str, Any], token: str) -> dict[str, Any]:
    """Our activation answer with HashToll's `session` fields added."""
    view = dict(body["session"])
    out = dict(body)
    out["session"] = view | {"id": token, "session_id": view["id"], "userId": view["account_id"],
                             "expiresAt": iso8601(view["expires_at"])}
    return out


def payment_hint(extensions: dict[str, Any]) -> dict[str, Any]:
    """HashToll's `hedera` object for a 402 that offers a session (else nothing)."""
    session = extensions.get("hedera-session")
    if not isinstance(session, dict):
        return {}
    return {"hedera": {"instructions": INSTRUCTIONS, "spenderAccount": session.get("spender"),
                       "requiredAmount": format_atomic(int(session.get("price_tinybars", 0)),
                                                       HBAR_DECIMALS)}}
