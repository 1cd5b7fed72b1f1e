"""The devnet driven by the real hiero-sdk-python, exactly as the gateway drives testnet."""

from __future__ import annotations

import time

import grpc
import httpx
import pytest
from hiero_sdk_python import (
    AccountAllowanceApproveTransaction,
    AccountCreateTransaction,
    AccountId,
    CryptoGetAccountBalanceQuery,
    Hbar,
    PrecheckError,
    PrivateKey,
    ReceiptStatusError,
    ResponseCode,
    Transaction,
    TransactionId,
    TransferTransaction,
)
from hiero_sdk_python.hapi.services import (
    basic_types_pb2,
    crypto_get_account_balance_pb2,
    crypto_service_pb2_grpc,
    query_pb2,
    timestamp_pb2,
    transaction_get_receipt_pb2,
)
from hiero_sdk_python.query.transaction_get_receipt_query import TransactionGetReceiptQuery

from chains.hedera.devnet import HBAR
from chains.hedera.ids import to_mirror_tx_id


def _id(dev):
    return AccountId.from_string(dev.account_id)


def _send(client, *moves, **options):
    """A plain TransferTransaction of ``(account, tinybars)`` moves, executed by ``client``."""
    tx = TransferTransaction()
    for account, amount in moves:
        tx.add_hbar_transfer(account if isinstance(account, AccountId) else _id(account), amount)
    return tx.execute(client, **options)


def _pull(client, owner, dest, amount):
    """The gateway's pull: an approved debit of ``owner``, paid and signed by the spender."""
    return (TransferTransaction().add_approved_hbar_transfer(_id(owner), -amount)
            .add_hbar_transfer(_id(dest), amount).execute(client))


def _approve(client, owner, spender, hbar):
    tx = AccountAllowanceApproveTransaction().approve_hbar_allowance(_id(owner), _id(spender), hbar)
    return tx.execute(client)


def _mirror_allowances(net, owner, spender=None):
    params = {"spender.id": spender.account_id} if spender else None
    url = f"{net.mirror_url}/api/v1/accounts/{owner.account_id}/allowances/crypto"
    return httpx.get(url, params=params).json()["allowances"]


def test_transfer_moves_balances_and_charges_the_payer(hedera_devnet, hedera_account):
    alice, bob = hedera_account(), hedera_account()
    before_a, before_b = hedera_devnet.balance(alice), hedera_devnet.balance(bob)
    client = hedera_devnet.sdk_client(alice)
    receipt = _send(client, (alice, -12_345), (bob, 12_345))
    assert receipt.status == ResponseCode.SUCCESS
    assert hedera_devnet.balance(alice) == before_a - 12_345 - hedera_devnet.fee
    assert hedera_devnet.balance(bob) == before_b + 12_345
    balance = CryptoGetAccountBalanceQuery().set_account_id(_id(bob)).execute(client)
    assert balance.hbars.to_tinybars() == before_b + 12_345
    client.close()


def test_approve_then_spender_pulls(hedera_devnet, hedera_account):
    owner, spender, merchant = hedera_account(), hedera_account(), hedera_account()
    owner_client, spender_client = hedera_devnet.sdk_client(owner), hedera_devnet.sdk_client(spender)
    assert _approve(owner_client, owner, spender, Hbar(2)).status == ResponseCode.SUCCESS
    owner_before, spender_before = hedera_devnet.balance(owner), hedera_devnet.balance(spender)
    merchant_before = hedera_devnet.balance(merchant)

    receipt = _pull(spender_client, owner, merchant, 50_000_000)
    assert receipt.status == ResponseCode.SUCCESS
    assert hedera_devnet.balance(owner) == owner_before - 50_000_000  # owner pays no fee
    assert hedera_devnet.balance(merchant) == merchant_before + 50_000_000
    assert hedera_devnet.balance(spender) == spender_before - hedera_devnet.fee
    [allowance] = _mirror_allowances(hedera_devnet, owner, spender)
    assert (allowance["amount"], allowance["amount_granted"]) == (150_000_000, 200_000_000)
    assert allowance["owner"] == owner.account_id and allowance["spender"] == spender.account_id
    assert allowance["timestamp"]["to"] is None

    tx_id = to_mirror_tx_id(str(receipt.transaction_id))
    [record] = httpx.get(f"{hedera_devnet.mirror_url}/api/v1/transactions/{tx_id}").json()["transactions"]
    moves = {t["account"]: (t["amount"], t["is_approval"]) for t in record["transfers"]}
    assert moves[owner.account_id] == (-50_000_000, True)
    assert moves[merchant.account_id] == (50_000_000, False)
    assert moves[spender.account_id] == (-hedera_devnet.fee, False)
    assert record["charged_tx_fee"] == hedera_devnet.fee


