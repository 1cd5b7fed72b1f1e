"""verify_exact_evm / codec / chain-state checks: one test per bad input, exact reason codes."""

from __future__ import annotations

import pytest

from chains import x402
from chains.evm.codec import Authorization, ExactEvmPayload, build_exact_evm_payload, parse_exact_evm_payload
from chains.evm.eip712 import SECP256K1_N, address_of
from chains.evm.verify import CachedChainReader, Verified, check_chain_state, verify_exact_evm, verify_payment
from chains.x402 import X402Error, build_payment_payload, parse_payment_payload
from tests.support.requirements import MERCHANT, TOKEN, req

KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
OTHER_KEY = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
PAYER = address_of(KEY)
OTHER_TOKEN = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
CHAIN = 31337
NOW = 1_750_000_000
NONCE = bytes(range(32))




def pay(key=KEY, requirement=None, **kw) -> ExactEvmPayload:
    kw.setdefault("nonce", NONCE)
    return build_exact_evm_payload(key, requirement or req(), now=NOW, **kw)


def wire(**kw) -> dict:
    return pay(**kw).to_wire()


def reason_of(fn, *args, **kw) -> str:
    with pytest.raises(X402Error) as e:
        fn(*args, **kw)
    return e.value.reason


# --- happy path -------------------------------------------------------------------


def test_valid_payment():
    v = verify_exact_evm(parse_exact_evm_payload(wire()), req(), CHAIN, NOW)
    assert v == Verified(
        payer=PAYER,
        pay_to=MERCHANT,
        token=TOKEN,
        network="eip155:31337",
        chain_id=CHAIN,
        value=1000,
        valid_after=NOW - 600,
        valid_before=NOW + 60,
        nonce=NONCE,
        signature=v.signature,
    )


def test_overpayment_and_lowercase_addresses_accepted():
    w = wire(value=1500)
    w["authorization"]["from"] = w["authorization"]["from"].lower()
    v = verify_exact_evm(parse_exact_evm_payload(w), req(payTo=MERCHANT.lower()), CHAIN, NOW)
    assert v.value == 1500 and v.payer == PAYER


def test_hex_encoded_numbers_accepted():
    w = wire()
    a = w["authorization"]
    a["value"], a["validBefore"] = hex(1000), hex(NOW + 60)
    assert verify_exact_evm(parse_exact_evm_payload(w), req(), CHAIN, NOW).value == 1000


def test_verify_payment_v2_and_v1():
    p2 = parse_payment_payload(build_payment_payload(req(), wire()))
    assert verify_payment(p2, req(), CHAIN, NOW).payer == PAYER
    p1 = parse_payment_payload({"x402Version": 1, "scheme": "exact", "network": "eip155:31337", "payload": wire()})
    assert verify_payment(p1, req(), CHAIN, NOW).payer == PAYER


# --- pure checks, in order ------------------------------------------------------------


def test_wrong_scheme():
    assert reason_of(verify_exact_evm, pay(), req(), CHAIN, NOW, scheme="upto") == x402.INVALID_SCHEME
    assert reason_of(verify_exact_evm, pay(), req(scheme="upto"), CHAIN, NOW) == x402.INVALID_SCHEME


def test_wrong_network():
    assert reason_of(verify_exact_evm, pay(), req(), 8453, NOW) == x402.INVALID_NETWORK
    assert reason_of(verify_exact_evm, pay(), req(), CHAIN, NOW, network="base") == x402.INVALID_NETWORK
    assert reason_of(verify_exact_evm, pay(), req(), CHAIN, NOW, network="bogus") == x402.INVALID_NETWORK


def test_wrong_asset_claimed():
    r = reason_of(verify_exact_evm, pay(), req(), CHAIN, NOW, asset=OTHER_TOKEN)
    assert r == x402.INVALID_PAYMENT_REQUIREMENTS


def test_signed_for_another_token():
    p = pay(requirement=req(asset=OTHER_TOKEN))
    assert reason_of(verify_exact_evm, p, req(), CHAIN, NOW) == x402.INVALID_SIGNATURE


def test_requirement_without_domain():
    assert reason_of(verify_exact_evm, pay(), req(extra={}), CHAIN, NOW) == x402.MISSING_EIP712_DOMAIN


def test_wrong_eip712_name():
    assert reason_of(verify_exact_evm, pay(), req(extra={"name": "USDC", "version": "2"}), CHAIN, NOW) == (
        x402.INVALID_SIGNATURE
    )


def test_wrong_pay_to():
    p = pay(requirement=req(payTo=OTHER_TOKEN))
    assert reason_of(verify_exact_evm, p, req(), CHAIN, NOW) == x402.RECIPIENT_MISMATCH


def test_amount_below_price():
    assert reason_of(verify_exact_evm, pay(value=999), req(), CHAIN, NOW) == x402.INVALID_VALUE


def test_valid_before_past():
    assert reason_of(verify_exact_evm, pay(valid_before=NOW - 1), req(), CHAIN, NOW) == x402.INVALID_VALID_BEFORE


def test_valid_before_inside_buffer():
    assert reason_of(verify_exact_evm, pay(valid_before=NOW + 5), req(), CHAIN, NOW) == x402.INVALID_VALID_BEFORE
    assert verify_exact_evm(pay(valid_before=NOW + 6), req(), CHAIN, NOW).valid_before == NOW + 6


def test_valid_after_future():
    assert reason_of(verify_exact_evm, pay(valid_after=NOW + 1), req(), CHAIN, NOW) == x402.INVALID_VALID_AFTER


