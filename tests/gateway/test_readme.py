"""The README's example config starts the gateway, and a call to a priced route returns
the 402 the README documents."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from chains.x402 import decode_header

ROOT = Path(__file__).resolve().parents[2]


def _block(marker: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```{lang}\n(.*?)```", text, re.S)
    assert m, f"README has no {marker} block"
    return m.group(1)


def test_example_file_matches_the_readme():
    assert (ROOT / "examples" / "tollgate.toml").read_text().strip() == \
        _block("example-config", "toml").strip()


async def test_readme_config_answers_the_documented_402(gateway, http, monkeypatch):
    monkeypatch.setenv("TOLLGATE_SETTLER_KEY", "0x" + "11" * 32)
    monkeypatch.setenv("SKYROUTE_SECRET", "readme-secret")
    config = tomllib.loads(_block("example-config", "toml"))
    del config["database"]  # the fixture gives each gateway its own store
    config["server"]["port"] = 0
    for net in config["evm"].values():  # tests reach no public node: a closed loopback port
        net["rpc_url"] = "http://127.0.0.1:9"
    documented = json.loads(_block("example-402", "json"))
    g = await gateway(config)
    async with http.get(g.url + "/skyroute/v1/flights") as r:
        assert r.status == 402
        assert await r.json() == documented
        header = decode_header(r.headers["PAYMENT-REQUIRED"], max_len=65536)
    v1_only = {"maxAmountRequired", "resource", "description", "mimeType"}
    assert header["accepts"] == [{k: v for k, v in e.items() if k not in v1_only}
                                 for e in documented["accepts"]]
