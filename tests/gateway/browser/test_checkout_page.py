"""The checkout page in real Chromium: a person buys a plan with a browser wallet, tops a
token up, takes a free plan; and every way that can go wrong (no wallet, the wrong chain, a
"no" in the wallet, the gateway refusing) says so on the page and charges nothing.

The wallet is an EIP-1193 provider injected before the page loads that forwards each
request to anvil's JSON-RPC, where the dev accounts are unlocked: anvil itself answers
`eth_signTypedData_v4`, so the signature the gateway settles is real. Only what a wallet
decides by itself (which account, which chain it is on, a person refusing) is played by
the provider."""

from __future__ import annotations

import json

import aiohttp
import pytest
from playwright.async_api import expect
from sqlalchemy import func, select

from store.schema import prepaid_tokens
from tests.gateway.admin_support import postgres_server, store_config  # noqa: F401
from tests.gateway.x402_support import requirement_from, sign_payment, token_balance, x402_config

pytestmark = pytest.mark.usefixtures("settler_key")

PLAN_PRICE = 50_000  # 0.05 test USDC, atomic
PLANS = [{"id": "starter", "units": 50, "prices": {"usdc": "0.05"}},
         {"id": "trial", "units": 5}]
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
REFUSE = 'Object.assign(new Error("User rejected the request."), {code: 4001})'


@pytest.fixture
async def shop(gateway, origin, evm_devnet):
    o = await origin()
    g = await gateway(x402_config(evm_devnet, o.url, plans=PLANS))
    return g, o


@pytest.fixture
async def shop_on_each_store(gateway, origin, evm_devnet, store_config):
    o = await origin()
    g = await gateway(x402_config(evm_devnet, o.url, plans=PLANS) | store_config)
    return g, o


@pytest.fixture
def anvil_wallet(evm_devnet):
    """inject(page, account, *, on_chain=None, switch="accept", refuse_signing=False):
    `window.ethereum` for `account` (an unlocked anvil account). `on_chain` (hex) puts the
    wallet on another chain first; `switch` is how it answers wallet_switchEthereumChain
    ("accept" anvil's chain, "refuse" as a person would, 4001, or "unknown", 4902).
    Returns the list of methods the page asked for."""
    async def inject(page, account, *, on_chain: str | None = None, switch: str = "accept",
                     refuse_signing: bool = False) -> list[str]:
        asked: list[str] = []

        async def forward(method: str, params: list) -> dict:
            asked.append(method)
            body = {"jsonrpc": "2.0", "id": len(asked), "method": method, "params": params}
            async with aiohttp.ClientSession() as s, s.post(evm_devnet.rpc_url, json=body) as r:
                return await r.json()

        await page.expose_function("anvilRpc", forward)
        config = {"account": account.address, "onChain": on_chain, "switch": switch,
                  "anvilChain": hex(evm_devnet.chain_id), "refuseSigning": refuse_signing}
        await page.add_init_script("""(() => {
          const cfg = %s;
          let chain = cfg.onChain;  // null: on anvil's chain, which anvil reports itself
          const fail = (code, message) => Object.assign(new Error(message), {code});
          window.ethereum = {
            request: async ({method, params}) => {
              if (method === "eth_requestAccounts" || method === "eth_accounts")
                return [cfg.account];
              if (method === "eth_chainId" && chain !== null) return chain;
              if (method === "wallet_switchEthereumChain") {
                if (cfg.switch === "refuse") throw %s;
                if (cfg.switch === "unknown" || params[0].chainId !== cfg.anvilChain)
                  throw fail(4902, "Unrecognized chain ID " + params[0].chainId);
                chain = null;
                return null;
              }
              if (method === "eth_signTypedData_v4" && cfg.refuseSigning) throw %s;
              const out = await window.anvilRpc(method, params || []);
              if (out.error) throw fail(out.error.code, out.error.message);
              return out.result;
            },
          };
        })();""" % (json.dumps(config), REFUSE, REFUSE))
        return asked
    return inject


def watch_checkout(page) -> list[dict]:
    """The page's requests to the checkout API, with whether each carried a payment."""
    seen: list[dict] = []
    page.on("request", lambda r: seen.append(
        {"url": r.url, "paid": "payment-signature" in r.headers,
         "bearer": r.headers.get("authorization")}) if "/api/checkout/" in r.url else None)
    return seen


async def count_tokens(g) -> int:
    async with g.gw.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(prepaid_tokens))).scalar_one()


def transfers_from(devnet, address: str, since_block: int) -> list[dict]:
    return devnet.request("eth_getLogs", [{
        "fromBlock": hex(since_block + 1), "toBlock": "latest", "address": devnet.token_address,
        "topics": [TRANSFER_TOPIC, "0x" + "0" * 24 + address[2:].lower()]}])