def test_signature_by_another_key():
    p = pay(key=OTHER_KEY, from_=PAYER)
    assert reason_of(verify_exact_evm, p, req(), CHAIN, NOW) == x402.INVALID_SIGNATURE


def test_tampered_value_breaks_signature():
    w = wire(value=1000)
    w["authorization"]["value"] = "100000"
    assert reason_of(verify_exact_evm, parse_exact_evm_payload(w), req(), CHAIN, NOW) == x402.INVALID_SIGNATURE


# --- malformed signatures ------------------------------------------------------------------


def _with_sig(sig_hex: str) -> dict:
    w = wire()
    w["signature"] = sig_hex
    return w


@pytest.mark.parametrize("n_hex", [128, 132, 0])
def test_signature_bad_length(n_hex):
    assert reason_of(parse_exact_evm_payload, _with_sig("0x" + "ab" * (n_hex // 2))) == x402.INVALID_SIGNATURE


def test_signature_bad_hex():
    assert reason_of(parse_exact_evm_payload, _with_sig("0x" + "zz" * 65)) == x402.INVALID_SIGNATURE


def test_signature_not_string():
    assert reason_of(parse_exact_evm_payload, _with_sig(12345)) == x402.INVALID_SIGNATURE


def test_signature_high_s():
    sig = pay().signature
    s = int.from_bytes(sig[32:64], "big")
    high = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    p = parse_exact_evm_payload(_with_sig("0x" + high.hex()))
    assert reason_of(verify_exact_evm, p, req(), CHAIN, NOW) == x402.INVALID_SIGNATURE


def test_signature_bad_v():
    sig = pay().signature
    p = parse_exact_evm_payload(_with_sig("0x" + (sig[:64] + b"\x1d").hex()))
    assert reason_of(verify_exact_evm, p, req(), CHAIN, NOW) == x402.INVALID_SIGNATURE


# --- malformed authorization ----------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("from", "0x1234"),
        ("from", MERCHANT.replace("C5", "c5")),  # bad EIP-55 checksum
        ("to", None),
        ("value", "1.5"),
        ("value", "-1"),
        ("value", 1.5),
        ("value", str(2**256)),
        ("validBefore", ""),
        ("nonce", "0x" + "11" * 33),
        ("nonce", "nonce"),
    ],
)
def test_authorization_field_malformed(field, value):
    w = wire()
    w["authorization"][field] = value
    assert reason_of(parse_exact_evm_payload, w) == x402.INVALID_PAYLOAD


def test_payload_missing_authorization():
    assert reason_of(parse_exact_evm_payload, {"signature": "0x" + "00" * 65}) == x402.INVALID_PAYLOAD
    assert reason_of(parse_exact_evm_payload, "x") == x402.INVALID_PAYLOAD


def test_authorization_roundtrip():
    a = pay().authorization
    assert Authorization.model_validate(a.to_wire()) == a


# --- chain state ------------------------------------------------------------------------------


class FakeReader:
    def __init__(self, used=False, balance=10**9, error=None):
        self.used, self.balance, self.error = used, balance, error
        self.calls: list[str] = []

    async def authorization_state(self, token, authorizer, nonce):
        self.calls.append("auth")
        assert (token, authorizer, nonce) == (TOKEN, PAYER, NONCE)
        if self.error:
            raise self.error
        return self.used

    async def balance_of(self, token, owner):
        self.calls.append("bal")
        assert (token, owner) == (TOKEN, PAYER)
        return self.balance


def _verified() -> Verified:
    return verify_exact_evm(pay(), req(), CHAIN, NOW)


async def test_chain_state_ok():
    await check_chain_state(_verified(), FakeReader())


async def test_nonce_used():
    with pytest.raises(X402Error) as e:
        await check_chain_state(_verified(), FakeReader(used=True))
    assert e.value.reason == x402.NONCE_ALREADY_USED


async def test_balance_too_low():
    with pytest.raises(X402Error) as e:
        await check_chain_state(_verified(), FakeReader(balance=999))
    assert e.value.reason == x402.INSUFFICIENT_FUNDS


async def test_reader_failure_propagates():
    with pytest.raises(ConnectionError):
        await check_chain_state(_verified(), FakeReader(error=ConnectionError("rpc down")))


async def test_cached_reader_caches_used_nonce_and_balance_briefly():
    t = [0.0]
    inner = FakeReader(used=False, balance=5000)
    cached = CachedChainReader(inner, ttl_seconds=2, clock=lambda: t[0])
    assert await cached.authorization_state(TOKEN, PAYER, NONCE) is False
    assert await cached.authorization_state(TOKEN, PAYER, NONCE) is False
    assert inner.calls.count("auth") == 2  # "unused" is never cached
    inner.used = True
    assert await cached.authorization_state(TOKEN, PAYER, NONCE) is True
    assert await cached.authorization_state(TOKEN, PAYER, NONCE) is True
    assert inner.calls.count("auth") == 3  # "used" is cached for good

    assert await cached.balance_of(TOKEN, PAYER) == 5000
    inner.balance = 1
    t[0] = 1.9
    assert await cached.balance_of(TOKEN, PAYER) == 5000
    t[0] = 2.1
    assert await cached.balance_of(TOKEN, PAYER) == 1
    inner.balance = 7
    cached.forget_balance(TOKEN, PAYER)
    assert await cached.balance_of(TOKEN, PAYER) == 7
