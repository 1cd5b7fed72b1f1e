"""Who may use the facilitator API the gateway serves, and what it settles: off by
default, a bearer API key, a rate limit per key, and only the configured assets (and
payTo addresses) on configured networks. Real anvil: every refusal is checked against
the settler's account nonce (no transaction sent) and the token balances."""

from __future__ import annotations

import hashlib

import pytest
from eth_abi import encode
from eth_utils import to_checksum_address

from chains.evm.devnet import load_artifact
from chains.evm.rpc import selector
from chains.x402 import decode_header
from gateway.config import ConfigError, parse_config
from gateway.errors import RateLimited, Unauthorized
from gateway.facilitator import Access
from gateway.ratelimit import RateLimiter
from store.clock import ManualClock
from tests.gateway.x402_support import PRICE, requirement_from, sign_payment, x402_config

FAC_ENV = "TOLLGATE_TEST_FACILITATOR_KEY"
FAC_KEY = "test-facilitator-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {FAC_KEY}"}

pytestmark = pytest.mark.usefixtures("settler_key", "facilitator_key")


@pytest.fixture
def facilitator_key(monkeypatch):
    monkeypatch.setenv(FAC_ENV, FAC_KEY)


def enabled(devnet, origin_url: str, **facilitator) -> dict:
    cfg = x402_config(devnet, origin_url)
    cfg["facilitator"] = {"enabled": True, "api_key_env": FAC_ENV, **facilitator}
    return cfg


def settler_nonce(devnet) -> int:
    return int(devnet.request("eth_getTransactionCount",
                              [devnet.settler.address, "pending"]), 16)


def balance(devnet, token: str, owner: str) -> int:
    data = selector("balanceOf(address)") + encode(["address"], [owner])
    return int(devnet.request("eth_call", [{"to": token, "data": "0x" + data.hex()},
                                           "latest"]), 16)


def body_for(devnet, req: dict, payer, **sign) -> dict:
    payload = decode_header(sign_payment(devnet, payer, req, **sign))
    return {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": req}


@pytest.fixture(scope="module")
def other_token(evm_devnet):
    """A second EIP-3009 token on the devnet that no gateway config names, with a balance
    for payers[5]. Deployed with the devnet's own deployer account."""
    artifact = load_artifact()
    code = bytes.fromhex(artifact["bytecode"].removeprefix("0x"))
    data = code + encode(["string", "string"], ["Other Token", "1"])
    receipt = evm_devnet._wait_receipt(evm_devnet._send(evm_devnet.deployer, data, to=None))
    token = to_checksum_address(receipt["contractAddress"])
    mint = selector("mint(address,uint256)") + encode(
        ["address", "uint256"], [evm_devnet.payers[5].address, 10**9])
    evm_devnet._wait_receipt(evm_devnet._send(evm_devnet.deployer, mint, to=token))
    return token


@pytest.fixture
async def offered(gateway, origin, http, evm_devnet):
    """A gateway with the default config (facilitator off), and a requirement it offers."""
    async def make(cfg_extra=None, **kw):
        o = await origin()
        cfg = enabled(evm_devnet, o.url, **(cfg_extra or {})) if cfg_extra is not None \
            else x402_config(evm_devnet, o.url)
        g = await gateway(cfg, **kw)
        async with http.get(g.url + "/sky/v1/flights") as r:
            req = requirement_from(r.headers["PAYMENT-REQUIRED"])
        return g, req
    return make


# ------------------------------------------------------------------- off by default


async def test_disabled_by_default_is_404_and_settles_nothing(offered, http, evm_devnet):
    g, req = await offered()
    payer = evm_devnet.payers[0]
    nonce, before = settler_nonce(evm_devnet), balance(evm_devnet, req["asset"], payer.address)
    for method, path, body in (("POST", "verify", body_for(evm_devnet, req, payer)),
                               ("POST", "settle", body_for(evm_devnet, req, payer)),
                               ("GET", "supported", None)):
        async with http.request(method, f"{g.url}/facilitator/{path}", json=body,
                                headers=AUTH) as r:
            assert r.status == 404
            assert (await r.json())["error"] == "not_found"
    assert settler_nonce(evm_devnet) == nonce
    assert balance(evm_devnet, req["asset"], payer.address) == before


# ------------------------------------------------------------------- API key


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {FAC_KEY}",
                                    f"Bearer {FAC_KEY}x", f"Bearer {FAC_KEY[:-1]}", "Bearer ",
                                    FAC_KEY])
