"""The wallet page at `/` and the small JSON API behind it.

    GET  /                          the wallet page (static/wallet.html)
    GET  /static/...                its script bundles (built from npm packages at set-up)
    GET  /api/paygates              public listing: id, prefix, prices, rails, rules
    GET  /api/wallet/config         network, spender, WalletConnect project id, dev signer
    POST /api/wallet/approval       {account_id, paygate, amount, nonce?} -> unsigned approval
    POST /api/wallet/submit         {transaction}: a signed approval -> submitted, its id
    GET  /api/wallet/allowance      ?account=: the allowance the mirror shows to the spender
    GET  /api/wallet/transaction/ID is the transaction on the mirror yet, and how did it end
    GET  /api/wallet/session        (session token) the meter: view, last charges, pulls
    POST /api/wallet/session/refresh (session token) re-read the allowance from the mirror now
    POST /api/dev/sign              the demo's devnet-only signer (404 unless the demo put one)

Rate limits: what prepares, submits or re-reads (approval, submit, refresh) counts like
challenges and activations (`server.session_api_per_minute`); the mirror look-ups the
page polls get four times that; the meter is a token-authenticated read of the store.

The page only ever holds public data and the session token; keys stay in the wallet
(reached through `window.tollgateSigner`, see static/wallet.html).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from aiohttp import web

from chains.hedera.ids import is_account_id, normalize_account_id, to_mirror_tx_id
from gateway.config import HbarAsset, format_atomic, price_atomic
from gateway.errors import BadRequest, NotFound, TollgateError, Unauthorized
from gateway.rails.session import session_token
from gateway.state import GATEWAY

STATIC = Path(__file__).resolve().parent.parent / "static"
DEV_SIGNER = web.AppKey("dev_signer", object)  # set by the demo on a local network only
TINYBARS = 8


class BadGateway(TollgateError):
    status = 502


class _Polling:
    """The limit for what the page polls (mirror look-ups while it waits for the network):
    a few times the activation limit, so a page that polls once a second is never refused
    but one client cannot turn the gateway into a mirror proxy."""

    def __init__(self) -> None:
        self.limiter = None

    def check(self, request: web.Request) -> None:
        if self.limiter is None:
            from gateway.ratelimit import RateLimiter

            gw = request.app[GATEWAY]
            self.limiter = RateLimiter(POLLS_PER_LIMIT * gw.config.server.session_api_per_minute,
                                       gw.clock)
        self.limiter.check(request.remote or "")


POLLING = web.AppKey("wallet_polling", _Polling)
POLLS_PER_LIMIT = 4


def _rail(request: web.Request, limit: str = "activation"):
    """The session rail, after the request's rate limit: "activation" (what prepares or
    sends transactions, like challenges and activations), "polling" (mirror look-ups)
    or "none" (token-authenticated reads of our own store)."""
    rail = request.app[GATEWAY].rails.get("hedera-session")
    if rail is None:
        raise NotFound("Hedera sessions are not enabled on this gateway", code="sessions_disabled")
    if limit == "activation":
        rail.limiter.check(request.remote or "")
    elif limit == "polling":
        request.app[POLLING].check(request)
    return rail


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "wallet.html", headers={
        "Cache-Control": "no-store",
        # Scripts only from this gateway; the WalletConnect relay is the one remote peer.
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' data: https:; style-src 'self' 'unsafe-inline'; "
            "connect-src 'self' http: https: wss:; "
            "frame-src https://verify.walletconnect.com https://verify.walletconnect.org; "
            "frame-ancestors 'none'"),
    })


def paygate_listing(gw) -> list[dict[str, Any]]:
    out = []
    cfg = gw.config
    for pg in cfg.paygates:
        prices = {}
        hbar = None
        for asset_id, price in pg.prices.items():
            asset = cfg.assets[asset_id]
            atomic = price_atomic(cfg, pg, asset_id)
            prices[asset_id] = {"unit_price": format_atomic(atomic, asset.decimals),
                                "atomic": str(atomic), "network": asset.network}
            if isinstance(asset, HbarAsset):
                hbar = atomic
        out.append({
            "id": pg.id, "prefix": pg.prefix, "description": pg.description or "",
            "rails": list(pg.rails), "prices": prices, "default_units": pg.default_units,
            "rules": [{"method": r.method, "path": r.path, "units": r.units} for r in pg.rules],
            "unit_price_tinybars": hbar if "hedera-session" in pg.rails else None,
        })
    return out


async def paygates(request: web.Request) -> web.Response:
    return web.json_response({"paygates": paygate_listing(request.app[GATEWAY])})


async def config(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    h = gw.config.hedera
    dev = request.app.get(DEV_SIGNER)
    wallet = getattr(gw.config, "wallet", None)
    return web.json_response({
        "network": h.network if h else None,
        "spender": h.account_id if h else None,
        "sessions": "hedera-session" in gw.rails,
        "session_ttl_seconds": h.session_ttl_seconds if h else None,
        "explorer": explorer(gw, "{tx}"),
        "walletconnect_project_id": getattr(wallet, "walletconnect_project_id", None) or None,
        "dev_signer": {"accounts": dev.accounts()} if dev is not None else None,
        "paygates": [p for p in paygate_listing(gw) if "hedera-session" in p["rails"]],
    })


def explorer(gw, tx_id: str) -> str | None:
    """A link to a transaction: HashScan on public networks, the mirror's REST on others."""
    h = gw.config.hedera
    if h is None:
        return None
    name = h.network.split(":", 1)[-1]
    mirror_id = tx_id if tx_id == "{tx}" else to_mirror_tx_id(tx_id)
    if name in ("mainnet", "testnet", "previewnet"):
        return f"https://hashscan.io/{name}/transaction/{mirror_id}"
    return f"{h.mirror_url}/api/v1/transactions/{mirror_id}"


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise BadRequest("body must be a JSON object", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object", code="invalid_json")
    return data


def _owner(value: Any) -> str:
    if not isinstance(value, str) or not is_account_id(value):
        raise BadRequest("account_id must be an account id such as 0.0.1234",
                         code="invalid_account_id")
    return normalize_account_id(value)


async def approval(request: web.Request) -> web.Response:
    """Prepare the approval a wallet signs: the owner pays; a nonce puts the activation
    memo on it (proof of control), none is a plain top-up or (amount 0) a revocation."""
    from gateway.wallet_chain import MAX_TINYBARS, prepare_approval
    from sessions.proof import memo_for

    rail = _rail(request)
    gw = request.app[GATEWAY]
    data = await _json(request)
    owner = _owner(data.get("account_id"))
    amount = data.get("amount")
    if isinstance(amount, str) and amount.isdigit():
        amount = int(amount)
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 <= amount <= MAX_TINYBARS:
        raise BadRequest("amount must be a whole number of tinybars", code="invalid_amount")
    nonce = data.get("nonce")
    if nonce is not None:
        row = await rail.records.nonce(nonce) if isinstance(nonce, str) else None
        if row is None or row.account_id != owner or row.used_at is not None:
            raise BadRequest("unknown or used nonce for this account", code="nonce_invalid")
        memo = memo_for(nonce)
    else:
        memo = "tollgate allowance" if amount else "tollgate revoke"
    nodes = gw.config.hedera.nodes or {}
    node = next(iter(nodes.values()), "0.0.3")
    raw, tx_id = await prepare_approval(owner=owner, spender=gw.config.hedera.account_id,
                                        amount=amount, memo=memo, node=node)
    return web.json_response({"transaction": base64.b64encode(raw).decode(), "transaction_id": tx_id,
                              "owner": owner, "spender": gw.config.hedera.account_id,
                              "amount": amount, "memo": memo})


async def submit(request: web.Request) -> web.Response:
    from chains.hedera.network import HederaUnavailable
    from gateway.wallet_chain import ApprovalRejected, check_approval

    _rail(request)
    gw = request.app[GATEWAY]
    data = await _json(request)
    try:
        raw = base64.b64decode(str(data.get("transaction", "")), validate=True)
        approved = check_approval(raw, spender=gw.config.hedera.account_id)
    except (binascii.Error, ValueError) as exc:
        message = str(exc) if isinstance(exc, ApprovalRejected) else "transaction must be base64"
        raise BadRequest(message, code="invalid_approval") from None
    try:
        outcome = await gw.hedera.network.submit(raw)
    except HederaUnavailable:
        raise BadGateway("the Hedera network could not be reached; try again",
                         code="network_unavailable") from None
    body = {"transaction_id": approved.tx_id, "status": outcome.status,
            "owner": approved.owner, "amount": approved.amount,
            "link": explorer(gw, approved.tx_id)}
    return web.json_response(body, status=200 if outcome.status == "SUCCESS" else 422)


async def allowance(request: web.Request) -> web.Response:
    from chains.hedera.mirror import MirrorError

    rail = _rail(request, "polling")
    gw = request.app[GATEWAY]
    owner = _owner(request.query.get("account"))
    try:
        found = await rail.refresher.mirror.crypto_allowance(owner, gw.config.hedera.account_id)
    except MirrorError:
        raise BadGateway("the mirror node is unavailable", code="mirror_unavailable") from None
    return web.json_response({"account_id": owner, "spender": gw.config.hedera.account_id,
                              "amount": found.amount if found else 0,
                              "amount_granted": found.amount_granted if found else 0,
                              "present": found is not None})


async def transaction(request: web.Request) -> web.Response:
    from chains.hedera.mirror import MirrorError, pick_record

    rail = _rail(request, "polling")
    try:
        records = await rail.refresher.mirror.transaction(request.match_info["tx_id"])
    except ValueError:
        raise BadRequest("not a transaction id", code="invalid_transaction_id") from None
    except MirrorError:
        raise BadGateway("the mirror node is unavailable", code="mirror_unavailable") from None
    record = pick_record(records) if records else None
    return web.json_response({"found": record is not None,
                              "result": record.result if record else None})


async def _session(request: web.Request, limit: str = "none"):
    rail = _rail(request, limit)
    token, _ = session_token(request.headers)
    if not token:
        raise Unauthorized("send the session token in X-Hedera-Session-Id", code="missing_session")
    session = await rail.records.by_token(token)
    if session is None:
        raise Unauthorized("unknown session token", code="session_unknown")
    return rail, session


def meter_view(gw, session) -> dict[str, Any]:
    from gateway.sessions_api import session_view

    view = session_view(session)
    if view["state"] in ("active", "exhausted") and session.expires_at <= gw.clock.now():
        view["state"] = "expired"  # the ledger moves it on the next call; say it now
    return view


async def session_meter(request: web.Request) -> web.Response:
    rail, session = await _session(request)
    gw = request.app[GATEWAY]
    charges = [c for c in await rail.ledger.charges(session.id) if c.state != "reversed"]
    last = [{"amount": int(c.amount), "at": float(c.created_at), "status": c.status}
            for c in charges[-10:]][::-1]
    pulls = [{"transaction_id": p.tx_id, "amount": p.amount, "state": p.state,
              "link": explorer(gw, p.tx_id)}
             for p in await rail.records.pulls(session.id, states=("succeeded", "reconciled"))]
    return web.json_response({"session": meter_view(gw, session), "charges": last,
                              "pulls": pulls, "unit_price_tinybars": rail.unit_price(session.paygate_id)})


async def session_refresh(request: web.Request) -> web.Response:
    from chains.hedera.mirror import MirrorError

    rail, session = await _session(request, "activation")  # it reads the mirror
    try:
        session = await rail.refresher.refresh(session) or session
    except MirrorError:
        raise BadGateway("the mirror node is unavailable", code="mirror_unavailable") from None
    return web.json_response({"session": meter_view(request.app[GATEWAY], session)})


async def dev_sign(request: web.Request) -> web.Response:
    """Only when the demo put a devnet signer on the app (never from a config file)."""
    signer = request.app.get(DEV_SIGNER)
    if signer is None:
        raise NotFound("no dev signer on this gateway", code="not_found")
    return web.json_response(await signer.handle(await _json(request)))


def add_routes(app: web.Application) -> None:
    app[POLLING] = _Polling()
    app.router.add_get("/", page)
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    app.router.add_get("/api/paygates", paygates)
    app.router.add_get("/api/wallet/config", config)
    app.router.add_post("/api/wallet/approval", approval)
    app.router.add_post("/api/wallet/submit", submit)
    app.router.add_get("/api/wallet/allowance", allowance)
    app.router.add_get("/api/wallet/transaction/{tx_id}", transaction)
    app.router.add_get("/api/wallet/session", session_meter)
    app.router.add_post("/api/wallet/session/refresh", session_refresh)
    app.router.add_post("/api/dev/sign", dev_sign)
