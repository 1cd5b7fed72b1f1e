"""Public discovery in the bazaar list shape, read by the x402 reference SDK's discovery
client; paygates can opt out; API-created paygates appear at once."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest
import x402
from x402.http import FacilitatorConfig, HTTPFacilitatorClientSync

from tests.gateway.admin_support import Signer, make_key, postgres_server, store_config  # noqa: F401
from tests.gateway.x402_support import PRICE, x402_config

pytestmark = pytest.mark.usefixtures("settler_key")


def _sdk_discovery_client():
    """The SDK's bazaar discovery client module, loaded on its own: the package's
    `__init__` also loads the extension's validators, which need jsonschema (an optional
    extra this project does not install); the client itself does not."""
    path = Path(x402.__file__).parent / "extensions" / "bazaar" / "facilitator_client.py"
    spec = importlib.util.spec_from_file_location("x402_bazaar_client", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_bazaar = _sdk_discovery_client()
ListDiscoveryResourcesParams, with_bazaar = _bazaar.ListDiscoveryResourcesParams, _bazaar.with_bazaar


def list_with_sdk(url: str, **params):
    with with_bazaar(HTTPFacilitatorClientSync(FacilitatorConfig(url=url))) as client:
        return client.extensions.bazaar.list_resources(ListDiscoveryResourcesParams(**params))


async def test_sdk_lists_paygates_with_prices(gateway, origin, http, evm_devnet, store_config):
    o = await origin()
    cfg = x402_config(evm_devnet, o.url, provider="acme", description="flights")
    cfg["paygates"] += [
        {**cfg["paygates"][0], "id": "hidden", "prefix": "/hidden", "discoverable": False},
        {"id": "free", "prefix": "/free", "target": o.url, "default_units": 0}]
    gw = await gateway({**cfg, **store_config})
    got = await asyncio.to_thread(list_with_sdk, gw.url)
    assert got.x402_version == 2 and got.pagination.total == 1
    [sky] = got.items
    assert sky.resource == gw.url + "/sky" and sky.type == "http"
    assert sky.description == "flights"
    [accept] = sky.accepts
    assert accept["scheme"] == "exact" and accept["network"] == evm_devnet.network
    assert accept["amount"] == str(PRICE) and accept["payTo"] == evm_devnet.merchant.address
    assert accept["asset"] == evm_devnet.token_address
    async with http.get(gw.url + "/discovery/resources") as r:
        raw = await r.json()
    meta = raw["items"][0]["metadata"]
    assert meta["rules"] == [{"method": "POST", "path": "/v1/bookings", "units": 25,
                              "prices": {"usdc": str(25 * PRICE)}}]
    assert meta["rails"] == ["x402-evm"] and meta["networks"] == [evm_devnet.network]
    assert "bazaar" in raw["items"][0]["extensions"]

    filtered = await asyncio.to_thread(list_with_sdk, gw.url, network="eip155:1")
    assert filtered.items == [] and filtered.pagination.total == 0
    async with http.get(gw.url + "/discovery/resources?limit=x") as r:
        assert r.status == 422

    # a paygate made through the API is listed at once, and can opt out
    key_id, secret = await make_key(gw, provider="acme")
    client = Signer(http, gw.url, key_id, secret)
    body = {**cfg["paygates"][0], "id": "hotels", "prefix": "/hotels", "rules": []}
    body.pop("provider")
    assert (await client.call("POST", "/api/v1/paygates", body)).status == 201
    got = await asyncio.to_thread(list_with_sdk, gw.url)
    assert [i.resource for i in got.items] == [gw.url + "/hotels", gw.url + "/sky"]
    assert (await client.call("PATCH", "/api/v1/paygates/hotels",
                              {"discoverable": False})).status == 200
    got = await asyncio.to_thread(list_with_sdk, gw.url)
    assert [i.resource for i in got.items] == [gw.url + "/sky"]
