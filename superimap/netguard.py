"""Refusing outbound connections to private networks (SSRF guard).

A partner chooses the host SuperIMAP connects to (a PLAIN connection's imap_host and
smtp_host; webhook URLs). Without a guard a partner could make the service open connections
to the cloud metadata endpoint, to services on the loopback interface or to the operator's
private network, and tell open ports from closed ones by the error it reports.

The checks run on the addresses a name resolves to, not on the name: a public name may
resolve to 127.0.0.1. Callers check when a host is saved and again right before connecting
(the name may resolve differently by then), and pass on the addresses they got, so the
connection goes to an address that was checked. The operator's switch
(IMAP_ALLOW_PRIVATE_HOSTS) is applied by the callers, not here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

# Ranges that are not the public internet, beyond what ipaddress's is_private/is_reserved/...
# flags cover in every Python 3.11 release.
_EXTRA_V4 = [
    ipaddress.ip_network("0.0.0.0/8"),  # "this network"
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT (RFC 6598)
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments
    ipaddress.ip_network("198.18.0.0/15"),  # benchmarking
    ipaddress.ip_network("240.0.0.0/4"),  # reserved, and 255.255.255.255
]
_EXTRA_V6 = [
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    ipaddress.ip_network("100::/64"),  # discard-only
    ipaddress.ip_network("2001:db8::/32"),  # documentation
    ipaddress.ip_network("fc00::/7"),  # unique local addresses
    ipaddress.ip_network("fe80::/10"),  # link-local
    ipaddress.ip_network("fec0::/10"),  # deprecated site-local
]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: IPv4 in the low bits


class PrivateTargetRefused(ValueError):
    """The host resolves to an address that is not on the public internet."""

    def __init__(self, host: str, port: int, address: str) -> None:
        # The message names no address: it may reach a partner (last_error).
        super().__init__(f"{host}:{port} resolves to a private or reserved address")
        self.host = host
        self.port = port
        self.address = address


def _v4_is_private(ip: ipaddress.IPv4Address) -> bool:
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or any(ip in net for net in _EXTRA_V4)
    )


def address_is_private(ip: str) -> bool:
    """True for any address that is not plainly a public unicast one: loopback, link-local,
    private, reserved, multicast, unspecified, CGNAT 100.64/10, IPv6 ULA and link-local, and
    IPv4 addresses embedded in IPv6 (v4-mapped, v4-compatible, 6to4, NAT64, Teredo) that
    are themselves private. A string that is not an IP address counts as private."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0].strip("[]"))
    except ValueError:
        return True
    if isinstance(address, ipaddress.IPv4Address):
        return _v4_is_private(address)
    embedded: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        embedded.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        embedded.append(address.sixtofour)
    if address.teredo is not None:
        embedded.extend(address.teredo)
    packed = int(address)
    if address in _NAT64:
        embedded.append(ipaddress.IPv4Address(packed & 0xFFFFFFFF))
    if packed >> 32 == 0 and packed > 1:
        # Deprecated IPv4-compatible form ::a.b.c.d (:: and ::1 are handled below).
        embedded.append(ipaddress.IPv4Address(packed))
    if any(_v4_is_private(v4) for v4 in embedded):
        return True
    if address.ipv4_mapped is not None or (address in _NAT64):
        return False  # a public IPv4 address in IPv6 clothing
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or address.is_site_local
        or address.is_private
        or any(address in net for net in _EXTRA_V6)
    )


def _addresses(host: str, port: int, infos) -> list[str]:
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    for address in addresses:
        if address_is_private(address):
            raise PrivateTargetRefused(host, port, address)
    return addresses


def _bare(host: str) -> str:
    """An IPv6 literal may come in URL brackets ([::1])."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def check_host(host: str, port: int) -> list[str]:
    """Resolve host (getaddrinfo) and return its addresses; PrivateTargetRefused if any of
    them is private. socket.gaierror (an OSError) when the name does not resolve."""
    infos = socket.getaddrinfo(_bare(host), port, type=socket.SOCK_STREAM)
    return _addresses(host, port, infos)


async def check_host_async(host: str, port: int) -> list[str]:
    """check_host() through the running loop's getaddrinfo (does not block the loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(_bare(host), port, type=socket.SOCK_STREAM)
    return _addresses(host, port, infos)
