"""`X-Tollgate-Plan` is bound into `X-Tollgate-Context`: the origin can trust the plan id of
a call paid from a prepaid token. Checked with the provider-side verifier (gateway.origin)
against the recipe rebuilt from the README, and end to end on a real call paid with a
token (SQLite and PostgreSQL). Calls without a plan keep their six-line context."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from gateway import origin as origin_lib
from gateway.origin import OriginAuthError, verify
from gateway.origin_headers import origin_auth_headers
from tests.gateway.admin_support import postgres_server, store_config  # noqa: F401
from tests.gateway.test_origin import CONTEXT_NAMES, spec_canonical, spec_context
from tests.gateway.x402_support import x402_config

SECRET = "plan-context-secret"
NOW = 1_760_000_000


def spec_plan_context(secret: str, canonical: str, context: dict[str, str]) -> str:
    """The README's recipe: the six lines, then `x-tollgate-plan:<id>` when a plan is
    sent (and nothing more when none is)."""
    lower = {k.lower(): v for k, v in context.items()}
    lines = [f"{n}:{lower[n]}" if lower.get(n) else n for n in CONTEXT_NAMES]
    if lower.get("x-tollgate-plan"):
        lines.append(f"x-tollgate-plan:{lower['x-tollgate-plan']}")
    message = "tollgate-context-v1\n" + canonical + "\n" + "\n".join(lines)
    return "v1=" + hmac.new(secret.encode(), message.encode(), "sha256").hexdigest()


def sent(plan: str | None, mode: str = "request") -> dict[str, str]:
    """What the gateway sends for a token call (GET /v1/x) of `plan`."""
    return origin_auth_headers(
        mode=mode, secret=SECRET, paygate_id="sky", units=1, payer="tok_abc",
        x_payment="", x_payment_response="", remaining=41, method="GET", path_qs="/v1/x?",
        body_sha256_hex=hashlib.sha256(b"").hexdigest(), now=NOW, plan=plan)


def check(headers: dict[str, str], mode: str = "request"):
    return verify(mode, "GET", "/v1/x", headers, b"", [SECRET], now=NOW)


@pytest.mark.parametrize("mode", ["request", "hmac", "plaintext"])
def test_the_plan_is_signed_and_a_changed_plan_fails(mode):
    headers = sent("starter", mode)
    assert headers["X-Tollgate-Plan"] == "starter"
    paid = check(headers, mode)
    assert (paid.plan, paid.payer, paid.remaining) == ("starter", "tok_abc", 41)
    for value in ("pro", "starter ", "Starter", "starter\tpro"):
        with pytest.raises(OriginAuthError) as e:
            check({**headers, "X-Tollgate-Plan": value}, mode)
        assert e.value.reason == "bad_context", value
    dropped = {k: v for k, v in headers.items() if k != "X-Tollgate-Plan"}
    with pytest.raises(OriginAuthError) as e:
        check(dropped, mode)
    assert e.value.reason == "bad_context"


def test_a_plan_added_to_a_call_without_one_fails():
    headers = sent(None)
    assert "X-Tollgate-Plan" not in headers and check(headers).plan is None
    with pytest.raises(OriginAuthError) as e:
        check({**headers, "X-Tollgate-Plan": "starter"})
    assert e.value.reason == "bad_context"
    # the plan alone, with no context binding at all, is not believed either
    bare = {k: v for k, v in headers.items() if k not in origin_lib.CONTEXT_HEADERS
            and k != "X-Tollgate-Context"}
    with pytest.raises(OriginAuthError) as e:
        check({**bare, "X-Tollgate-Plan": "starter"})
    assert e.value.reason == "missing_context"


def test_the_recipe_with_and_without_a_plan():
    for plan in ("starter", None):
        headers = sent(plan)
        canonical = spec_canonical("GET", "/v1/x", "", NOW,
                                   headers["X-Tollgate-Request-Id"], b"")
        context = {k: v for k, v in headers.items()
                   if k.lower() in CONTEXT_NAMES or k == "X-Tollgate-Plan"}
        assert headers["X-Tollgate-Context"] == spec_plan_context(SECRET, canonical, context)
    # without a plan: exactly the six-line context of before
    assert headers["X-Tollgate-Context"] == spec_context(SECRET, canonical, context)


@pytest.mark.usefixtures("settler_key")
async def test_a_token_call_carries_a_plan_the_origin_can_trust(
        gateway, origin, http, evm_devnet, store_config):  # noqa: F811
    o = await origin()
    plans = [{"id": "trial", "units": 5}]
    g = await gateway(x402_config(evm_devnet, o.url, plans=plans) | store_config)
    async with http.post(g.url + "/api/checkout/sky/trial/free",
                         json={"email": "a@example.com"}) as r:
        got = await r.json()
    async with http.get(g.url + "/sky/v1/x?q=1",
                        headers={"Authorization": f"Bearer {got['token']}"}) as r:
        assert r.status == 200, await r.text()
    (seen,) = o.requests
    secret = (await g.gw.origin_secrets("sky")).current
    paid = verify("request", "GET", seen.raw_path, seen.headers, b"", [secret])
    assert (paid.plan, paid.payer, paid.remaining) == ("trial", got["tokenId"], 4)
    tampered = {**seen.headers, "X-Tollgate-Plan": "enterprise"}
    with pytest.raises(OriginAuthError) as e:
        verify("request", "GET", seen.raw_path, tampered, b"", [secret])
    assert e.value.reason == "bad_context"
