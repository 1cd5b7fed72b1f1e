"""Operator admin keys as bearer credentials for the facilitator API.

    Authorization: Bearer <key id>:<key secret>        (e.g. pk_0123...:sk_abcd...)

Only active operator keys are accepted (settling spends the gateway's gas: that is the
operator's decision, not a provider's). The rate limit counts against the key id.
"""

from __future__ import annotations

import hmac
import re

from aiohttp import web

from gateway.admin.common import ADMIN

_BEARER = re.compile(r"Bearer (pk_[0-9a-f]{24}):(\S+)", re.IGNORECASE)


async def operator_bearer(request: web.Request) -> str | None:
    """The key id of a valid operator key in the Authorization header, else None."""
    m = _BEARER.fullmatch((request.headers.get("Authorization") or "").strip())
    admin = request.config_dict.get(ADMIN)
    if m is None or admin is None:
        return None
    found = await admin.keys.active(m.group(1))
    if found is None or not found.key.operator:
        return None
    if not any([hmac.compare_digest(s.encode(), m.group(2).encode()) for s in found.secrets]):
        return None
    return found.key.id
