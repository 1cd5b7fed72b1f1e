"""What the admin API handlers share: state lookup, JSON bodies, scoping, errors."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.admin.auth import ADMIN_KEY
from gateway.admin.runtime import AdminState
from gateway.errors import BadRequest, NotFound, TollgateError
from gateway.state import GATEWAY, Gateway
from store.api_keys import ApiKey

ADMIN = web.AppKey("admin", AdminState)


class Invalid(TollgateError):
    """422: the body names fields that are wrong, one line each in `errors`."""

    status = 422
    code = "invalid"

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines), extra={"errors": lines})


class Forbidden(TollgateError):
    status = 403
    code = "forbidden"


def gw_of(request: web.Request) -> Gateway:
    return request.config_dict[GATEWAY]


def admin_of(request: web.Request) -> AdminState:
    return request.config_dict[ADMIN]


def key_of(request: web.Request) -> ApiKey:
    return request[ADMIN_KEY]


def sees(key: ApiKey, provider: str | None) -> bool:
    """An operator key sees everything; a provider key only its provider's resources."""
    return key.operator or (provider is not None and provider == key.provider)


def require_operator(key: ApiKey) -> None:
    if not key.operator:
        raise Forbidden("this needs an operator key")


def not_found(what: str = "resource") -> NotFound:
    # The same answer for "absent" and "someone else's": ids do not leak.
    return NotFound(f"no such {what}")


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise BadRequest("body must be a JSON object", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object", code="invalid_json")
    return data


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)
