"""chains.hedera.mirror.MirrorClient against the devnet mirror (and a few canned answers)."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import pytest
from hiero_sdk_python import (
    AccountAllowanceApproveTransaction,
    AccountId,
    Hbar,
    ResponseCode,
    TransferTransaction,
)

from chains.hedera.devnet import HBAR
from chains.hedera.ids import to_mirror_tx_id
from chains.hedera.mirror import (
    MirrorBadRequest,
    MirrorClient,
    MirrorNotFound,
    MirrorUnavailable,
    TransactionRecord,
    pick_record,
)


def _id(dev):
    return AccountId.from_string(dev.account_id)


@pytest.fixture
async def mirror(hedera_devnet):
    async with MirrorClient(hedera_devnet.mirror_url, timeout=2.0) as client:
        yield client


def _transfer(net, payer, dest, amount, memo=""):
    tx = TransferTransaction().add_hbar_transfer(_id(payer), -amount).add_hbar_transfer(_id(dest), amount)
    receipt = tx.set_transaction_memo(memo).execute(net.sdk_client(payer))
    assert receipt.status == ResponseCode.SUCCESS
    return str(receipt.transaction_id)


async def test_allowance_reduced_after_pull(hedera_devnet, hedera_account, mirror):
    owner, spender, merchant = hedera_account(), hedera_account(), hedera_account()
    (AccountAllowanceApproveTransaction().approve_hbar_allowance(_id(owner), _id(spender), Hbar(4))
     .execute(hedera_devnet.sdk_client(owner)))
    [allowance] = await mirror.crypto_allowances(owner.account_id, spender.account_id)
    assert (allowance.amount, allowance.amount_granted) == (4 * HBAR, 4 * HBAR)
    pull = TransferTransaction().add_approved_hbar_transfer(_id(owner), -HBAR)
    pull.add_hbar_transfer(_id(merchant), HBAR).execute(hedera_devnet.sdk_client(spender))
    allowance = await mirror.crypto_allowance(owner.account_id, spender.account_id)
    assert (allowance.amount, allowance.amount_granted) == (3 * HBAR, 4 * HBAR)
    assert isinstance(allowance.amount, int)
    assert await mirror.crypto_allowance(owner.account_id, merchant.account_id) is None


async def test_allowances_paginate_with_limit_1(hedera_devnet, hedera_account, mirror):
    owner = hedera_account()
    spenders = [hedera_account() for _ in range(3)]
    approve = AccountAllowanceApproveTransaction()
    for n, spender in enumerate(spenders, start=1):
        approve.approve_hbar_allowance(_id(owner), _id(spender), Hbar(n))
    assert approve.execute(hedera_devnet.sdk_client(owner)).status == ResponseCode.SUCCESS

    # The raw pages: links.next is a relative path, set while pages are full.
    url = f"{hedera_devnet.mirror_url}/api/v1/accounts/{owner.account_id}/allowances/crypto?limit=1"
    first = httpx.get(url).json()
    assert len(first["allowances"]) == 1 and first["links"]["next"].startswith("/api/v1/accounts/")

    allowances = await mirror.crypto_allowances(owner.account_id, limit=1)
    # The mirror's default order is descending spender id.
    assert [a.spender for a in allowances] == [s.account_id for s in reversed(spenders)]
    assert [a.amount for a in allowances] == [3 * HBAR, 2 * HBAR, HBAR]


async def test_account_info(hedera_devnet, hedera_account, mirror):
    alice, carol = hedera_account(), hedera_account("ECDSA_SECP256K1")
    info = await mirror.account(alice.account_id)
    assert (info.id, info.key_type, info.key_hex) == (alice.account_id, "ED25519", alice.public_key)
    assert info.balance == hedera_devnet.balance(alice) and isinstance(info.balance, int)
    info = await mirror.account(carol.account_id)
    assert (info.key_type, info.key_hex) == ("ECDSA_SECP256K1", carol.public_key)
    with pytest.raises(MirrorNotFound):
        await mirror.account("0.0.987654")
    with pytest.raises(ValueError):
        await mirror.account("alice")


async def test_transaction_by_either_id_form_with_memo(hedera_devnet, hedera_account, mirror):
    alice, bob = hedera_account(), hedera_account()
    tx_id = _transfer(hedera_devnet, alice, bob, 42, memo="tollgate:nonce-123")
    for form in (tx_id, to_mirror_tx_id(tx_id)):
        [record] = await mirror.transaction(form)
        assert record.transaction_id == to_mirror_tx_id(tx_id)
        assert (record.result, record.name, record.payer) == ("SUCCESS", "CRYPTOTRANSFER", alice.account_id)
        assert record.memo_text == "tollgate:nonce-123"
        assert record.memo_base64 == base64.b64encode(b"tollgate:nonce-123").decode()
        assert record.net_amount(bob.account_id) == 42
        assert record.net_amount(alice.account_id) == -42 - hedera_devnet.fee
        assert record.charged_tx_fee == hedera_devnet.fee
    assert await mirror.transaction("0.0.2@1.5") is None
    with pytest.raises(ValueError):
        await mirror.transaction("0.0.2@nonsense")


async def test_ingestion_lag(hedera_mirror_faults, hedera_account, mirror):
    net = hedera_mirror_faults
    alice, bob = hedera_account(), hedera_account()
    before = net.balance(bob)
    net.set_mirror_lag(0.6)
    tx_id = _transfer(net, alice, bob, 5)
    assert await mirror.transaction(tx_id) is None  # consensus reached, mirror not there yet
    started = time.monotonic()
    record = await mirror.wait_transaction(tx_id, timeout=5, interval=0.1)
    assert record is not None and record.succeeded
    assert 0.3 < time.monotonic() - started < 3
    assert (await mirror.account(bob.account_id)).balance == before + 5


async def test_wait_transaction_is_bounded(mirror):
    started = time.monotonic()
    assert await mirror.wait_transaction("0.0.2@1.7", timeout=0.3, interval=0.1) is None
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("mode", ["503", "refuse"])
async def test_mirror_down(hedera_mirror_faults, mirror, mode):
    net = hedera_mirror_faults
    await mirror.account("0.0.2")  # a pooled keep-alive connection exists before the fault
    net.set_mirror_down(True, mode)
    with pytest.raises(MirrorUnavailable):
        await mirror.account("0.0.2")
    with pytest.raises(MirrorUnavailable):
        await mirror.crypto_allowances("0.0.2")
    with pytest.raises(MirrorUnavailable):
        await mirror.wait_transaction("0.0.2@1.9", timeout=0.2, interval=0.05)
    net.set_mirror_down(False)
    assert (await mirror.account("0.0.2")).id == "0.0.2"


async def test_duplicates_prefer_success(hedera_mirror_faults, hedera_account, mirror):
    net = hedera_mirror_faults
    alice, bob = hedera_account(), hedera_account()
    net.set_duplicates_reach_consensus(True)
    client = net.sdk_client(alice)
    tx = TransferTransaction().add_hbar_transfer(_id(alice), -3).add_hbar_transfer(_id(bob), 3)
    tx.freeze_with(client)
    assert tx.execute(client).status == ResponseCode.SUCCESS
    before = net.balance(bob)
    tx.execute(client)  # same id again: reaches consensus as a duplicate, no effect
    assert net.balance(bob) == before
    records = await mirror.transaction(str(tx.transaction_id))
    assert [r.result for r in records] == ["SUCCESS", "DUPLICATE_TRANSACTION"]
    assert (await mirror.wait_transaction(str(tx.transaction_id), timeout=1)).succeeded


def test_pick_record_prefers_success_then_non_duplicate():
    def rec(result):
        return TransactionRecord(transaction_id="0.0.2-1-000000001", consensus_timestamp="1.0",
                                 name="CRYPTOTRANSFER", result=result, payer="0.0.2", memo=b"",
                                 memo_base64="", transfers=(), charged_tx_fee=0)

    assert pick_record([]) is None
    assert pick_record([rec("DUPLICATE_TRANSACTION"), rec("SUCCESS")]).result == "SUCCESS"
    assert pick_record([rec("DUPLICATE_TRANSACTION"), rec("INSUFFICIENT_ACCOUNT_BALANCE")]).result == \
        "INSUFFICIENT_ACCOUNT_BALANCE"


def test_devnet_mirror_error_shapes(hedera_devnet):
    base = f"{hedera_devnet.mirror_url}/api/v1"
    http = httpx.Client()
    missing = http.get(f"{base}/transactions/0.0.2-1-000000001")
    assert missing.status_code == 404
    assert missing.json() == {"_status": {"messages": [{"message": "Not found"}]}}
    for path in ("/transactions/0.0.2@1.5", "/accounts/not-an-id",
                 "/accounts/0.0.2/allowances/crypto?limit=0",
                 "/accounts/0.0.2/allowances/crypto?spender.id=ne:0.0.3", "/accounts/0.0.2?bogus=1"):
        answer = http.get(base + path)
        assert answer.status_code == 400, path
        assert answer.json()["_status"]["messages"][0]["message"]


async def test_client_classifies_answers():
    answers = {
        "/api/v1/accounts/0.0.1": httpx.Response(500, json={}),
        "/api/v1/accounts/0.0.2": httpx.Response(429, json={}),
        "/api/v1/accounts/0.0.3": httpx.Response(200, text="<html>"),
        "/api/v1/accounts/0.0.4": httpx.Response(
            400, json={"_status": {"messages": [{"message": "Invalid parameter"}]}}),
        "/api/v1/accounts/0.0.5/allowances/crypto": httpx.Response(
            200, json={"allowances": [], "links": {"next": "/api/v1/accounts/0.0.5/allowances/crypto?x"}}),
    }

    def handler(request):
        if request.url.path == "/api/v1/accounts/0.0.6":
            raise httpx.ReadTimeout("slow", request=request)
        return answers[request.url.path]

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        mirror = MirrorClient("https://mirror.example/api/v1/", http)
        for account in ("0.0.1", "0.0.2", "0.0.3", "0.0.6"):
            with pytest.raises(MirrorUnavailable):
                await mirror.account(account)
        with pytest.raises(MirrorBadRequest):
            await mirror.account("0.0.4")
        with pytest.raises(MirrorUnavailable):  # a next link that never ends is cut off
            await mirror.crypto_allowances("0.0.5")
        await mirror.aclose()
        assert not http.is_closed  # a shared client stays open


async def test_concurrent_requests(hedera_devnet, mirror):
    infos = await asyncio.gather(*(mirror.account("0.0.2") for _ in range(20)))
    assert {info.id for info in infos} == {"0.0.2"}


@pytest.mark.parametrize("retry_after", [7, None])
async def test_a_429_says_how_long_to_wait(hedera_mirror_faults, hedera_account, mirror,
                                           retry_after):
    from chains.hedera.mirror import MirrorRateLimited

    owner = hedera_account()
    hedera_mirror_faults.set_mirror_rate_limited(True, retry_after=retry_after)
    response = httpx.get(hedera_mirror_faults.mirror_url + f"/api/v1/accounts/{owner.account_id}")
    assert response.status_code == 429
    assert response.json() == {"_status": {"messages": [{"message": "Too Many Requests"}]}}
    assert response.headers.get("Retry-After") == (None if retry_after is None else "7")
    with pytest.raises(MirrorRateLimited) as err:
        await mirror.crypto_allowance(owner.account_id, "0.0.1001")
    assert isinstance(err.value, MirrorUnavailable) and err.value.retry_after == retry_after
    hedera_mirror_faults.set_mirror_rate_limited(False)
    assert await mirror.crypto_allowance(owner.account_id, "0.0.1001") is None


def test_retry_after_header_forms():
    from chains.hedera.mirror import retry_after_seconds

    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = 1_700_000_000  # Tue, 14 Nov 2023 22:13:20 GMT
    assert retry_after_seconds("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == 30.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:13:00 GMT", now=now) == 0.0  # past: now
