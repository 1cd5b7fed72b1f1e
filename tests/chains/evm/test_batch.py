"""BatchSettler + the SettlementBatch contract on real anvil and the real TestUSDC."""

from __future__ import annotations

import asyncio
import time

import pytest

from chains.evm.batch import BatchSettler
from chains.evm.settle import Settler


def _batcher(evm_devnet, evm_rpc, *, simulate: bool = True, max_items: int = 200) -> BatchSettler:
    settler = Settler(evm_rpc, evm_devnet.settler.private_key, simulate=simulate)
    return BatchSettler(settler, evm_devnet.batch_address, max_items=max_items, receipt_timeout=20)


async def test_concurrent_settlements_go_into_one_transaction(evm_devnet, evm_rpc, sign_authorization):
    token, merchant = evm_devnet.token_address, evm_devnet.merchant.address
    signed = [sign_authorization(evm_devnet.payers[i % 3], 200 + i) for i in range(30)]
    before = await evm_rpc.balance_of(token, merchant)
    persisted: list[tuple[str, bytes]] = []

    async def persist(tx_hash: str, raw: bytes) -> None:
        persisted.append((tx_hash, raw))

    batcher = _batcher(evm_devnet, evm_rpc)
    outcomes = await asyncio.gather(*(batcher.settle(token, a, s, persist=persist) for a, s in signed))

    assert [o.state for o in outcomes] == ["settled"] * 30
    assert len({o.tx_hash for o in outcomes}) == 1 and batcher.batches_sent == 1
    # Every item's persist saw the one signed batch before it was sent.
    assert {h for h, _ in persisted} == {outcomes[0].tx_hash} and len(persisted) == 30
    assert await evm_rpc.balance_of(token, merchant) == before + sum(200 + i for i in range(30))
    for auth, _ in signed:
        assert await evm_rpc.authorization_state(token, auth.from_, auth.nonce) is True


async def test_batches_are_capped_and_pipelined(evm_devnet, evm_rpc, sign_authorization):
    token = evm_devnet.token_address
    signed = [sign_authorization(evm_devnet.payers[i % 3], 5) for i in range(7)]
    batcher = _batcher(evm_devnet, evm_rpc, max_items=3)
    outcomes = await asyncio.gather(*(batcher.settle(token, a, s) for a, s in signed))
    assert [o.state for o in outcomes] == ["settled"] * 7
    assert len({o.tx_hash for o in outcomes}) == 3 and batcher.batches_sent == 3


@pytest.mark.parametrize("simulate", [True, False], ids=["simulated", "failing-on-chain"])
async def test_one_bad_authorization_does_not_stop_the_others(
        evm_devnet, evm_rpc, sign_authorization, simulate):
    """Expired, badly signed, unfunded and already-used authorizations in the same batch as
    good ones: the good ones settle, each bad one fails with its own reason and moves
    nothing. Without simulation the bad ones are mined inside the batch and fail there."""
    token, merchant = evm_devnet.token_address, evm_devnet.merchant.address
    payer = evm_devnet.payers[1]
    now = int(time.time())
    good = [sign_authorization(payer, 300 + i) for i in range(3)]
    expired = sign_authorization(payer, 7, valid_before=now - 10)
    auth, sig = sign_authorization(payer, 8)
    forged = (auth, sig[:10] + bytes([sig[10] ^ 1]) + sig[11:])
    unfunded = sign_authorization(evm_devnet.poor, 9)
    used = sign_authorization(payer, 10)
    first = await _batcher(evm_devnet, evm_rpc).settle(token, *used)
    assert first.state == "settled"
    before = await evm_rpc.balance_of(token, merchant)

    batcher = _batcher(evm_devnet, evm_rpc, simulate=simulate)
    items = [good[0], expired, good[1], forged, unfunded, used, good[2]]
    outcomes = await asyncio.gather(*(batcher.settle(token, a, s) for a, s in items))

    states = [(o.state, o.reason) for o in outcomes]
    assert states[0] == states[2] == states[6] == ("settled", None)
    assert states[1] == ("failed", "invalid_exact_evm_payload_authorization_valid_before")
    assert states[3][0] == "failed" and states[3][1] in (
        "invalid_exact_evm_payload_signature", "invalid_exact_evm_nonce_already_used")
    assert states[4] == ("failed", "insufficient_funds")
    # The earlier settlement of this very payment is found: settled, by its own transaction.
    assert outcomes[5].state == "settled" and outcomes[5].tx_hash == first.tx_hash
    assert await evm_rpc.balance_of(token, merchant) == before + sum(300 + i for i in range(3))
    assert await evm_rpc.authorization_state(token, payer.address, forged[0].nonce) is False
    assert await evm_rpc.authorization_state(token, payer.address, expired[0].nonce) is False


async def test_reconcile_reads_each_items_fate_from_the_batch_receipt(
        evm_devnet, evm_rpc, evm_settler, sign_authorization):
    """Recovery of a payment linked to a mined batch: settled only by its own logs. Another
    authorization of the same payer, payee and value that was not in the batch is not
    settled by it (the batch's Transfer logs pay someone, not this payment)."""
    token, payer = evm_devnet.token_address, evm_devnet.payers[2]
    inside = sign_authorization(payer, 77)
    outside = sign_authorization(payer, 77)
    batcher = _batcher(evm_devnet, evm_rpc, simulate=False)
    outcome = await batcher.settle(token, *inside)
    assert outcome.state == "settled"

    again = await evm_settler.reconcile(token, inside[0], outcome.tx_hash)
    assert (again.state, again.tx_hash) == ("settled", outcome.tx_hash)
    stranger = await evm_settler.reconcile(token, outside[0], outcome.tx_hash)
    assert stranger.state == "failed" and stranger.reason == "settlement_pending"
    assert await evm_rpc.authorization_state(token, payer.address, outside[0].nonce) is False


