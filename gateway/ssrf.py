"""The SSRF guard's judgement of origin hosts: which names and addresses the gateway
must not reach unless a paygate allows private targets.

`is_private_host` is used twice: by the config on a target's host (names and literal
addresses) and by `gateway.forward.GuardedResolver` on every address a name resolves to,
at connect time. Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
import socket

# Names that are local by definition, and cloud metadata services by name (their
# addresses are refused anyway; the name is refused before it is even resolved).
_LOCAL_NAMES = frozenset({
    "localhost", "localhost.localdomain",
    "metadata", "metadata.google.internal", "metadata.goog",     # GCP
    "instance-data", "instance-data.ec2.internal",               # AWS
})
_LOCAL_SUFFIXES = (".localhost", ".internal")  # .internal: reserved for private use
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")              # well-known prefix, IPv4 in the low 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")      # local-use NAT64 (RFC 8215)
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765


def is_private_host(host: str) -> bool:
    """True for a host the gateway must not reach unless private targets are allowed:
    a local or cloud-metadata name, or a literal address (any form a resolver accepts)
    that `is_private_address` refuses."""
    name = host.strip("[]").rstrip(".").lower()
    if name in _LOCAL_NAMES or name.endswith(_LOCAL_SUFFIXES):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        # Short numeric IPv4 forms ("127.1", "2130706433", "0x7f000001") that
        # ipaddress refuses but every resolver (inet_aton) turns into an address.
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            return False
    return is_private_address(ip)


def is_private_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Anything but a global unicast address: loopback, private, link-local, CGNAT,
    0.0.0.0/8, multicast, reserved; an IPv6 address that embeds an IPv4 one (mapped,
    translated, 6to4, NAT64) is judged by that IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_private_address(embedded)
        # is_reserved covers ::/8, so IPv4-compatible forms (::a.b.c.d) are refused whole.
        return (not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_site_local
                or ip in _NAT64_LOCAL)
    return (not ip.is_global or ip.is_multicast or ip.is_reserved
            or ip in _CGNAT or ip in _THIS_NETWORK)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None