def test_pull_over_allowance_and_without_allowance_fail_in_the_receipt(hedera_devnet, hedera_account):
    owner, spender, merchant = hedera_account(), hedera_account(), hedera_account()
    spender_client = hedera_devnet.sdk_client(spender)
    owner_before = hedera_devnet.balance(owner)

    receipt = _pull(spender_client, owner, merchant, 1)  # execute() does not raise by default
    assert receipt.status == ResponseCode.SPENDER_DOES_NOT_HAVE_ALLOWANCE

    _approve(hedera_devnet.sdk_client(owner), owner, spender, Hbar(1))
    owner_before = hedera_devnet.balance(owner)
    assert _pull(spender_client, owner, merchant, HBAR + 1).status == ResponseCode.AMOUNT_EXCEEDS_ALLOWANCE
    with pytest.raises(ReceiptStatusError) as raised:
        (TransferTransaction().add_approved_hbar_transfer(_id(owner), -HBAR - 1)
         .add_hbar_transfer(_id(merchant), HBAR + 1).execute(spender_client, validate_status=True))
    assert raised.value.status == ResponseCode.AMOUNT_EXCEEDS_ALLOWANCE
    assert hedera_devnet.balance(owner) == owner_before

    # Spend it all: consensus forgets the allowance, the mirror keeps it at amount 0.
    assert _pull(spender_client, owner, merchant, HBAR).status == ResponseCode.SUCCESS
    assert _pull(spender_client, owner, merchant, 1).status == ResponseCode.SPENDER_DOES_NOT_HAVE_ALLOWANCE
    [allowance] = _mirror_allowances(hedera_devnet, owner, spender)
    assert (allowance["amount"], allowance["amount_granted"]) == (0, HBAR)


def test_approve_replaces_and_zero_revokes(hedera_devnet, hedera_account):
    owner, spender, merchant = hedera_account(), hedera_account(), hedera_account()
    owner_client = hedera_devnet.sdk_client(owner)
    _approve(owner_client, owner, spender, Hbar(5))
    _approve(owner_client, owner, spender, Hbar(3))
    [allowance] = _mirror_allowances(hedera_devnet, owner, spender)
    assert (allowance["amount"], allowance["amount_granted"]) == (3 * HBAR, 3 * HBAR)

    assert _approve(owner_client, owner, spender, Hbar(0)).status == ResponseCode.SUCCESS
    assert _mirror_allowances(hedera_devnet, owner, spender) == []
    spender_client = hedera_devnet.sdk_client(spender)
    assert _pull(spender_client, owner, merchant, 1).status == ResponseCode.SPENDER_DOES_NOT_HAVE_ALLOWANCE


