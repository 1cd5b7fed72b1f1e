"""gateway.config: a valid full config loads; each kind of bad config is refused with a
message that names the key and says what is wrong (never a traceback)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config, price_atomic

REPO = Path(__file__).resolve().parents[2]

FULL_TOML = """
[server]
host = "0.0.0.0"
port = 8402
public_url = "https://pay.example.com/"
max_request_bytes = "5MiB"

[database]
url = "sqlite+aiosqlite:///var/test.db"
master_key_file = "var/test.key"

[assets.usdc]
type = "eip3009"
network = "eip155:31337"
address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
decimals = 6
eip712_name = "USD Coin"
eip712_version = "2"

[assets.hbar]
type = "hbar"
network = "hedera:testnet"

[evm."eip155:31337"]
rpc_url = "http://rpc.example.com:8545"
settler_key_env = "SETTLER_KEY"

[hedera]
mirror_url = "https://mirror.example.com"
account_id = "0.0.1001"
private_key_env = "HEDERA_KEY"

[[paygates]]
id = "skyroute"
prefix = "/skyroute/"
target = "https://api.skyroute.example/base/"
description = "SkyRoute flights"
default_units = 1
rails = ["x402-evm", "x402-hedera", "hedera-session"]
settlement = "after"
timeout_seconds = 30
max_response_bytes = "1 MiB"
pay_to = { evm = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", hedera = "0.0.2002" }
prices = { usdc = "0.001", hbar = "0.05" }
origin_auth = { mode = "request", rotation_grace_seconds = 600 }

[[paygates.rules]]
method = "get"
path = "/v1/flights*"
units = 1

[[paygates.rules]]
method = "POST"
path = "/v1/holds"
units = 10

[[paygates]]
id = "free-docs"
prefix = "/docs"
host = "docs.example.com"
target = "http://docs.example.com"
default_units = 0
"""


def base() -> dict:
    """A small valid config dict that each negative test breaks in one place."""
    return {
        "assets": {
            "usdc": {"type": "eip3009", "network": "eip155:31337",
                     "address": "0x5FbDB2315678afecb367f032d93F642f64180aa3"},
            "hbar": {"type": "hbar"},
        },
        "evm": {"eip155:31337": {"rpc_url": "http://rpc.example.com", "settler_key_env": "K"}},
        "paygates": [{
            "id": "api",
            "prefix": "/api",
            "target": "https://api.example.com",
            "rails": ["x402-evm"],
            "pay_to": {"evm": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"},
            "prices": {"usdc": "0.001"},
        }],
    }


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    return str(exc.value)


def test_base_is_valid():
    parse_config(base())  # the negative tests below each break exactly one thing


def test_full_config_loads(tmp_path):
    path = tmp_path / "tollgate.toml"
    path.write_text(FULL_TOML)
    cfg = load_config(path)

    assert cfg.server.port == 8402
    assert cfg.server.public_url == "https://pay.example.com"
    assert cfg.server.max_request_bytes == 5 * 1024 * 1024
    sky = cfg.paygate("skyroute")
    assert sky is not None
    assert sky.prefix == "/skyroute"
    assert sky.target == "https://api.skyroute.example/base"
    assert sky.max_response_bytes == 1024 * 1024
    assert sky.rails == ["x402-evm", "x402-hedera", "hedera-session"]
    assert sky.rules[0].method == "GET" and sky.rules[1].units == 10
    assert sky.prices == {"usdc": Decimal("0.001"), "hbar": Decimal("0.05")}
    assert price_atomic(cfg, sky, "usdc") == 1000
    assert price_atomic(cfg, sky, "hbar") == 5_000_000
    assert isinstance(price_atomic(cfg, sky, "usdc"), int)
    assert sky.origin_auth.mode == "request" and sky.origin_auth.rotation_grace_seconds == 600
    docs = cfg.paygate("free-docs")
    assert docs.host == "docs.example.com" and docs.default_units == 0
    assert docs.origin_auth.mode == "request"  # the default
    assert cfg.paygate("nope") is None


@pytest.mark.parametrize("port", [70000, -1, "http"])
def test_bad_port(port):
    data = base()
    data["server"] = {"port": port}
    assert "server.port:" in error_of(data)


def test_negative_units():
    data = base()
    data["paygates"][0]["rules"] = [{"path": "/x", "units": -1}]
    msg = error_of(data)
    assert "paygates[0].rules[0].units:" in msg
    assert "greater than or equal to 0" in msg

    data = base()
    data["paygates"][0]["default_units"] = -5
    assert "paygates[0].default_units:" in error_of(data)


@pytest.mark.parametrize("size", ["10 parsecs", "-5MiB", "1.5MiB", 2.5, True])
def test_bad_size_string(size):
    data = base()
    data["paygates"][0]["max_response_bytes"] = size
    msg = error_of(data)
    assert "paygates[0].max_response_bytes:" in msg
    assert "must be a size such as" in msg


def test_unknown_key():
    data = base()
    data["paygates"][0]["tagret"] = "https://typo.example.com"
    assert "paygates[0].tagret: unknown key" in error_of(data)

    data = base()
    data["sever"] = {}
    assert "sever: unknown key" in error_of(data)


def test_unknown_asset_in_prices():
    data = base()
    data["paygates"][0]["prices"]["dai"] = "1"
    msg = error_of(data)
    assert "paygates[0].prices.dai:" in msg
    assert "unknown asset" in msg
    assert "known: hbar, usdc" in msg


def test_float_price_is_refused():
    data = base()
    data["paygates"][0]["prices"]["usdc"] = 0.001
    msg = error_of(data)
    assert "paygates[0].prices.usdc:" in msg
    assert "strings" in msg and "never floats" in msg


def test_too_many_decimals():
    data = base()
    data["paygates"][0]["prices"]["usdc"] = "0.0000001"  # USDC has 6 decimals
    msg = error_of(data)
    assert "paygates[0].prices.usdc:" in msg
    assert "more than 6 decimals" in msg


@pytest.mark.parametrize("second_prefix", ["/api", "/api/", "/api/v2", "/"])
def test_overlapping_routes(second_prefix):
    data = base()
    data["paygates"].append({"id": "other", "prefix": second_prefix,
                             "target": "https://other.example.com"})
    msg = error_of(data)
    assert "paygates[1].prefix:" in msg and "overlaps paygates[0]" in msg


def test_prefixes_sharing_characters_but_not_a_segment_do_not_overlap():
    data = base()
    data["paygates"].append({"id": "other", "prefix": "/apis", "target": "https://o.example.com",
                             "default_units": 0})
    parse_config(data)


def test_same_prefix_on_different_hosts_is_fine_but_hostless_overlaps():
    data = base()
    data["paygates"][0]["host"] = "a.example.com"
    data["paygates"].append({"id": "b", "prefix": "/api", "host": "b.example.com",
                             "target": "https://b.example.com", "default_units": 0})
    parse_config(data)
    data["paygates"].append({"id": "c", "prefix": "/api", "target": "https://c.example.com",
                             "default_units": 0})
    assert "paygates[2].prefix:" in error_of(data)


@pytest.mark.parametrize("target", ["ftp://files.example.com", "http://", "https:///path",
                                    "api.example.com", "http://api.example.com/?q=1"])
def test_target_must_be_http_url(target):
    data = base()
    data["paygates"][0]["target"] = target
    assert "paygates[0].target:" in error_of(data)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "10.1.2.3", "192.168.0.10",
                                  "169.254.169.254", "[::1]", "0.0.0.0", "[::ffff:127.0.0.1]",
                                  # short numeric IPv4 forms every resolver accepts
                                  "127.1", "2130706433", "0x7f000001"])
def test_private_target_refused_unless_allowed(host):
    data = base()
    data["paygates"][0]["target"] = f"http://{host}:8080"
    msg = error_of(data)
    assert "paygates[0].target:" in msg and "loopback/private" in msg

    allowed = copy.deepcopy(data)
    allowed["paygates"][0]["allow_private_target"] = True
    parse_config(allowed)

    allowed = copy.deepcopy(data)
    allowed["server"] = {"allow_private_targets": True}
    parse_config(allowed)

    # the paygate's own setting wins over the server-wide one
    refused = copy.deepcopy(allowed)
    refused["paygates"][0]["allow_private_target"] = False
    assert "paygates[0].target:" in error_of(refused)


def test_duplicate_paygate_id():
    data = base()
    data["paygates"].append({"id": "api", "prefix": "/other", "target": "https://o.example.com"})
    msg = error_of(data)
    assert "paygates[1].id:" in msg and "already used by paygates[0]" in msg


def test_rails_without_prices():
    data = base()
    data["paygates"][0]["prices"] = {}
    msg = error_of(data)
    assert "paygates[0].rails:" in msg and "x402-evm needs a price" in msg


def test_prices_without_rails():
    data = base()
    data["paygates"][0]["rails"] = []
    assert "paygates[0].rails: a priced paygate needs at least one rail" in error_of(data)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg and "not valid TOML" in msg
    assert "Traceback" not in msg


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value)


def test_load_config_prefixes_errors_with_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = 99999\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: invalid config")
    assert "server.port:" in msg


def test_serve_with_bad_config_exits_2_without_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = "eighty"\n\n[[paygates]]\nid = "x"\nprefix = "/x"\n'
                    'target = "ftp://example.com"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    proc = subprocess.run([sys.executable, "-m", "gateway", "serve", "-c", str(path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "server.port:" in proc.stderr
    assert "paygates[0].target:" in proc.stderr
    assert str(path) in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_units_without_a_way_to_pay_are_refused():
    data = base()
    data["paygates"].append({"id": "nopay", "prefix": "/nopay", "target": "https://n.example.com",
                             "rules": [{"path": "/x", "units": 2}], "default_units": 0})
    assert "paygates[1]: requests cost units but no rail can pay them" in error_of(data)
    data["paygates"][1]["rules"][0]["units"] = 0
    parse_config(data)
