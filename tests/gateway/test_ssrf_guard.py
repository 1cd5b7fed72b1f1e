"""The SSRF guard: which origin targets the gateway refuses, in the config (literal
addresses and known names) and at connect time (what a name resolves to)."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver

from gateway.config import parse_config
from gateway.forward import GuardedResolver, TargetRefused
from gateway.ssrf import is_private_host
from tests.gateway.test_config import base, error_of

# Addresses no paygate may reach unless private targets are allowed, by reason.
REFUSED_ADDRESSES = [
    "100.64.0.1", "100.127.255.254",          # CGNAT (100.64.0.0/10)
    "100.100.100.200",                         # a cloud metadata service inside CGNAT
    "224.0.0.1", "239.255.255.250",            # IPv4 multicast
    "0.0.0.0", "0.1.2.3",                      # 0.0.0.0/8, "this network"
    "255.255.255.255", "240.0.0.1",            # broadcast, reserved
    "169.254.169.254",                         # link-local: the classic metadata address
    "ff02::1", "ff0e::1",                      # IPv6 multicast
    "::ffff:127.0.0.1", "::ffff:7f00:1",       # IPv4-mapped IPv6: judged by the IPv4
    "::ffff:10.0.0.1", "::ffff:100.64.0.1", "::ffff:169.254.169.254",
    "::ffff:0:127.0.0.1",                      # IPv4-translated (RFC 2765)
    "::127.0.0.1", "::10.0.0.1", "::8.8.8.8",  # IPv4-compatible (deprecated; all refused)
    "2002:7f00:1::1", "2002:a00:1::", "2002:a9fe:a9fe::1",  # 6to4 of private IPv4
    "64:ff9b::127.0.0.1", "64:ff9b::a9fe:a9fe", "64:ff9b::10.0.0.1",  # NAT64 of private
    "64:ff9b:1::808:808",                      # local-use NAT64 prefix (RFC 8215)
    "fd00:ec2::254",                           # AWS metadata over IPv6
    "fec0::1",                                 # deprecated site-local
    "fe80::1%eth0",                            # link-local with a zone
]
# Cloud metadata names, and names that are local by definition.
REFUSED_NAMES = [
    "metadata", "metadata.google.internal", "METADATA.Google.Internal.", "metadata.goog",
    "instance-data", "instance-data.ec2.internal", "anything.internal",
    "localhost", "localhost.", "api.localhost",
]
ALLOWED = [
    "8.8.8.8", "100.63.255.255", "100.128.0.1", "2606:4700::1111",
    "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::8.8.8.8",
    "api.example.com", "metadata.example.com", "internal.example.com",
]


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@pytest.mark.parametrize("host", REFUSED_ADDRESSES + REFUSED_NAMES)
def test_config_refuses_private_and_metadata_targets(host):
    assert is_private_host(host)
    data = base()
    data["paygates"][0]["target"] = f"http://{url_host(host)}:8080"
    msg = error_of(data)
    assert "paygates[0].target:" in msg and "loopback/private" in msg
    data["paygates"][0]["allow_private_target"] = True
    parse_config(data)


@pytest.mark.parametrize("host", ALLOWED)
def test_config_accepts_public_targets(host):
    assert not is_private_host(host)
    data = base()
    data["paygates"][0]["target"] = f"http://{url_host(host)}:8080"
    parse_config(data)


class FixedDns(AbstractResolver):
    """Stands in for DNS: every name resolves to the given addresses."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        self.asked.append(host)
        return [{"hostname": host, "host": a, "port": port,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for a in self.addresses]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
async def test_a_public_name_resolving_to_a_refused_address_is_refused(address):
    guard = GuardedResolver(set(), inner=FixedDns(address))
    with pytest.raises(TargetRefused):
        await guard.resolve("api.example.com", 443)
    allowed = GuardedResolver({"api.example.com"}, inner=FixedDns(address))
    assert [i["host"] for i in await allowed.resolve("api.example.com", 443)] == [address]


@pytest.mark.parametrize("name", REFUSED_NAMES)
async def test_metadata_and_local_names_are_refused_before_resolving(name):
    dns = FixedDns("93.184.216.34")  # even if it pointed somewhere public
    guard = GuardedResolver(set(), inner=dns)
    with pytest.raises(TargetRefused):
        await guard.resolve(name, 80)
    assert dns.asked == []


async def test_only_the_public_addresses_of_a_mixed_answer_are_used():
    guard = GuardedResolver(set(), inner=FixedDns("::ffff:127.0.0.1", "93.184.216.34",
                                                  "100.64.0.9"))
    assert [i["host"] for i in await guard.resolve("api.example.com", 443)] == ["93.184.216.34"]


async def test_a_real_connection_to_a_name_resolving_to_loopback_never_reaches_it(origin):
    """Through aiohttp's connector, as the gateway connects to origins: the origin on
    loopback is not contacted when the name is not allowed, and is when it is."""
    o = await origin()
    for allowed, reached in ((set(), False), ({"origin.example.com"}, True)):
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(allowed, inner=FixedDns("::ffff:127.0.0.1", "127.0.0.1")))
        async with aiohttp.ClientSession(connector=connector) as session:
            if reached:
                async with session.get(f"http://origin.example.com:{o.port}/x") as r:
                    assert r.status == 200
            else:
                with pytest.raises(aiohttp.ClientConnectorError):
                    await session.get(f"http://origin.example.com:{o.port}/x")
        assert len(o.requests) == (1 if reached else 0)
