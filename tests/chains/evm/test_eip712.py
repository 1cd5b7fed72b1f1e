"""EIP-712 / EIP-3009 hashing, recovery and signing, cross-checked against eth_account."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils import to_checksum_address as ref_checksum

from chains.evm.eip712 import (
    SECP256K1_N,
    SignatureError,
    address_of,
    domain_separator,
    keccak256,
    recover_signer,
    sign_digest,
    sign_transfer_authorization,
    to_checksum_address,
    transfer_authorization_digest,
)
from tests.support.eip3009 import TRANSFER_TYPES

KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
OTHER_KEY = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
MERCHANT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
TYPES = TRANSFER_TYPES



def vector(name="USD Coin", version="2", chain_id=31337, value=1000, nonce=None):
    payer = Account.from_key(KEY).address
    nonce = nonce or os.urandom(32)
    domain = {"name": name, "version": version, "chainId": chain_id, "verifyingContract": TOKEN}
    message = {
        "from": payer,
        "to": MERCHANT,
        "value": value,
        "validAfter": 0,
        "validBefore": 1767225600,
        "nonce": nonce,
    }
    return payer, domain, message


def our_digest(domain, message):
    dsep = domain_separator(domain["name"], domain["version"], domain["chainId"], domain["verifyingContract"])
    m = message
    return transfer_authorization_digest(
        dsep, m["from"], m["to"], m["value"], m["validAfter"], m["validBefore"], m["nonce"]
    )


def test_keccak_known_vector():
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


@pytest.mark.parametrize(
    "name,version,chain_id,value",
    [("USD Coin", "2", 31337, 1000), ("USDC", "2", 84532, 10**12), ("Tëst", "1", 1, 0), ("X", "2", 8453, 2**256 - 1)],
)
def test_digest_matches_eth_account(name, version, chain_id, value):
    _, domain, message = vector(name, version, chain_id, value)
    signable = encode_typed_data(domain_data=domain, message_types=TYPES, message_data=message)
    assert our_digest(domain, message) == _hash_eip191_message(signable)


def test_recover_eth_account_signature():
    payer, domain, message = vector()
    signed = Account.sign_typed_data(KEY, domain, TYPES, message)
    assert signed.signature[64] in (27, 28)
    assert recover_signer(our_digest(domain, message), bytes(signed.signature)) == payer


def test_our_signature_recovered_by_eth_account():
    payer, domain, message = vector()
    sig = sign_transfer_authorization(
        KEY,
        name=domain["name"],
        version=domain["version"],
        chain_id=domain["chainId"],
        verifying_contract=TOKEN,
        from_=message["from"],
        to=message["to"],
        value=message["value"],
        valid_after=message["validAfter"],
        valid_before=message["validBefore"],
        nonce=message["nonce"],
    )
    signable = encode_typed_data(domain_data=domain, message_types=TYPES, message_data=message)
    assert Account.recover_message(signable, signature=sig) == payer
    assert int.from_bytes(sig[32:64], "big") <= SECP256K1_N // 2
    assert address_of(KEY) == payer


def test_v_zero_one_accepted():
    payer, domain, message = vector()
    digest = our_digest(domain, message)
    sig = sign_digest(KEY, digest)
    assert recover_signer(digest, sig[:64] + bytes([sig[64] - 27])) == payer


def test_other_key_recovers_other_address():
    _, domain, message = vector()
    digest = our_digest(domain, message)
    assert recover_signer(digest, sign_digest(OTHER_KEY, digest)) == Account.from_key(OTHER_KEY).address


def test_domain_separator_cached():
    domain_separator.cache_clear()
    domain_separator("USD Coin", "2", 31337, TOKEN)
    domain_separator("USD Coin", "2", 31337, TOKEN)
    assert domain_separator.cache_info().hits == 1


@pytest.mark.parametrize("length", [0, 64, 66, 130])
def test_reject_bad_length(length):
    with pytest.raises(SignatureError):
        recover_signer(b"\x01" * 32, b"\x01" * length)


@pytest.mark.parametrize("v", [2, 26, 29, 255])
def test_reject_bad_v(v):
    _, domain, message = vector()
    digest = our_digest(domain, message)
    sig = sign_digest(KEY, digest)
    with pytest.raises(SignatureError, match="recovery id"):
        recover_signer(digest, sig[:64] + bytes([v]))


def test_reject_high_s():
    _, domain, message = vector()
    digest = our_digest(domain, message)
    sig = sign_digest(KEY, digest)
    s = int.from_bytes(sig[32:64], "big")
    malleated = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])  # 27<->28
    with pytest.raises(SignatureError, match="high-s"):
        recover_signer(digest, malleated)


@pytest.mark.parametrize("r,s", [(0, 1), (1, 0), (SECP256K1_N, 1)])
def test_reject_r_s_out_of_range(r, s):
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big") + b"\x1b"
    with pytest.raises(SignatureError):
        recover_signer(b"\x01" * 32, sig)


def test_checksum_matches_eth_utils():
    for _ in range(20):
        raw = os.urandom(20)
        assert to_checksum_address("0x" + raw.hex()) == ref_checksum("0x" + raw.hex())
    with pytest.raises(ValueError):
        to_checksum_address("0x1234")


def test_uint_out_of_range_rejected():
    dsep = domain_separator("USD Coin", "2", 31337, TOKEN)
    with pytest.raises(ValueError):
        transfer_authorization_digest(dsep, MERCHANT, MERCHANT, 2**256, 0, 1, b"\x00" * 32)
    with pytest.raises(ValueError):
        transfer_authorization_digest(dsep, MERCHANT, MERCHANT, -1, 0, 1, b"\x00" * 32)
