"""The README's admin API examples work as printed: the Python signer and the bash
(openssl + curl) one create and read paygates on a running gateway, and the webhook
receiver accepts a delivery signed by the gateway and refuses a forged one."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.origin import sign_webhook
from tests.gateway.admin_support import make_key

ROOT = Path(__file__).resolve().parents[2]


def _block(marker: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```{lang}\n(.*?)```", text, re.S)
    assert m, f"README has no {marker} block"
    return m.group(1)


async def test_python_and_bash_signing_examples(gateway, origin):
    o = await origin()
    gw = await gateway({"paygates": []})
    key_id, secret = await make_key(gw, provider="acme")
    scope: dict = {}
    exec(_block("admin-sign-python", "python"), scope)  # noqa: S102 - the README's own code
    listed = await asyncio.to_thread(scope["admin_call"], gw.url, key_id, secret, "GET",
                                     "/api/v1/paygates")
    assert listed == {"paygates": []}

    script = _block("admin-sign-bash", "bash").replace("https://api.example.com", o.url)
    out = await asyncio.to_thread(subprocess.run, ["bash", "-c", script], capture_output=True,
                                  text=True, timeout=30, check=True,
                                  env={"KEY": key_id, "SK": secret, "URL": gw.url,
                                       "PATH": "/usr/bin:/bin"})
    made = json.loads(out.stdout)
    assert made["id"] == "weather" and made["provider"] == "acme", out.stdout
    again = await asyncio.to_thread(scope["admin_call"], gw.url, key_id, secret, "GET",
                                    "/api/v1/paygates/weather")
    assert again["target"] == o.url


async def test_webhook_receiver_example():
    scope: dict = {}
    exec(_block("webhook-receiver-python", "python"), scope)  # noqa: S102
    scope["SECRETS"][:] = ["whsec_test"]
    app: web.Application = scope["app"]
    async with TestClient(TestServer(app)) as client:
        body = json.dumps({"id": "evt_1", "type": "paygate.changed", "data": {}}).encode()
        good = {"X-Tollgate-Webhook-Signature": sign_webhook("whsec_test", body)}
        r = await client.post("/tollgate-webhook", data=body, headers=good)
        assert r.status == 200
        bad = {"X-Tollgate-Webhook-Signature": sign_webhook("another", body)}
        r = await client.post("/tollgate-webhook", data=body, headers=bad)
        assert r.status == 400
    assert scope["seen"] == {"evt_1"}