async def buy_by_http(http, g, devnet, payer, token: str | None = None) -> dict:
    url = g.url + "/api/checkout/sky/starter"
    async with http.post(url) as r:
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    headers = {"PAYMENT-SIGNATURE": sign_payment(devnet, payer, req)}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_buy_a_plan_with_the_browser_wallet(shop_on_each_store, page, anvil_wallet,
                                                  evm_devnet, http):
    g, o = shop_on_each_store
    payer = evm_devnet.payers[3]
    asked = await anvil_wallet(page, payer)
    requests = watch_checkout(page)
    payer_before = token_balance(evm_devnet, payer.address)
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    block = int(evm_devnet.request("eth_blockNumber"), 16)

    resp = await page.goto(g.url + "/checkout/sky")
    assert resp.status == 200
    csp = resp.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["cache-control"] == "no-store"
    button = page.locator("button.buy")
    await expect(button).to_have_text(
        f"Buy with browser wallet: 0.05 usdc on {evm_devnet.network}")
    await expect(button).to_be_enabled()
    await page.shot("plans")

    await button.click()
    await expect(page.locator("#checkout-status")).to_have_text("Bought: your token is below.")
    token = await page.text_content("#token")
    assert token.startswith("tg_live_")
    await expect(page.locator("#result-summary")).to_contain_text("Plan starter: 50 units (paid)")
    await expect(page.locator("#curl-example")).to_have_text(
        f'curl -H "Authorization: Bearer {token}" {g.url}/sky/')
    receipt = await page.text_content("#receipt")
    assert receipt.startswith(f"Paid on {evm_devnet.network}, transaction 0x")
    await page.shot("bought")

    # the copy button puts exactly the token on the clipboard
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=g.url)
    await page.click("#copy-token")
    await expect(page.locator("#copy-status")).to_have_text("Copied.")
    assert await page.evaluate("navigator.clipboard.readText()") == token

    # one settlement on chain, of exactly the plan's price, from the wallet's account
    (log,) = transfers_from(evm_devnet, payer.address, block)
    assert int(log["data"], 16) == PLAN_PRICE
    assert log["transactionHash"] == receipt.rsplit(" ", 1)[1]
    assert token_balance(evm_devnet, payer.address) == payer_before - PLAN_PRICE
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PLAN_PRICE
    assert asked.count("eth_signTypedData_v4") == 1
    assert [r["paid"] for r in requests] == [False, True]

    # the token pays the paygate's calls through real HTTP
    bearer = {"Authorization": f"Bearer {token}"}
    async with http.get(g.url + "/sky/v1/flights", headers=bearer) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Tollgate-Remaining"] == "49"
    assert o.requests[-1].headers["X-Tollgate-Plan"] == "starter"
    assert await count_tokens(g) == 1


async def test_a_rejected_signature_shows_why_and_charges_nothing(shop, page, anvil_wallet,
                                                                  evm_devnet):
    g, o = shop
    payer = evm_devnet.payers[3]
    asked = await anvil_wallet(page, payer, refuse_signing=True)
    requests = watch_checkout(page)
    before = token_balance(evm_devnet, payer.address)
    await page.goto(g.url + "/checkout/sky")
    await page.click("button.buy")
    await expect(page.locator("#checkout-status")).to_have_text(
        "You rejected the signature in your wallet. Nothing was paid.")
    await expect(page.locator("#checkout-status")).to_have_class("error")
    await expect(page.locator("button.buy")).to_be_enabled()
    await page.shot("rejected")
    assert await page.is_hidden("#checkout-result")
    assert [r["paid"] for r in requests] == [False]  # the 402, never a payment
    assert "eth_signTypedData_v4" not in asked  # refused by the wallet, never reached anvil
    assert token_balance(evm_devnet, payer.address) == before
    assert await count_tokens(g) == 0 and o.requests == []


@pytest.mark.parametrize("switch, message", [
    ("refuse", "This plan is paid on {net} and your wallet is on another network (you "
               "refused to switch). Switch the wallet to {net} and try again. Nothing was paid."),
    ("unknown", "Your wallet does not know the network {net}: add it to the wallet, then try "
                "again. Nothing was paid."),
])
async def test_the_wrong_chain_refused_stops_before_anything_is_signed(
        shop, page, anvil_wallet, evm_devnet, switch, message):
    g, _o = shop
    payer = evm_devnet.payers[3]
    asked = await anvil_wallet(page, payer, on_chain="0x1", switch=switch)
    requests = watch_checkout(page)
    before = token_balance(evm_devnet, payer.address)
    await page.goto(g.url + "/checkout/sky")
    await page.click("button.buy")
    await expect(page.locator("#checkout-status")).to_have_text(
        message.format(net=evm_devnet.network))
    await page.shot("wrong-chain")
    assert requests == [] and "eth_signTypedData_v4" not in asked
    assert token_balance(evm_devnet, payer.address) == before
    assert await count_tokens(g) == 0


