"""Verification of EVM ``exact`` (EIP-3009) payments.

:func:`verify_exact_evm` is pure (clock passed in) and does every check that
needs no chain: requirement/claim consistency, recipient, amount, time window
and signature recovery. :func:`check_chain_state` then asks an injected
:class:`ChainReader` whether the nonce is unused and the payer can pay. Every
failure raises :class:`~chains.x402.X402Error` with an x402 reason code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from chains.evm.codec import ExactEvmPayload, parse_exact_evm_payload
from chains.evm.eip712 import (
    SignatureError,
    address_bytes,
    domain_separator,
    recover_signer,
    to_checksum_address,
    transfer_authorization_digest,
)
from chains.x402 import (
    INSUFFICIENT_FUNDS,
    INVALID_NETWORK,
    INVALID_PAYMENT_REQUIREMENTS,
    INVALID_SCHEME,
    INVALID_SIGNATURE,
    INVALID_VALID_AFTER,
    INVALID_VALID_BEFORE,
    INVALID_VALUE,
    MISSING_EIP712_DOMAIN,
    NONCE_ALREADY_USED,
    RECIPIENT_MISMATCH,
    SCHEME_EXACT,
    PaymentPayload,
    PaymentRequirements,
    X402Error,
    evm_network,
    normalize_network,
)

VALID_BEFORE_BUFFER = 6  # seconds an authorization must still be valid for (reference facilitator uses 6)


@dataclass(frozen=True)
class Verified:
    """A payment that passed the pure checks. Addresses checksummed; money in atomic units."""

    payer: str
    pay_to: str
    token: str
    network: str
    chain_id: int
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes
    signature: bytes


def _address(value: str, what: str) -> str:
    try:
        return to_checksum_address(value)
    except ValueError:
        raise X402Error(INVALID_PAYMENT_REQUIREMENTS, f"{what} is not an EVM address") from None


def verify_exact_evm(
    payload: ExactEvmPayload,
    req: PaymentRequirements,
    chain_id: int,
    now: int,
    *,
    scheme: str | None = None,
    network: str | None = None,
    asset: str | None = None,
    valid_before_buffer: int = VALID_BEFORE_BUFFER,
) -> Verified:
    """Check ``payload`` against the offered requirement ``req`` on chain ``chain_id`` at unix time ``now``.

    ``scheme``/``network``/``asset`` are what the client claimed (v2
    ``accepted`` or v1 top level); each given one must agree with ``req``.
    Order and codes: scheme (``invalid_scheme``), network (``invalid_network``),
    asset and domain (``invalid_payment_requirements`` / ``missing_eip712_domain``),
    ``to == payTo`` (recipient_mismatch), ``value >= amount`` (…_value),
    ``validBefore >= now + valid_before_buffer`` (…_valid_before),
    ``validAfter <= now`` (…_valid_after), signer == ``from`` (…_signature).
    """
    if req.scheme != SCHEME_EXACT or (scheme is not None and scheme != req.scheme):
        raise X402Error(INVALID_SCHEME, f"expected scheme {SCHEME_EXACT!r}")

    expected_net = evm_network(chain_id)
    try:
        req_net_ok = normalize_network(req.network) == expected_net
        claim_ok = network is None or normalize_network(network) == expected_net
    except X402Error:
        req_net_ok = claim_ok = False
    if not (req_net_ok and claim_ok):
        raise X402Error(INVALID_NETWORK, f"expected network {expected_net}")

    token = _address(req.asset, "asset")
    if asset is not None:
        try:
            same = address_bytes(asset) == address_bytes(token)
        except ValueError:
            same = False
        if not same:
            raise X402Error(INVALID_PAYMENT_REQUIREMENTS, "asset does not match the offered asset")
    name, version = req.extra.get("name"), req.extra.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        raise X402Error(MISSING_EIP712_DOMAIN, "requirement lacks extra.name / extra.version")
    pay_to = _address(req.pay_to, "payTo")

    auth = payload.authorization
    if auth.to != pay_to:
        raise X402Error(RECIPIENT_MISMATCH, "authorization.to is not payTo")
    if auth.value < req.amount_int:
        raise X402Error(INVALID_VALUE, f"authorization.value {auth.value} is below the price {req.amount}")
    if auth.valid_before < now + valid_before_buffer:
        raise X402Error(INVALID_VALID_BEFORE, "authorization expired or expires too soon")
    if auth.valid_after > now:
        raise X402Error(INVALID_VALID_AFTER, "authorization is not valid yet")

    digest = transfer_authorization_digest(
        domain_separator(name, version, chain_id, token),
        auth.from_,
        auth.to,
        auth.value,
        auth.valid_after,
        auth.valid_before,
        auth.nonce,
    )
    try:
        signer = recover_signer(digest, payload.signature)
    except SignatureError as exc:
        raise X402Error(INVALID_SIGNATURE, str(exc)) from None
    if signer != auth.from_:
        raise X402Error(INVALID_SIGNATURE, "signature is not by authorization.from")

    return Verified(
        payer=auth.from_,
        pay_to=pay_to,
        token=token,
        network=expected_net,
        chain_id=chain_id,
        value=auth.value,
        valid_after=auth.valid_after,
        valid_before=auth.valid_before,
        nonce=auth.nonce,
        signature=payload.signature,
    )


def verify_payment(payment: PaymentPayload, req: PaymentRequirements, chain_id: int, now: int) -> Verified:
    """Parse ``payment.payload`` and run :func:`verify_exact_evm` with the client's claims."""
    acc = payment.accepted
    return verify_exact_evm(
        parse_exact_evm_payload(payment.payload),
        req,
        chain_id,
        now,
        scheme=payment.scheme,
        network=payment.network,
        asset=acc.asset if acc is not None else None,
    )


