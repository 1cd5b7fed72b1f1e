"""Protect your own server with a Tollgate paygate (middleware mode), in one line.

    app = web.Application(middlewares=[authorize_middleware(gateway_url, paygate, key, secret)])
    app = TollgateASGI(app, gateway_url, paygate, key, secret)          # Starlette, FastAPI...

Each request is sent to the gateway's `POST /v1/authorize` (signed with the provider's
admin key, X-PAY headers); an unpaid one is answered with the gateway's 402 challenge, a
paid one runs the handler and is then completed with the handler's status, so the
paygate's policy keeps, reverses or settles the charge. The gateway's receipt headers (e.g.
`PAYMENT-RESPONSE`) are added to the response. The handler sees the authorization as
`request[middleware_client.TOLLGATE]` (aiohttp) or `scope["tollgate"]` (ASGI).

Standard library only (aiohttp is imported by `authorize_middleware` alone). Gateway calls
run in a worker thread through urllib.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.request
from typing import Any, Callable

# Request headers the gateway never needs (the caller's own cookies stay here).
_PRIVATE = frozenset({"cookie", "host", "content-length", "connection"})


# The aiohttp request key of the authorization (made with the first middleware).
TOLLGATE: Any = None


class GatewayError(Exception):
    """The gateway refused the call itself (bad key, unknown paygate, unreachable)."""


class TollgateAuthorizer:
    """The two gateway calls, signed. `timeout` bounds each call (seconds)."""

    def __init__(self, gateway_url: str, paygate: str, key_id: str, secret: str,
                 timeout: float = 30.0) -> None:
        self.base = gateway_url.rstrip("/")
        self.paygate = paygate
        self.key_id = key_id
        self.secret = secret
        self.timeout = timeout

    def _post(self, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        # A random nonce: two identical calls in one second must not share a signature
        # (the gateway accepts each signature once).
        body = json.dumps({**payload, "nonce": secrets.token_hex(8)}).encode()
        ts = str(int(time.time()))
        digest = hashlib.sha256(body).hexdigest()
        sig = hmac.new(self.secret.encode(), f"{ts}.POST.{path}.{digest}".encode(),
                       hashlib.sha256).hexdigest()
        req = urllib.request.Request(self.base + path, data=body, method="POST", headers={
            "Content-Type": "application/json", "X-PAY-Key": self.key_id,
            "X-PAY-Timestamp": ts, "X-PAY-Signature": sig})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                data = json.loads(exc.read() or b"{}")
            except ValueError:
                data = {}
            return exc.code, data
        except (OSError, ValueError) as exc:
            raise GatewayError(f"gateway unreachable: {exc}") from None

    async def authorize(self, method: str, path: str, headers: dict[str, str],
                        url: str | None = None) -> dict[str, Any]:
        payload = {"paygate": self.paygate, "method": method, "path": path,
                   "headers": {k: v for k, v in headers.items() if k.lower() not in _PRIVATE}}
        if url:
            payload["url"] = url
        status, data = await asyncio.to_thread(self._post, "/v1/authorize", payload)
        if status != 200:
            raise GatewayError(f"authorize answered {status}: {data.get('message', data)}")
        return data

    async def complete(self, authorization_id: str, status: int) -> dict[str, str]:
        """The receipt headers for the client ({} if the gateway refused)."""
        code, data = await asyncio.to_thread(
            self._post, f"/v1/authorize/{authorization_id}/complete", {"status": status})
        return data.get("receipt", {}) if code == 200 else {}


def authorize_middleware(gateway_url: str, paygate: str, key_id: str, secret: str,
                         **kwargs: Any) -> Callable:
    """An aiohttp middleware protecting every route of the app with `paygate`."""
    from aiohttp import web

    authorizer = TollgateAuthorizer(gateway_url, paygate, key_id, secret, **kwargs)
    global TOLLGATE
    if TOLLGATE is None:
        TOLLGATE = web.RequestKey("tollgate", dict)

    @web.middleware
    async def tollgate(request: web.Request, handler):
        verdict = await authorizer.authorize(request.method, request.raw_path,
                                             dict(request.headers), str(request.url))
        if not verdict["allowed"]:
            ch = verdict["challenge"]
            return web.json_response(ch["body"], status=ch["status"], headers=ch["headers"])
        request[TOLLGATE] = verdict
        auth_id = verdict.get("authorization_id")
        if auth_id is None:  # a free route
            return await handler(request)
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(await authorizer.complete(auth_id, exc.status))
            raise
        except BaseException:
            await asyncio.shield(authorizer.complete(auth_id, 500))
            raise
        resp.headers.update(await authorizer.complete(auth_id, resp.status))
        return resp

    return tollgate


class TollgateASGI:
    """An ASGI app wrapping `app`: HTTP requests are authorized first; the charge is
    completed when the app starts its response (its status decides), and the receipt
    headers go out with it. Lifespan and websocket scopes pass through."""

    def __init__(self, app, gateway_url: str, paygate: str, key_id: str, secret: str,
                 **kwargs: Any) -> None:
        self.app = app
        self.authorizer = TollgateAuthorizer(gateway_url, paygate, key_id, secret, **kwargs)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope.get("raw_path") or scope["path"].encode()
        path = path.decode("latin-1")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        verdict = await self.authorizer.authorize(scope["method"], path, headers)
        if not verdict["allowed"]:
            await _send_json(send, verdict["challenge"])
            return
        scope = {**scope, "tollgate": verdict}
        auth_id = verdict.get("authorization_id")
        if auth_id is None:
            await self.app(scope, receive, send)
            return
        completed = False

        async def send_completing(message) -> None:
            nonlocal completed
            if message["type"] == "http.response.start" and not completed:
                completed = True
                receipt = await self.authorizer.complete(auth_id, message["status"])
                message = {**message, "headers": [
                    *message.get("headers", []),
                    *((k.encode("latin-1"), v.encode("latin-1")) for k, v in receipt.items())]}
            await send(message)

        try:
            await self.app(scope, receive, send_completing)
        finally:
            if not completed:  # the app failed before answering: the charge is reversed
                completed = True
                await asyncio.shield(self.authorizer.complete(auth_id, 500))


async def _send_json(send, answer: dict[str, Any]) -> None:
    body = json.dumps(answer["body"]).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer["headers"].items()]
    await send({"type": "http.response.start", "status": answer["status"], "headers": headers})
    await send({"type": "http.response.body", "body": body})
