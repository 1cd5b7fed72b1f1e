"""Settler against real anvil + the real TestUSDC: settle, refuse, recover, reconcile."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from chains.evm.rpc import RpcClient, RpcUnavailable
from chains.evm.settle import SettleOutcome, Settler

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


async def test_settle_moves_the_money(evm_devnet, evm_rpc, evm_settler, sign_authorization):
    token, payer, merchant = evm_devnet.token_address, evm_devnet.payers[0], evm_devnet.merchant
    auth, sig = sign_authorization(payer, 1_500)
    before_payer = await evm_rpc.balance_of(token, payer.address)
    before_merchant = await evm_rpc.balance_of(token, merchant.address)
    assert await evm_rpc.authorization_state(token, payer.address, auth.nonce) is False

    submitted = []

    async def remember(tx_hash):
        submitted.append(tx_hash)

    outcome = await evm_settler.settle(token, auth, sig, timeout=10, on_submitted=remember)

    assert outcome.state == "settled", outcome
    assert outcome.settled and outcome.reason is None
    assert submitted == [outcome.tx_hash] and outcome.tx_hash.startswith("0x") and len(outcome.tx_hash) == 66
    assert outcome.block_number > evm_devnet.ready_block and outcome.gas_used > 21_000
    assert await evm_rpc.balance_of(token, payer.address) == before_payer - 1_500
    assert await evm_rpc.balance_of(token, merchant.address) == before_merchant + 1_500
    assert await evm_rpc.authorization_state(token, payer.address, auth.nonce) is True


async def test_same_authorization_twice_settles_once(evm_devnet, evm_rpc, evm_settler, sign_authorization):
    """Settling an authorization that is already used for this very payment is not a second
    payment and not a failure: it is the first settlement, found from its AuthorizationUsed log."""
    token, payer = evm_devnet.token_address, evm_devnet.payers[0]
    auth, sig = sign_authorization(payer, 10)
    first = await evm_settler.settle(token, auth, sig, timeout=10)
    assert first.state == "settled"
    before = await evm_rpc.balance_of(token, payer.address)

    # Simulated first (default): rejected before sending, no tx; the log names the first.
    again = await evm_settler.settle(token, auth, sig, timeout=10)
    assert (again.state, again.tx_hash) == ("settled", first.tx_hash)

    # Sent anyway: the token itself reverts (reason recovered from the chain), and the
    # payment is still the first transaction's.
    on_chain = await evm_settler.settle(token, auth, sig, timeout=10, simulate=False)
    assert (on_chain.state, on_chain.tx_hash) == ("settled", first.tx_hash)
    latest = int((await evm_rpc.get_block("latest"))["number"], 16)
    reverted = await evm_rpc.call("eth_getBlockByNumber", [hex(latest), False])
    receipt = await evm_settler.wait_receipt(reverted["transactions"][0], timeout=5)
    assert receipt.status == "reverted"
    assert await evm_rpc.balance_of(token, payer.address) == before


@pytest.mark.parametrize("simulate", [True, False])
async def test_expired_authorization_fails(evm_devnet, evm_rpc, evm_settler, sign_authorization, simulate):
    latest = int((await evm_rpc.get_block("latest"))["timestamp"], 16)
    auth, sig = sign_authorization(evm_devnet.payers[1], 10, valid_before=latest)  # bound is exclusive
    outcome = await evm_settler.settle(evm_devnet.token_address, auth, sig, timeout=10, simulate=simulate)
    assert outcome.state == "failed"
    assert outcome.reason == "invalid_exact_evm_payload_authorization_valid_before"
    assert (outcome.tx_hash is not None) is (not simulate)


async def test_not_yet_valid_authorization_fails(evm_devnet, evm_rpc, evm_settler, sign_authorization):
    latest = int((await evm_rpc.get_block("latest"))["timestamp"], 16)
    auth, sig = sign_authorization(evm_devnet.payers[1], 10, valid_after=latest + 3600, valid_before=latest + 7200)
    outcome = await evm_settler.settle(evm_devnet.token_address, auth, sig, timeout=10)
    assert (outcome.state, outcome.reason) == ("failed", "invalid_exact_evm_payload_authorization_valid_after")


async def test_high_s_twin_is_rejected_and_low_s_original_still_settles(
    evm_devnet, evm_rpc, evm_settler, sign_authorization
):
    token, payer = evm_devnet.token_address, evm_devnet.payers[1]
    auth, sig = sign_authorization(payer, 10)
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    # (r, n - s, flipped v) recovers the same signer: the malleable twin the token must refuse.
    twin = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])

    for simulate in (True, False):
        outcome = await evm_settler.settle(token, auth, twin, timeout=10, simulate=simulate)
        assert outcome.state == "failed"
        assert outcome.reason == "invalid_exact_evm_payload_signature"
        assert outcome.detail == "ECRecover: invalid signature 's' value"
    assert await evm_rpc.authorization_state(token, payer.address, auth.nonce) is False
    assert (await evm_settler.settle(token, auth, sig, timeout=10)).state == "settled"


async def test_bad_v_and_wrong_signer_are_rejected(evm_devnet, evm_settler, sign_authorization):
    token = evm_devnet.token_address
    auth, sig = sign_authorization(evm_devnet.payers[2], 10)
    bad_v = await evm_settler.settle(token, auth, sig[:64] + bytes([29]), timeout=10)
    assert (bad_v.reason, bad_v.detail) == ("invalid_exact_evm_payload_signature",
                                            "ECRecover: invalid signature 'v' value")

    _, other_sig = sign_authorization(evm_devnet.payers[1], 10, nonce=auth.nonce)  # someone else signs
    wrong = await evm_settler.settle(token, auth, other_sig, timeout=10)
    assert (wrong.reason, wrong.detail) == ("invalid_exact_evm_payload_signature", "FiatTokenV2: invalid signature")


async def test_payer_without_usdc_fails_insufficient_funds(evm_devnet, evm_settler, sign_authorization):
    auth, sig = sign_authorization(evm_devnet.poor, 1)
    outcome = await evm_settler.settle(evm_devnet.token_address, auth, sig, timeout=10)
    assert (outcome.state, outcome.reason) == ("failed", "insufficient_funds")


async def test_twenty_concurrent_settlements_from_one_key_all_mine(
    evm_devnet, evm_rpc, evm_settler, sign_authorization
):
    token, merchant = evm_devnet.token_address, evm_devnet.merchant.address
    signed = [sign_authorization(evm_devnet.payers[i % 3], 100 + i) for i in range(20)]
    before = await evm_rpc.balance_of(token, merchant)

    outcomes = await asyncio.gather(*(evm_settler.settle(token, a, s, timeout=20) for a, s in signed))

    assert [o.state for o in outcomes] == ["settled"] * 20
    assert len({o.tx_hash for o in outcomes}) == 20
    assert await evm_rpc.balance_of(token, merchant) == before + sum(100 + i for i in range(20))
    # No transaction left behind in the pool: pending and mined nonces agree.
    address = evm_settler.address
    assert await evm_rpc.get_transaction_count(address, "pending") == await evm_rpc.get_transaction_count(
        address, "latest"
    )


async def test_nonce_used_behind_the_settlers_back_is_resynced(evm_devnet, evm_rpc, evm_settler, sign_authorization):
    token, settler = evm_devnet.token_address, evm_devnet.settler.address
    auth, sig = sign_authorization(evm_devnet.payers[0], 1)
    assert (await evm_settler.settle(token, auth, sig, timeout=10)).state == "settled"  # nonce now cached
    # Another process spends the settler's next nonce (anvil's dev accounts are unlocked).
    tx_hash = await evm_rpc.call("eth_sendTransaction", [{"from": settler, "to": settler, "value": "0x1"}])
    assert await evm_settler.wait_receipt(tx_hash, timeout=10) is not None

    auth, sig = sign_authorization(evm_devnet.payers[0], 1)
    assert (await evm_settler.settle(token, auth, sig, timeout=10)).state == "settled"


async def test_receipt_timeout_is_unknown_then_reconcile_resolves_it(
    evm_devnet, evm_rpc, evm_settler, sign_authorization
):
    token, payer = evm_devnet.token_address, evm_devnet.payers[2]
    auth, sig = sign_authorization(payer, 7)
    await evm_rpc.call("evm_setAutomine", [False])
    try:
        tx_hash = await evm_settler.submit(token, auth, sig)
        outcome = await evm_settler.await_outcome(tx_hash, timeout=0.2)
        assert outcome == SettleOutcome("unknown", tx_hash, "settlement_pending", "not mined within 0.2s")

        pending = await evm_settler.reconcile(token, auth, tx_hash)
        assert (pending.state, pending.tx_hash) == ("unknown", tx_hash)
        # Without the hash, chain state alone says: not settled (yet).
        assert (await evm_settler.reconcile(token, auth)).state == "failed"

        await evm_rpc.call("evm_mine")
    finally:
        await evm_rpc.call("evm_setAutomine", [True])

    # A fresh Settler (as after a restart): the hash alone resolves the outcome.
    restarted = Settler(evm_rpc, evm_devnet.settler.private_key)
    resolved = await restarted.reconcile(token, auth, tx_hash)
    assert (resolved.state, resolved.tx_hash) == ("settled", tx_hash)
    assert resolved.block_number is not None
    # And without the hash, authorizationState says settled; the log gives the hash back.
    by_state = await restarted.reconcile(token, auth)
    assert (by_state.state, by_state.tx_hash) == ("settled", tx_hash)


async def test_reconcile_of_a_dropped_transaction_is_failed(evm_devnet, evm_settler, sign_authorization):
    unknown_hash = "0x" + os.urandom(32).hex()
    auth, _sig = sign_authorization(evm_devnet.payers[0], 1)
    outcome = await evm_settler.reconcile(evm_devnet.token_address, auth, unknown_hash)
    assert (outcome.state, outcome.tx_hash) == ("failed", unknown_hash)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nobody listens


async def test_node_down_raises_unavailable_and_reconcile_stays_unknown(evm_devnet, sign_authorization):
    auth, sig = sign_authorization(evm_devnet.payers[0], 1)
    async with RpcClient(f"http://127.0.0.1:{_closed_port()}", timeout=2) as rpc:
        with pytest.raises(RpcUnavailable):
            await rpc.block_number()
        settler = Settler(rpc, evm_devnet.settler.private_key)
        with pytest.raises(RpcUnavailable):
            await settler.settle(evm_devnet.token_address, auth, sig, timeout=1)
        outcome = await settler.reconcile(evm_devnet.token_address, auth, "0x" + "ab" * 32)
        assert (outcome.state, outcome.tx_hash) == ("unknown", "0x" + "ab" * 32)
        assert await settler.wait_receipt("0x" + "ab" * 32, timeout=0.1) is None


# -- issue 7: persist before broadcast, cancellations, nonce races ------------------------


def _cancel_authorization(devnet, payer, nonce: bytes) -> str:
    """The payer cancels its own authorization on chain (EIP-3009 cancelAuthorization)."""
    from eth_abi import encode
    from eth_account import Account

    from chains.evm.rpc import selector
    from tests.chains.evm.conftest import token_domain

    types = {"CancelAuthorization": [{"name": "authorizer", "type": "address"},
                                     {"name": "nonce", "type": "bytes32"}]}
    signed = Account.sign_typed_data(payer.private_key, token_domain(devnet), types,
                                     {"authorizer": payer.address, "nonce": nonce})
    sig = bytes(signed.signature)
    data = selector("cancelAuthorization(address,bytes32,uint8,bytes32,bytes32)") + encode(
        ["address", "bytes32", "uint8", "bytes32", "bytes32"],
        [payer.address, nonce, sig[64], sig[:32], sig[32:64]])
    tx_hash = devnet.request("eth_sendTransaction", [{"from": payer.address, "to": devnet.token_address,
                                                      "data": "0x" + data.hex()}])
    for _ in range(500):  # mined at once with automine; bounded wait, not a criterion
        receipt = devnet.request("eth_getTransactionReceipt", [tx_hash])
        if receipt:
            assert int(receipt["status"], 16) == 1, receipt
            return tx_hash
        time.sleep(0.01)
    raise AssertionError(f"cancelAuthorization {tx_hash} was not mined")


async def test_cancelled_authorization_is_failed_not_settled(evm_devnet, evm_rpc, evm_settler,
                                                             sign_authorization):
    token, payer = evm_devnet.token_address, evm_devnet.payers[3]
    auth, sig = sign_authorization(payer, 5)
    before = await evm_rpc.balance_of(token, payer.address)
    _cancel_authorization(evm_devnet, payer, auth.nonce)
    assert await evm_rpc.authorization_state(token, payer.address, auth.nonce) is True

    # authorizationState alone would say "used": it is not a settlement.
    outcome = await evm_settler.reconcile(token, auth)
    assert (outcome.state, outcome.reason) == ("failed", "invalid_exact_evm_nonce_already_used")
    assert "cancel" in outcome.detail
    again = await evm_settler.settle(token, auth, sig, timeout=10)
    assert (again.state, again.reason) == ("failed", "invalid_exact_evm_nonce_already_used")
    assert await evm_rpc.balance_of(token, payer.address) == before


async def test_nonce_used_by_another_transfer_of_the_payer_is_not_a_settlement(
    evm_devnet, evm_rpc, evm_settler, sign_authorization
):
    """The payer signs a second transfer with the same nonce (to itself) and gets it mined:
    the nonce is used and AuthorizationUsed was emitted, but not for the merchant's money."""
    token, payer, merchant = evm_devnet.token_address, evm_devnet.payers[3], evm_devnet.merchant
    auth, sig = sign_authorization(payer, 9)
    own, own_sig = sign_authorization(payer, 9, to=payer.address, nonce=auth.nonce)
    before = await evm_rpc.balance_of(token, merchant.address)
    assert (await evm_settler.settle(token, own, own_sig, timeout=10)).state == "settled"

    outcome = await evm_settler.reconcile(token, auth)
    assert (outcome.state, outcome.reason) == ("failed", "invalid_exact_evm_nonce_already_used")
    assert (await evm_settler.settle(token, auth, sig, timeout=10)).state == "failed"
    assert await evm_rpc.balance_of(token, merchant.address) == before