# --- chain state -------------------------------------------------------------------------


class ChainReader(Protocol):
    """Read-only token queries (``chains.evm.rpc.JsonRpcClient`` provides these)."""

    async def authorization_state(self, token: str, authorizer: str, nonce: bytes) -> bool: ...

    async def balance_of(self, token: str, owner: str) -> int: ...


async def check_chain_state(verified: Verified, reader: ChainReader) -> None:
    """Raise ``invalid_exact_evm_nonce_already_used`` or ``insufficient_funds``.

    Both reads run concurrently. Reader failures (RPC down) propagate
    unchanged so the caller can fail closed (503), not as a payment error.
    """
    used, balance = await asyncio.gather(
        reader.authorization_state(verified.token, verified.payer, verified.nonce),
        reader.balance_of(verified.token, verified.payer),
        return_exceptions=True,
    )
    for result in (used, balance):
        if isinstance(result, BaseException):
            raise result
    if used:
        raise X402Error(NONCE_ALREADY_USED, "authorization nonce already used on chain")
    if balance < verified.value:
        raise X402Error(INSUFFICIENT_FUNDS, "payer balance is below the authorized value")


class CachedChainReader:
    """A :class:`ChainReader` that caches what is safe to cache.

    ``authorization_state``: only ``True`` is cached (for good: a used or
    canceled nonce never becomes unused); ``False`` is always asked again,
    since it can flip at any moment. ``balance_of``: cached for
    ``ttl_seconds``; a stale balance can only let through a payment that
    settlement then fails, never move money. ``clock`` returns seconds.
    """

    def __init__(
        self,
        reader: ChainReader,
        ttl_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self._reader = reader
        self._ttl = ttl_seconds
        self._clock = clock
        self._max = max_entries
        self._used: dict[tuple[str, str, bytes], bool] = {}
        self._balances: dict[tuple[str, str], tuple[float, int]] = {}

    async def authorization_state(self, token: str, authorizer: str, nonce: bytes) -> bool:
        key = (token.lower(), authorizer.lower(), bytes(nonce))
        if key in self._used:
            return True
        used = await self._reader.authorization_state(token, authorizer, nonce)
        if used:
            if len(self._used) >= self._max:
                self._used.pop(next(iter(self._used)))
            self._used[key] = True
        return used

    async def balance_of(self, token: str, owner: str) -> int:
        key = (token.lower(), owner.lower())
        now = self._clock()
        hit = self._balances.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        balance = await self._reader.balance_of(token, owner)
        if len(self._balances) >= self._max and key not in self._balances:
            self._balances.pop(next(iter(self._balances)))
        self._balances[key] = (now, balance)
        return balance

    def forget_balance(self, token: str, owner: str) -> None:
        """Drop a cached balance (call after settling a payment from ``owner``)."""
        self._balances.pop((token.lower(), owner.lower()), None)
