"""The wallet page in real Chromium against the local Hedera network: the whole life of a
session as a person lives it, checked on the page's text and on the chain, the mirror and
the gateway's ledger."""

from __future__ import annotations

import pytest

from tests.gateway.session_support import KEY_ENV, UNIT_PRICE, session_config

HBAR = 100_000_000


@pytest.fixture(autouse=True)
def spender_key(monkeypatch, hedera_devnet):
    monkeypatch.setenv(KEY_ENV, hedera_devnet.account("spender").private_key)


@pytest.fixture
async def wallet_gw(gateway, origin, hedera_devnet):
    o = await origin()
    g = await gateway(session_config(hedera_devnet, o.url))
    return g, o


async def mirror_allowance(g, owner) -> int | None:
    found = await g.gw.hedera.mirror.crypto_allowance(owner.account_id, g.gw.config.hedera.account_id)
    return found.amount if found else None


async def expect_text(page, selector: str, text: str, timeout: float = 20_000) -> None:
    from playwright.async_api import expect

    await expect(page.locator(selector)).to_contain_text(text, timeout=timeout)


async def test_whole_session_from_the_402_link(wallet_gw, page, hedera_signer, hedera_devnet,
                                               hedera_account):
    g, o = wallet_gw
    rail = g.gw.rails["hedera-session"]
    owner = hedera_account()
    signer = await hedera_signer(page, owner)
    merchant_before = hedera_devnet.balance("merchant")

    # A browser opening a priced route gets the paywall, which links to the wallet page.
    resp = await page.goto(g.url + "/sky/v1/flights")
    assert resp.status == 402
    await expect_text(page, "body", "Hedera allowance session")
    await page.shot("paywall-with-session-link")
    await page.click("text=open the wallet page")
    await page.wait_for_url("**/?paygate=sky")
    await page.goto(g.url + f"/?paygate=sky&account={owner.account_id}")
    await expect_text(page, "#status", f"Connect the wallet of {owner.account_id}")
    assert await page.input_value("#paygate") == "sky"
    await expect_text(page, "#paygate-info", "0.05 HBAR per unit")
    await page.shot("opened-from-link")

    await page.click("#connect-injected")
    await expect_text(page, "#account-line", f"Connected: {owner.account_id}")
    await page.fill("#allowance", "0.2")
    await expect_text(page, "#allowance-info", "0.2 HBAR = 4 calls of one unit")
    await page.shot("connected")

    await page.click("#approve-activate")
    await expect_text(page, "#status", "Session open: 0.2 HBAR approved")
    await expect_text(page, "#m-remaining", "0.2 HBAR (4 calls)")
    await page.shot("session-open")
    assert await mirror_allowance(g, owner) == 4 * UNIT_PRICE
    assert len(signer.transactions) == 1
    token = await page.input_value("#token")
    session = await rail.records.by_token(token)
    assert (session.owner, session.state, session.allowance) == (owner.account_id, "active", 4 * UNIT_PRICE)
    assert f"X-Hedera-Session-Id: {token}" in await page.text_content("#curl-line")
    assert f"tollgate pay --session {token} {g.url}/sky/v1/flights" in \
        await page.text_content("#pay-line")

    for n in (1, 2):
        await page.click("#call")
        await expect_text(page, "#m-calls", str(n))
    await expect_text(page, "#call-result", "200 OK, remaining 0.1 HBAR")
    await expect_text(page, "#m-spent", "0.1 HBAR")
    await expect_text(page, "#charges", "0.05 HBAR at")
    charges = await rail.ledger.charges(session.id)
    assert [int(c.amount) for c in charges] == [UNIT_PRICE, UNIT_PRICE]
    assert len({c.idempotency_key for c in charges}) == 2  # a fresh key per call
    assert len(o.requests) == 2
    await page.shot("two-calls")

    rail.puller.window = 0
    assert await rail.puller.work_once() >= 1
    (pull,) = await rail.records.pulls(session.id, states=("succeeded", "reconciled"))
    await expect_text(page, "#pulls", pull.tx_id)
    assert hedera_devnet.balance("merchant") == merchant_before + 2 * UNIT_PRICE
    link = await page.get_attribute("#pulls a", "href")
    assert link.startswith(hedera_devnet.mirror_url + "/api/v1/transactions/")
    await page.shot("pulled-on-chain")

    await page.fill("#topup", "0.1")
    await page.click("#do-topup")
    await expect_text(page, "#status", "Topped up: the allowance is now 0.2 HBAR")
    assert await mirror_allowance(g, owner) == 4 * UNIT_PRICE  # 0.1 left + 0.1
    await expect_text(page, "#m-remaining", "0.2 HBAR (4 calls)")
    await page.shot("topped-up")

    await page.click("#do-revoke")
    await expect_text(page, "#status", "Allowance revoked: the session has ended.")
    await expect_text(page, "#m-state", "revoked")
    assert await mirror_allowance(g, owner) is None
    await page.shot("revoked")

    await page.click("#call")
    await expect_text(page, "#call-result", "402 Payment Required")
    await expect_text(page, "#status", "The allowance was revoked")
    await page.shot("call-after-revoke")
    assert len(o.requests) == 2
    assert hedera_devnet.balance("merchant") == merchant_before + 2 * UNIT_PRICE


async def test_end_session_from_the_page(wallet_gw, page, hedera_signer, hedera_account):
    g, o = wallet_gw
    owner = hedera_account()
    await hedera_signer(page, owner)
    await page.goto(g.url + "/?paygate=sky")
    await page.click("#connect-injected")
    await page.fill("#allowance", "0.1")
    await page.click("#approve-activate")
    await expect_text(page, "#status", "Session open")
    token = await page.input_value("#token")
    await page.click("#do-end")
    await expect_text(page, "#status", "Session ended.")
    await expect_text(page, "#m-state", "ended")
    await page.shot("ended")
    session = await g.gw.rails["hedera-session"].records.by_token(token)
    assert session.state == "ended"
    await page.click("#call")
    await expect_text(page, "#call-result", "402")
    assert o.requests == []
