"""chains.hedera.exact: decoding and checking x402 `exact` Hedera payments.

Pure checks use transactions built with the SDK (and hand-mutated protobufs for what no
wallet would build); the last tests submit through the local devnet to show that what
passes here is what the network executes, and that the signature rule agrees with it.
"""

from __future__ import annotations

import base64
import time

import pytest

from chains.hedera import exact
from chains.hedera.devnet import keys
from chains.hedera.devnet.network import DevAccount
from chains.hedera.exact import check_transfer, verify_payer_signature
from chains.hedera.exact_client import build_exact_hedera_payload, build_transfer_bytes
from chains.x402 import X402Error
from tests.support.hedera_exact import forge_bytes, resign

FEE_PAYER = "0.0.1001"
PAY_TO = "0.0.1002"
AMOUNT = 5_000_000
REQ = {"scheme": "exact", "network": "hedera:devnet", "asset": "0.0.0", "amount": str(AMOUNT),
       "payTo": PAY_TO, "maxTimeoutSeconds": 180, "extra": {"feePayer": FEE_PAYER}}


def account(num: int, key_type: str = keys.ED25519) -> DevAccount:
    pair = keys.generate(key_type)
    return DevAccount(f"a{num}", f"0.0.{num}", key_type, pair.private_der_hex,
                      pair.private_raw_hex, pair.public_hex)


@pytest.fixture(scope="module", params=[keys.ED25519, keys.ECDSA_SECP256K1])
def payer(request) -> DevAccount:
    return account(1005, request.param)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def check(raw: bytes, now: float | None = None, **kw):
    args = {"pay_to": PAY_TO, "amount": AMOUNT, "fee_payer": FEE_PAYER,
            "now": time.time() if now is None else now, **kw}
    return check_transfer(b64(raw), **args)


def reason_of(raw: bytes, **kw) -> str:
    with pytest.raises(X402Error) as info:
        check(raw, **kw)
    return info.value.reason


def test_a_good_payment_decodes_with_both_id_spellings(payer):
    start = time.time() - 5
    raw = forge_bytes(REQ, payer, start=start)
    t = check(raw)
    assert (t.payer, t.pay_to, t.amount, t.fee_payer) == ("0.0.1005", PAY_TO, AMOUNT, FEE_PAYER)
    assert t.tx_id.startswith(f"{FEE_PAYER}@{int(start)}.")
    assert t.mirror_tx_id.startswith(f"{FEE_PAYER}-{int(start)}-") and len(t.mirror_tx_id.split("-")[2]) == 9
    assert int(start) <= t.valid_start < int(start) + 1
    assert t.valid_until == pytest.approx(t.valid_start + 120)
    assert t.nodes == ("0.0.3",)
    verify_payer_signature(t, payer.key_type, payer.public_key)


def test_the_client_helper_builds_what_the_checker_accepts(payer):
    payload = build_exact_hedera_payload(REQ, payer.account_id, payer.private_key)
    t = check_transfer(payload["transaction"], pay_to=PAY_TO, amount=AMOUNT, fee_payer=FEE_PAYER,
                       now=time.time())
    assert t.payer == payer.account_id and t.fee_payer == FEE_PAYER
    verify_payer_signature(t, payer.key_type, payer.public_key)
    # Fresh valid starts: two payments never share a transaction id.
    other = build_exact_hedera_payload(REQ, payer.account_id, payer.private_key)
    assert check_transfer(other["transaction"], pay_to=PAY_TO, amount=AMOUNT, fee_payer=FEE_PAYER,
                          now=time.time()).tx_id != t.tx_id


def test_signature_by_another_key_or_none_is_refused(payer):
    stranger = account(1006, payer.key_type)
    for raw in (forge_bytes(REQ, payer, signers=[stranger]), forge_bytes(REQ, payer, signers=[])):
        with pytest.raises(X402Error) as info:
            verify_payer_signature(check(raw), payer.key_type, payer.public_key)
        assert info.value.reason == exact.SIGNATURE_INVALID


def test_a_payer_signature_among_others_is_enough(payer):
    raw = resign(forge_bytes(REQ, payer), account(1006))
    verify_payer_signature(check(raw), payer.key_type, payer.public_key)


@pytest.mark.parametrize("key_type,key_hex", [
    ("ProtobufEncoded", "0a2212200000"), (None, None), ("ED25519", "00" * 31), ("ED25519", "zz"),
    ("ECDSA_SECP256K1", "02" + "00" * 32)])
