"""Paid files in S3-compatible storage: paying answers a real S3 presigned URL, checked
against moto's S3 server started on loopback by the test."""

from __future__ import annotations

import socket
import time

import pytest

from tests.gateway.admin_support import make_key, postgres_server, store_config  # noqa: F401
from tests.gateway.admin_support import Signer
from tests.gateway.x402_support import PRICE, requirement_from, sign_payment, token_balance, x402_config



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    import botocore.session

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=s3_server, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="media")
    client.put_object(Bucket="media", Key="albums/one.zip", Body=b"0123456789" * 100,
                      ContentType="application/zip")
    return s3_server


async def _s3_paygate(s3, gateway, origin, http, store_config, cfg):
    o = await origin()
    cfg["paygates"][0]["target"] = o.url
    cfg["files"] = {"s3_endpoint_url": s3, "url_ttl_seconds": 120}
    g = await gateway({**store_config, **cfg})
    key_id, secret = await make_key(g, provider="acme")
    signer = Signer(http, g.url, key_id, secret)
    made = await signer.call("PUT", "/api/v1/paygates/dl/files/one.zip",
                             {"bucket": "media", "key": "albums/one.zip",
                              "content_type": "application/zip"})
    assert made.status == 201, made.text
    bad = await signer.call("PUT", "/api/v1/paygates/dl/files/two.zip", {"bucket": ""})
    assert bad.status == 422
    return g


async def _fetch(http, s3, link):
    assert link["url"].startswith(s3 + "/media/albums/one.zip?")
    assert "X-Amz-Signature=" in link["url"] and "X-Amz-Expires=120" in link["url"]
    assert int(time.time()) + 100 <= link["expires_at"] <= int(time.time()) + 121
    async with http.get(link["url"]) as r:
        assert r.status == 200
        assert await r.read() == b"0123456789" * 100
    async with http.get(link["url"], headers={"Range": "bytes=5-9"}) as r:
        assert r.status == 206 and await r.read() == b"56789"


async def test_a_free_s3_file_answers_a_presigned_url(s3, gateway, origin, http, store_config):
    cfg = {"paygates": [{"id": "dl", "prefix": "/dl", "target": "http://127.0.0.1:9",
                         "kind": "files", "provider": "acme", "default_units": 0}]}
    g = await _s3_paygate(s3, gateway, origin, http, store_config, cfg)
    async with http.get(g.url + "/dl/one.zip") as r:
        assert r.status == 200, await r.text()
        await _fetch(http, s3, await r.json())
    async with http.get(g.url + "/dl/absent.zip") as r:
        assert r.status == 404


@pytest.mark.usefixtures("settler_key")
async def test_paying_for_an_s3_file_answers_a_presigned_url(s3, gateway, origin, http,
                                                            evm_devnet, store_config):
    cfg = x402_config(evm_devnet, "http://127.0.0.1:9", prefix="/dl", paygate_id="dl",
                      provider="acme", kind="files", rules=[])
    g = await _s3_paygate(s3, gateway, origin, http, store_config, cfg)

    async with http.get(g.url + "/dl/one.zip") as r:
        assert r.status == 402
        req = requirement_from(r.headers["PAYMENT-REQUIRED"])
    payer = evm_devnet.payers[5]
    before = token_balance(evm_devnet, payer.address)
    async with http.get(g.url + "/dl/one.zip",
                        headers={"PAYMENT-SIGNATURE": sign_payment(evm_devnet, payer, req)}) as r:
        assert r.status == 200, await r.text()
        link = await r.json()
    assert token_balance(evm_devnet, payer.address) == before - PRICE
    await _fetch(http, s3, link)