async def test_crash_after_persisting_a_batch_resends_the_same_bytes(evm_devnet, evm_rpc, sign_authorization):
    """The batch is persisted before it is sent; a process that dies right then leaves bytes
    that recovery re-sends as they are (same hash), and each item then settles from them."""
    token, payer = evm_devnet.token_address, evm_devnet.payers[5]
    signed = [sign_authorization(payer, 40 + i) for i in range(4)]
    persisted: dict[str, bytes] = {}

    class Crash(Exception):
        pass

    async def persist_then_die(tx_hash: str, raw: bytes) -> None:
        persisted[tx_hash] = raw
        raise Crash

    dying = _batcher(evm_devnet, evm_rpc)
    results = await asyncio.gather(*(dying.settle(token, a, s, persist=persist_then_die) for a, s in signed),
                                   return_exceptions=True)
    assert all(isinstance(r, Crash) for r in results)
    (tx_hash, raw), = persisted.items()
    assert await evm_rpc.get_transaction_by_hash(tx_hash) is None  # never sent

    restarted = Settler(evm_rpc, evm_devnet.settler.private_key)
    resent = await restarted.reconcile(token, signed[0][0], tx_hash, raw)
    assert (resent.state, resent.tx_hash) == ("unknown", tx_hash)
    assert (await restarted.wait_receipt(tx_hash, timeout=10)).success
    for auth, _ in signed:
        done = await restarted.reconcile(token, auth, tx_hash, raw)
        assert (done.state, done.tx_hash) == ("settled", tx_hash)


def test_batch_calldata_is_the_abi_encoding():
    """The hand-made calldata equals eth_abi's encoding of the same call, v of 0/1 and
    mixed-case addresses included; bad values are refused, not wrapped."""
    import os

    from eth_abi import encode as abi_encode

    from chains.evm.batch import BATCH_SETTLE, encode_batch
    from chains.evm.eip712 import to_checksum_address
    from chains.evm.settle import TransferAuthorization, split_signature

    token = "0x" + os.urandom(20).hex().upper()[:-1] + "a"
    items = []
    for i in range(5):
        auth = TransferAuthorization("0x" + os.urandom(20).hex(), "0x" + os.urandom(20).hex(),
                                     2**256 - 1 - i, i, 2**40 + i, os.urandom(32))
        items.append((auth, os.urandom(64) + bytes([i % 2 if i < 2 else 27 + i % 2])))
    rows = [(to_checksum_address(a.from_), to_checksum_address(a.to), a.value, a.valid_after,
             a.valid_before, a.nonce, *split_signature(s)) for a, s in items]
    want = BATCH_SETTLE + abi_encode(
        ["address", "(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)[]"],
        [to_checksum_address(token), rows])
    assert encode_batch(token, items) == want
    assert encode_batch(token, []) == BATCH_SETTLE + abi_encode(
        ["address", "(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)[]"],
        [to_checksum_address(token), []])
    bad = TransferAuthorization(items[0][0].from_, items[0][0].to, 2**256, 0, 1, os.urandom(32))
    with pytest.raises(ValueError):
        encode_batch(token, [(bad, items[0][1])])
    with pytest.raises(ValueError):
        encode_batch(token, [(items[0][0].__class__(*[*items[0][0].__dict__.values()][:5], b"1"),
                              items[0][1])])


async def test_no_more_batches_wait_unmined_than_the_in_flight_window(
        evm_devnet, evm_rpc, sign_authorization):
    """A backlog is not sent as one long train of transactions priced at today's base fee
    (under full blocks the base fee rises 12.5 % a block, and a transaction waiting behind
    too many others ends up under it, stuck): at most `max_in_flight` batches wait
    unmined; the next is priced and sent when one is mined."""
    from tests.gateway.test_x402_settlement import automine_off

    token, settler = evm_devnet.token_address, evm_devnet.settler.address
    signed = [sign_authorization(evm_devnet.payers[i % 3], 7) for i in range(8)]
    batcher = BatchSettler(Settler(evm_rpc, evm_devnet.settler.private_key),
                           evm_devnet.batch_address, max_items=2, receipt_timeout=20,
                           max_in_flight=2)
    with automine_off(evm_devnet):
        mined = await evm_rpc.call("eth_getTransactionCount", [settler, "latest"])
        tasks = [asyncio.ensure_future(batcher.settle(token, a, s)) for a, s in signed]
        waiting = []
        for _ in range(4):
            await asyncio.sleep(0.6)
            pending = await evm_rpc.call("eth_getTransactionCount", [settler, "pending"])
            waiting.append(int(pending, 16) - int(mined, 16))
            evm_devnet.request("evm_mine")
            mined = await evm_rpc.call("eth_getTransactionCount", [settler, "latest"])
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert max(waiting) == 2, waiting
    assert [o.state for o in outcomes] == ["settled"] * 8 and batcher.batches_sent == 4