def test_keys_that_cannot_be_checked_are_refused(key_type, key_hex):
    t = check(forge_bytes(REQ, account(1005)))
    with pytest.raises(X402Error) as info:
        verify_payer_signature(t, key_type, key_hex)
    assert info.value.reason == exact.SIGNATURE_INVALID


def test_der_encoded_mirror_keys_are_understood(payer):
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_der_private_key(bytes.fromhex(payer.private_key), password=None)
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    verify_payer_signature(check(forge_bytes(REQ, payer)), payer.key_type, der.hex())


CASES = {
    "fee_payer_debited": (dict(transfers=[(FEE_PAYER, -AMOUNT), (PAY_TO, AMOUNT)]),
                          exact.FEE_PAYER_TRANSFERRING),
    "wrong_account": (dict(transfers=[("0.0.1005", -AMOUNT), ("0.0.1009", AMOUNT)]),
                      exact.RECIPIENT_MISMATCH),
    "too_little": (dict(transfers=[("0.0.1005", -AMOUNT + 1), (PAY_TO, AMOUNT - 1)]),
                   exact.AMOUNT_MISMATCH),
    "too_much": (dict(transfers=[("0.0.1005", -AMOUNT - 1), (PAY_TO, AMOUNT + 1)]),
                 exact.AMOUNT_MISMATCH),
    "extra_credit": (dict(transfers=[("0.0.1005", -2 * AMOUNT), (PAY_TO, AMOUNT), ("0.0.1009", AMOUNT)]),
                     exact.EXTRA_POSITIVE_TRANSFERS),
    "two_payers": (dict(transfers=[("0.0.1005", -AMOUNT + 1), ("0.0.1009", -1), (PAY_TO, AMOUNT)]),
                   exact.MULTIPLE_PAYERS),
    "not_zero_sum": (dict(transfers=[("0.0.1005", -AMOUNT + 1), (PAY_TO, AMOUNT)]),
                     exact.HBAR_SUM_NON_ZERO),
    "approved_debit": (dict(transfers=[(PAY_TO, AMOUNT)], approved=[("0.0.1005", -AMOUNT)]),
                       exact.APPROVED_TRANSFER),
    "token_transfer": (dict(token=("0.0.7001", "0.0.1005", -1)), exact.ASSET_MISMATCH),
    "approve_body": (dict(kind="approve"), exact.NON_TRANSFER_OPS),
    "tx_id_of_payer": (dict(tx_account="0.0.1005"), exact.FEE_PAYER_MISMATCH),
    "expired": (dict(start=time.time() - 200), exact.TRANSACTION_EXPIRED),
    # an hour ahead: CASES is built at collection, and earlier tests may run for minutes
    "future": (dict(start=time.time() + 3600), exact.VALID_START_IN_FUTURE),
    "long_duration": (dict(duration=181), exact.VALID_DURATION),
    "long_memo": (dict(memo="m" * 101), exact.MEMO_TOO_LONG),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_payments_are_refused_with_their_reason(case):
    kw, expected = CASES[case]
    assert reason_of(forge_bytes(REQ, account(1005), **kw)) == expected


def test_the_window_edges():
    raw = forge_bytes(REQ, account(1005), start=1_800_000_000, nanos=0, duration=120)
    t = check(raw, now=1_800_000_000 - exact.MAX_CLOCK_SKEW)  # a little ahead of us: fine
    assert t.valid_until == 1_800_000_120
    assert check(raw, now=1_800_000_119.9).valid_until == 1_800_000_120
    assert reason_of(raw, now=1_800_000_120) == exact.TRANSACTION_EXPIRED
    assert reason_of(raw, now=1_800_000_000 - exact.MAX_CLOCK_SKEW - 1) == exact.VALID_START_IN_FUTURE
    assert check_transfer(b64(raw), pay_to=PAY_TO, amount=AMOUNT, fee_payer=FEE_PAYER,
                          now=None).valid_until == 1_800_000_120  # stored payments: no clock


# -- hand-mutated protobufs: what no SDK builds -------------------------------------------


def mutate(raw: bytes, change, signer: DevAccount) -> bytes:
    """Apply ``change(body)`` to every node body and re-sign with ``signer``."""
    from hiero_sdk_python.hapi.sdk import transaction_list_pb2
    from hiero_sdk_python.hapi.services import basic_types_pb2, transaction_contents_pb2, transaction_pb2

    pair = keys.KeyPair(signer.key_type, signer.private_key, signer.private_key_raw,
                        bytes.fromhex(signer.public_key))
    out = transaction_list_pb2.TransactionList()
    for entry in transaction_list_pb2.TransactionList.FromString(raw).transaction_list:
        signed = transaction_contents_pb2.SignedTransaction.FromString(entry.signedTransactionBytes)
        body = transaction_pb2.TransactionBody.FromString(signed.bodyBytes)
        change(body)
        body_bytes = body.SerializeToString()
        sig = keys.sign(pair, body_bytes)
        kind = "ed25519" if signer.key_type == keys.ED25519 else "ECDSA_secp256k1"
        sig_map = basic_types_pb2.SignatureMap(sigPair=[basic_types_pb2.SignaturePair(
            pubKeyPrefix=pair.public_raw, **{kind: sig})])
        out.transaction_list.add(signedTransactionBytes=transaction_contents_pb2.SignedTransaction(
            bodyBytes=body_bytes, sigMap=sig_map).SerializeToString())
    return out.SerializeToString()


def _repeat_account(body):
    first = body.cryptoTransfer.transfers.accountAmounts[0]
    first.amount -= 1
    body.cryptoTransfer.transfers.accountAmounts.add(accountID=first.accountID, amount=1)


def _alias_payee(body):
    for entry in body.cryptoTransfer.transfers.accountAmounts:
        if entry.amount > 0:
            entry.accountID.alias = b"\x02" + b"\x11" * 32


def _hook(body):
    body.cryptoTransfer.transfers.accountAmounts[0].pre_tx_allowance_hook.SetInParent()


MUTATIONS = {
    "repeated_account": (_repeat_account, exact.INVALID_SHAPE),
    "alias_account": (_alias_payee, exact.INVALID_SHAPE),
    "allowance_hook": (_hook, exact.NON_TRANSFER_OPS),
    "scheduled_id": (lambda b: setattr(b.transactionID, "scheduled", True), exact.FEE_PAYER_MISMATCH),
    "nonce_id": (lambda b: setattr(b.transactionID, "nonce", 1), exact.FEE_PAYER_MISMATCH),
    "batch_key": (lambda b: b.batch_key.SetInParent() or setattr(b.batch_key, "ed25519", b"k" * 32),
                  exact.NON_TRANSFER_OPS),
    "huge_max_fee": (lambda b: setattr(b, "transactionFee", exact.MAX_TRANSACTION_FEE + 1),
                     exact.FEE_TOO_HIGH),
    "zero_byte_memo": (lambda b: setattr(b, "memo", "a\x00b"), exact.MEMO_TOO_LONG),
    "no_duration": (lambda b: b.ClearField("transactionValidDuration"), exact.VALID_DURATION),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_mutated_bodies_are_refused(case):
    change, expected = MUTATIONS[case]
    payer = account(1005)
    assert reason_of(mutate(forge_bytes(REQ, payer), change, payer)) == expected


def test_unknown_body_fields_are_refused():
    payer = account(1005)
    raw = mutate(forge_bytes(REQ, payer), lambda b: None, payer)
    assert check(raw)  # the re-signing itself is fine

    def add_unknown(body):  # a field this build's protobufs do not know: 9999 varint 1
        body.MergeFromString(b"\xf8\xf0\x04\x01")

    assert reason_of(mutate(raw, add_unknown, payer)) == exact.NON_TRANSFER_OPS


def test_all_node_copies_are_checked():
    from hiero_sdk_python.hapi.sdk import transaction_list_pb2

    payer = account(1005)
    raw = forge_bytes(REQ, payer, nodes=["0.0.3", "0.0.4"])
    t = check(raw)
    assert t.nodes == ("0.0.3", "0.0.4") and len(t.bodies) == 2
    # Splice node 0.0.4's copy from another transfer (to someone else) into the list.
    evil = forge_bytes(REQ, payer, nodes=["0.0.3", "0.0.4"],
                       transfers=[(payer.account_id, -AMOUNT), ("0.0.1009", AMOUNT)])
    good_list = transaction_list_pb2.TransactionList.FromString(raw)
    evil_list = transaction_list_pb2.TransactionList.FromString(evil)
    spliced = transaction_list_pb2.TransactionList(
        transaction_list=[good_list.transaction_list[0], evil_list.transaction_list[1]])
    assert reason_of(spliced.SerializeToString()) == exact.INVALID_SHAPE
    # A copy for node 0.0.4 signed by someone else fails the signature check.
    stranger = account(1006)
    half = transaction_list_pb2.TransactionList(transaction_list=[
        good_list.transaction_list[0],
        transaction_list_pb2.TransactionList.FromString(
            mutate(raw, lambda b: None, stranger)).transaction_list[1]])
    with pytest.raises(X402Error) as info:
        verify_payer_signature(check(half.SerializeToString()), payer.key_type, payer.public_key)
    assert info.value.reason == exact.SIGNATURE_INVALID


def test_a_single_transaction_without_a_list_is_read():
    from hiero_sdk_python.hapi.sdk import transaction_list_pb2

    payer = account(1005)
    raw = forge_bytes(REQ, payer)
    single = transaction_list_pb2.TransactionList.FromString(raw).transaction_list[0]
    t = check(single.SerializeToString())
    verify_payer_signature(t, payer.key_type, payer.public_key)


@pytest.mark.parametrize("text", ["!!!not base64!!!", "", "AAAA", b64(b"\xff" * 40),
                                  b64(b"\x0a\x03abc"), b64(b"\x2a\x02\x0a\x00")])
def test_garbage_is_refused_as_undecodable(text):
    with pytest.raises(X402Error) as info:
        check_transfer(text, pay_to=PAY_TO, amount=AMOUNT, fee_payer=FEE_PAYER, now=time.time())
    assert info.value.reason == exact.DECODE_FAILED


@pytest.mark.parametrize("payload", [None, [], {}, {"transaction": 5}, {"transaction": ""}])
def test_payload_shape(payload):
    with pytest.raises(X402Error):
        exact.transaction_b64(payload)


# -- against the devnet: what passes here is what the network executes ---------------------


async def test_a_checked_payment_executes_once_cosigned_by_the_fee_payer(hedera_devnet, hedera_account):
    from chains.hedera.network import HederaNetwork

    spender = hedera_devnet.account("spender")
    payee = hedera_account()
    for key_type in (keys.ED25519, keys.ECDSA_SECP256K1):
        payer = hedera_account(key_type)
        req = {**REQ, "payTo": payee.account_id, "extra": {"feePayer": spender.account_id}}
        raw = build_transfer_bytes(req, payer.account_id, payer.private_key)
        t = check_transfer(b64(raw), pay_to=payee.account_id, amount=AMOUNT,
                           fee_payer=spender.account_id, now=time.time())
        verify_payer_signature(t, payer.key_type, payer.public_key)
        before = {a: hedera_devnet.balance(a) for a in (payer, payee, spender)}
        net = HederaNetwork(network=hedera_devnet.network, nodes=hedera_devnet.network_map(),
                            account_id=spender.account_id, private_key=spender.private_key)
        assert (await net.submit(raw, cosign=True)).status == "SUCCESS"
        assert (await net.submit(raw, cosign=True)).status == "SUCCESS"  # resubmitted: DUPLICATE, same receipt
        assert hedera_devnet.balance(payer) == before[payer] - AMOUNT
        assert hedera_devnet.balance(payee) == before[payee] + AMOUNT
        assert hedera_devnet.balance(spender) == before[spender] - hedera_devnet.fee


async def test_the_network_agrees_a_wrong_signer_cannot_pay(hedera_devnet, hedera_account):
    from chains.hedera.network import HederaNetwork

    spender = hedera_devnet.account("spender")
    payer, stranger, payee = hedera_account(), hedera_account(), hedera_account()
    req = {**REQ, "payTo": payee.account_id, "extra": {"feePayer": spender.account_id}}
    raw = forge_bytes(req, payer, signers=[stranger])
    with pytest.raises(X402Error):
        verify_payer_signature(check_transfer(b64(raw), pay_to=payee.account_id, amount=AMOUNT,
                                              fee_payer=spender.account_id, now=time.time()),
                               payer.key_type, payer.public_key)
    net = HederaNetwork(network=hedera_devnet.network, nodes=hedera_devnet.network_map(),
                        account_id=spender.account_id, private_key=spender.private_key)
    before = hedera_devnet.balance(payer)
    assert (await net.submit(raw, cosign=True)).status == "INVALID_SIGNATURE"
    assert hedera_devnet.balance(payer) == before
