"""X-PAY signing of the admin API, through real HTTP on SQLite and PostgreSQL: every
refusal with its exact text, replays, revoked keys, another provider's resources."""

from __future__ import annotations

import hashlib
import subprocess
import time

import pytest

from tests.gateway.admin_support import Signer, make_key, postgres_server, store_config  # noqa: F401



def _config(origin_url: str, store: dict) -> dict:
    return {**store, "paygates": [{"id": "files", "prefix": "/files", "target": origin_url,
                                   "default_units": 0, "provider": "acme"}]}


@pytest.fixture
async def setup(gateway, origin, http, store_config):
    o = await origin()
    gw = await gateway(_config(o.url, store_config))
    key_id, secret = await make_key(gw, provider="acme")
    return gw, Signer(http, gw.url, key_id, secret)


async def test_signed_request_is_accepted(setup):
    gw, client = setup
    answer = await client.call("GET", "/api/v1/paygates")
    assert answer.status == 200, answer.text
    assert [p["id"] for p in answer.body["paygates"]] == ["files"]
    assert answer.body["paygates"][0]["source"] == "config"


async def test_missing_headers(setup):
    gw, client = setup
    full = client.headers("GET", "/api/v1/paygates", b"")
    for dropped in ("X-PAY-Key", "X-PAY-Timestamp", "X-PAY-Signature"):
        partial = {k: v for k, v in full.items() if k != dropped}
        answer = await client.call("GET", "/api/v1/paygates", headers=partial)
        assert answer.status == 401
        assert answer.body == {"error": "unauthorized", "message": "missing auth headers"}


@pytest.mark.parametrize("shift", [-301, 301])
async def test_timestamp_out_of_range(setup, shift):
    gw, client = setup
    ts = int(time.time()) + shift
    answer = await client.call("GET", "/api/v1/paygates",
                               headers=client.headers("GET", "/api/v1/paygates", b"", ts))
    assert answer.status == 401
    assert answer.body["message"] == "timestamp out of range"


async def test_timestamp_not_a_number(setup):
    gw, client = setup
    headers = {**client.headers("GET", "/api/v1/paygates", b""), "X-PAY-Timestamp": "soon"}
    answer = await client.call("GET", "/api/v1/paygates", headers=headers)
    assert answer.status == 401
    assert answer.body["message"] == "timestamp out of range"


async def test_invalid_signatures(setup, http):
    gw, client = setup
    wrong_secret = Signer(http, gw.url, client.key_id, "sk_" + "0" * 64)
    unknown_key = Signer(http, gw.url, "pk_" + "0" * 24, client.secret)
    for c in (wrong_secret, unknown_key):
        answer = await c.call("GET", "/api/v1/paygates")
        assert answer.status == 401
        assert answer.body["message"] == "invalid signature"
    # signed for another body than the one sent
    body = b'{"id": "x", "prefix": "/x", "target": "http://127.0.0.1:1", "default_units": 0}'
    headers = client.headers("POST", "/api/v1/paygates", b"{}")
    answer = await client.call("POST", "/api/v1/paygates", raw=body, headers=headers)
    assert answer.status == 401 and answer.body["message"] == "invalid signature"
    # signed for another path
    headers = client.headers("GET", "/api/v1/keys", b"")
    answer = await client.call("GET", "/api/v1/paygates", headers=headers)
    assert answer.status == 401 and answer.body["message"] == "invalid signature"
    listed = await client.call("GET", "/api/v1/paygates")
    assert [p["id"] for p in listed.body["paygates"]] == ["files"]  # nothing was created


async def test_replayed_signature_is_refused(setup):
    gw, client = setup
    headers = client.headers("GET", "/api/v1/paygates", b"")
    first = await client.call("GET", "/api/v1/paygates", headers=headers)
    again = await client.call("GET", "/api/v1/paygates", headers=headers)
    assert first.status == 200
    assert again.status == 401 and again.body["message"] == "signature already used"


