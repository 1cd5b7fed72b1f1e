"""Build the rails the config asks for. Each rail's module is imported only when a
paygate uses it, so a gateway without Hedera never imports the Hedera SDK."""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

from gateway.config import ConfigError
from gateway.rails.base import Rail

if TYPE_CHECKING:
    from gateway.state import Gateway


async def build_rails(gw: "Gateway") -> dict[str, Rail]:
    """Start every rail the paygates use, into `gw.rails` as each is ready (so that if
    one fails, the ones already running are there to be closed)."""
    wanted = {name for pg in gw.config.paygates for name in pg.rails}
    # Always: it needs no chain or SDK, paygates made through the admin API may sell
    # plans at any time, and its sweep returns charges of calls that died.
    wanted.add("prepaid-token")
    for name in sorted(wanted):
        factory = _FACTORIES.get(name)
        if factory is None:
            raise ConfigError(f"rail {name!r} is not available in this build")
        gw.rails[name] = await factory(gw)
    return gw.rails


async def _x402_evm(gw: "Gateway") -> Rail:
    from chains.payments import PaymentStore
    from gateway.rails.x402 import X402Rail

    evm = await evm_chains(gw)
    rail = X402Rail(evm, PaymentStore(gw.engine, gw.clock), gw.clock,
                    shutdown_grace=gw.config.server.shutdown_grace_seconds,
                    replay_retention=gw.config.replay.retention_seconds,
                    replay_max_bytes=gw.config.replay.max_bytes,
                    lease_seconds=gw.config.server.settlement_lease_seconds)
    rail.start(gw.config.server.settlement_interval_seconds)
    return rail


async def _x402_hedera(gw: "Gateway") -> Rail:
    from chains.payments import PaymentStore
    from gateway.rails.hedera import HederaExact
    from gateway.rails.x402 import X402Rail

    link = await hedera_link(gw)
    rail = X402Rail(HederaExact(gw.config, link, gw.clock), PaymentStore(gw.engine, gw.clock),
                    gw.clock, shutdown_grace=gw.config.server.shutdown_grace_seconds,
                    replay_retention=gw.config.replay.retention_seconds,
                    replay_max_bytes=gw.config.replay.max_bytes,
                    lease_seconds=gw.config.server.settlement_lease_seconds)
    rail.start(gw.config.server.settlement_interval_seconds)
    return rail


async def evm_chains(gw: "Gateway"):
    """The EVM networks (shared by the x402 rail and the facilitator API), built once."""
    if gw.evm is None and gw.config.evm:
        from gateway.rails.evm import EvmChains

        gw.evm = EvmChains(gw.config)
        await gw.evm.check()
    return gw.evm


async def hedera_link(gw: "Gateway"):
    """The gateway's Hedera account and mirror client (shared by the Hedera rails and the
    session API), built once. Imports the Hedera SDK: only called when a rail needs it."""
    if gw.hedera is None:
        import os

        from chains.hedera.mirror import MirrorClient
        from chains.hedera.network import HederaNetwork

        cfg = gw.config.hedera
        assert cfg is not None  # config validation requires [hedera] for these rails
        key = os.environ.get(cfg.private_key_env)
        if not key:
            raise ConfigError(f"hedera.private_key_env: environment variable "
                              f"{cfg.private_key_env} is not set")
        try:
            network = HederaNetwork(network=cfg.network, nodes=cfg.nodes,
                                    account_id=cfg.account_id, private_key=key)
        except ValueError as exc:
            raise ConfigError(f"hedera.private_key_env: {exc}") from None
        gw.hedera = HederaLink(network, MirrorClient(cfg.mirror_url))
    return gw.hedera


class HederaLink:
    def __init__(self, network, mirror) -> None:
        self.network = network
        self.mirror = mirror

    async def aclose(self) -> None:
        await self.mirror.aclose()


async def _hedera_session(gw: "Gateway") -> Rail:
    from gateway.rails.session import SessionRail

    rail = SessionRail(gw, await hedera_link(gw))
    rail.start()
    return rail


async def _prepaid_token(gw: "Gateway") -> Rail:
    from gateway.rails.token import TokenRail

    rail = TokenRail(gw)
    rail.start()  # reverses charges left pending by calls that died
    return rail


_FACTORIES: dict[str, Callable[["Gateway"], Awaitable[Rail]]] = {
    "x402-evm": _x402_evm,
    "x402-hedera": _x402_hedera,
    "hedera-session": _hedera_session,
    "prepaid-token": _prepaid_token,
}