async def test_missing_or_bad_key_is_401_json_and_settles_nothing(header, offered, http,
                                                                  evm_devnet):
    g, req = await offered({})
    payer = evm_devnet.payers[0]
    nonce, before = settler_nonce(evm_devnet), balance(evm_devnet, req["asset"], payer.address)
    headers = {"Authorization": header} if header is not None else {}
    for method, path, body in (("POST", "settle", body_for(evm_devnet, req, payer)),
                               ("POST", "verify", body_for(evm_devnet, req, payer)),
                               ("GET", "supported", None)):
        async with http.request(method, f"{g.url}/facilitator/{path}", json=body,
                                headers=headers) as r:
            assert r.status == 401
            assert r.content_type == "application/json"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await r.json())["error"] == "unauthorized"
    assert settler_nonce(evm_devnet) == nonce
    assert balance(evm_devnet, req["asset"], payer.address) == before


async def test_the_configured_key_is_accepted(offered, http):
    g, _req = await offered({})
    async with http.get(g.url + "/facilitator/supported", headers=AUTH) as r:
        assert r.status == 200


# ------------------------------------------------------------------- rate limit


async def test_over_the_rate_is_429_with_retry_after(offered, http):
    clock = ManualClock()
    g, _req = await offered({"requests_per_minute": 2}, clock=clock)
    for _ in range(2):
        async with http.get(g.url + "/facilitator/supported", headers=AUTH) as r:
            assert r.status == 200
    # A caller without the key neither passes nor uses up the key's allowance.
    async with http.get(g.url + "/facilitator/supported") as r:
        assert r.status == 401
    async with http.get(g.url + "/facilitator/supported", headers=AUTH) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "30"  # 2 per minute: one more in 30 s
        assert (await r.json())["error"] == "rate_limited"
    clock.advance(30)
    async with http.get(g.url + "/facilitator/supported", headers=AUTH) as r:
        assert r.status == 200


# ------------------------------------------------------------------- what it settles


def _unconfigured_token(devnet, req, token):
    return {**req, "asset": token, "extra": {"name": "Other Token", "version": "1"}}


