"""`tollgate demo --once` end to end: its own devnets, origin and gateway, every step of
the walkthrough answered as the README shows it (x402, per-route costs, a paid file, a plan
on a prepaid token spent to exhaustion, middleware mode, a Hedera session)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from gateway.config import parse_config

from tests.gateway.test_x402_settlement_kill import free_port

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_walks_through_every_way_of_paying(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--once", "--port", str(free_port())],
        cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for line in [
        "GET /skyroute/v1/flights -> 402",
        "receipt: success=True",
        "POST /v1/bookings  -> 201, paid 25000 atomic units (25 units)",
        "GET <link> with Range: bytes=0-63 -> 206 bytes 0-63/66000",
        # a plan bought with x402 onto a prepaid token, spent with a bearer token
        "POST /api/checkout/skyroute/starter -> 200, paid 4000 atomic units in one settlement",
        "GET /skyroute/v1/flights x5 -> 200, 200, 200, 200, 200; remaining 4, 3, 2, 1, 0",
        "GET /skyroute/v1/flights -> 402 quota_exhausted, checkout_url /checkout/skyroute",
        # middleware mode: the provider's own app behind authorize_middleware
        "GET /forecast unpaid -> 402",
        "GET /forecast paid with x402 -> 200 {'forecast': 'sunny'}; completed with 200: "
        "settled, tx 0x",
        "GET /broken paid with x402 -> 503; completed with 503: not settled, the payer paid "
        "nothing",
        "call 5: 402 session_exhausted",
    ]:
        assert line in out, (line, out)
    # the config it wrote is one a person can start a gateway from
    written = tomllib.loads((tmp_path / "var" / "demo" / "tollgate.toml").read_text())
    config = parse_config(written)
    assert [p.id for p in config.paygate("skyroute").plans] == ["starter"]
    assert config.paygate("forecasts").provider == "skyroute"