def test_signatures_are_checked(hedera_devnet, hedera_account):
    alice, bob, mallory = hedera_account(), hedera_account(), hedera_account()
    # Payer signature wrong: precheck INVALID_SIGNATURE, nothing recorded or charged.
    bad_client = hedera_devnet.sdk_client(alice)
    bad_client.set_operator(_id(alice), PrivateKey.from_string_der(mallory.private_key))
    before = hedera_devnet.balance(alice)
    with pytest.raises(PrecheckError) as raised:
        _send(bad_client, (alice, -1), (bob, 1))
    assert raised.value.status == ResponseCode.INVALID_SIGNATURE
    assert hedera_devnet.balance(alice) == before

    # A debited account that did not sign (mallory pays): receipt INVALID_SIGNATURE, fee charged.
    mallory_client = hedera_devnet.sdk_client(mallory)
    mallory_before = hedera_devnet.balance(mallory)
    receipt = _send(mallory_client, (alice, -1), (mallory, 1))
    assert receipt.status == ResponseCode.INVALID_SIGNATURE
    assert hedera_devnet.balance(alice) == before
    assert hedera_devnet.balance(mallory) == mallory_before - hedera_devnet.fee

    # With alice's signature added it goes through.
    tx = TransferTransaction().add_hbar_transfer(_id(alice), -1).add_hbar_transfer(_id(mallory), 1)
    tx.freeze_with(mallory_client).sign(PrivateKey.from_string_der(alice.private_key))
    assert tx.execute(mallory_client).status == ResponseCode.SUCCESS

    # Approving on behalf of someone else needs the owner's signature too.
    receipt = _approve(mallory_client, alice, mallory, Hbar(1))
    assert receipt.status == ResponseCode.INVALID_SIGNATURE


def test_resubmitting_the_same_bytes_is_a_harmless_duplicate(hedera_devnet, hedera_account):
    alice, bob = hedera_account(), hedera_account()
    client = hedera_devnet.sdk_client(alice)
    tx = TransferTransaction().add_hbar_transfer(_id(alice), -500).add_hbar_transfer(_id(bob), 500)
    tx.freeze_with(client).sign(PrivateKey.from_string_der(alice.private_key))
    stored = tx.to_bytes()  # what the gateway stores before submitting
    assert tx.execute(client).status == ResponseCode.SUCCESS
    after_first = hedera_devnet.balance(bob)
    with pytest.raises(PrecheckError) as raised:
        Transaction.from_bytes(stored).execute(client)
    assert raised.value.status == ResponseCode.DUPLICATE_TRANSACTION
    assert hedera_devnet.balance(bob) == after_first


def test_lost_response_then_resubmit_resolves_by_receipt(hedera_mirror_faults, hedera_account):
    net = hedera_mirror_faults
    alice, bob = hedera_account(), hedera_account()
    client = net.sdk_client(alice)
    tx = TransferTransaction().add_hbar_transfer(_id(alice), -700).add_hbar_transfer(_id(bob), 700)
    tx.freeze_with(client).sign(PrivateKey.from_string_der(alice.private_key))
    stored, tx_id = tx.to_bytes(), tx.transaction_id
    net.fail_next_submissions(1, "lost")
    before = net.balance(bob)
    # The node handled it but the answer was lost. hiero-sdk-python 0.3 then marks its
    # only node unhealthy for 16 s and raises RuntimeError: use a fresh client.
    with pytest.raises(Exception):
        tx.execute(client)
    assert net.balance(bob) == before + 700
    fresh = net.sdk_client(alice)
    with pytest.raises(PrecheckError) as raised:
        Transaction.from_bytes(stored).execute(fresh)
    assert raised.value.status == ResponseCode.DUPLICATE_TRANSACTION
    receipt = TransactionGetReceiptQuery().set_transaction_id(tx_id).execute(fresh)
    assert receipt.status == ResponseCode.SUCCESS
    assert net.balance(bob) == before + 700


def test_busy_is_retried_by_the_sdk(hedera_mirror_faults, hedera_account):
    alice, bob = hedera_account(), hedera_account()
    hedera_mirror_faults.fail_next_submissions(1, "busy")
    client = hedera_mirror_faults.sdk_client(alice)
    assert _send(client, (alice, -1), (bob, 1)).status == ResponseCode.SUCCESS