async def test_crash_after_persisting_resends_the_same_bytes(evm_devnet, evm_rpc, sign_authorization):
    """The signed transaction is handed to `persist` before it is sent. A process that dies
    right after persisting leaves bytes that recovery sends as they are: same hash."""
    token, payer = evm_devnet.token_address, evm_devnet.payers[4]
    auth, sig = sign_authorization(payer, 11)
    persisted = {}

    class Crash(Exception):
        pass

    async def persist_then_die(tx_hash: str, raw: bytes) -> None:
        persisted.update(tx_hash=tx_hash, raw=raw)
        raise Crash

    dying = Settler(evm_rpc, evm_devnet.settler.private_key)
    with pytest.raises(Crash):
        await dying.submit(token, auth, sig, persist=persist_then_die)
    assert await evm_rpc.get_transaction_by_hash(persisted["tx_hash"]) is None  # never sent

    restarted = Settler(evm_rpc, evm_devnet.settler.private_key)
    resent = await restarted.reconcile(token, auth, persisted["tx_hash"], persisted["raw"])
    assert (resent.state, resent.tx_hash) == ("unknown", persisted["tx_hash"])
    receipt = await restarted.wait_receipt(persisted["tx_hash"], timeout=10)
    assert receipt is not None and receipt.success
    done = await restarted.reconcile(token, auth, persisted["tx_hash"], persisted["raw"])
    assert (done.state, done.tx_hash) == ("settled", persisted["tx_hash"])