REFUSED = {
    # (how the requirement is changed, payer index, reason)
    "unconfigured_token": (_unconfigured_token, 5, "invalid_payment_requirements"),
    "zero_value": (lambda d, r, t: {**r, "amount": "0"}, 0, "invalid_payment_requirements"),
    "self_transfer": (lambda d, r, t: {**r, "payTo": d.payers[0].address}, 0,
                      "invalid_payment_requirements"),
    "wrong_eip712_domain": (lambda d, r, t: {**r, "extra": {"name": "Not USDC",
                                                              "version": "2"}},
                            0, "invalid_payment_requirements"),
    "unconfigured_network": (lambda d, r, t: {**r, "network": "eip155:1"}, 0,
                             "invalid_network"),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_refused_payments_send_no_transaction(case, offered, http, evm_devnet,
                                                    other_token):
    g, offered_req = await offered({})
    change, payer_index, reason = REFUSED[case]
    req = change(evm_devnet, offered_req, other_token)
    payer = evm_devnet.payers[payer_index]
    body = body_for(evm_devnet, req, payer)
    nonce = settler_nonce(evm_devnet)
    before = balance(evm_devnet, req["asset"], payer.address) if case != "unconfigured_network" \
        else None
    async with http.post(g.url + "/facilitator/settle", json=body, headers=AUTH) as r:
        assert r.status == 200
        settled = await r.json()
    assert settler_nonce(evm_devnet) == nonce, settled  # the settler sent nothing, paid no gas
    if before is not None:
        assert balance(evm_devnet, req["asset"], payer.address) == before
    assert settled["success"] is False and settled["errorReason"] == reason, settled
    assert settled["transaction"] == ""
    async with http.post(g.url + "/facilitator/verify", json=body, headers=AUTH) as r:
        assert r.status == 200
        verdict = await r.json()
    assert verdict["isValid"] is False and verdict["invalidReason"] == reason


async def test_pay_to_allowlist(offered, http, evm_devnet):
    merchant = evm_devnet.merchant.address
    other = evm_devnet.payers[4].address
    g, req = await offered({"pay_to": [merchant.lower()]})
    payer = evm_devnet.payers[1]
    nonce = settler_nonce(evm_devnet)
    elsewhere = body_for(evm_devnet, {**req, "payTo": other}, payer)
    async with http.post(g.url + "/facilitator/settle", json=elsewhere, headers=AUTH) as r:
        refused = await r.json()
    assert refused["success"] is False
    assert refused["errorReason"] == "invalid_payment_requirements"
    assert settler_nonce(evm_devnet) == nonce

    before = balance(evm_devnet, req["asset"], merchant)
    async with http.post(g.url + "/facilitator/settle", json=body_for(evm_devnet, req, payer),
                         headers=AUTH) as r:
        done = await r.json()
    assert done["success"] is True, done
    assert settler_nonce(evm_devnet) == nonce + 1
    assert balance(evm_devnet, req["asset"], merchant) == before + PRICE


async def test_assets_setting_narrows_what_is_settled(offered, http, evm_devnet):
    """`assets = []` settles nothing (the configured USDC included), and lists nothing."""
    g, req = await offered({"assets": []})
    payer = evm_devnet.payers[1]
    nonce = settler_nonce(evm_devnet)
    async with http.post(g.url + "/facilitator/settle", json=body_for(evm_devnet, req, payer),
                         headers=AUTH) as r:
        body = await r.json()
    assert body["success"] is False and body["errorReason"] == "invalid_payment_requirements"
    assert settler_nonce(evm_devnet) == nonce
    async with http.get(g.url + "/facilitator/supported", headers=AUTH) as r:
        assert (await r.json())["kinds"] == []


# ------------------------------------------------------------------- configuration


def test_config_defaults_off():
    assert parse_config({}).facilitator.enabled is False


@pytest.mark.parametrize("facilitator,expected", [
    ({"enabled": True}, "facilitator.api_key_env: required"),
    ({"enabled": True, "api_key_env": "K", "assets": ["nope"]},
     "facilitator.assets: unknown asset 'nope'"),
    ({"enabled": True, "api_key_env": "K", "assets": ["hbar"]},
     "facilitator.assets: 'hbar' is not an eip3009 asset"),
    ({"enabled": True, "api_key_env": "K", "pay_to": ["0x12"]},
     "facilitator.pay_to: '0x12' is not"),
    ({"enabled": True, "api_key_env": "K", "requests_per_minute": -1}, "requests_per_minute"),
])
def test_bad_facilitator_config_is_refused(facilitator, expected):
    data = {
        "assets": {"usdc": {"type": "eip3009", "network": "eip155:31337",
                            "address": "0x5FbDB2315678afecb367f032d93F642f64180aa3"},
                   "hbar": {"type": "hbar"}},
        "evm": {"eip155:31337": {"rpc_url": "http://rpc.example.com", "settler_key_env": "K"}},
        "facilitator": facilitator,
    }
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert expected in str(exc.value)


@pytest.mark.parametrize("value", [None, "", "too-short"])
async def test_enabled_without_a_usable_key_refuses_to_start(value, gateway, origin, evm_devnet,
                                                             monkeypatch):
    if value is None:
        monkeypatch.delenv(FAC_ENV, raising=False)
    else:
        monkeypatch.setenv(FAC_ENV, value)
    o = await origin()
    with pytest.raises(ConfigError) as exc:
        await gateway(enabled(evm_devnet, o.url))
    assert "facilitator.api_key_env" in str(exc.value)


def test_each_key_has_its_own_allowance():
    """The limit counts per key name: one key used up leaves another untouched (the seam
    where further keys, e.g. operator keys, join `accepted_keys`)."""
    keys = {"first": "a" * 32, "second": "b" * 32}
    access = Access({n: hashlib.sha256(k.encode()).digest() for n, k in keys.items()},
                    RateLimiter(1, ManualClock()))
    assert access.admit("Bearer " + keys["first"]) == "first"
    assert access.admit("bearer " + keys["second"]) == "second"
    access.limiter.check("first")
    with pytest.raises(RateLimited):
        access.limiter.check("first")
    access.limiter.check("second")
    with pytest.raises(Unauthorized):
        access.admit("Bearer " + "c" * 32)