@pytest.mark.parametrize(("offset", "code"), [(-200, ResponseCode.TRANSACTION_EXPIRED),
                                              (60, ResponseCode.INVALID_TRANSACTION_START)])
def test_valid_start_time_box(hedera_devnet, hedera_account, offset, code):
    alice, bob = hedera_account(), hedera_account()
    client = hedera_devnet.sdk_client(alice)
    tx_id = TransactionId(_id(alice), timestamp_pb2.Timestamp(seconds=int(time.time()) + offset, nanos=5))
    with pytest.raises(PrecheckError) as raised:
        (TransferTransaction().add_hbar_transfer(_id(alice), -1).add_hbar_transfer(_id(bob), 1)
         .set_transaction_id(tx_id).execute(client))
    assert raised.value.status == code


def test_balance_and_account_errors(hedera_devnet, hedera_account):
    alice, poor = hedera_account(), hedera_account(balance=hedera_devnet.fee - 1)
    client = hedera_devnet.sdk_client(alice)
    receipt = _send(client, (alice, -10**15), (poor, 10**15))
    assert receipt.status == ResponseCode.INSUFFICIENT_ACCOUNT_BALANCE
    receipt = _send(client, (alice, -1), (AccountId(0, 0, 987_654), 1))
    assert receipt.status == ResponseCode.INVALID_ACCOUNT_ID
    with pytest.raises(PrecheckError) as raised:
        _send(hedera_devnet.sdk_client(poor), (poor, -1), (alice, 1))
    assert raised.value.status == ResponseCode.INSUFFICIENT_PAYER_BALANCE


def test_ecdsa_account_transfers_and_approves(hedera_devnet, hedera_account):
    carol, spender, bob = hedera_account("ECDSA_SECP256K1"), hedera_account(), hedera_account()
    client = hedera_devnet.sdk_client(carol)
    assert _send(client, (carol, -3), (bob, 3)).status == ResponseCode.SUCCESS
    assert _approve(client, carol, spender, Hbar(1)).status == ResponseCode.SUCCESS
    assert _pull(hedera_devnet.sdk_client(spender), carol, bob, 10).status == ResponseCode.SUCCESS
    info = httpx.get(f"{hedera_devnet.mirror_url}/api/v1/accounts/{carol.account_id}").json()
    assert info["key"] == {"_type": "ECDSA_SECP256K1", "key": carol.public_key}
    assert len(bytes.fromhex(carol.public_key)) == 33


def test_create_account_by_transaction(hedera_devnet):
    client = hedera_devnet.sdk_client("operator")
    key = PrivateKey.generate_ed25519()
    create = AccountCreateTransaction().set_key_without_alias(key.public_key()).set_initial_balance(Hbar(2))
    receipt = create.execute(client)
    assert receipt.status == ResponseCode.SUCCESS
    info = httpx.get(f"{hedera_devnet.mirror_url}/api/v1/accounts/{receipt.account_id}").json()
    assert info["balance"]["balance"] == 2 * HBAR
    assert info["key"] == {"_type": "ED25519", "key": key.public_key().to_bytes_raw().hex()}
    new_client = hedera_devnet.sdk_client("operator")
    new_client.set_operator(receipt.account_id, key)
    assert _send(new_client, (receipt.account_id, -1), (AccountId(0, 0, 2), 1)).status == ResponseCode.SUCCESS


def test_raw_grpc_queries(hedera_devnet):
    """Answers the SDK would retry for a long time: check them on the wire."""
    with grpc.insecure_channel(hedera_devnet.grpc_address) as channel:
        stub = crypto_service_pb2_grpc.CryptoServiceStub(channel)
        unknown = basic_types_pb2.TransactionID(accountID=basic_types_pb2.AccountID(accountNum=2),
                                                transactionValidStart=timestamp_pb2.Timestamp(seconds=1))
        receipt_query = transaction_get_receipt_pb2.TransactionGetReceiptQuery(transactionID=unknown)
        answer = stub.getTransactionReceipts(query_pb2.Query(transactionGetReceipt=receipt_query), timeout=5)
        assert answer.transactionGetReceipt.header.nodeTransactionPrecheckCode == ResponseCode.RECEIPT_NOT_FOUND
        balance_query = crypto_get_account_balance_pb2.CryptoGetAccountBalanceQuery(
            accountID=basic_types_pb2.AccountID(accountNum=987_654))
        answer = stub.cryptoGetBalance(query_pb2.Query(cryptogetAccountBalance=balance_query), timeout=5)
        header = answer.cryptogetAccountBalance.header
        assert header.nodeTransactionPrecheckCode == ResponseCode.INVALID_ACCOUNT_ID


