"""A local Hedera network (one consensus node + mirror REST) for tests and the demo.

Importing this package loads hiero-sdk-python's protobuf stubs (1-2 s): keep it off the
gateway's start-up path unless a devnet is wanted.
"""

from .network import DEFAULT_ACCOUNTS, HBAR, DevAccount, HederaDevnet

__all__ = ["DEFAULT_ACCOUNTS", "HBAR", "DevAccount", "HederaDevnet"]