async def test_persisted_tx_whose_account_nonce_was_taken_is_dead(evm_devnet, evm_rpc, sign_authorization):
    """Persisted bytes carry a fixed account nonce; once another transaction used it they
    can never be mined: recovery says `failed` (a dead attempt, the authorization unused),
    so the caller builds, persists and sends a new one while it is still valid."""
    token, payer, settler = evm_devnet.token_address, evm_devnet.payers[4], evm_devnet.settler
    auth, sig = sign_authorization(payer, 12)
    persisted = {}

    async def persist_then_die(tx_hash: str, raw: bytes) -> None:
        persisted.update(tx_hash=tx_hash, raw=raw)
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await Settler(evm_rpc, settler.private_key).submit(token, auth, sig, persist=persist_then_die)
    other = await evm_rpc.call("eth_sendTransaction", [{"from": settler.address, "to": settler.address,
                                                        "value": "0x1"}])
    fresh = Settler(evm_rpc, settler.private_key)
    assert await fresh.wait_receipt(other, timeout=10) is not None

    dead = await fresh.reconcile(token, auth, persisted["tx_hash"], persisted["raw"])
    assert dead.state == "failed" and dead.reason == "settlement_pending"
    assert await evm_rpc.authorization_state(token, payer.address, auth.nonce) is False
    assert (await fresh.settle(token, auth, sig, timeout=10)).state == "settled"