def test_describe_lists_endpoints_and_keys(hedera_devnet):
    info = hedera_devnet.describe()
    assert info["grpc"] == hedera_devnet.grpc_address
    assert info["nodes"] == {hedera_devnet.grpc_address: "0.0.3"}
    assert info["network"] == "hedera:devnet"
    assert info["mirror_url"].startswith("http://127.0.0.1:")
    accounts = info["accounts"]
    assert accounts["operator"]["account_id"] == "0.0.2"
    assert {"spender", "merchant", "alice", "bob", "carol"} <= set(accounts)
    assert accounts["carol"]["key_type"] == "ECDSA_SECP256K1"
    assert all(isinstance(a["balance_tinybars"], int) for a in accounts.values())
    # The printed key works with the SDK as is.
    assert PrivateKey.from_string(accounts["carol"]["private_key"]).public_key().to_bytes_raw().hex() == \
        accounts["carol"]["public_key"]


def _num(dev) -> int:
    return int(dev.account_id.rsplit(".", 1)[1])


def test_hand_built_transaction_legacy_layout_and_short_prefix(hedera_devnet, hedera_account):
    """No SDK: the deprecated bodyBytes + sigMap layout and a 4-byte key prefix verify too."""
    from hiero_sdk_python.hapi.services import crypto_transfer_pb2, duration_pb2, transaction_pb2

    from chains.hedera.devnet import keys

    for key_type, field in (("ED25519", "ed25519"), ("ECDSA_SECP256K1", "ECDSA_secp256k1")):
        payer, dest = hedera_account(key_type), hedera_account()
        amounts = [basic_types_pb2.AccountAmount(accountID=basic_types_pb2.AccountID(accountNum=_num(dev)),
                                                 amount=amount) for dev, amount in ((payer, -9), (dest, 9))]
        body = transaction_pb2.TransactionBody(
            transactionID=basic_types_pb2.TransactionID(
                accountID=basic_types_pb2.AccountID(accountNum=_num(payer)),
                transactionValidStart=timestamp_pb2.Timestamp(seconds=int(time.time()) - 5)),
            nodeAccountID=basic_types_pb2.AccountID(accountNum=3),
            transactionFee=HBAR,
            transactionValidDuration=duration_pb2.Duration(seconds=120),
            cryptoTransfer=crypto_transfer_pb2.CryptoTransferTransactionBody(
                transfers=basic_types_pb2.TransferList(accountAmounts=amounts)),
        ).SerializeToString()
        pair = keys.KeyPair(key_type, payer.private_key, payer.private_key_raw, bytes.fromhex(payer.public_key))
        signature = basic_types_pb2.SignaturePair(pubKeyPrefix=pair.public_raw[:4],
                                                  **{field: keys.sign(pair, body)})
        sig_map = basic_types_pb2.SignatureMap(sigPair=[signature])
        request = transaction_pb2.Transaction(bodyBytes=body, sigMap=sig_map)
        before = hedera_devnet.balance(dest)
        with grpc.insecure_channel(hedera_devnet.grpc_address) as channel:
            answer = crypto_service_pb2_grpc.CryptoServiceStub(channel).cryptoTransfer(request, timeout=5)
        assert answer.nodeTransactionPrecheckCode == ResponseCode.OK
        assert hedera_devnet.balance(dest) == before + 9
