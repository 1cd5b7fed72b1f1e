"""Real headless Chromium (Debian's package) driven by Playwright's Python API.

    browser            one Chromium for the whole test session (never Playwright's download)
    page               a fresh context + page; `page.shot("step")` writes a screenshot to
                       test-output/browser/<test>/NN-step.png (for people, never asserted on)
    hedera_signer(page, account, refuse=False)
                       injects `window.tollgateSigner`, which signs with the account's real
                       key in this process (through `page.expose_function`)
    eip1193(page, key) injects `window.ethereum` whose `eth_signTypedData_v4` is answered by
                       a real EVM key

The bundles under static/build are built with `make assets` first (as `make test` does).
Chromium missing is a failure, not a skip: `make system-deps` installs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
OUTPUT = ROOT / "test-output" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


def _chromium() -> str:
    path = os.environ.get("TOLLGATE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium is not installed: run `make system-deps` (apt-get install chromium)")
    return path


def _build_assets() -> None:
    built = ROOT / "static" / "build" / ".built"
    sources = list((ROOT / "web").glob("*.js"))
    if built.exists() and all(s.stat().st_mtime <= built.stat().st_mtime for s in sources):
        return
    result = subprocess.run(["make", "-s", "assets"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail("building the page bundles failed:\n" + result.stdout + result.stderr)


@pytest.fixture(scope="session")
async def browser():
    from playwright.async_api import async_playwright

    _build_assets()
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser, request):
    out = OUTPUT / re.sub(r"[^\w.-]+", "_", request.node.name)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    context = await browser.new_context(viewport={"width": 900, "height": 1100})
    context.set_default_timeout(20_000)
    pg = await context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    steps = iter(range(1, 100))

    async def shot(name: str) -> Path:
        path = out / f"{next(steps):02d}-{name}.png"
        await pg.screenshot(path=str(path), full_page=True)
        return path

    pg.shot = shot  # type: ignore[attr-defined]
    pg.js_errors = errors  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        await context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@dataclass
class InjectedSigner:
    """What the injected wallet was asked to sign, and whether it refuses."""

    account_id: str
    refuse: bool = False
    transactions: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


@pytest.fixture
def hedera_signer():
    from gateway.demo.dev_signer import sign_message, sign_transaction

    async def inject(page, account, *, refuse: bool = False) -> InjectedSigner:
        signer = InjectedSigner(account.account_id, refuse)

        async def sign_tx(tx_b64: str) -> str:
            signer.transactions.append(tx_b64)
            if signer.refuse:
                raise RuntimeError("User rejected the request")
            return await asyncio.to_thread(sign_transaction, account.private_key, tx_b64)

        async def sign_msg(message: str) -> str:
            signer.messages.append(message)
            if signer.refuse:
                raise RuntimeError("User rejected the request")
            return sign_message(account.private_key, message)

        await page.expose_function("testSignTransaction", sign_tx)
        await page.expose_function("testSignMessage", sign_msg)
        await page.add_init_script(
            "window.tollgateSigner = {accountId: %s, signTransaction: (t) => "
            "window.testSignTransaction(t), signMessage: (m) => window.testSignMessage(m)};"
            % json.dumps(account.account_id))
        return signer
    return inject


@pytest.fixture
def eip1193():
    from eth_account import Account

    async def inject(page, private_key: str) -> list[dict]:
        account = Account.from_key(private_key)
        signed: list[dict] = []

        async def sign_typed(address: str, data: str) -> str:
            assert address.lower() == account.address.lower()
            typed = json.loads(data)
            signed.append(typed)
            return "0x" + bytes(Account.sign_typed_data(private_key, full_message=typed)
                                .signature).hex()

        await page.expose_function("testSignTypedData", sign_typed)
        await page.add_init_script("""
            window.ethereum = {
              isTest: true,
              request: async ({method, params}) => {
                if (method === "eth_requestAccounts" || method === "eth_accounts") return [%s];
                if (method === "eth_signTypedData_v4") return window.testSignTypedData(params[0], params[1]);
                throw new Error("unsupported " + method);
              },
            };""" % json.dumps(account.address))
        return signed
    return inject
