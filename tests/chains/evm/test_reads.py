"""Chain reads of payments verified together share one JSON-RPC round trip (a batch of
eth_calls), on real anvil; each payment still gets its own answer: an authorization used
on chain by someone else is refused even when it is read in a batch with valid ones, and
the cache in front never admits a used nonce."""

from __future__ import annotations

import asyncio

import pytest

from chains.evm.reads import CoalescingReader
from chains.evm.rpc import RpcClient, RpcUnavailable
from chains.evm.verify import CachedChainReader, Verified, check_chain_state
from chains.x402 import INSUFFICIENT_FUNDS, NONCE_ALREADY_USED, X402Error


def verified(devnet, auth, sig) -> Verified:
    return Verified(payer=auth.from_, pay_to=auth.to, token=devnet.token_address,
                    network=devnet.network, chain_id=devnet.chain_id, value=auth.value,
                    valid_after=auth.valid_after, valid_before=auth.valid_before,
                    nonce=auth.nonce, signature=sig)


async def outcomes(reader, payments: list[Verified]) -> list[str]:
    async def one(v: Verified) -> str:
        try:
            await check_chain_state(v, reader)
        except X402Error as exc:
            return exc.reason
        return "ok"
    return await asyncio.gather(*(one(v) for v in payments))


async def test_a_nonce_used_elsewhere_is_refused_in_a_batch_with_valid_ones(
        evm_devnet, evm_rpc, evm_settler, sign_authorization):
    payers = evm_devnet.payers
    signed = [sign_authorization(payers[i % 3]) for i in range(6)]
    used_auth, used_sig = signed[3]
    # Someone else settles the fourth authorization before the gateway sees it.
    assert (await evm_settler.settle(evm_devnet.token_address, used_auth, used_sig,
                                     timeout=10)).settled
    poor = sign_authorization(evm_devnet.poor, value=10**30)
    payments = [verified(evm_devnet, a, s) for a, s in signed] + [verified(evm_devnet, *poor)]
    reads = CoalescingReader(evm_rpc)
    reader = CachedChainReader(reads, ttl_seconds=0)
    got = await outcomes(reader, payments)
    assert got == ["ok", "ok", "ok", NONCE_ALREADY_USED, "ok", "ok", INSUFFICIENT_FUNDS]
    assert reads.round_trips == 1 and reads.reads == 2 * len(payments)  # one batch, every read
    # Read again (cached as used now, or asked again): still refused, the others still pass.
    got = await outcomes(reader, payments)
    assert got == ["ok", "ok", "ok", NONCE_ALREADY_USED, "ok", "ok", INSUFFICIENT_FUNDS]
    assert reads.round_trips == 2 and reads.reads == 4 * len(payments) - 1  # the used one: cached


async def test_a_nonce_used_between_two_batches_is_refused_in_the_second(
        evm_devnet, evm_rpc, evm_settler, sign_authorization):
    """`unused` is never cached: the next read of the same authorization asks the chain."""
    auth, sig = sign_authorization(evm_devnet.payers[0])
    other = sign_authorization(evm_devnet.payers[1])
    payments = [verified(evm_devnet, auth, sig), verified(evm_devnet, *other)]
    reader = CachedChainReader(CoalescingReader(evm_rpc), ttl_seconds=60)
    assert await outcomes(reader, payments) == ["ok", "ok"]
    assert (await evm_settler.settle(evm_devnet.token_address, auth, sig, timeout=10)).settled
    assert await outcomes(reader, payments) == [NONCE_ALREADY_USED, "ok"]


async def test_one_reverting_read_fails_alone_and_a_dead_node_fails_all(
        evm_devnet, evm_rpc, sign_authorization):
    auth, sig = sign_authorization(evm_devnet.payers[0])
    good = verified(evm_devnet, auth, sig)
    # A "token" that is not a contract answers empty data: that read fails, not the batch.
    bad = verified(evm_devnet, *sign_authorization(evm_devnet.payers[1]))
    bad = Verified(**{**bad.__dict__, "token": evm_devnet.merchant.address})
    reads = CoalescingReader(evm_rpc)
    results = await asyncio.gather(check_chain_state(good, reads), check_chain_state(bad, reads),
                                   return_exceptions=True)
    assert results[0] is None and isinstance(results[1], Exception)
    assert not isinstance(results[1], X402Error)  # never taken for a valid or used payment
    assert reads.round_trips == 1
    async with RpcClient("http://127.0.0.1:9") as down:  # discard port: closed
        dead = CoalescingReader(down)
        results = await asyncio.gather(check_chain_state(good, dead),
                                       check_chain_state(good, dead), return_exceptions=True)
    assert all(isinstance(r, RpcUnavailable) for r in results)


@pytest.mark.parametrize("size", [1, 3])
async def test_batches_are_split_at_their_limit(evm_devnet, evm_rpc, sign_authorization, size):
    payments = [verified(evm_devnet, *sign_authorization(evm_devnet.payers[i])) for i in range(5)]
    reads = CoalescingReader(evm_rpc, max_batch=size)
    assert await outcomes(reads, payments) == ["ok"] * 5
    assert reads.reads == 10 and reads.round_trips == -(-10 // size)
