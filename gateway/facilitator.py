"""The x402 facilitator API served by the gateway (`/facilitator/verify`, `/settle`,
`/supported`), so other x402 servers can verify and settle through it.

Like any facilitator it answers HTTP 200 for a bad payment and puts the verdict in the
body; only a malformed request (not JSON, missing fields) gets a 4xx.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from chains.evm.rpc import RpcUnavailable
from chains.x402 import (
    PaymentRequirements,
    SettleResponse,
    VerifyResponse,
    X402Error,
    parse_payment_payload,
)
from gateway.errors import BadRequest, Unavailable
from gateway.state import GATEWAY


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


async def _verify(evm, payload: dict[str, Any], req: PaymentRequirements, now: float):
    if evm is None or req.network not in evm.networks:
        raise X402Error("invalid_network", f"network {req.network} is not supported here")
    payment = parse_payment_payload(payload)
    vp = evm.verify(payment, req, now)
    try:
        await evm.check_chain(vp)
    except Unavailable:
        raise
    return vp


async def verify(request: web.Request) -> web.Response:
    _version, payload, req, evm = await _read(request)
    try:
        vp = await _verify(evm, payload, req, request.app[GATEWAY].clock.now())
    except X402Error as exc:
        return web.json_response(VerifyResponse.model_validate(
            {"isValid": False, "invalidReason": exc.reason,
             "payer": _claimed_payer(payload)}).to_wire())
    return web.json_response(VerifyResponse.model_validate(
        {"isValid": True, "payer": vp.payer}).to_wire())


async def settle(request: web.Request) -> web.Response:
    version, payload, req, evm = await _read(request)
    try:
        vp = await _verify(evm, payload, req, request.app[GATEWAY].clock.now())
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
    evm = request.app[GATEWAY].evm
    kinds, signers = [], {}
    for net in (evm.networks.values() if evm else ()):
        if net.settler is None:
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
    app.router.add_post("/facilitator/verify", verify)
    app.router.add_post("/facilitator/settle", settle)
    app.router.add_get("/facilitator/supported", supported)
