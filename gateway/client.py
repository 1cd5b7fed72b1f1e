"""`PayingClient`: an httpx client for agents that answers 402s by paying them.

    async with PayingClient(evm_key="0x...", max_per_request=10_000, spend_limit=1_000_000) as c:
        resp = await c.get("http://gateway/skyroute/v1/flights")
        print(resp.status_code, c.last_receipt)

It reads the v2 `PAYMENT-REQUIRED` header (or the JSON body), picks the first offer it can
pay (x402 `exact` on an EVM network with an EIP-3009 token, or, given `hedera_account` and
`hedera_key`, `exact` HBAR on Hedera), signs for exactly the asked amount and retries once
with `PAYMENT-SIGNATURE`. It refuses to pay more
than `max_per_request` for one call or `spend_limit` in total (atomic units of the asset);
the 402 is then returned as is.

With `session="hs_..."` (a Hedera allowance session token, from the wallet page or
`POST /api/sessions/activate`) every call carries `X-Hedera-Session-Id` and a fresh
`Idempotency-Key` (unless the caller gave one). A call whose answer was lost (transport
error), that is still running (409 `idempotency_key_in_flight`) or that met a passing 502,
503 or 504 is sent again with the same key, up to `retries` times: the gateway then
returns the first call's stored answer and never charges twice. A session 402 (exhausted,
revoked, expired) is returned as is; the allowance the owner approved is the spend limit.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from chains.evm.codec import build_exact_evm_payload
from chains.evm.eip712 import address_of
from chains.payment_identifier import PAYMENT_IDENTIFIER
from chains.x402 import PaymentRequirements, X402Error, decode_header, encode_header


SESSION_HEADER = "X-Hedera-Session-Id"
KEY_HEADERS = ("Idempotency-Key", "X-Idempotency-Key")
RETRY_STATUSES = (502, 503, 504)
MAX_RETRY_WAIT = 5.0  # seconds; a longer Retry-After is cut to this


class PaymentRefused(Exception):
    """The client chose not to pay (over a limit, or no offer it can pay)."""


@dataclass
class Spend:
    """What the client paid, per asset, in atomic units."""

    by_asset: dict[str, int] = field(default_factory=dict)

    def total(self, asset: str) -> int:
        return self.by_asset.get(asset.lower(), 0)

    def add(self, asset: str, amount: int) -> None:
        self.by_asset[asset.lower()] = self.total(asset) + amount


class PayingClient:
    def __init__(
        self,
        *,
        evm_key: str | None = None,
        hedera_account: str | None = None,
        hedera_key: str | None = None,
        hedera_nodes: list[str] | None = None,
        max_per_request: int | None = None,
        spend_limit: int | None = None,
        session: str | None = None,
        retries: int = 3,
        http: httpx.AsyncClient | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._evm_key = evm_key
        self.address = address_of(evm_key) if evm_key else None
        # Hedera: the payer account, its private key (DER hex) and the node account ids to
        # freeze for (default 0.0.3). The SDK is imported only when a Hedera offer is paid.
        self.hedera_account = hedera_account
        self._hedera_key = hedera_key
        self._hedera_nodes = hedera_nodes
        self.max_per_request = max_per_request
        self.spend_limit = spend_limit
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._own_http = http is None
        self.spent = Spend()
        self.last_receipt: dict[str, Any] | None = None
        self.last_refusal: str | None = None
        self.session = session
        self.retries = retries
        self.retries_done = 0  # over the client's life (for observers and tests)
        self.last_remaining: int | None = None  # tinybars left in the session, per the gateway

    async def __aenter__(self) -> "PayingClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", url, **kw)

    async def post(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("POST", url, **kw)

    async def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        """Send the request; on a 402 pay it (within limits) and send it once more."""
        self.last_receipt = None
        self.last_refusal = None
        if self.session is not None:
            return await self._session_request(method, url, **kw)
        resp = await self._http.request(method, url, **kw)
        if resp.status_code != 402:
            return resp
        try:
            header, req = self._choose(resp)
        except PaymentRefused as exc:
            self.last_refusal = str(exc)
            return resp
        headers = dict(kw.pop("headers", None) or {})
        headers["PAYMENT-SIGNATURE"] = header
        paid = await self._http.request(method, url, headers=headers, **kw)
        receipt = paid.headers.get("PAYMENT-RESPONSE") or paid.headers.get("X-PAYMENT-RESPONSE")
        if receipt:
            try:
                self.last_receipt = decode_header(receipt)
            except X402Error:
                self.last_receipt = None
        if paid.status_code != 402:
            self.spent.add(req.asset, req.amount_int)
        return paid

    async def _session_request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", None) or {})
        headers[SESSION_HEADER] = self.session or ""
        if not any(h.lower() in (k.lower() for k in KEY_HEADERS) for h in headers):
            headers[KEY_HEADERS[0]] = uuid.uuid4().hex  # one key for this call and its retries
        attempt = 0
        while True:
            try:
                resp = await self._http.request(method, url, headers=headers, **kw)
            except httpx.TransportError:
                if attempt >= self.retries:
                    raise
                wait = 0.5
            else:
                if not self._retryable(resp) or attempt >= self.retries:
                    break
                wait = _retry_after(resp)
            attempt += 1
            self.retries_done += 1
            await asyncio.sleep(wait)
        remaining = resp.headers.get("X-Tollgate-Remaining")
        if remaining is not None and remaining.isdigit():
            self.last_remaining = int(remaining)
        if resp.status_code == 402:
            try:
                body = resp.json()
            except ValueError:
                body = {}
            error = body.get("error") if isinstance(body, dict) else None
            self.last_refusal = f"session: {error or 'payment required'}"
        return resp

    @staticmethod
    def _retryable(resp: httpx.Response) -> bool:
        if resp.status_code in RETRY_STATUSES:
            return True
        if resp.status_code == 409:
            try:
                return resp.json().get("error") == "idempotency_key_in_flight"
            except (ValueError, AttributeError):
                return False
        return False

    def _challenge(self, resp: httpx.Response) -> dict[str, Any]:
        header = resp.headers.get("PAYMENT-REQUIRED")
        if header:
            return decode_header(header, max_len=64 * 1024)
        try:
            body = resp.json()
        except ValueError:
            raise PaymentRefused("402 without a readable challenge") from None
        if not isinstance(body, dict):
            raise PaymentRefused("402 without a readable challenge")
        return body

    def _choose(self, resp: httpx.Response) -> tuple[str, PaymentRequirements]:
        try:
            challenge = self._challenge(resp)
        except X402Error as exc:
            raise PaymentRefused(f"unreadable challenge: {exc}") from None
        reasons = []
        for entry in challenge.get("accepts") or []:
            try:
                req = PaymentRequirements.model_validate(entry)
            except Exception:
                continue
            evm = req.scheme == "exact" and req.network.startswith("eip155:") and self._evm_key
            hedera = (req.scheme == "exact" and req.network.startswith("hedera:")
                      and req.asset == "0.0.0" and self._hedera_key and self.hedera_account)
            if not evm and not hedera:
                reasons.append(f"cannot pay {req.scheme} on {req.network}")
                continue
            if self.max_per_request is not None and req.amount_int > self.max_per_request:
                reasons.append(f"{req.amount} is over the per-request maximum {self.max_per_request}")
                continue
            if self.spend_limit is not None and \
                    self.spent.total(req.asset) + req.amount_int > self.spend_limit:
                reasons.append(f"paying {req.amount} would pass the spend limit {self.spend_limit}")
                continue
            if evm:
                payload = build_exact_evm_payload(self._evm_key, req, now=int(time.time())).to_wire()
            else:
                from chains.hedera.exact_client import build_exact_hedera_payload

                payload = build_exact_hedera_payload(req, self.hedera_account, self._hedera_key,
                                                     node_account_ids=self._hedera_nodes)
            v2_entry = {k: v for k, v in entry.items()
                        if k not in ("maxAmountRequired", "resource", "description", "mimeType")}
            extensions = {}
            if PAYMENT_IDENTIFIER in (challenge.get("extensions") or {}):
                # A random id (never on chain) lets a retry of this exact header get the
                # stored response once the payment has settled; without one the gateway
                # cannot tell the payer from an observer and answers 409.
                extensions[PAYMENT_IDENTIFIER] = {"info": {"id": secrets.token_urlsafe(24)}}
            body = {"x402Version": 2, "resource": challenge.get("resource"),
                    "accepted": v2_entry, "payload": payload, "extensions": extensions}
            return encode_header(body), req
        raise PaymentRefused("; ".join(reasons) or "the 402 offers nothing to pay")


def _retry_after(resp: httpx.Response) -> float:
    try:
        return min(max(float(resp.headers.get("Retry-After", "1")), 0.1), MAX_RETRY_WAIT)
    except ValueError:
        return 1.0
