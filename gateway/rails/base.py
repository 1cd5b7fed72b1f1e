"""The rail seam: how a payment method plugs into the proxy without the proxy knowing it.

Lifecycle of one paid request, driven by `gateway.proxy`:

    offer(priced)            -> what the 402 challenge advertises for this rail
    carries_payment(headers) -> does this request pay with this rail?
    accept(request, priced)  -> Charge (verified and claimed; settled already when the
                                paygate settles `before`) or StoredResponse (the same
                                payment was served before: replay it). Raises
                                PaymentRejected (-> 402 with a reason), Conflict, Unavailable.
    complete(charge, status) -> after the origin answered `status` (or 502/504 when it
                                did not): keep or reverse the charge, settle `after`,
                                queue `deferred`; returns receipt headers for the client.
    record(charge, response) -> remember what was served, for replays.

A rail never sees aiohttp objects: it gets `PaidRequest`, a plain snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Protocol

from gateway.config import PaygateConfig


# Set in a rail's receipt headers when the payment stays good for a retry of the same
# request (it was settled, the origin failed); its value says so to the caller.
RETRY_HEADER = "X-Tollgate-Payment-Retry"


@dataclass(frozen=True)
class Priced:
    """What a request costs: the paygate, the units and the resource being bought."""

    paygate: PaygateConfig
    units: int
    resource_url: str
    method: str
    path_qs: str


@dataclass
class PaidRequest:
    """A snapshot of the caller's request for the rail. `body()` reads (and caches) the
    body only if a rail needs it, e.g. to fingerprint the request for idempotency."""

    method: str
    path_qs: str
    headers: Mapping[str, str]
    client: str
    body: Callable[[], Awaitable[bytes]]


@dataclass
class Offer:
    accepts: list[Any] = field(default_factory=list)  # chains.x402.PaymentRequirements
    extensions: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoredResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool = True  # False when the origin broke off or the body passed the cap
    body_kept: bool = True  # False when the body passed the rail's replay size limit
    body_size: int | None = None  # bytes served (when `body` is not all of them)


@dataclass
class Charge:
    """A payment accepted for one request and not yet final."""

    rail: str
    payer: str
    x_payment: str  # forwarded to the origin as X-Payment
    x_payment_response: str  # forwarded as X-Payment-Response
    remaining: int | None = None
    ref: Any = None  # the rail's own handle
    strip_headers: tuple[str, ...] = ()  # caller credentials the origin must not see
    origin_headers: dict[str, str] = field(default_factory=dict)  # extra context (the plan)


class PaymentRejected(Exception):
    """The payment is not acceptable; answered 402 with the challenge and this reason."""

    def __init__(self, reason: str, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.extra = extra or {}


class Rail(Protocol):
    name: str

    def offer(self, priced: Priced) -> Offer: ...

    def carries_payment(self, headers: Mapping[str, str]) -> bool: ...

    async def accept(self, request: PaidRequest, priced: Priced) -> Charge | StoredResponse: ...

    async def complete(self, charge: Charge, status: int) -> dict[str, str]: ...

    async def record(self, charge: Charge, response: StoredResponse) -> None: ...


ABANDON_MARGIN = 300.0  # seconds past the longest call before a pending charge is abandoned


def abandon_after(config) -> float:
    """Seconds after which a pending charge belongs to no live call: read from the
    config at each sweep, so paygates added at run time count."""
    longest = max((pg.timeout_seconds for pg in config.paygates), default=600)
    return max(longest, config.server.authorize_timeout_seconds) + ABANDON_MARGIN
