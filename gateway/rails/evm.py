"""x402 `exact` on EVM chains: requirements from the config, local verification against
cached chain state, settlement through the gateway's own key or a facilitator.

One `EvmNetwork` per configured `[evm."eip155:N"]` section holds that chain's JSON-RPC
client, its cached reader and its settlement path; the x402 rail and the facilitator API
share them.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Awaitable, Callable

from chains.evm.batch import BatchSettler
from chains.evm.codec import parse_exact_evm_payload
from chains.evm.reads import CoalescingReader
from chains.evm.rpc import RpcClient, RpcUnavailable
from chains.evm.settle import Settler, TransferAuthorization
from chains.evm.usage import used_outcome
from chains.evm.verify import CachedChainReader, check_chain_state, verify_payment
from chains.facilitator import FacilitatorClient, FacilitatorUnavailable
from chains.payments import SettleOutcome
from chains.x402 import PaymentPayload, PaymentRequirements, X402Error, evm_chain_id
from gateway.config import Config, ConfigError, Eip3009Asset, EvmNetworkConfig, price_atomic
from gateway.errors import Unavailable
from gateway.rails.base import Priced
from gateway.rails.x402 import VerifiedPayment

log = logging.getLogger("tollgate.evm")

MAX_TIMEOUT_SECONDS = 60


class EvmNetwork:
    def __init__(self, network: str, cfg: EvmNetworkConfig) -> None:
        self.network = network
        self.chain_id = evm_chain_id(network)
        self.cfg = cfg
        self.rpc = RpcClient(cfg.rpc_url)
        # Payments verified in the same loop pass share one JSON-RPC round trip for their
        # reads; the cache in front keeps only what can never admit a used nonce.
        self.reads = CoalescingReader(self.rpc)
        self.reader = CachedChainReader(self.reads, ttl_seconds=cfg.rpc_cache_seconds)
        self.settler: Settler | None = None
        self.batcher: BatchSettler | None = None  # with `batch_contract`
        self.facilitator: FacilitatorClient | None = None
        if cfg.facilitator_url:
            api_key = None
            if cfg.facilitator_api_key_env:
                api_key = os.environ.get(cfg.facilitator_api_key_env)
                if not api_key:
                    raise ConfigError(f"evm.{network}.facilitator_api_key_env: environment "
                                      f"variable {cfg.facilitator_api_key_env} is not set")
            self.facilitator = FacilitatorClient(cfg.facilitator_url, api_key=api_key)
        elif cfg.settler_key_env:
            key = os.environ.get(cfg.settler_key_env)
            if not key:
                raise ConfigError(f"evm.{network}.settler_key_env: environment variable "
                                  f"{cfg.settler_key_env} is not set")
            try:
                self.settler = Settler(self.rpc, key)
            except ValueError:
                raise ConfigError(f"evm.{network}.settler_key_env: {cfg.settler_key_env} is not "
                                  "a valid private key") from None
            if cfg.batch_contract:
                self.batcher = BatchSettler(self.settler, cfg.batch_contract,
                                            max_items=cfg.batch_max_items,
                                            linger=cfg.batch_linger_seconds,
                                            receipt_timeout=cfg.receipt_timeout_seconds)

    async def aclose(self) -> None:
        await self.rpc.aclose()
        if self.facilitator:
            await self.facilitator.aclose()


class EvmChains:
    """All configured EVM networks."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.networks = {net: EvmNetwork(net, cfg) for net, cfg in config.evm.items()}
        # (id(paygate), units) -> (paygate, requirements): see `requirements`.
        self._offers: dict[tuple[int, int], tuple[Any, tuple[PaymentRequirements, ...]]] = {}

    async def check(self) -> None:
        """Warn (not fail) when a node is down at start-up; refuse a wrong chain id."""
        for net in self.networks.values():
            try:
                actual = await net.rpc.chain_id()
            except RpcUnavailable as exc:
                log.warning("EVM node for %s is unreachable at start-up: %s", net.network, exc)
                continue
            if actual != net.chain_id:
                raise ConfigError(f"evm.{net.network}.rpc_url: the node reports chain id {actual}")

    async def aclose(self) -> None:
        for net in self.networks.values():
            await net.aclose()

    def network(self, network: str) -> EvmNetwork:
        net = self.networks.get(network)
        if net is None:
            raise X402Error("invalid_network", f"network {network} is not configured")
        return net

    # -- the scheme interface used by the x402 rail --------------------------------------

    rail_name = "x402-evm"

    def requirements(self, priced: Priced) -> list[PaymentRequirements]:
        """The offer for this paygate and unit count. Built once per (paygate, units): the
        paygate config and the requirement models are frozen, and a paygate changed at
        run time is a new object (its old entry is never returned for it)."""
        pg = priced.paygate
        key = (id(pg), priced.units)
        hit = self._offers.get(key)
        if hit is not None and hit[0] is pg:
            return list(hit[1])
        out = self._requirements(priced)
        if len(self._offers) >= 1024:
            self._offers.clear()
        self._offers[key] = (pg, tuple(out))
        return out

    def _requirements(self, priced: Priced) -> list[PaymentRequirements]:
        pg = priced.paygate
        out = []
        for asset_id in pg.prices:
            asset = self.config.assets[asset_id]
            if not isinstance(asset, Eip3009Asset):
                continue
            amount = price_atomic(self.config, pg, asset_id) * priced.units
            # Deferred payments settle later: ask for a validity that leaves room for a
            # crash, a takeover and a retry before the authorization expires.
            timeout = (self.network(asset.network).cfg.deferred_max_timeout_seconds
                       if pg.settlement == "deferred" else MAX_TIMEOUT_SECONDS)
            out.append(PaymentRequirements.model_validate({
                "scheme": "exact", "network": asset.network, "amount": str(amount),
                "asset": asset.address, "payTo": pg.pay_to["evm"],
                "maxTimeoutSeconds": timeout,
                "extra": {"name": asset.eip712_name, "version": asset.eip712_version}}))
        return out

    def verify(self, payment: PaymentPayload, req: PaymentRequirements, now: float) -> VerifiedPayment:
        net = self.network(req.network)
        v = verify_payment(payment, req, net.chain_id, int(now))
        return VerifiedPayment(
            payer=v.payer, pay_to=v.pay_to, asset=v.token, network=v.network, amount=v.value,
            claim_key=f"{v.network}|{v.token.lower()}|{v.payer.lower()}|0x{v.nonce.hex()}",
            detail=v, valid_before=float(v.valid_before))

    async def check_chain(self, vp: VerifiedPayment) -> None:
        try:
            await check_chain_state(vp.detail, self.network(vp.network).reader)
        except RpcUnavailable as exc:
            raise Unavailable(f"chain RPC for {vp.network} is unavailable",
                              code="chain_unavailable") from exc

    async def settle(self, stored: dict[str, Any],
                     on_submitted: Callable[..., Awaitable[None]]) -> SettleOutcome:
        """Settle a stored payment (`{"payment": <payload dict>, "requirement": <req>}`).

        `on_submitted(tx_hash, raw)` persists each signed transaction before it is sent."""
        net, req, token, auth, sig = self._from_stored(stored)
        if net.facilitator is not None:
            try:
                resp = await net.facilitator.settle(stored["payment"], req,
                                                    stored["payment"].get("x402Version", 2))
            except FacilitatorUnavailable as exc:
                return SettleOutcome("unknown", None, "settlement_pending", str(exc))
            if resp.success:
                return SettleOutcome("settled", resp.transaction or None)
            if resp.error_reason == "settlement_pending":  # sent, not mined yet: not failed
                return SettleOutcome("unknown", resp.transaction or None, "settlement_pending")
            return SettleOutcome("failed", resp.transaction or None,
                                 resp.error_reason or "unexpected_settle_error")
        assert net.settler is not None
        try:
            if net.batcher is not None:  # with the settlements of whoever else is settling now
                outcome = await net.batcher.settle(token, auth, sig, persist=on_submitted,
                                                   timeout=net.cfg.receipt_timeout_seconds)
            else:
                outcome = await net.settler.settle(token, auth, sig, persist=on_submitted,
                                                   timeout=net.cfg.receipt_timeout_seconds)
        except RpcUnavailable as exc:  # nothing was sent
            return SettleOutcome("unknown", None, "settlement_pending", str(exc))
        net.reader.forget_balance(token, auth.from_)
        return outcome

    async def reconcile(self, stored: dict[str, Any], tx_hash: str | None,
                        raw_tx: bytes | None = None) -> SettleOutcome:
        """Resolve a settlement from the chain; `raw_tx` (persisted signed bytes) is sent
        again if it never reached the pool."""
        net, _req, token, auth, _sig = self._from_stored(stored)
        if net.settler is not None:
            return await net.settler.reconcile(token, auth, tx_hash, raw_tx)
        try:
            if await net.rpc.authorization_state(token, auth.from_, auth.nonce):
                # Used: by the facilitator for this payment, or cancelled by the payer.
                return await used_outcome(net.rpc, token, auth, tx_hash)
            # The facilitator's transaction, still pending (no receipt yet): wait for it
            # rather than have the authorization settled again.
            if tx_hash and await net.rpc.get_transaction_receipt(tx_hash) is None \
                    and await net.rpc.get_transaction_by_hash(tx_hash) is not None:
                return SettleOutcome("unknown", tx_hash, "settlement_pending",
                                     "transaction is pending")
        except RpcUnavailable as exc:
            return SettleOutcome("unknown", tx_hash, "settlement_pending", str(exc))
        return SettleOutcome("failed", tx_hash, "invalid_transaction_state")

    def exposure_limit(self, network: str) -> int | None:
        """Most unsettled value one payer may have under deferred settlement (atomic
        units); None lets the rail use its default of ten prices."""
        return self.network(network).cfg.deferred_exposure_limit or None

    def still_valid(self, stored: dict[str, Any], now: float) -> bool:
        """Could this authorization still be settled (a retry after a dropped attempt)?"""
        _net, _req, _token, auth, _sig = self._from_stored(stored)
        return auth.valid_before > now + 6

    def _from_stored(self, stored: dict[str, Any]):
        req = PaymentRequirements.model_validate(stored["requirement"])
        net = self.network(req.network)
        p = parse_exact_evm_payload(stored["payment"]["payload"])
        a = p.authorization
        auth = TransferAuthorization(a.from_, a.to, a.value, a.valid_after, a.valid_before, a.nonce)
        return net, req, req.asset, auth, p.signature
