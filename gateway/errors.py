"""Client-visible errors: one class per code, mapped to status and JSON in one place.

    TollgateError                      (status, code) -> {"error": code, "message": ...}
    ├── BadRequest            400 bad_request        malformed header, body, id
    │   └── MissingIdempotencyKey  400 missing_idempotency_key
    ├── Unauthorized          401 unauthorized       session token, facilitator API key
    ├── NotFound              404 not_found          no paygate, unknown resource
    ├── Conflict              409 conflict           idempotency key or payment id reused
    ├── PayloadTooLarge       413 payload_too_large  request body over the cap
    ├── RateLimited           429 rate_limited
    ├── UpstreamError         502 upstream_error     origin unreachable, reset, response too large
    ├── Unavailable           503 unavailable        store, chain RPC or mirror down: fail closed
    └── UpstreamTimeout       504 upstream_timeout

Handlers raise these; `gateway.app`'s middleware turns them into responses. Anything else
that escapes a handler is a bug: it is logged with its traceback and answered 500
`internal_error` without detail. A 402 is not an error here: `gateway.challenge` builds
the challenge.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TollgateError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override of the class default
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class BadRequest(TollgateError):
    status = 400
    code = "bad_request"


class MissingIdempotencyKey(BadRequest):
    code = "missing_idempotency_key"


class Unauthorized(TollgateError):
    status = 401
    code = "unauthorized"


class NotFound(TollgateError):
    status = 404
    code = "not_found"


class Conflict(TollgateError):
    status = 409
    code = "conflict"


class PayloadTooLarge(TollgateError):
    status = 413
    code = "payload_too_large"


class RateLimited(TollgateError):
    status = 429
    code = "rate_limited"


class UpstreamError(TollgateError):
    status = 502
    code = "upstream_error"


class Unavailable(TollgateError):
    status = 503
    code = "unavailable"


class UpstreamTimeout(TollgateError):
    status = 504
    code = "upstream_timeout"