async def test_header_names_in_any_case_and_query_not_signed(setup):
    gw, client = setup
    headers = {k.lower(): v for k, v in client.headers("GET", "/api/v1/paygates", b"").items()}
    answer = await client.call("GET", "/api/v1/paygates?x=1", headers=headers)
    assert answer.status == 200


async def test_bash_openssl_signature_is_accepted(setup, http):
    gw, client = setup
    body = b'{"provider": "acme"}'
    ts = str(int(time.time()))
    digest = hashlib.sha256(body).hexdigest()
    out = subprocess.run(
        ["bash", "-c", 'printf "%s" "$TS.POST./api/v1/keys.$H" | '
                       'openssl dgst -sha256 -hmac "$SK" -hex | sed "s/^.* //"'],
        env={"TS": ts, "H": digest, "SK": client.secret, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True).stdout.strip()
    headers = {"X-PAY-Key": client.key_id, "X-PAY-Timestamp": ts, "X-PAY-Signature": out}
    answer = await client.call("POST", "/api/v1/keys", raw=body, headers=headers)
    assert answer.status == 201, answer.text
    assert answer.body["id"].startswith("pk_") and answer.body["secret"]


async def test_revoked_key_is_refused(setup, http):
    gw, client = setup
    made = await client.call("POST", "/api/v1/keys", {"provider": "acme"})
    second = Signer(http, gw.url, made.body["id"], made.body["secret"])
    assert (await second.call("GET", "/api/v1/paygates")).status == 200
    revoked = await client.call("DELETE", f"/api/v1/keys/{second.key_id}")
    assert revoked.status == 200 and revoked.body["active"] is False
    answer = await second.call("GET", "/api/v1/paygates")
    assert answer.status == 401 and answer.body["message"] == "invalid signature"


async def test_rotated_key_secret_keeps_previous_for_grace(setup, http):
    gw, client = setup
    rotated = await client.call("POST", f"/api/v1/keys/{client.key_id}/rotate",
                                {"grace_seconds": 0})
    assert rotated.status == 200
    old = await client.call("GET", "/api/v1/paygates")
    assert old.status == 401
    new = Signer(http, gw.url, client.key_id, rotated.body["secret"])
    assert (await new.call("GET", "/api/v1/paygates")).status == 200


async def test_another_providers_resources_are_404(setup, http):
    gw, client = setup
    other_id, other_secret = await make_key(gw, provider="globex")
    other = Signer(http, gw.url, other_id, other_secret)
    assert (await other.call("GET", "/api/v1/paygates")).body["paygates"] == []
    for method, path, body in [
            ("GET", "/api/v1/paygates/files", None),
            ("PUT", "/api/v1/paygates/files", {"prefix": "/f2", "target": "http://x.example"}),
            ("PATCH", "/api/v1/paygates/files", {"description": "mine"}),
            ("DELETE", "/api/v1/paygates/files", None),
            ("GET", "/api/v1/paygates/files/secret", None),
            ("POST", "/api/v1/paygates/files/secret/regenerate", {}),
            ("PATCH", "/api/v1/paygates/files/secret", {"secret": "x" * 40}),
            ("DELETE", f"/api/v1/keys/{client.key_id}", None)]:
        answer = await other.call(method, path, body)
        assert answer.status == 404, (method, path, answer.text)
        missing = await other.call(method, path.replace("files", "nothing-here"), body)
        assert missing.body == answer.body or method == "DELETE"  # same answer as absent
    assert (await client.call("GET", "/api/v1/keys")).body["keys"][0]["active"] is True


async def test_provider_key_cannot_make_operator_keys(setup):
    gw, client = setup
    answer = await client.call("POST", "/api/v1/keys", {"operator": True})
    assert answer.status == 403
    answer = await client.call("POST", "/api/v1/keys", {"provider": "globex"})
    assert answer.status == 403
