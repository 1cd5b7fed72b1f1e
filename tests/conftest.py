"""Session-wide stand-ins for remote systems: one anvil chain with the test USDC token.

`evm_devnet`: a started chains.evm.devnet.EvmDevnet (automine) shared by the session.
"""

from __future__ import annotations

import pytest

from chains.evm.devnet import EvmDevnet


@pytest.fixture(scope="session")
def evm_devnet():
    with EvmDevnet.start(payers=6) as devnet:
        yield devnet
