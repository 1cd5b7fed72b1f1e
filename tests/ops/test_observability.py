"""Metrics, request ids and structured logs of a real `tollgate serve` process.

One process, JSON logs, /metrics on its own listener, three paygates: `sky` (x402,
settled after the call), `def` (x402, deferred), `ses` (Hedera sessions), and `free`
(origin secret sent in plain text, the easiest secret to leak). The test pays on each,
then reads the metrics and greps the whole log for every secret it knows."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.session_support import KEY_ENV, call_headers, open_session, session_config
from tests.gateway.test_x402_settlement import challenge_req
from tests.gateway.x402_support import PRICE, SETTLER_ENV, sign_payment, x402_config
from tests.ops.cluster import Cluster, free_port, fresh_database
from tests.ops.test_instances import Recorder, eventually

MASTER_ENV = "TOLLGATE_TEST_OPS_MASTER"
MASTER_KEY = "18YYa4T7VhV34NGqxQCDFi3MfzrkcuXPrbrROW5QwL0="  # a Fernet key, for this test only
FREE_SECRET_ENV = "TOLLGATE_TEST_FREE_SECRET"
FREE_SECRET = "free-origin-secret-6f1c0b6e9d"


@pytest.fixture(scope="module")
async def observed(postgres_server, evm_devnet, hedera_devnet, tmp_path_factory):
    origin = Recorder()
    url = await origin.start()
    config = x402_config(evm_devnet, url, evm_extra={"deferred_max_timeout_seconds": 60})
    sessions = session_config(hedera_devnet, url, paygate_id="ses", prefix="/ses")
    config["assets"].update(sessions["assets"])
    config["hedera"] = sessions["hedera"]
    config["paygates"] += [
        {**config["paygates"][0], "id": "def", "prefix": "/def", "settlement": "deferred"},
        *sessions["paygates"],
        {"id": "free", "prefix": "/free", "target": url, "default_units": 0,
         "origin_auth": {"mode": "plaintext", "secret_env": FREE_SECRET_ENV}},
    ]
    metrics_port = free_port()
    config["server"] = {"settlement_interval_seconds": 0.2}
    config["metrics"] = {"enabled": True, "port": metrics_port}
    config["logging"] = {"format": "json"}
    db_url = await fresh_database(postgres_server)
    env = {SETTLER_ENV: evm_devnet.settler.private_key,
           KEY_ENV: hedera_devnet.account("spender").private_key,
           MASTER_ENV: MASTER_KEY, FREE_SECRET_ENV: FREE_SECRET}
    tmp = tmp_path_factory.mktemp("observed")
    cluster = Cluster(config, db_url, tmp, instances=1, env=env)
    cluster.config_path.write_text(cluster.config_path.read_text().replace(
        '"TOLLGATE_TEST_UNSET_MASTER"', json.dumps(MASTER_ENV)))
    async with cluster:
        cluster.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield cluster, origin
    await origin.server.close()


async def scrape(http, url: str) -> dict[tuple[str, tuple], float]:
    async with http.get(url) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_request_id_is_kept_or_made_sent_to_the_origin_and_returned(observed, http):
    cluster, origin = observed
    base = cluster.url(0)
    async with http.get(base + "/free/a", headers={"X-Request-Id": "caller-42.a:b"}) as r:
        assert r.headers["X-Request-Id"] == "caller-42.a:b"
    assert origin.requests[-1][1]["X-Request-Id"] == "caller-42.a:b"
    for insane in ("x" * 129, "a b", "<script>", ""):
        async with http.get(base + "/free/b", headers={"X-Request-Id": insane}) as r:
            made = r.headers["X-Request-Id"]
        assert made != insane and len(made) == 32
        assert origin.requests[-1][1]["X-Request-Id"] == made  # the origin gets the same id
    async with http.get(base + "/sky/v1/flights") as r:  # a 402 carries one too
        assert r.status == 402 and len(r.headers["X-Request-Id"]) == 32
    async with http.get(base + "/nowhere") as r:
        assert r.status == 404 and r.headers["X-Request-Id"]


async def test_metrics_count_requests_payments_exposure_and_chain_calls(
        observed, http, evm_devnet, hedera_devnet, hedera_account):
    cluster, origin = observed
    base = cluster.url(0)
    before = await scrape(http, cluster.metrics_url)
    req = await challenge_req(http, base + "/sky/v1/flights")
    async with http.get(base + "/sky/v1/flights", headers={
            "PAYMENT-SIGNATURE": sign_payment(evm_devnet, evm_devnet.payers[1], req)}) as r:
        assert r.status == 200
    with evm_devnet_automine_paused(evm_devnet):
        dreq = await challenge_req(http, base + "/def/v1/flights")
        async with http.get(base + "/def/v1/flights", headers={
                "PAYMENT-SIGNATURE": sign_payment(evm_devnet, evm_devnet.payers[2], dreq)}) as r:
            assert r.status == 200
        held = await scrape(http, cluster.metrics_url)
        # Served, not yet settled (blocks are not being mined): the exposure shows it.
        assert value(held, "tollgate_store_deferred_exposure_atomic",
                     network=evm_devnet.network, asset=evm_devnet.token_address) == PRICE
    owner = hedera_account()

    class Gw:
        url = base

    token = await open_session(http, Gw, hedera_devnet, owner, allowance=10 * 5_000_000,
                               paygate="ses")
    async with http.get(base + "/ses/v1/flights", headers=call_headers(token)) as r:
        assert r.status == 200

    async def deferred_settled():
        s = await scrape(http, cluster.metrics_url)
        return value(s, "tollgate_store_payments", rail="x402-evm", settlement="deferred",
                     state="settled") == 1

    await eventually(deferred_settled, "the deferred payment settled")
    after = await scrape(http, cluster.metrics_url)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("tollgate_requests_total", paygate="sky", rail="x402-evm", status="200") == 1
    assert grew("tollgate_requests_total", paygate="sky", rail="none", status="402") >= 1
    assert grew("tollgate_requests_total", paygate="ses", rail="hedera-session",
                status="200") == 1
    assert value(after, "tollgate_store_payments", rail="x402-evm", settlement="after",
                 state="settled") == 1
    assert value(after, "tollgate_store_deferred_exposure_atomic",
                 network=evm_devnet.network, asset=evm_devnet.token_address) == 0
    assert value(after, "tollgate_store_settlement_lag_seconds_count") >= 1
    assert value(after, "tollgate_store_session_unpulled_atomic") == 5_000_000
    assert value(after, "tollgate_store_up") == 1
    assert grew("tollgate_chain_calls_total", service="evm_rpc", call="eth_sendRawTransaction",
                outcome="ok") >= 2
    assert sum(v for (n, labels), v in after.items() if n == "tollgate_chain_calls_total"
               and dict(labels)["service"] == "hedera_mirror") >= 1
    # Bounded labels: no payer, token or path reaches a label value.
    label_values = {v for (_, labels) in after for _, v in labels}
    for payer in (evm_devnet.payers[1].address, owner.account_id, token, "/v1/flights"):
        assert not any(payer.lower() in v.lower() for v in label_values), payer


class evm_devnet_automine_paused:
    def __init__(self, devnet) -> None:
        self.devnet = devnet

    def __enter__(self):
        self.devnet.request("evm_setAutomine", [False])

    def __exit__(self, *exc):
        self.devnet.request("evm_setAutomine", [True])
        self.devnet.request("evm_mine")


async def test_json_logs_carry_the_request_and_never_a_secret(
        observed, http, evm_devnet, hedera_devnet, hedera_account):
    cluster, origin = observed
    base = cluster.url(0)
    req = await challenge_req(http, base + "/sky/v1/flights")
    header = sign_payment(evm_devnet, evm_devnet.payers[3], req)
    async with http.get(base + "/sky/v1/flights?api_key=caller-query-secret",
                        headers={"PAYMENT-SIGNATURE": header, "X-Request-Id": "log-probe-1"}) as r:
        assert r.status in (200, 409)
    owner = hedera_account()

    class Gw:
        url = base

    token = await open_session(http, Gw, hedera_devnet, owner, allowance=3 * 5_000_000,
                               paygate="ses")
    for _ in range(4):  # the last one does not fit: 402
        async with http.get(base + "/ses/v1/flights", headers=call_headers(token)) as r:
            pass
    async with http.get(base + "/ses/v1/flights", headers=call_headers("not-a-token")) as r:
        assert r.status in (401, 402, 403)
    async with http.get(base + "/free/x", headers={"X-Request-Id": "log-probe-2"}) as r:
        assert r.status == 200
    await asyncio.sleep(0.5)  # let the process flush its last lines (no assertion on time)

    lines = [line for line in cluster.logs().splitlines() if line.strip()]
    records = []
    for line in lines:
        if line.startswith("tollgate: serving on"):
            continue  # the start-up announcement on stdout
        records.append(json.loads(line))  # every log line is one JSON object
    access = [r for r in records if r["logger"] == "tollgate.access"]
    probe = next(r for r in access if r.get("request_id") == "log-probe-1")
    assert (probe["paygate"], probe["rail"], probe["units"], probe["method"]) == \
        ("sky", "x402-evm", 1, "GET")
    assert probe["payer"].lower() == evm_devnet.payers[3].address.lower()
    assert probe["outcome"] in ("served", "refused") and probe["duration_ms"] >= 0
    assert probe["path"] == "/sky/v1/flights"
    session_lines = [r for r in access if r.get("rail") == "hedera-session"]
    assert {r["outcome"] for r in session_lines} >= {"served", "payment_required"}
    assert any(r.get("payer") == owner.account_id for r in session_lines)

    whole = "\n".join(lines)
    signature = json.loads(__import__("base64").b64decode(header))["payload"]["signature"]
    for secret in (FREE_SECRET, MASTER_KEY, evm_devnet.settler.private_key,
                   evm_devnet.settler.private_key.removeprefix("0x"),
                   hedera_devnet.account("spender").private_key, token, header, signature,
                   signature.removeprefix("0x"), "caller-query-secret"):
        assert secret not in whole, secret[:12]
