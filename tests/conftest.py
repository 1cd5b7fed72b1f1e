"""Session-wide stand-ins for remote systems, started once per test session.

`evm_devnet`: anvil with the test USDC token (chains.evm.devnet.EvmDevnet, automine).
`hedera_devnet`: the local Hedera network (a gRPC consensus node + mirror REST).
`hedera_account(key_type="ED25519", balance=...)`: a fresh funded Hedera account.
`hedera_mirror_faults`: the Hedera devnet, with its fault switches reset after the test.
"""

from __future__ import annotations

import itertools

import pytest

from chains.evm.devnet import EvmDevnet


@pytest.fixture(scope="session")
def evm_devnet():
    with EvmDevnet.start(payers=6) as devnet:
        yield devnet


@pytest.fixture(scope="session")
def hedera_devnet():
    from chains.hedera.devnet import HederaDevnet

    with HederaDevnet() as net:
        yield net


_names = itertools.count(1)


@pytest.fixture
def hedera_account(hedera_devnet):
    from chains.hedera.devnet import HBAR

    def make(key_type: str = "ED25519", balance: int = 100 * HBAR):
        return hedera_devnet.create_account(f"test-{next(_names)}", key_type, balance)

    return make


@pytest.fixture
def hedera_mirror_faults(hedera_devnet):
    yield hedera_devnet
    hedera_devnet.set_mirror_lag(0)
    hedera_devnet.set_mirror_down(False)
    hedera_devnet.set_duplicates_reach_consensus(False)
    hedera_devnet.fail_next_submissions(0)
