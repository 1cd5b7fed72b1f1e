"""Operator admin keys are accepted by the facilitator API (`Bearer <id>:<secret>`);
provider keys, wrong secrets and revoked keys are not."""

from __future__ import annotations

import pytest

from gateway.admin.common import ADMIN
from tests.gateway.admin_support import make_key
from tests.gateway.test_facilitator_access import facilitator_key, offered  # noqa: F401

pytestmark = pytest.mark.usefixtures("settler_key", "facilitator_key")


async def test_operator_keys_reach_the_facilitator(offered, http):
    g, _req = await offered({})
    op_id, op_secret = await make_key(g, operator=True)
    pr_id, pr_secret = await make_key(g, provider="acme")

    async def status(auth: str) -> int:
        async with http.get(g.url + "/facilitator/supported",
                            headers={"Authorization": auth}) as r:
            return r.status

    assert await status(f"Bearer {op_id}:{op_secret}") == 200
    assert await status(f"Bearer {pr_id}:{pr_secret}") == 401  # providers do not pay gas
    assert await status(f"Bearer {op_id}:{op_secret}x") == 401
    assert await status(f"Bearer {op_id}") == 401
    await g.app[ADMIN].keys.revoke(op_id)
    assert await status(f"Bearer {op_id}:{op_secret}") == 401
