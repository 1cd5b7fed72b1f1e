"""The HTML paywall in real Chromium: a person with an EIP-1193 wallet pays an x402 EVM
route from the page (the wallet signs with a real anvil key), and sees the answer and the
receipt; the token moved on chain."""

from __future__ import annotations

import json

import pytest
from playwright.async_api import expect

from tests.gateway.x402_support import PRICE, token_balance, x402_config

pytestmark = pytest.mark.usefixtures("settler_key")


@pytest.fixture
async def paywalled(gateway, origin, evm_devnet):
    o = await origin()
    g = await gateway(x402_config(evm_devnet, o.url))
    return g, o


async def test_paywall_pays_with_an_injected_wallet(paywalled, page, eip1193, evm_devnet):
    g, o = paywalled
    payer = evm_devnet.payers[5]
    signed = await eip1193(page, payer.private_key)
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    payer_before = token_balance(evm_devnet, payer.address)

    resp = await page.goto(g.url + "/sky/v1/flights?from=ZRH")
    assert resp.status == 402
    await expect(page.locator("h1")).to_have_text("Payment required")
    await expect(page.locator("#options")).to_contain_text(f"{PRICE} atomic units")
    button = page.locator("#pay-buttons button")
    await expect(button).to_contain_text(f"Pay {PRICE} atomic units")
    await expect(button).to_contain_text(evm_devnet.network)
    await page.shot("paywall")
    assert o.requests == []

    await button.click()
    await expect(page.locator("#pay-status")).to_have_text("Paid.")
    await expect(page.locator("#pay-body")).to_contain_text("200 OK")
    await expect(page.locator("#pay-body")).to_contain_text('"query_string": "from=ZRH"')
    receipt = await page.text_content("#pay-receipt")
    assert f"paid on {evm_devnet.network}, transaction 0x" in receipt
    await page.shot("paid")

    tx_hash = receipt.rsplit(" ", 1)[1]
    mined = evm_devnet.request("eth_getTransactionReceipt", [tx_hash])
    assert mined["status"] == "0x1"
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PRICE
    assert token_balance(evm_devnet, payer.address) == payer_before - PRICE
    (typed,) = signed
    assert typed["domain"]["verifyingContract"].lower() == evm_devnet.token_address.lower()
    assert typed["domain"]["chainId"] == evm_devnet.chain_id
    assert (typed["message"]["value"], typed["message"]["to"].lower()) == \
        (str(PRICE), evm_devnet.merchant.address.lower())
    assert len(o.requests) == 1 and o.requests[0].headers.get("X-Payment")


async def test_paywall_when_the_wallet_refuses(paywalled, page, evm_devnet):
    g, o = paywalled
    payer = evm_devnet.payers[5]
    await page.add_init_script("""window.ethereum = {request: async ({method}) => {
        if (method === "eth_requestAccounts") return [%s];
        throw Object.assign(new Error("User rejected the request."), {code: 4001}); }};"""
                               % json.dumps(payer.address))
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    await page.goto(g.url + "/sky/v1/flights")
    await page.click("#pay-buttons button")
    await expect(page.locator("#pay-status")).to_have_text(
        "The wallet refused to sign: User rejected the request.")
    await page.shot("refused")
    assert o.requests == []
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before


async def test_paywall_without_a_wallet_says_what_is_needed(paywalled, page):
    g, o = paywalled
    await page.goto(g.url + "/sky/v1/bookings")
    await expect(page.locator("#pay-status")).to_contain_text(
        "open it in a browser with an Ethereum wallet (EIP-1193)")
    await expect(page.locator("#pay-buttons button")).to_have_count(0)
    await page.shot("no-wallet")
    assert o.requests == []
