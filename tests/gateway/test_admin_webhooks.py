"""Webhooks through real HTTP: receivers are aiohttp servers on loopback that answer,
are down, slow, or answer 500; deliveries are signed, retried, end `failed` visibly,
can be redelivered, and are delivered once across two instances on one PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.origin import WebhookSignatureError, verify_webhook
from tests.gateway.admin_support import Signer, fresh_pg_url, make_key, postgres_server, store_config  # noqa: F401


FAST = {"webhook_interval_seconds": 0.02, "webhook_backoff_seconds": 0.01,
        "webhook_backoff_max_seconds": 0.05, "webhook_max_attempts": 3,
        "webhook_timeout_seconds": 5}


class Receiver:
    """Records every delivery; `mode` decides the answer: ok | fail (500) | slow |
    first-fails (500 to an event's first try, then ok; `tries` counts per event id)."""

    def __init__(self) -> None:
        self.got: list[tuple[dict, bytes]] = []
        self.tries: Counter = Counter()
        self.mode = "ok"
        self.release = asyncio.Event()
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        event_id = request.headers.get("X-Tollgate-Webhook-Id", "")
        self.tries[event_id] += 1
        if self.mode == "first-fails" and self.tries[event_id] == 1:
            return web.json_response({"error": "later"}, status=500)
        self.got.append((dict(request.headers), body))
        if self.mode == "fail":
            return web.json_response({"error": "boom"}, status=500)
        if self.mode == "slow":
            await self.release.wait()
        return web.json_response({"ok": True})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.server = TestServer(app, host="127.0.0.1", port=0)
        await self.server.start_server(shutdown_timeout=0.5)
        return f"http://127.0.0.1:{self.server.port}/hook"

    def events(self) -> list[dict]:
        return [json.loads(body) for _, body in self.got]


@pytest.fixture
async def receiver():
    r = Receiver()
    yield r
    r.release.set()
    if r.server:
        await r.server.close()


async def until(check, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


def _pg(origin_url: str, pid: str = "weather") -> dict:
    return {"id": pid, "prefix": f"/{pid}", "target": origin_url, "default_units": 0}


@pytest.fixture
async def setup(gateway, origin, http, store_config):
    o = await origin()
    gw = await gateway({**store_config, "admin": FAST})
    key_id, secret = await make_key(gw, provider="acme")
    return gw, o, Signer(http, gw.url, key_id, secret)


async def test_events_are_signed_and_delivered(setup, receiver, http, gateway):
    gw, o, client = setup
    url = await receiver.start()
    made = await client.call("POST", "/api/v1/webhooks",
                             {"url": url, "events": ["paygate.changed", "secret.rotated"]})
    assert made.status == 201, made.text
    secret = made.body["secret"]
    assert (await client.call("POST", "/api/v1/paygates", _pg(o.url))).status == 201
    assert (await client.call("POST", "/api/v1/paygates/weather/secret/regenerate",
                              {})).status == 200

    async def two():
        return len(receiver.got) >= 2
    await until(two)
    kinds = [e["type"] for e in receiver.events()]
    assert sorted(kinds) == ["paygate.changed", "secret.rotated"]
    for headers, body in receiver.got:
        verify_webhook(secret, headers["X-Tollgate-Webhook-Signature"], body)
        with pytest.raises(WebhookSignatureError):
            verify_webhook("another-secret", headers["X-Tollgate-Webhook-Signature"], body)
        with pytest.raises(WebhookSignatureError):
            verify_webhook(secret, headers["X-Tollgate-Webhook-Signature"], body + b" ")
        event = json.loads(body)
        assert headers["X-Tollgate-Webhook-Id"] == event["id"]
        assert event["paygate"] == "weather"
    rotated = next(e for e in receiver.events() if e["type"] == "secret.rotated")
    current = (await client.call("GET", "/api/v1/paygates/weather/secret")).body["current"]
    assert current not in json.dumps(rotated)  # no secret in the event
    deliveries = await client.call("GET", f"/api/v1/webhooks/{made.body['id']}/deliveries")
    assert [d["state"] for d in deliveries.body["deliveries"]] == ["delivered", "delivered"]
    # another provider's endpoint hears nothing of acme's paygates, and cannot see this one
    other_id, other_secret = await make_key(gw, provider="globex")
    other = Signer(http, gw.url, other_id, other_secret)
    assert (await other.call("GET", f"/api/v1/webhooks/{made.body['id']}")).status == 404
    assert (await other.call("GET", "/api/v1/webhooks")).body["webhooks"] == []


async def test_failing_receiver_retries_then_failed_then_redeliver(setup, receiver):
    gw, o, client = setup
    url = await receiver.start()
    receiver.mode = "fail"
    made = await client.call("POST", "/api/v1/webhooks", {"url": url})
    hook = made.body["id"]
    assert (await client.call("POST", "/api/v1/paygates", _pg(o.url))).status == 201

    async def failed():
        r = await client.call("GET", f"/api/v1/webhooks/{hook}/deliveries?state=failed")
        return len(r.body["deliveries"]) == 1
    await until(failed)
    assert len(receiver.got) == 3  # webhook_max_attempts, then no more
    ids = {h["X-Tollgate-Webhook-Id"] for h, _ in receiver.got}
    assert len(ids) == 1  # the same event each time
    d = (await client.call("GET", f"/api/v1/webhooks/{hook}/deliveries")).body["deliveries"][0]
    assert d["attempts"] == 3 and d["last_status"] == 500 and d["state"] == "failed"

    receiver.mode = "ok"
    again = await client.call("POST",
                              f"/api/v1/webhooks/{hook}/deliveries/{d['id']}/redeliver")
    assert again.status == 202

    async def delivered():
        r = await client.call("GET", f"/api/v1/webhooks/{hook}/deliveries?state=delivered")
        return len(r.body["deliveries"]) == 1
    await until(delivered)
    assert len(receiver.got) == 4
    assert {h["X-Tollgate-Webhook-Id"] for h, _ in receiver.got} == ids
    missing = await client.call("POST",
                                f"/api/v1/webhooks/{hook}/deliveries/dlv_nope/redeliver")
    assert missing.status == 404


async def metric(http, gw, name: str, **labels) -> float:
    """One sample of the gateway's /metrics (served on its main port here)."""
    from prometheus_client.parser import text_string_to_metric_families
    async with http.get(gw.url + "/metrics") as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name} {labels} not in /metrics")


async def test_receiver_down_ends_failed_and_nothing_is_lost(gateway, origin, http,
                                                              store_config):
    o = await origin()
    gw = await gateway({**store_config, "admin": FAST,
                        "metrics": {"enabled": True, "port": None}})
    key_id, secret = await make_key(gw, provider="acme")
    client = Signer(http, gw.url, key_id, secret)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there
    made = await client.call("POST", "/api/v1/webhooks", {"url": f"http://127.0.0.1:{port}/h"})
    hook = made.body["id"]
    assert (await client.call("POST", "/api/v1/paygates", _pg(o.url))).status == 201

    async def failed():
        r = await client.call("GET", f"/api/v1/webhooks/{hook}/deliveries")
        return [d["state"] for d in r.body["deliveries"]] == ["failed"]
    await until(failed)
    d = (await client.call("GET", f"/api/v1/webhooks/{hook}/deliveries")).body["deliveries"][0]
    assert d["attempts"] == 3 and d["last_status"] is None and d["last_error"]
    # The backlog gauge tells an operator: nothing pending any more, one delivery failed.
    assert await metric(http, gw, "tollgate_store_webhook_deliveries", state="failed") == 1
    assert await metric(http, gw, "tollgate_store_webhook_deliveries", state="pending") == 0


async def test_slow_receiver_times_out_and_is_retried(gateway, origin, http, receiver,
                                                      store_config):
    o = await origin()
    gw = await gateway({**store_config, "admin": {**FAST, "webhook_timeout_seconds": 0.2,
                                                  "webhook_max_attempts": 2}})
    key_id, secret = await make_key(gw, provider="acme")
    client = Signer(http, gw.url, key_id, secret)
    url = await receiver.start()
    receiver.mode = "slow"
    hook = (await client.call("POST", "/api/v1/webhooks", {"url": url})).body["id"]
    assert (await client.call("POST", "/api/v1/paygates", _pg(o.url))).status == 201

    async def failed():
        r = await client.call("GET", f"/api/v1/webhooks/{hook}/deliveries?state=failed")
        return len(r.body["deliveries"]) == 1
    await until(failed)
    d = (await client.call("GET", f"/api/v1/webhooks/{hook}/deliveries")).body["deliveries"][0]
    assert d["attempts"] == 2 and "no answer" in d["last_error"]
    assert len(receiver.got) == 2


async def test_private_webhook_urls_are_refused_unless_allowed(gateway, http, store_config):
    gw = await gateway({**store_config, "server": {"allow_private_targets": False}})
    key_id, secret = await make_key(gw, provider="acme")
    client = Signer(http, gw.url, key_id, secret)
    for url in ("http://127.0.0.1:9/h", "http://169.254.169.254/latest", "http://localhost/h",
                "http://10.0.0.1/h", "http://[::ffff:127.0.0.1]/h"):
        answer = await client.call("POST", "/api/v1/webhooks", {"url": url})
        assert answer.status == 422, url
        assert answer.body["errors"][0].startswith("url: ")
    bad = await client.call("POST", "/api/v1/webhooks",
                            {"url": "https://hooks.example", "events": ["nope"]})
    assert bad.status == 422 and bad.body["errors"][0].startswith("events: ")
    assert (await client.call("GET", "/api/v1/webhooks")).body["webhooks"] == []


async def test_two_instances_deliver_each_event_once(gateway, origin, http, postgres_server,
                                                     tmp_path, receiver):
    url_db = await fresh_pg_url(postgres_server)
    o = await origin()
    cfg = {"database": {"url": url_db, "master_key_file": str(tmp_path / "shared.key")},
           "admin": {**FAST, "poll_seconds": 0.05, "webhook_max_attempts": 8}}
    a, b = await gateway(cfg), await gateway(cfg)
    key_id, secret = await make_key(a, provider="acme")
    client = Signer(http, a.url, key_id, secret)
    url = await receiver.start()
    hook = (await client.call("POST", "/api/v1/webhooks", {"url": url})).body["id"]
    receiver.mode = "first-fails"  # retries of different instances interleave
    n = 12
    for i in range(n):
        assert (await client.call("POST", "/api/v1/paygates",
                                  _pg(o.url, f"g{i}"))).status == 201

    async def all_delivered():
        r = await client.call("GET", f"/api/v1/webhooks/{hook}/deliveries?state=delivered")
        return len(r.body["deliveries"]) == n
    await until(all_delivered, timeout=60)
    ids = [h["X-Tollgate-Webhook-Id"] for h, _ in receiver.got]
    assert len(ids) == n and len(set(ids)) == n  # each event delivered exactly once
    assert {json.loads(b)['type'] for _, b in receiver.got} == {'paygate.changed'}
    assert sorted(receiver.tries.values()) == [2] * n  # one refused try, one delivery


def test_verify_webhook_window_secrets_and_malformed_headers():
    from gateway.origin import sign_webhook
    body = b'{"type": "payment.settled"}'
    header = sign_webhook("new-secret", body, timestamp=1_000_000)
    assert verify_webhook(["new-secret", "old"], header, body, now=1_000_100) == 1_000_000
    assert verify_webhook(["old", "new-secret"], header, body, now=1_000_000 - 300)
    for bad_now in (1_000_301, 999_699):
        with pytest.raises(WebhookSignatureError, match="tolerance"):
            verify_webhook("new-secret", header, body, now=bad_now)
    with pytest.raises(WebhookSignatureError):
        verify_webhook("new-secret", header, body, tolerance=10, now=1_000_011)
    for malformed in (None, "", "t=1000000", "v1=ab", "t=abc,v1=00", "t=-5,v1=00"):
        with pytest.raises(WebhookSignatureError):
            verify_webhook("new-secret", malformed, body, now=1_000_000)
    with pytest.raises(WebhookSignatureError):
        verify_webhook([], header, body, now=1_000_000)


async def test_pending_deliveries_survive_a_restart(gateway, origin, http, postgres_server,
                                                    tmp_path, receiver):
    url_db = await fresh_pg_url(postgres_server)
    o = await origin()
    cfg = {"database": {"url": url_db, "master_key_file": str(tmp_path / "shared.key")},
           "admin": {**FAST, "webhook_max_attempts": 1000}}
    a = await gateway(cfg)
    key_id, secret = await make_key(a, provider="acme")
    client = Signer(http, a.url, key_id, secret)
    url = await receiver.start()
    receiver.mode = "fail"
    hook = (await client.call("POST", "/api/v1/webhooks", {"url": url})).body["id"]
    assert (await client.call("POST", "/api/v1/paygates", _pg(o.url))).status == 201

    async def tried():
        return len(receiver.got) >= 1
    await until(tried)
    await a.server.close()  # the instance goes away with the delivery still pending
    receiver.mode = "ok"
    b = await gateway(cfg)
    on_b = Signer(http, b.url, key_id, secret)

    async def delivered():
        r = await on_b.call("GET", f"/api/v1/webhooks/{hook}/deliveries?state=delivered")
        return len(r.body["deliveries"]) == 1
    await until(delivered)
    assert {json.loads(body)["type"] for _, body in receiver.got} == {"paygate.changed"}