async def test_two_settlers_on_one_key_settle_concurrently_none_failed(
    evm_devnet, evm_rpc, sign_authorization
):
    """Two gateway instances share one settler key: their nonce conflicts are retried,
    never reported as failed settlements."""
    token, merchant = evm_devnet.token_address, evm_devnet.merchant.address
    a = Settler(evm_rpc, evm_devnet.settler.private_key)
    b = Settler(evm_rpc, evm_devnet.settler.private_key)
    signed = [sign_authorization(evm_devnet.payers[i % 3], 200 + i) for i in range(24)]
    before = await evm_rpc.balance_of(token, merchant)

    outcomes = await asyncio.gather(*((a if i % 2 else b).settle(token, auth, sig, timeout=20)
                                      for i, (auth, sig) in enumerate(signed)))

    assert not [o for o in outcomes if o.state == "failed"], outcomes
    # What was not settled in the first go is only in doubt; reconciling finishes it.
    final = []
    for (auth, sig), o in zip(signed, outcomes):
        while o.state == "unknown":
            o = await a.reconcile(token, auth, o.tx_hash)
            if o.state == "failed":  # a dead attempt: settle again, as the worker does
                o = await a.settle(token, auth, sig, timeout=20)
        final.append(o.state)
    assert final == ["settled"] * 24
    assert await evm_rpc.balance_of(token, merchant) == before + sum(200 + i for i in range(24))
