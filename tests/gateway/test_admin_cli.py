"""`tollgate keys create|list|revoke` on a config's store; the key it prints signs
admin API calls of a gateway on the same store."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store.api_keys import KeyStore
from tests.gateway.admin_support import Signer

ROOT = Path(__file__).resolve().parents[2]


def tollgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


async def test_keys_create_list_revoke(tmp_path, gateway, http):
    db, key_file = tmp_path / "db" / "t.db", tmp_path / "master.key"
    conf = tmp_path / "t.toml"
    conf.write_text(f'[server]\nallow_private_targets = true\n[database]\n'
                    f'url = "sqlite+aiosqlite:///{db}"\nmaster_key_env = "TOLLGATE_TEST_UNSET_K"\n'
                    f'master_key_file = "{key_file}"\n')
    made = tollgate("keys", "create", "-c", str(conf), "--provider", "acme")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["id"].startswith("pk_") and len(key["id"]) == 27 and key["provider"] == "acme"
    assert tollgate("keys", "create", "-c", str(conf)).returncode == 2  # neither kind
    assert tollgate("keys", "create", "-c", str(conf), "--provider", "Bad Name").returncode == 2

    gw = await gateway({"database": {"url": f"sqlite+aiosqlite:///{db}",
                                     "master_key_file": str(key_file)}})
    client = Signer(http, gw.url, key["id"], key["secret"])
    assert (await client.call("GET", "/api/v1/paygates")).status == 200

    listed = tollgate("keys", "list", "-c", str(conf))
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [key["id"]]
    assert "secret" not in listed.stdout
    assert tollgate("keys", "revoke", "-c", str(conf), key["id"]).returncode == 0
    # revoked from another process: the gateway's key cache lets it go within ACTIVE_TTL
    revoked_at = time.monotonic()
    while (await client.call("GET", "/api/v1/paygates")).status != 401:
        assert time.monotonic() - revoked_at < KeyStore.ACTIVE_TTL + 1, "revocation ignored"
        await asyncio.sleep(0.1)
    assert tollgate("keys", "revoke", "-c", str(conf), key["id"]).returncode == 2
