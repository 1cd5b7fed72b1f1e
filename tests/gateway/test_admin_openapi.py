"""The OpenAPI document cannot drift from the server: every route the admin API has is
documented (and nothing else is), and a walker calls every documented operation against
a running gateway, checking that the status is a documented one and that the body fits
the documented schema; every operation also answers its documented 401 unsigned, and
each one with an id in its path its documented 404 for an unknown id."""

from __future__ import annotations

import json
import re

from aiohttp import web

from tests.gateway.admin_support import Signer, make_key, postgres_server, store_config  # noqa: F401


def check(schema: dict, value, doc: dict, where: str = "$") -> None:
    """A small JSON Schema check (the subset the document uses)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return check(doc["components"]["schemas"][name], value, doc, where)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return check(option, value, doc, where)
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{where}: matches no option: {errors}")
    for part in schema.get("allOf", []):
        check(part, value, doc, where)
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool,
             "null": type(None), "integer": int, "number": (int, float)}
    if kind:
        assert isinstance(value, types[kind]) and not (
            kind in ("integer", "number") and isinstance(value, bool)), \
            f"{where}: {value!r} is not {kind}"
    if "pattern" in schema:
        assert re.search(schema["pattern"], value), f"{where}: {value!r} !~ {schema['pattern']}"
    if kind == "object":
        for name in schema.get("required", []):
            assert name in value, f"{where}: missing {name}"
        props = schema.get("properties", {})
        for name, v in value.items():
            if name in props:
                check(props[name], v, doc, f"{where}.{name}")
            else:
                assert schema.get("additionalProperties", True) is not False, \
                    f"{where}: unexpected {name}"
    if kind == "array" and "items" in schema:
        for i, v in enumerate(value):
            check(schema["items"], v, doc, f"{where}[{i}]")


def server_operations(app: web.Application) -> set[tuple[str, str]]:
    return {(route.method.lower(), route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None and route.resource.canonical.startswith("/api/v1/")
            and route.method != "HEAD"}


async def test_every_operation_is_documented_and_answers_as_documented(gateway, origin,
                                                                      http, store_config):
    o = await origin()
    gw = await gateway({**store_config, "paygates": [{"id": "files", "prefix": "/files", "target": o.url,
                                      "default_units": 0, "provider": "acme"}]})
    async with http.get(gw.url + "/api/v1/openapi.json") as r:  # public
        assert r.status == 200
        doc = await r.json()
    assert doc["openapi"] == "3.1.0"
    documented = {(m, p) for p, item in doc["paths"].items() for m in item
                  if m != "parameters"}
    served = server_operations(gw.app) - {("get", "/api/v1/openapi.json")}
    assert served == documented

    key_id, secret = await make_key(gw, provider="acme")
    c = Signer(http, gw.url, key_id, secret)
    seen: dict[tuple[str, str], set[int]] = {}

    async def call(method: str, template: str, path: str, body=None, want: int | None = None):
        answer = await c.call(method.upper(), path, body)
        responses = doc["paths"][template][method]["responses"]
        assert str(answer.status) in responses, (method, path, answer.status, answer.text)
        if want is not None:
            assert answer.status == want, (method, path, answer.text)
        content = responses[str(answer.status)].get("content", {})
        ctype = answer.headers.get("Content-Type", "").split(";")[0]
        if "application/json" in content and ctype == "application/json":
            check(content["application/json"]["schema"], answer.body, doc,
                  f"{method} {template}")
        else:
            assert not content or ctype in content, (method, path, ctype)
        seen.setdefault((method, template), set()).add(answer.status)
        return answer

    P, W = "/api/v1/paygates", "/api/v1/webhooks"
    new_pg = {"id": "weather", "prefix": "/weather", "target": o.url, "default_units": 0}
    await call("get", "/api/v1/keys", "/api/v1/keys", want=200)
    made = await call("post", "/api/v1/keys", "/api/v1/keys", {"provider": "acme"}, want=201)
    kid = made.body["id"]
    await call("post", "/api/v1/keys/{key_id}/rotate", f"/api/v1/keys/{kid}/rotate",
               {"grace_seconds": 10}, want=200)
    await call("delete", "/api/v1/keys/{key_id}", f"/api/v1/keys/{kid}", want=200)
    await call("post", "/api/v1/keys", "/api/v1/keys", {"operator": "yes"}, want=422)
    await call("get", P, P, want=200)
    await call("post", P, P, new_pg, want=201)
    await call("post", P, P, new_pg, want=409)
    await call("post", P, P, {**new_pg, "id": "x", "target": "ftp://x"}, want=422)
    one = P + "/{paygate_id}"
    await call("get", one, P + "/weather", want=200)
    await call("put", one, P + "/weather", {**new_pg, "description": "d"}, want=200)
    await call("patch", one, P + "/weather", {"description": "e"}, want=200)
    await call("patch", one, P + "/files", {"description": "e"}, want=409)
    await call("get", one + "/secret", P + "/weather/secret", want=200)
    await call("post", one + "/secret/regenerate", P + "/weather/secret/regenerate", {},
               want=200)
    await call("patch", one + "/secret", P + "/weather/secret", {"secret": "s" * 30},
               want=200)
    await call("patch", one + "/secret", P + "/weather/secret", {"secret": "s"}, want=422)
    await call("get", W, W, want=200)
    hook = await call("post", W, W, {"url": "http://127.0.0.1:9/h"}, want=201)
    await call("post", W, W, {"url": "nope"}, want=422)
    wid = hook.body["id"]
    await call("get", W + "/{webhook_id}", f"{W}/{wid}", want=200)
    await call("patch", W + "/{webhook_id}", f"{W}/{wid}", {"enabled": False}, want=200)
    await call("get", W + "/{webhook_id}/deliveries", f"{W}/{wid}/deliveries", want=200)
    await call("get", W + "/{webhook_id}/deliveries", f"{W}/{wid}/deliveries?state=x",
               want=422)
    await call("post", W + "/{webhook_id}/deliveries/{delivery_id}/redeliver",
               f"{W}/{wid}/deliveries/dlv_none/redeliver", want=404)
    await call("get", one + "/files", P + "/weather/files", want=422)  # not a file paygate
    await call("put", one + "/files/{name}", P + "/weather/files/a.pdf",
               {"bucket": "b", "key": "k"}, want=422)
    await call("get", "/api/v1/usage", "/api/v1/usage", want=200)
    await call("get", "/api/v1/usage", "/api/v1/usage?format=csv", want=200)
    await call("get", "/api/v1/usage", "/api/v1/usage?period=year", want=422)
    await call("get", "/api/v1/tokens/{token_id}", "/api/v1/tokens/tok_none", want=404)
    await call("delete", "/api/v1/tokens/{token_id}", "/api/v1/tokens/tok_none", want=404)
    await call("delete", W + "/{webhook_id}", f"{W}/{wid}", want=204)
    await call("delete", one, P + "/weather", want=204)

    assert set(seen) == documented  # the walk reached every operation
    for method, template in sorted(documented):
        path = template.replace("{", "").replace("}", "_unknown")
        if "{" in template:
            await call(method, template, path.replace("paygate_id_unknown", "nothing"),
                       {} if method in ("post", "put", "patch") else None, want=404)
        unsigned = await http.request(method.upper(), gw.url + path,
                                      data=json.dumps({}).encode())
        assert unsigned.status == 401
        assert "401" in doc["paths"][template][method]["responses"]
        check({"$ref": "#/components/schemas/Error"}, await unsigned.json(), doc)
        unsigned.release()
