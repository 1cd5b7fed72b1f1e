"""The x402 facilitator API served by the gateway (`/facilitator/verify`, `/settle`,
`/supported`), so other x402 servers can verify and settle through it.

Settling spends the gateway's gas, so the API is guarded (`[facilitator]` in the config):
- off by default: every path answers 404;
- on, each request needs `Authorization: Bearer <key>` with a key from `accepted_keys`
  (401 otherwise) and is rate-limited per key (429 with Retry-After);
- it settles only the configured assets (address, network and EIP-712 domain as in
  `[assets]`) on configured networks, only for the allowed payTo addresses if a list is
  set, and never a zero-value transfer or a transfer from the payer to itself. These are
  checked before anything touches the chain.

Like any facilitator it answers HTTP 200 for a bad payment and puts the verdict in the
body; only a malformed request (not JSON, missing fields) gets a 4xx.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from chains.x402 import (
    INVALID_NETWORK,
    INVALID_PAYMENT_REQUIREMENTS,
    PaymentRequirements,
    SettleResponse,
    VerifyResponse,
    X402Error,
    parse_payment_payload,
)
from gateway.config import Config, ConfigError, Eip3009Asset
from gateway.errors import BadRequest, NotFound, Unauthorized, Unavailable
from gateway.ratelimit import RateLimiter
from gateway.state import GATEWAY

MIN_KEY_LENGTH = 32


def accepted_keys(config: Config) -> dict[str, str]:
    """The bearer keys the facilitator API accepts, by name (the name is what the rate
    limit counts against): the key in `facilitator.api_key_env`. Operator admin keys,
    which are made at run time, are checked per request instead (`_admit`)."""
    fac = config.facilitator
    value = os.environ.get(fac.api_key_env or "", "")
    if not value:
        raise ConfigError(f"facilitator.api_key_env: environment variable {fac.api_key_env} "
                          "is not set")
    if len(value) < MIN_KEY_LENGTH:
        raise ConfigError(f"facilitator.api_key_env: the key in {fac.api_key_env} is shorter "
                          f"than {MIN_KEY_LENGTH} characters")
    return {"facilitator": value}


@dataclass
class Access:
    """Who may call the API (hashes of the accepted keys) and how often."""

    keys: dict[str, bytes]  # name -> sha256(key)
    limiter: RateLimiter

    def admit(self, authorization: str | None) -> str:
        """The name of the key in an `Authorization: Bearer` header, or Unauthorized.
        Every key is compared, in constant time, whatever matched before."""
        scheme, _, presented = (authorization or "").partition(" ")
        digest = hashlib.sha256(presented.strip().encode("utf-8", "replace")).digest()
        found = None
        for name, expected in self.keys.items():
            if hmac.compare_digest(digest, expected):
                found = name
        if scheme.lower() != "bearer" or not presented.strip() or found is None:
            raise Unauthorized("a valid API key is required (Authorization: Bearer <key>)",
                               headers={"WWW-Authenticate": 'Bearer realm="facilitator"'})
        return found


ACCESS = web.AppKey("facilitator_access", Access)


async def _start(app: web.Application) -> None:
    gw = app[GATEWAY]
    if gw.config.facilitator.enabled:
        keys = {name: hashlib.sha256(key.encode("utf-8")).digest()
                for name, key in accepted_keys(gw.config).items()}
        app[ACCESS] = Access(keys, RateLimiter(gw.config.facilitator.requests_per_minute,
                                               gw.clock))


async def _admit(request: web.Request) -> None:
    access = request.app.get(ACCESS)
    if access is None:
        raise NotFound("no such resource")
    try:
        name = access.admit(request.headers.get("Authorization"))
    except Unauthorized:
        # An operator admin key (`Bearer pk_...:<secret>`) is accepted too.
        from gateway.admin.bearer import operator_bearer
        name = await operator_bearer(request)
        if name is None:
            raise
    access.limiter.check(name)


def _settled_assets(config: Config) -> list[Eip3009Asset]:
    fac = config.facilitator
    ids = fac.assets if fac.assets is not None else list(config.assets)
    return [a for i in ids if isinstance(a := config.assets.get(i), Eip3009Asset)
            and a.network in config.evm]


def _check_policy(config: Config, req: PaymentRequirements) -> None:
    """Refuse (X402Error) a requirement this facilitator does not settle: an asset not
    configured (address, network and EIP-712 domain as in `[assets]`), a payTo outside
    the allowlist, a zero amount."""
    if req.network not in config.evm:
        raise X402Error(INVALID_NETWORK, f"network {req.network} is not supported here")
    asset = next((a for a in _settled_assets(config) if a.network == req.network
                  and a.address.lower() == req.asset.lower()), None)
    if asset is None:
        raise X402Error(INVALID_PAYMENT_REQUIREMENTS, f"asset {req.asset} is not settled here")
    if (req.extra.get("name"), req.extra.get("version")) != (asset.eip712_name,
                                                             asset.eip712_version):
        # A wrong domain makes a signature that recovers here but reverts on chain.
        raise X402Error(INVALID_PAYMENT_REQUIREMENTS,
                        "extra.name / extra.version differ from the asset's EIP-712 domain")
    allowed = {a.lower() for a in config.facilitator.pay_to}
    if allowed and req.pay_to.lower() not in allowed:
        raise X402Error(INVALID_PAYMENT_REQUIREMENTS,
                        "payTo is not one this facilitator settles for")
    if req.amount_int == 0:
        raise X402Error(INVALID_PAYMENT_REQUIREMENTS, "a zero amount is not settled")


async def _read(request: web.Request) -> tuple[int, dict[str, Any], PaymentRequirements, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("body must be JSON", code="invalid_json") from None
    if not isinstance(body, dict) or not isinstance(body.get("paymentPayload"), dict) \
            or not isinstance(body.get("paymentRequirements"), dict):
        raise BadRequest("body needs paymentPayload and paymentRequirements objects",
                         code="invalid_request")
    try:
        req = PaymentRequirements.model_validate(body["paymentRequirements"])
    except ValidationError as exc:
        raise BadRequest(f"paymentRequirements: {exc.errors()[0]['msg']}",
                         code="invalid_payment_requirements") from None
    version = body.get("x402Version", 2)
    return version, body["paymentPayload"], req, request.app[GATEWAY].evm


async def _verify(request: web.Request, payload: dict[str, Any], req: PaymentRequirements):
    gw = request.app[GATEWAY]
    _check_policy(gw.config, req)  # before any signature or chain work
    evm = gw.evm
    if evm is None or req.network not in evm.networks:
        raise X402Error(INVALID_NETWORK, f"network {req.network} is not supported here")
    payment = parse_payment_payload(payload)
    vp = evm.verify(payment, req, gw.clock.now())
    if vp.payer.lower() == vp.pay_to.lower():
        raise X402Error(INVALID_PAYMENT_REQUIREMENTS, "payTo is the payer: nothing would move")
    await evm.check_chain(vp)
    return vp


async def verify(request: web.Request) -> web.Response:
    await _admit(request)
    _version, payload, req, _evm = await _read(request)
    try:
        vp = await _verify(request, payload, req)
    except X402Error as exc:
        return web.json_response(VerifyResponse.model_validate(
            {"isValid": False, "invalidReason": exc.reason,
             "payer": _claimed_payer(payload)}).to_wire())
    return web.json_response(VerifyResponse.model_validate(
        {"isValid": True, "payer": vp.payer}).to_wire())


async def settle(request: web.Request) -> web.Response:
    await _admit(request)
    version, payload, req, evm = await _read(request)
    try:
        vp = await _verify(request, payload, req)
    except X402Error as exc:
        return web.json_response(SettleResponse(
            success=False, network=req.network, payer=_claimed_payer(payload),
            error_reason=exc.reason).to_wire())
    net = evm.network(req.network)
    if net.settler is None:
        raise Unavailable("this gateway has no settler key for " + req.network,
                          code="settlement_unavailable")
    stored = {"payment": payload | {"x402Version": version}, "requirement": req.to_wire()}

    async def noop(*_tx) -> None:
        return None

    from chains.evm.rpc import RpcUnavailable  # loaded with the EVM networks already

    try:
        outcome = await evm.settle(stored, noop)
    except RpcUnavailable as exc:
        raise Unavailable("chain RPC is unavailable", code="chain_unavailable") from exc
    # Success only once mined: a sent transaction whose receipt did not come in time is
    # `settlement_pending` with its hash (the caller reconciles from the chain).
    return web.json_response(SettleResponse(
        success=outcome.state == "settled", transaction=outcome.tx_hash or "",
        network=req.network, payer=vp.payer,
        error_reason=(outcome.reason or "settlement_pending")
        if outcome.state != "settled" else None).to_wire())


async def supported(request: web.Request) -> web.Response:
    await _admit(request)
    gw = request.app[GATEWAY]
    settled = {a.network for a in _settled_assets(gw.config)}
    kinds, signers = [], {}
    for net in (gw.evm.networks.values() if gw.evm else ()):
        if net.settler is None or net.network not in settled:
            continue
        for version in (2, 1):
            kinds.append({"x402Version": version, "scheme": "exact", "network": net.network})
        signers.setdefault("eip155:*", []).append(net.settler.address)
    return web.json_response({"kinds": kinds, "extensions": [], "signers": signers})


def _claimed_payer(payload: dict[str, Any]) -> str | None:
    inner = payload.get("payload")
    auth = inner.get("authorization") if isinstance(inner, dict) else None
    payer = auth.get("from") if isinstance(auth, dict) else None
    return payer if isinstance(payer, str) else None


def add_routes(app: web.Application) -> None:
    """Register the routes (always: disabled, they answer 404 rather than fall through to
    a paygate) and, at start-up, read the keys when the API is enabled."""
    app.on_startup.append(_start)
    app.router.add_post("/facilitator/verify", verify)
    app.router.add_post("/facilitator/settle", settle)
    app.router.add_get("/facilitator/supported", supported)