async def test_a_wallet_on_another_chain_that_switches_buys(shop, page, anvil_wallet,
                                                           evm_devnet):
    g, _o = shop
    payer = evm_devnet.payers[3]
    await anvil_wallet(page, payer, on_chain="0x1")
    before = token_balance(evm_devnet, payer.address)
    await page.goto(g.url + "/checkout/sky")
    await page.click("button.buy")
    await expect(page.locator("#checkout-status")).to_have_text("Bought: your token is below.")
    assert token_balance(evm_devnet, payer.address) == before - PLAN_PRICE
    assert await count_tokens(g) == 1


async def test_without_a_wallet_the_page_says_so_and_sends_nothing(shop, page):
    g, _o = shop
    requests = watch_checkout(page)
    await page.goto(g.url + "/checkout/sky")
    status = page.locator("#checkout-status")
    await expect(status).to_contain_text("No browser wallet (EIP-1193) found")
    await page.click("button.buy")
    await expect(status).to_have_text(
        "No browser wallet found: paying from this page needs an Ethereum wallet (EIP-1193) "
        "in this browser. Without one, use an x402 client (see under the plan). "
        "Nothing was paid.")
    await expect(page.locator("li.plan[data-plan=starter] code")).to_contain_text(
        f"tollgate pay --method POST {g.url}/api/checkout/sky/starter")
    await page.shot("no-wallet")
    assert requests == [] and await count_tokens(g) == 0


