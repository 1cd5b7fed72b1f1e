"""Paid files: uploads through the admin API, paid (x402 on anvil) for a signed download
URL, downloads with Range and HEAD; tampered, expired and traversal attempts refused. On
SQLite and PostgreSQL, through real HTTP."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from store.clock import ManualClock
from tests.gateway.admin_support import make_key, postgres_server, store_config  # noqa: F401
from tests.gateway.admin_support import Signer
from tests.gateway.x402_support import PRICE, requirement_from, sign_payment, token_balance, x402_config

pytestmark = pytest.mark.usefixtures("settler_key")

LIMIT = 256 * 1024


def multipart(data: bytes, content_type: str = "application/pdf",
              boundary: str = "tollgate-test-boundary") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"x.bin\"\r\nContent-Type: {content_type}\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Setup:
    def __init__(self, g, signer, files_dir):
        self.g, self.signer, self.files_dir = g, signer, files_dir

    async def upload(self, name: str, data: bytes, content_type: str = "application/pdf",
                     headers: dict | None = None):
        body, ctype = multipart(data, content_type)
        path = f"/api/v1/paygates/dl/files/{name}"
        hdrs = headers or await self.signer.fresh_headers("PUT", path, body)
        async with self.signer.http.put(self.g.url + path, data=body,
                                        headers={**hdrs, "Content-Type": ctype}) as r:
            return r.status, await r.json()

    async def buy(self, http, devnet, payer, name: str) -> dict:
        url = self.g.url + "/dl/" + name
        async with http.get(url) as r:
            assert r.status == 402, await r.text()
            req = requirement_from(r.headers["PAYMENT-REQUIRED"])
        async with http.get(url, headers={"PAYMENT-SIGNATURE": sign_payment(devnet, payer, req)}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


@pytest.fixture
async def files(gateway, origin, http, evm_devnet, store_config, tmp_path):
    async def make(clock=None) -> Setup:
        o = await origin()
        cfg = x402_config(evm_devnet, o.url, prefix="/dl", paygate_id="dl", provider="acme",
                          kind="files", rules=[])
        folder = tmp_path / "files"
        cfg["files"] = {"directory": str(folder), "max_upload_bytes": LIMIT,
                        "url_ttl_seconds": 60}
        g = await gateway({**store_config, **cfg}, clock=clock)
        key_id, secret = await make_key(g, provider="acme")
        return Setup(g, Signer(http, g.url, key_id, secret), folder)
    return make


async def test_upload_pay_and_download_with_ranges(files, http, evm_devnet):
    s = await files()
    data = os.urandom(200_000)
    status, made = await s.upload("report.pdf", data)
    assert status == 201, made
    assert made["sha256"] == hashlib.sha256(data).hexdigest() and made["size"] == len(data)
    payer = evm_devnet.payers[5]
    before = token_balance(evm_devnet, payer.address)
    link = await s.buy(http, evm_devnet, payer, "report.pdf")
    assert token_balance(evm_devnet, payer.address) == before - PRICE
    assert link["url"].startswith(s.g.url + "/files/dl/report.pdf?exp=")
    assert link["expires_at"] >= int(time.time()) + 50
    async with http.get(link["url"]) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/pdf"
        assert await r.read() == data
    async with http.head(link["url"]) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
        assert await r.read() == b""
    cases = {"bytes=5-9": (206, data[5:10], "bytes 5-9/200000"),
             "bytes=-3": (206, data[-3:], "bytes 199997-199999/200000"),
             "bytes=199990-999999": (206, data[199990:], "bytes 199990-199999/200000"),
             "bytes=5-2": (416, None, "bytes */200000"),
             "bytes=-0": (416, None, "bytes */200000"),
             "bytes=200000-": (416, None, "bytes */200000")}
    for rng, (code, body, content_range) in cases.items():
        async with http.get(link["url"], headers={"Range": rng}) as r:
            assert r.status == code, rng
            assert r.headers["Content-Range"] == content_range, rng
            if body is not None:
                assert await r.read() == body and r.headers["Content-Type"] == "application/pdf"


async def test_a_changed_byte_anywhere_in_the_link_is_403(files, http, evm_devnet):
    s = await files()
    assert (await s.upload("a.bin", b"secret bytes"))[0] == 201
    link = (await s.buy(http, evm_devnet, evm_devnet.payers[5], "a.bin"))["url"]
    start = link.index("/files/") + len("/files/")
    for i in range(start, len(link)):
        ch = link[i]
        swapped = "b" if ch != "b" else "c"
        if ch in "/?&=":
            continue  # the route's own separators: another route, not another link
        async with http.get(link[:i] + swapped + link[i + 1:]) as r:
            assert r.status in (403, 404), (i, r.status)
            if r.status == 404:  # only a changed paygate or name with no link behind it
                assert i < link.index("?")
            assert await r.read() != b"secret bytes"
    async with http.get(link + "&x=1") as r:
        assert r.status == 403
    async with http.get(link.split("&sig=")[0]) as r:
        assert r.status == 403


async def test_an_expired_link_is_403_with_a_clear_message(files, http, evm_devnet):
    clock = ManualClock()
    s = await files(clock)
    assert (await s.upload("a.bin", b"12345"))[0] == 201
    link = (await s.buy(http, evm_devnet, evm_devnet.payers[5], "a.bin"))["url"]
    clock.advance(61)
    async with http.get(link) as r:
        assert r.status == 403
        assert "expired" in (await r.json())["message"]


async def test_unknown_file_is_404_before_payment(files, http, evm_devnet):
    s = await files()
    async with http.get(s.g.url + "/dl/missing.pdf") as r:
        assert r.status == 404


async def test_upload_over_the_limit_is_413_and_leaves_nothing(files):
    s = await files()
    status, body = await s.upload("big.bin", os.urandom(LIMIT + 1))
    assert status == 413, body
    left = [p for p in s.files_dir.rglob("*") if p.is_file()]
    assert left == []


@pytest.mark.parametrize("name", ["..", ".env", "a..b", "%2e%2e", "..%2Fetc%2Fpasswd", "a%00b"])
async def test_traversal_names_are_refused(files, name, tmp_path):
    s = await files()
    status, body = await s.upload(name, b"x")
    assert status in (404, 422), (status, body)
    assert not [p for p in s.files_dir.rglob("*") if p.is_file()]
    assert not (tmp_path / "etc").exists()


async def test_a_badly_signed_upload_is_401_and_leaves_nothing(files):
    s = await files()
    body, _ = multipart(b"x")
    hdrs = await s.signer.fresh_headers("PUT", "/api/v1/paygates/dl/files/a.bin", b"other")
    status, answer = await s.upload("a.bin", b"x", headers=hdrs)
    assert status == 401 and answer["message"] == "invalid signature"
    assert not [p for p in s.files_dir.rglob("*") if p.is_file()]


async def test_an_upload_with_an_unknown_key_is_refused_before_it_is_stored(files):
    s = await files()
    hdrs = await s.signer.fresh_headers("PUT", "/api/v1/paygates/dl/files/a.bin", b"x")
    status, answer = await s.upload("a.bin", b"x", headers={**hdrs, "X-PAY-Key": "pk_" + "0" * 24})
    assert status == 401 and answer["message"] == "invalid signature"
    assert not s.files_dir.exists() or not [p for p in s.files_dir.rglob("*") if p.is_file()]
