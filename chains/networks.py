"""Network ids: CAIP-2 as x402 v2 names them, and the fixed v1 names (no I/O)."""

from __future__ import annotations

import re

from chains.x402_errors import INVALID_NETWORK, X402Error

# v1 network names with a well-known CAIP-2 id (x402 v1 spec / reference SDKs).
V1_NETWORKS: dict[str, str] = {
    "base": "eip155:8453",
    "base-sepolia": "eip155:84532",
    "avalanche": "eip155:43114",
    "avalanche-fuji": "eip155:43113",
    "polygon": "eip155:137",
    "polygon-amoy": "eip155:80002",
    "ethereum": "eip155:1",
    "solana": "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
    "solana-devnet": "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1",
}
_CAIP2_TO_V1 = {v: k for k, v in V1_NETWORKS.items()}
_CAIP2 = re.compile(r"^[-a-z0-9]{3,8}:[-_a-zA-Z0-9]{1,32}$")
_EIP155_REF = re.compile(r"^[1-9][0-9]{0,18}$")


def normalize_network(network: str) -> str:
    """Return the CAIP-2 id for a v1 name or a CAIP-2 id; raise ``invalid_network``.

    Unknown v1 names are rejected; local chains use their CAIP-2 id in v1 too.
    ``eip155`` references must be canonical decimal (no leading zeros).
    """
    if not isinstance(network, str):
        raise X402Error(INVALID_NETWORK, "network must be a string")
    if network in V1_NETWORKS:
        return V1_NETWORKS[network]
    if not _CAIP2.match(network):
        raise X402Error(INVALID_NETWORK, f"unknown network {network[:64]!r}")
    namespace, ref = network.split(":", 1)
    if namespace == "eip155" and not _EIP155_REF.match(ref):
        raise X402Error(INVALID_NETWORK, f"bad eip155 chain id {ref[:32]!r}")
    return network


def v1_network_name(network: str) -> str:
    """The v1 name for a network if it has one, else its CAIP-2 id."""
    caip2 = normalize_network(network)
    return _CAIP2_TO_V1.get(caip2, caip2)


def evm_network(chain_id: int) -> str:
    """CAIP-2 id of an EVM chain."""
    return f"eip155:{int(chain_id)}"


def evm_chain_id(network: str) -> int:
    """Chain id of an ``eip155`` network (v1 name or CAIP-2); raise ``invalid_network``."""
    caip2 = normalize_network(network)
    namespace, ref = caip2.split(":", 1)
    if namespace != "eip155":
        raise X402Error(INVALID_NETWORK, f"{caip2} is not an EVM network")
    return int(ref)
