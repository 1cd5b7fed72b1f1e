"""Every way opening a session can go wrong, as the wallet page tells it, and that nothing
was opened, approved or charged behind the message."""

from __future__ import annotations

import pytest
from playwright.async_api import expect
from sqlalchemy import func, select

from store.clock import ManualClock
from store.schema import sessions
from tests.gateway.session_support import KEY_ENV, UNIT_PRICE, approve, session_config


@pytest.fixture(autouse=True)
def spender_key(monkeypatch, hedera_devnet):
    monkeypatch.setenv(KEY_ENV, hedera_devnet.account("spender").private_key)


@pytest.fixture
async def wallet_gw(gateway, origin, hedera_devnet):
    async def make(clock=None):
        o = await origin()
        return await gateway(session_config(hedera_devnet, o.url), clock=clock), o
    return make


async def sessions_of(g, owner) -> int:
    async with g.gw.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(sessions).where(
            sessions.c.owner == owner.account_id))).scalar_one()


async def allowance_of(g, owner):
    found = await g.gw.hedera.mirror.crypto_allowance(owner.account_id,
                                                      g.gw.config.hedera.account_id)
    return found.amount if found else None


async def connect(page, g, owner):
    await page.goto(g.url + f"/?paygate=sky&account={owner.account_id}")
    await page.click("#connect-injected")
    await expect(page.locator("#account-line")).to_contain_text(owner.account_id)


async def test_wallet_refuses_to_sign(wallet_gw, page, hedera_signer, hedera_account):
    g, o = await wallet_gw()
    owner = hedera_account()
    signer = await hedera_signer(page, owner, refuse=True)
    await connect(page, g, owner)
    await page.fill("#allowance", "1")
    await page.click("#approve-activate")
    await expect(page.locator("#status")).to_have_text(
        "The wallet refused to sign the approval: User rejected the request")
    await page.shot("refused")
    assert len(signer.transactions) == 1
    assert await allowance_of(g, owner) is None and await sessions_of(g, owner) == 0
    assert await page.is_hidden("#session-section")


async def test_allowance_below_one_call_is_refused_before_signing(wallet_gw, page,
                                                                  hedera_signer, hedera_account):
    g, o = await wallet_gw()
    owner = hedera_account()
    signer = await hedera_signer(page, owner)
    await connect(page, g, owner)
    await page.fill("#allowance", "0.01")
    await expect(page.locator("#allowance-info")).to_have_text("0.01 HBAR = 0 calls of one unit")
    await page.click("#approve-activate")
    await expect(page.locator("#status")).to_have_text(
        "The allowance (0.01 HBAR) is below the price of one call (0.05 HBAR).")
    await page.shot("below-one-call")
    assert signer.transactions == [] and await sessions_of(g, owner) == 0


async def test_existing_allowance_below_one_call_signs_the_challenge_then_says_so(
        wallet_gw, page, hedera_signer, hedera_devnet, hedera_account):
    g, o = await wallet_gw()
    owner = hedera_account()
    await approve(hedera_devnet, owner, UNIT_PRICE // 5)  # 0.01 HBAR, approved elsewhere
    signer = await hedera_signer(page, owner)
    await connect(page, g, owner)
    async with page.expect_response("**/api/sessions/challenge") as info:
        await page.click("#activate-signature")
    challenge = await (await info.value).json()
    await expect(page.locator("#status")).to_contain_text(
        "The allowance is below the price of one call: the allowance (1000000 tinybars)")
    await page.shot("existing-allowance-too-small")
    assert signer.messages == [challenge["message"]]  # exactly what the gateway issued
    assert await sessions_of(g, owner) == 0


async def test_signed_message_opens_a_session_on_an_existing_allowance(
        wallet_gw, page, hedera_signer, hedera_devnet, hedera_account):
    g, o = await wallet_gw()
    owner = hedera_account()
    await approve(hedera_devnet, owner, 3 * UNIT_PRICE)
    signer = await hedera_signer(page, owner)
    await connect(page, g, owner)
    await page.click("#activate-signature")
    await expect(page.locator("#status")).to_have_text("Session open on your current allowance.")
    await expect(page.locator("#m-remaining")).to_contain_text("0.15 HBAR (3 calls)")
    await page.shot("opened-by-signature")
    assert signer.transactions == [] and len(signer.messages) == 1
    assert await sessions_of(g, owner) == 1


async def test_waiting_for_the_mirror_shows_progress(wallet_gw, page, hedera_signer,
                                                    hedera_mirror_faults, hedera_account):
    g, o = await wallet_gw()
    owner = hedera_account()
    await hedera_signer(page, owner)
    await connect(page, g, owner)
    hedera_mirror_faults.set_mirror_lag(3)
    await page.fill("#allowance", "0.1")
    await page.click("#approve-activate")
    await expect(page.locator("#status")).to_contain_text(
        "Waiting for the network… the mirror node does not show the approval yet (check 1 of")
    await expect(page.locator("#progress")).to_be_visible()
    await page.shot("waiting-for-the-network")
    await expect(page.locator("#status")).to_contain_text("Session open: 0.1 HBAR approved")
    await expect(page.locator("#progress")).to_be_hidden()
    await page.shot("opened-after-the-wait")
    assert await sessions_of(g, owner) == 1


async def test_expired_session(wallet_gw, page, hedera_signer, hedera_account):
    clock = ManualClock()
    g, o = await wallet_gw(clock)
    owner = hedera_account()
    await hedera_signer(page, owner)
    await connect(page, g, owner)
    await page.fill("#allowance", "0.1")
    await page.click("#approve-activate")
    await expect(page.locator("#m-state")).to_have_text("active")
    clock.advance(g.gw.config.hedera.session_ttl_seconds + 1)
    await expect(page.locator("#m-state")).to_have_text("expired: open a new session")
    await expect(page.locator("#status")).to_have_text("This session has expired. Open a new one above.")
    await page.click("#call")
    await expect(page.locator("#call-result")).to_contain_text("402 Payment Required")
    await expect(page.locator("#status")).to_have_text("This session has expired. Open a new one above.")
    await page.shot("expired")
    assert o.requests == []
    (row,) = [s for s in await _all_sessions(g) if s.owner == owner.account_id]
    assert (row.state, row.spent, row.calls) == ("expired", 0, 0)


async def _all_sessions(g):
    async with g.gw.engine.connect() as conn:
        return (await conn.execute(select(sessions))).all()


async def test_walletconnect_without_a_project_id_says_how_to_get_one(wallet_gw, page):
    g, o = await wallet_gw()
    await page.goto(g.url + "/")
    await page.click("#connect-walletconnect")
    await expect(page.locator("#status")).to_have_text(
        "WalletConnect is not set up on this gateway (no project id).")
    await expect(page.locator("#walletconnect-help")).to_contain_text("https://cloud.reown.com")
    await expect(page.locator("#walletconnect-help")).to_contain_text("walletconnect_project_id")
    await page.shot("walletconnect-help")
    # The WalletConnect bundle (hedera-wallet-connect + the Hedera SDK) loads in the browser.
    kind = await page.evaluate(
        "import('/static/build/walletconnect.js').then((m) => typeof m.connect)")
    assert kind == "function"
