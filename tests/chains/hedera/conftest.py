"""Fixtures for the Hedera rail: one local network per test session.

* ``hedera_devnet`` (session): a running :class:`chains.hedera.devnet.HederaDevnet`.
  Shared by every test: tests that change accounts should use ``hedera_account``.
* ``hedera_account`` (function): factory ``hedera_account(key_type="ED25519",
  balance=...)`` -> a fresh funded ``DevAccount`` with a unique name.
* ``hedera_mirror_faults`` (function): the devnet, with mirror lag/down and consensus
  fault switches reset after the test.
"""

from __future__ import annotations

import itertools

import pytest


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
