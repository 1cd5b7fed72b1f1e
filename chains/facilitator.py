"""Client for any x402 facilitator's HTTP API (`/verify`, `/settle`, `/supported`).

Facilitators answer HTTP 200 for a bad payment and put the verdict in the body: read the
flag, never the status. A transport failure, a 5xx, or a refusal of the caller itself
(401, 403, 404: wrong or missing API key, API switched off) says nothing about the payment
and is raised as `FacilitatorUnavailable` (settle: the outcome is unknown).

`api_key`, when given, is sent as `Authorization: Bearer <key>` on every request.
"""

from __future__ import annotations

from typing import Any

import httpx

from chains.x402 import PaymentRequirements, SettleResponse, VerifyResponse


class FacilitatorUnavailable(Exception):
    pass


class FacilitatorClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0,
                 http: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._own = http is None

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def _post(self, path: str, payload: dict[str, Any], requirements: PaymentRequirements,
                    version: int) -> dict[str, Any]:
        body = {"x402Version": version, "paymentPayload": payload,
                "paymentRequirements": requirements.to_wire()}
        try:
            resp = await self._http.post(self.base_url + path, json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise FacilitatorUnavailable(f"{path}: {exc!r}") from exc
        if resp.status_code >= 500 or resp.status_code in (401, 403, 404, 408, 429):
            # Busy, timed out or refusing us says nothing about the payment: its outcome
            # is unknown (and a settlement worker tries again once that is fixed).
            raise FacilitatorUnavailable(f"{path}: HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            raise FacilitatorUnavailable(f"{path}: HTTP {resp.status_code} with a non-JSON body")
        if not isinstance(data, dict):
            raise FacilitatorUnavailable(f"{path}: unexpected answer")
        return data

    async def verify(self, payload: dict[str, Any], requirements: PaymentRequirements,
                     version: int = 2) -> VerifyResponse:
        data = await self._post("/verify", payload, requirements, version)
        return VerifyResponse.model_validate(
            {"isValid": bool(data.get("isValid")), "invalidReason": data.get("invalidReason"),
             "payer": data.get("payer")})

    async def settle(self, payload: dict[str, Any], requirements: PaymentRequirements,
                     version: int = 2) -> SettleResponse:
        data = await self._post("/settle", payload, requirements, version)
        return SettleResponse.model_validate(
            {"success": bool(data.get("success")), "transaction": data.get("transaction") or "",
             "network": data.get("network") or requirements.network, "payer": data.get("payer"),
             "errorReason": data.get("errorReason")})

    async def supported(self) -> dict[str, Any]:
        try:
            resp = await self._http.get(self.base_url + "/supported", headers=self._headers)
            resp.raise_for_status()
            return resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise FacilitatorUnavailable(f"/supported: {exc!r}") from exc