async def test_top_up_onto_a_token_raises_its_quota(shop_on_each_store, page, anvil_wallet,
                                                    evm_devnet, http):
    g, _o = shop_on_each_store
    payer = evm_devnet.payers[3]
    bought = await buy_by_http(http, g, evm_devnet, payer)
    token = bought["token"]
    await anvil_wallet(page, payer)
    requests = watch_checkout(page)
    before = token_balance(evm_devnet, payer.address)

    await page.goto(g.url + "/checkout/sky")
    await page.fill("#topup-token", token)
    await page.click("button.buy")
    await expect(page.locator("#checkout-status")).to_have_text("Topped up.")
    await expect(page.locator("#result-summary")).to_have_text(
        f"Topped up token {bought['tokenId']} with plan starter: 100 units left.")
    assert await page.is_hidden("#token-line")  # no new token: the same one has more units
    await expect(page.locator("#curl-example")).to_contain_text(f"Bearer {token}")
    await page.shot("topped-up")
    assert {r["bearer"] for r in requests} == {f"Bearer {token}"}
    assert token_balance(evm_devnet, payer.address) == before - PLAN_PRICE
    assert await count_tokens(g) == 1
    async with http.get(g.url + "/sky/v1/x", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200 and r.headers["X-Tollgate-Remaining"] == "99"


async def test_top_up_of_an_unknown_token_is_refused_before_signing(shop, page, anvil_wallet,
                                                                    evm_devnet):
    g, _o = shop
    payer = evm_devnet.payers[3]
    asked = await anvil_wallet(page, payer)
    before = token_balance(evm_devnet, payer.address)
    await page.goto(g.url + "/checkout/sky")
    await page.fill("#topup-token", "tg_live_" + "A" * 43)
    await page.click("button.buy")
    await expect(page.locator("#checkout-status")).to_have_text(
        "The gateway refused the token to top up (401 invalid_token): unknown or revoked "
        "token for this paygate; buy without it for a new token. Nothing was paid.")
    assert "eth_signTypedData_v4" not in asked
    assert token_balance(evm_devnet, payer.address) == before
    assert await count_tokens(g) == 0


async def test_a_payment_the_gateway_refuses_issues_no_token(shop, page, anvil_wallet,
                                                             evm_devnet):
    g, _o = shop
    poor = evm_devnet.poor  # an unlocked anvil account that holds no test USDC
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    await anvil_wallet(page, poor)
    requests = watch_checkout(page)
    await page.goto(g.url + "/checkout/sky")
    await page.click("button.buy")
    status = page.locator("#checkout-status")
    await expect(status).to_contain_text("The gateway refused the payment (402 ")
    await expect(status).to_contain_text("No token was issued.")
    await page.shot("refused-by-gateway")
    assert [r["paid"] for r in requests] == [False, True]
    assert await page.is_hidden("#checkout-result")
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before
    assert await count_tokens(g) == 0


async def test_a_free_plan_by_email_once(shop, page, http):
    g, _o = shop
    await page.goto(g.url + "/checkout/sky")
    form = page.locator("form.free[data-plan=trial]")
    await form.locator("input[name=email]").fill("ann@example.com")
    await form.locator("button").click()
    await expect(page.locator("#checkout-status")).to_have_text("Bought: your token is below.")
    await expect(page.locator("#result-summary")).to_contain_text("Plan trial: 5 units (free)")
    token = await page.text_content("#token")
    async with http.get(g.url + "/sky/v1/x", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200 and r.headers["X-Tollgate-Remaining"] == "4"

    await page.reload()
    await form.locator("input[name=email]").fill("ann@example.com")
    await form.locator("button").click()
    await expect(page.locator("#checkout-status")).to_have_text(
        "The gateway refused the request (409 free_plan_email_used): this email already took "
        "a free plan on this paygate. Nothing was paid.")
    assert await page.is_hidden("#checkout-result")
    assert await count_tokens(g) == 1


async def test_names_from_the_configuration_are_text_not_markup(gateway, origin, page,
                                                                evm_devnet, http):
    o = await origin()
    evil = "us\"d'c<img src=x onerror=\"window.pwned=1\"></script><script>window.pwned=2</script>"
    cfg = x402_config(evm_devnet, o.url, plans=[{"id": "starter", "units": 50,
                                                 "prices": {evil: "0.05"}}],
                      description="<b onmouseover=\"window.pwned=3\">bold</b> & {{plans}}")
    cfg["assets"] = {evil: cfg["assets"]["usdc"]}
    cfg["paygates"][0]["prices"] = {evil: "0.001"}
    g = await gateway(cfg)
    async with http.get(g.url + "/checkout/sky") as r:
        source = await r.text()
    assert "<img" not in source and "<b " not in source and "window.pwned=2</script>" not in source
    assert source.count("<script") == 2  # the data and the bundle, nothing else

    await page.goto(g.url + "/checkout/sky")
    await expect(page.locator("p.hint").first).to_have_text(
        "<b onmouseover=\"window.pwned=3\">bold</b> & {{plans}}")
    await expect(page.locator("button.buy")).to_have_text(
        f"Buy with browser wallet: 0.05 {evil} on {evm_devnet.network}")
    await expect(page.locator("button.buy")).to_be_enabled()  # the data parsed intact
    assert await page.evaluate("window.pwned") is None
    assert await page.locator("img, b").count() == 0

    # an id in the path is never echoed as markup either
    async with http.get(g.url + "/checkout/%3Cscript%3Ealert(1)%3C%2Fscript%3E") as r:
        assert r.status == 404 and r.content_type == "application/json"


async def test_a_plan_priced_in_hbar_points_to_the_wallet_page_and_the_x402_request(
        gateway, origin, page, evm_devnet, hedera_devnet, monkeypatch):
    monkeypatch.setenv("TOLLGATE_TEST_CHECKOUT_HEDERA_KEY",
                       hedera_devnet.account("spender").private_key)
    o = await origin()
    cfg = x402_config(evm_devnet, o.url, rails=["x402-evm", "x402-hedera"],
                      prices={"usdc": "0.001", "hbar": "0.05"},
                      pay_to={"evm": evm_devnet.merchant.address,
                              "hedera": hedera_devnet.account("merchant").account_id},
                      plans=[{"id": "starter", "units": 50, "prices": {"usdc": "0.05"}},
                             {"id": "hbar-pack", "units": 100, "prices": {"hbar": "2"}}])
    cfg["assets"]["hbar"] = {"type": "hbar", "network": hedera_devnet.network}
    cfg["hedera"] = {"network": hedera_devnet.network, "nodes": hedera_devnet.network_map(),
                     "mirror_url": hedera_devnet.mirror_url,
                     "account_id": hedera_devnet.account("spender").account_id,
                     "private_key_env": "TOLLGATE_TEST_CHECKOUT_HEDERA_KEY"}
    g = await gateway(cfg)
    await page.goto(g.url + "/checkout/sky")
    hbar = page.locator("li.plan[data-plan=hbar-pack]")
    await expect(hbar).to_contain_text("100 units for 2 hbar")
    await expect(hbar.locator("p.hedera")).to_contain_text(
        f"Pay 2 hbar on {hedera_devnet.network} (Hedera) with an x402 client that pays exact "
        f"in HBAR: POST {g.url}/api/checkout/sky/hbar-pack")
    await expect(hbar.locator("button")).to_have_count(0)  # no EVM wallet pays HBAR
    await expect(hbar.locator("a.wallet-link")).to_have_attribute("href", "/?paygate=sky")
    await expect(page.locator("li.plan[data-plan=starter] button.buy")).to_be_enabled()
    await page.shot("hbar-plan")
    await hbar.locator("a.wallet-link").click()
    await page.wait_for_url(g.url + "/?paygate=sky")
    await expect(page.locator("h1")).to_have_text("Tollgate wallet")
