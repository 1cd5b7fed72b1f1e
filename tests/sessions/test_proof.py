"""sessions.proof: the pure checks behind session activation.

Signature vectors are made here with `cryptography` (and eth_utils' keccak), not with
the Hedera SDK, so they check the proof against the wallet format as specified rather
than against whatever one library happens to produce."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from eth_utils import keccak

from chains.hedera.mirror import TransactionRecord
from sessions.proof import (
    Challenge,
    ProofError,
    check_memo_record,
    check_signature,
    decode_signature,
    memo_for,
    signed_bytes,
)

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
OWNER = "0.0.4242"
NONCE = "0f" * 16


def challenge_message(nonce: str, **changes) -> str:
    fields = dict(gateway_url="https://pay.example.com", account_id=OWNER, spender="0.0.77",
                  network="hedera:testnet", paygate="api", nonce=nonce,
                  issued_at=1_700_000_000, expires_at=1_700_000_600)
    return Challenge(**{**fields, **changes}).message()


# -- memo proof -----------------------------------------------------------------------


def record(*, result="SUCCESS", name="CRYPTOAPPROVEALLOWANCE", payer=OWNER,
           memo=memo_for(NONCE)) -> TransactionRecord:
    raw = memo.encode()
    return TransactionRecord(
        transaction_id=f"{payer}-1700000000-000000001", consensus_timestamp="1700000001.000000001",
        name=name, result=result, payer=payer, memo=raw,
        memo_base64=base64.b64encode(raw).decode(), transfers=(), charged_tx_fee=100_000)


def test_memo_for_and_challenge_message():
    assert memo_for("abc") == "tollgate:abc"
    # CAIP-122 ("Sign-In with X") layout: who asks, which account, then the fields.
    assert challenge_message("abc").split("\n") == [
        "pay.example.com wants you to sign in with your Hedera account:",
        OWNER,
        "",
        "Open an allowance session at https://pay.example.com for paygate api, spending from "
        "your HBAR allowance to 0.0.77.",
        "",
        "URI: https://pay.example.com",
        "Version: 1",
        "Chain ID: hedera:testnet",
        "Nonce: abc",
        "Issued At: 2023-11-14T22:13:20Z",
        "Expiration Time: 2023-11-14T22:23:20Z",
        "Resources:",
        "- hedera:testnet:0.0.77",
    ]


@pytest.mark.parametrize("change, field", [
    ({"gateway_url": "https://evil.example"}, "URI"),
    ({"spender": "0.0.78"}, "spender"),
    ({"network": "hedera:mainnet"}, "Chain ID"),
    ({"nonce": "def"}, "Nonce"),
])
def test_another_gateways_message_is_named_as_such(change, field):
    ours = Challenge(gateway_url="https://pay.example.com", account_id=OWNER, spender="0.0.77",
                     network="hedera:testnet", paygate="api", nonce="abc",
                     issued_at=1_700_000_000, expires_at=1_700_000_600)
    ours.check_message(ours.message())  # no exception
    with pytest.raises(ProofError) as err:
        ours.check_message(challenge_message(**{"nonce": "abc", **change}))
    assert err.value.code == "proof_wrong_message"
    assert f"its {field} is not" in err.value.message


def test_a_matching_memo_record_is_proof():
    check_memo_record(record(), owner=OWNER, nonce=NONCE)  # no exception


@pytest.mark.parametrize("rec, code", [
    (None, "proof_not_found"),
    (record(result="INSUFFICIENT_PAYER_BALANCE"), "proof_failed_transaction"),
    (record(result="DUPLICATE_TRANSACTION"), "proof_failed_transaction"),
    (record(name="CRYPTOTRANSFER"), "proof_wrong_type"),
    (record(payer="0.0.4243"), "proof_wrong_payer"),
    (record(memo=memo_for("ab" * 16)), "proof_wrong_memo"),
    (record(memo=memo_for(NONCE) + " "), "proof_wrong_memo"),
    (record(memo=NONCE), "proof_wrong_memo"),
    (record(memo=""), "proof_wrong_memo"),
])
def test_memo_record_refusals(rec, code):
    with pytest.raises(ProofError) as err:
        check_memo_record(rec, owner=OWNER, nonce=NONCE)
    assert err.value.code == code
    assert err.value.message


def test_memo_record_checks_run_in_order():
    # A failed transfer from a stranger with the wrong memo: the first check decides.
    bad = record(result="INVALID_SIGNATURE", name="CRYPTOTRANSFER", payer="0.0.1", memo="x")
    with pytest.raises(ProofError) as err:
        check_memo_record(bad, owner=OWNER, nonce=NONCE)
    assert err.value.code == "proof_failed_transaction"


# -- the signed message ---------------------------------------------------------------


def test_signed_bytes_format():
    message = challenge_message(NONCE)
    assert len(message.encode()) == 398  # the length prefix counts bytes, in decimal
    assert signed_bytes(message) == b"\x19Hedera Signed Message:\n398" + message.encode()
    assert signed_bytes("") == b"\x19Hedera Signed Message:\n0"
    assert signed_bytes("hello") == b"\x19Hedera Signed Message:\n5hello"


# -- ED25519 --------------------------------------------------------------------------


def ed25519_pair():
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    return key, public.hex()


def test_ed25519_signature_verifies():
    key, public_hex = ed25519_pair()
    message = challenge_message(NONCE)
    check_signature("ED25519", public_hex, message, key.sign(signed_bytes(message)))


@pytest.mark.parametrize("case", ["wrong_key", "wrong_message", "unprefixed", "flipped_bit",
                                  "short", "long", "empty"])
def test_ed25519_bad_signatures(case):
    key, public_hex = ed25519_pair()
    message = challenge_message(NONCE)
    sig = key.sign(signed_bytes(message))
    if case == "wrong_key":
        public_hex = ed25519_pair()[1]
    elif case == "wrong_message":
        sig = key.sign(signed_bytes(challenge_message("ab" * 16)))
    elif case == "unprefixed":
        sig = key.sign(message.encode())
    elif case == "flipped_bit":
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    elif case == "short":
        sig = sig[:63]
    elif case == "long":
        sig = sig + b"\x00"
    else:
        sig = b""
    with pytest.raises(ProofError) as err:
        check_signature("ED25519", public_hex, message, sig)
    assert err.value.code == "proof_bad_signature"


# -- ECDSA secp256k1 ------------------------------------------------------------------


def ecdsa_pair():
    key = ec.generate_private_key(ec.SECP256K1())
    public = key.public_key().public_bytes(serialization.Encoding.X962,
                                           serialization.PublicFormat.CompressedPoint)
    assert len(public) == 33  # the mirror's form
    return key, public.hex()


def ecdsa_sign(key, data: bytes, *, high_s: bool | None = False) -> bytes:
    """r || s over keccak256(data). high_s: True forces s > n/2, False forces s <= n/2."""
    der = key.sign(keccak(data), ec.ECDSA(Prehashed(hashes.SHA256())))
    r, s = decode_dss_signature(der)
    if high_s is not None and (s > SECP256K1_N // 2) != high_s:
        s = SECP256K1_N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@pytest.mark.parametrize("high_s", [False, True])
def test_ecdsa_signature_verifies_low_and_high_s(high_s):
    key, public_hex = ecdsa_pair()
    message = challenge_message(NONCE)
    sig = ecdsa_sign(key, signed_bytes(message), high_s=high_s)
    assert (int.from_bytes(sig[32:], "big") > SECP256K1_N // 2) == high_s
    check_signature("ECDSA_SECP256K1", public_hex, message, sig)


def test_ecdsa_uncompressed_key_is_accepted_too():
    key, _ = ecdsa_pair()
    public = key.public_key().public_bytes(serialization.Encoding.X962,
                                           serialization.PublicFormat.UncompressedPoint)
    message = challenge_message(NONCE)
    sig = ecdsa_sign(key, signed_bytes(message))
    check_signature("ECDSA_SECP256K1", public.hex(), message, sig)


@pytest.mark.parametrize("case", ["wrong_key", "wrong_message", "sha256_digest", "unprefixed",
                                  "der_encoded", "with_recovery_byte", "short", "zero_r",
                                  "s_is_n"])
def test_ecdsa_bad_signatures(case):
    key, public_hex = ecdsa_pair()
    message = challenge_message(NONCE)
    data = signed_bytes(message)
    sig = ecdsa_sign(key, data)
    if case == "wrong_key":
        public_hex = ecdsa_pair()[1]
    elif case == "wrong_message":
        sig = ecdsa_sign(key, signed_bytes(challenge_message("ab" * 16)))
    elif case == "sha256_digest":  # the usual ECDSA-with-SHA256 instead of keccak256
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif case == "unprefixed":
        sig = ecdsa_sign(key, message.encode())
    elif case == "der_encoded":
        sig = key.sign(keccak(data), ec.ECDSA(Prehashed(hashes.SHA256())))
    elif case == "with_recovery_byte":
        sig = sig + b"\x1b"
    elif case == "short":
        sig = sig[:-1]
    elif case == "zero_r":
        sig = b"\x00" * 32 + sig[32:]
    else:
        sig = sig[:32] + SECP256K1_N.to_bytes(32, "big")
    with pytest.raises(ProofError) as err:
        check_signature("ECDSA_SECP256K1", public_hex, message, sig)
    assert err.value.code == "proof_bad_signature"


def test_a_key_of_one_type_does_not_verify_the_other():
    ed_key, ed_public = ed25519_pair()
    ec_key, ec_public = ecdsa_pair()
    message = challenge_message(NONCE)
    ed_sig = ed_key.sign(signed_bytes(message))
    with pytest.raises(ProofError) as err:
        check_signature("ECDSA_SECP256K1", ec_public, message, ed_sig)
    assert err.value.code == "proof_bad_signature"
    with pytest.raises(ProofError) as err:  # a 33-byte key is no ED25519 key
        check_signature("ED25519", ec_public, message, ed_sig)
    assert err.value.code == "proof_bad_signature"


@pytest.mark.parametrize("key_type, key_hex", [
    (None, "00" * 32), ("ED25519", None), ("ED25519", ""),
    ("ProtobufEncoded", "0a2212" + "00" * 32),
    ("RSA_3072", "00" * 32), ("ED25519", "not hex"),
])
def test_accounts_without_a_single_usable_key(key_type, key_hex):
    with pytest.raises(ProofError) as err:
        check_signature(key_type, key_hex, "m", b"\x00" * 64)
    assert err.value.code == "proof_unsupported_key"


# -- signature encodings --------------------------------------------------------------


SIG = bytes(range(64))


@pytest.mark.parametrize("text", [
    SIG.hex(), SIG.hex().upper(), "0x" + SIG.hex(), "0X" + SIG.hex(), "  " + SIG.hex() + "\n",
    base64.b64encode(SIG).decode(), base64.b64encode(SIG).decode().rstrip("="),
])
def test_decode_signature_hex_and_base64(text):
    assert decode_signature(text) == SIG


def test_decode_signature_65_byte_hex():
    sig = SIG + b"\x1c"
    assert decode_signature(sig.hex()) == sig


@pytest.mark.parametrize("text", ["0x" + SIG.hex()[:-1], "0xzz", "not a signature!", "ab$cd",
                                  base64.urlsafe_b64encode(b"\xfb\xff" * 32).decode()])
def test_decode_signature_refuses_garbage(text):
    with pytest.raises(ProofError) as err:
        decode_signature(text)
    assert err.value.code == "proof_bad_signature"


def test_decoded_signatures_verify_end_to_end():
    key, public_hex = ed25519_pair()
    message = challenge_message(NONCE)
    sig = key.sign(signed_bytes(message))
    for text in (sig.hex(), "0x" + sig.hex(), base64.b64encode(sig).decode()):
        check_signature("ED25519", public_hex, message, decode_signature(text))
