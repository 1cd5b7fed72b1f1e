"""The OpenAPI 3.1 document of the admin API, served at `/api/v1/openapi.json`.

Written by hand next to the handlers; tests/gateway/test_admin_openapi.py walks every
operation in it against a running gateway (status codes and response shapes) and checks
that every route the server has is documented, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any, get_args

from aiohttp import web

from gateway.config import Rail
from store.outbox import EVENT_TYPES

_STR, _INT, _NUM, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, \
    {"type": "boolean"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], props: dict[str, Any], extra: bool = True) -> dict:
    return {"type": "object", "required": required, "properties": props,
            "additionalProperties": extra}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


_ERR = {"description": "error", **_json(_ref("Error"))}
_ERRORS = {"401": {**_ERR, "description": "missing auth headers | timestamp out of range | "
                   "invalid signature | signature already used"},
           "404": {**_ERR, "description": "no such resource (or another provider's)"}}


def _op(summary: str, ok: dict[str, Any], *, body: dict | None = None,
        errors: tuple[str, ...] = (), params: list | None = None, tag: str) -> dict:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {**ok, **_ERRORS}}
    for code in errors:
        op["responses"][code] = {**_ERR, "description": {
            "400": "malformed JSON", "403": "not allowed for this key",
            "409": "conflict", "422": "invalid body: one line per field in `errors`"}[code]}
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": _STR}


def _query(name: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _ok(code: str, schema: dict | None, description: str = "ok") -> dict:
    return {code: {"description": description, **(_json(schema) if schema else {})}}


SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error", "message"], {"error": _STR, "message": _STR,
                                         "errors": {"type": "array", "items": _STR}}),
    "Key": _obj(["id", "provider", "operator", "created_at", "active"], {
        "id": {"type": "string", "pattern": "^pk_[0-9a-f]{24}$"}, "provider": _nullable(_STR),
        "operator": _BOOL, "created_at": _NUM, "revoked_at": _nullable(_NUM),
        "active": _BOOL}),
    "KeyWithSecret": {"allOf": [_ref("Key"), _obj(["secret"], {"secret": _STR})]},
    "KeyInput": _obj([], {"provider": _nullable(_STR), "operator": _BOOL}, extra=False),
    "Rotate": _obj([], {"grace_seconds": {"type": "integer", "minimum": 0}}, extra=False),
    "PaygateInput": {
        "type": "object", "description": "A [[paygates]] table of the config file, as JSON "
        "(see the README's configuration table); validated by the same code.",
        "properties": {"id": _STR, "prefix": _STR, "host": _STR, "target": _STR,
                       "description": _STR, "default_units": _INT, "rules": {"type": "array"},
                       "prices": {"type": "object"},
                       "rails": {"type": "array", "items": {"enum": list(get_args(Rail))}},
                       "pay_to": {"type": "object"}, "settlement": _STR,
                       "origin_auth": {"type": "object"}, "discoverable": _BOOL,
                       "provider": _STR, "kind": {"enum": ["proxy", "files"]},
                       "plans": {"type": "array", "items": _ref("Plan")}}},
    "Plan": _obj(["id", "units"], {
        "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
        "units": {"type": "integer", "minimum": 1},
        "prices": {"type": "object", "description": "asset -> price of the whole plan, in "
                   "the asset's unit (a decimal string); none: a free plan",
                   "additionalProperties": _STR},
        "per_address_limit": {"type": "integer", "minimum": 1},
        "warn_below": {"type": "integer", "minimum": 1}}, extra=False),
    "Paygate": _obj(["id", "prefix", "target", "source", "created_at", "updated_at"], {
        "id": _STR, "prefix": _STR, "target": _STR, "provider": _nullable(_STR),
        "source": {"enum": ["config", "api"]}, "created_at": _NUM, "updated_at": _NUM,
        "plans": {"type": "array", "items": _ref("Plan")}}),
    "Secret": _obj(["paygate", "mode", "current", "previous", "previous_valid_until"], {
        "paygate": _STR, "mode": _STR, "current": _STR, "previous": _nullable(_STR),
        "previous_valid_until": _nullable(_NUM)}),
    "SecretInput": _obj(["secret"], {"secret": _STR, "grace_seconds": _INT}, extra=False),
    "Token": _obj(["id", "paygate", "plan", "billing", "units_total", "remaining", "state"], {
        "id": _STR, "paygate": _STR, "plan": _STR, "billing": {"enum": ["paid", "free"]},
        "units_total": _INT, "remaining": _INT, "state": {"enum": ["active", "revoked"]}}),
    "Webhook": _obj(["id", "provider", "url", "events", "low_threshold", "enabled"], {
        "id": _STR, "provider": _nullable(_STR), "url": _STR,
        "events": {"type": "array", "items": {"enum": ["*", *EVENT_TYPES]}},
        "low_threshold": _nullable(_INT), "enabled": _BOOL, "created_at": _NUM}),
    "WebhookWithSecret": {"allOf": [_ref("Webhook"), _obj(["secret"], {"secret": _STR})]},
    "WebhookInput": _obj([], {
        "url": _STR, "events": {"type": "array", "items": {"enum": ["*", *EVENT_TYPES]}},
        "low_threshold": _nullable(_INT), "enabled": _BOOL, "secret": _STR,
        "provider": _nullable(_STR)}, extra=False),
    "Delivery": _obj(["id", "event_id", "type", "state", "attempts"], {
        "id": _STR, "event_id": _STR, "type": _STR,
        "state": {"enum": ["pending", "delivered", "failed"]}, "attempts": _INT,
        "next_attempt_at": _NUM, "last_status": _nullable(_INT),
        "last_error": _nullable(_STR), "delivered_at": _nullable(_NUM), "created_at": _NUM}),
    "File": _obj(["name", "storage", "content_type"], {
        "name": _STR, "storage": {"enum": ["local", "s3"]}, "size": _nullable(_INT),
        "content_type": _STR, "sha256": _nullable(_STR), "bucket": _nullable(_STR),
        "key": _nullable(_STR)}),
    "FileInput": _obj(["bucket", "key"], {"bucket": _STR, "key": _STR,
                                          "content_type": _STR}, extra=False),
    "Usage": _obj(["period", "from", "to", "paygates"], {
        "period": {"enum": ["hour", "day"]}, "from": _NUM, "to": _NUM,
        "paygates": {"type": "array", "items": _obj(["paygate", "periods", "top_payers"], {
            "paygate": _STR,
            "periods": {"type": "array", "items": _obj(["start", "calls", "units", "amounts"], {
                "start": _STR, "calls": _INT, "units": _INT,
                "amounts": {"type": "array", "items": _obj(
                    ["rail", "network", "asset", "settled", "pending", "failed"], {
                        "rail": _STR, "network": _STR, "asset": _STR, "settled": _STR,
                        "pending": _STR, "failed": _STR})}})},
            "top_payers": {"type": "array", "items": _obj(["payer", "calls", "amounts"], {
                "payer": _STR, "calls": _INT, "amounts": {"type": "object"}})}})}}),
}


def _list(name: str, item: str) -> dict:
    return _obj([name], {name: {"type": "array", "items": _ref(item)}})


_PG, _WH, _KEY = _path_param("paygate_id"), _path_param("webhook_id"), _path_param("key_id")

PATHS: dict[str, Any] = {
    "/api/v1/keys": {
        "get": _op("List keys (a provider's own; operator: all)",
                   _ok("200", _list("keys", "Key")), tag="keys"),
        "post": _op("Create a key; its secret is shown once",
                    _ok("201", _ref("KeyWithSecret"), "created"), body=_ref("KeyInput"),
                    errors=("400", "403", "422"), tag="keys")},
    "/api/v1/keys/{key_id}": {
        "parameters": [_KEY],
        "delete": _op("Revoke a key", _ok("200", _ref("Key")), tag="keys")},
    "/api/v1/keys/{key_id}/rotate": {
        "parameters": [_KEY],
        "post": _op("New secret; the previous one stays valid for grace_seconds",
                    _ok("200", _obj(["id", "secret"], {"id": _STR, "secret": _STR})),
                    body=_ref("Rotate"), errors=("400", "422"), tag="keys")},
    "/api/v1/paygates": {
        "get": _op("List paygates", _ok("200", _list("paygates", "Paygate")), tag="paygates"),
        "post": _op("Create a paygate (routed by every instance within admin.poll_seconds)",
                    _ok("201", _ref("Paygate"), "created"), body=_ref("PaygateInput"),
                    errors=("400", "403", "409", "422"), tag="paygates")},
    "/api/v1/paygates/{paygate_id}": {
        "parameters": [_PG],
        "get": _op("Get a paygate", _ok("200", _ref("Paygate")), tag="paygates"),
        "put": _op("Replace an API paygate", _ok("200", _ref("Paygate")),
                   body=_ref("PaygateInput"), errors=("400", "403", "409", "422"),
                   tag="paygates"),
        "patch": _op("Change some keys of an API paygate", _ok("200", _ref("Paygate")),
                     body=_ref("PaygateInput"), errors=("400", "403", "409", "422"),
                     tag="paygates"),
        "delete": _op("Delete an API paygate", _ok("204", None, "deleted"), errors=("409",),
                      tag="paygates")},
    "/api/v1/paygates/{paygate_id}/secret": {
        "parameters": [_PG],
        "get": _op("Current origin secret (and the previous one during its grace period)",
                   _ok("200", _ref("Secret")), tag="secrets"),
        "patch": _op("Set a custom secret", _ok("200", _ref("Secret")),
                     body=_ref("SecretInput"), errors=("400", "422"), tag="secrets")},
    "/api/v1/paygates/{paygate_id}/secret/regenerate": {
        "parameters": [_PG],
        "post": _op("Random new secret", _ok("200", _ref("Secret")), body=_ref("Rotate"),
                    errors=("400", "422"), tag="secrets")},
    "/api/v1/webhooks": {
        "get": _op("List webhook endpoints", _ok("200", _list("webhooks", "Webhook")),
                   tag="webhooks"),
        "post": _op("Add an endpoint; its signing secret is shown once",
                    _ok("201", _ref("WebhookWithSecret"), "created"),
                    body=_ref("WebhookInput"), errors=("400", "422"), tag="webhooks")},
    "/api/v1/webhooks/{webhook_id}": {
        "parameters": [_WH],
        "get": _op("Get an endpoint", _ok("200", _ref("Webhook")), tag="webhooks"),
        "patch": _op("Change an endpoint", _ok("200", _ref("Webhook")),
                     body=_ref("WebhookInput"), errors=("400", "422"), tag="webhooks"),
        "delete": _op("Delete an endpoint", _ok("204", None, "deleted"), tag="webhooks")},
    "/api/v1/webhooks/{webhook_id}/deliveries": {
        "parameters": [_WH],
        "get": _op("Deliveries, newest first", _ok("200", _list("deliveries", "Delivery")),
                   params=[_query("state", {"enum": ["pending", "delivered", "failed"]})],
                   errors=("422",), tag="webhooks")},
    "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver": {
        "parameters": [_WH, _path_param("delivery_id")],
        "post": _op("Send a failed (or delivered) delivery again",
                    _ok("202", _obj(["id", "state"], {"id": _STR, "state": _STR}), "queued"),
                    tag="webhooks")},
    "/api/v1/paygates/{paygate_id}/files": {
        "parameters": [_PG],
        "get": _op("Files of a file paygate (kind = files)", _ok("200", _list("files", "File")),
                   errors=("422",), tag="files")},
    "/api/v1/paygates/{paygate_id}/files/{name}": {
        "parameters": [_PG, _path_param("name")],
        "put": _op("Upload a file (multipart/form-data, part `file`, streamed) or refer to an "
                   "S3 object (JSON); replaces a file of the same name",
                   _ok("201", _ref("File"), "stored"), body=_ref("FileInput"),
                   errors=("400", "422"), tag="files")},
    "/api/v1/usage": {
        "get": _op("Usage and revenue per paygate and period",
                   {"200": {"description": "ok", "content": {
                       "application/json": {"schema": _ref("Usage")},
                       "text/csv": {"schema": _STR}}}},
                   params=[_query("period", {"enum": ["hour", "day"]}),
                           _query("from", _NUM), _query("to", _NUM),
                           _query("paygate", _STR), _query("top", _INT),
                           _query("format", {"enum": ["json", "csv"]})],
                   errors=("422",), tag="usage")},
    "/api/v1/tokens/{token_id}": {
        "parameters": [_path_param("token_id")],
        "get": _op("A prepaid token's plan, quota and state", _ok("200", _ref("Token")),
                   tag="tokens"),
        "delete": _op("Revoke a prepaid token", _ok("200", _ref("Token")), tag="tokens")},
}

_SIGNED = [{"X-PAY-Key": [], "X-PAY-Timestamp": [], "X-PAY-Signature": []}]

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Tollgate admin API", "version": "1",
             "description": "Signed with X-PAY-Key, X-PAY-Timestamp (unix seconds, within "
             "300 s) and X-PAY-Signature = lowercase hex HMAC-SHA256(secret, "
             "`<ts>.<METHOD>.<path without query>.<sha256hex(body)>`). A signature is "
             "accepted once."},
    "security": _SIGNED,
    "paths": PATHS,
    "components": {"schemas": SCHEMAS, "securitySchemes": {
        name: {"type": "apiKey", "in": "header", "name": name}
        for name in ("X-PAY-Key", "X-PAY-Timestamp", "X-PAY-Signature")}},
}


async def openapi(_request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi)
