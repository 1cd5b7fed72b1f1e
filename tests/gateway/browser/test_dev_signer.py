"""The demo's devnet-only signer: the wallet page works against the local network without
a browser wallet, and nothing of it exists anywhere else."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from gateway.demo.dev_signer import DevSigner, install
from tests.gateway.session_support import KEY_ENV, UNIT_PRICE, session_config


@pytest.fixture(autouse=True)
def spender_key(monkeypatch, hedera_devnet):
    monkeypatch.setenv(KEY_ENV, hedera_devnet.account("spender").private_key)


async def test_demo_account_opens_a_session_from_the_page(gateway, origin, page, hedera_devnet,
                                                          hedera_account):
    o = await origin()
    demo_user = hedera_account()
    g = await gateway(session_config(hedera_devnet, o.url), prepare=lambda app: install(
        app, hedera_devnet.network, {"demo-user": demo_user}))
    await page.goto(g.url + f"/?paygate=sky&account={demo_user.account_id}")
    await expect(page.locator("#dev-signer")).to_contain_text("Devnet only")
    await expect(page.locator("#dev-account")).to_have_value(demo_user.account_id)
    await page.click("#connect-dev")
    await expect(page.locator("#account-line")).to_have_text(
        f"Connected: {demo_user.account_id} (devnet demo signer)")
    await page.fill("#allowance", "0.1")
    await page.click("#approve-activate")
    await expect(page.locator("#status")).to_contain_text("Session open: 0.1 HBAR approved")
    await page.click("#call")
    await expect(page.locator("#m-calls")).to_have_text("1")
    await page.shot("dev-signer-session")
    found = await g.gw.hedera.mirror.crypto_allowance(demo_user.account_id,
                                                      hedera_devnet.account("spender").account_id)
    assert found.amount == 2 * UNIT_PRICE
    assert len(o.requests) == 1


async def test_no_dev_signer_unless_the_demo_installs_one(gateway, origin, page, http,
                                                          hedera_devnet):
    o = await origin()
    g = await gateway(session_config(hedera_devnet, o.url))
    await page.goto(g.url + "/")
    await expect(page.locator("#paygate")).to_have_value("sky")
    assert await page.is_hidden("#dev-signer")
    async with http.post(g.url + "/api/dev/sign", json={
            "account_id": hedera_devnet.account("alice").account_id, "message": "x"}) as r:
        assert r.status == 404


async def test_dev_signer_refuses_public_networks_and_other_accounts(hedera_devnet):
    for network in ("hedera:testnet", "hedera:mainnet", "hedera:previewnet"):
        with pytest.raises(ValueError):
            DevSigner(network, {"alice": hedera_devnet.account("alice")})
    signer = DevSigner("hedera:devnet", {"alice": hedera_devnet.account("alice")})
    from gateway.errors import BadRequest

    with pytest.raises(BadRequest):
        await signer.handle({"account_id": hedera_devnet.account("bob").account_id,
                             "message": "tollgate:x"})
