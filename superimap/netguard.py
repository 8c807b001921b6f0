"""Refusing internal network targets (SSRF): loopback, private, link-local, reserved, ...

Used for partner webhook URLs (and IMAP hosts). A host is checked by resolving it and
looking at every address; callers that then connect must connect to the checked addresses
(not resolve again), or a DNS answer that changes in between (rebinding) gets through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class PrivateTargetRefused(ValueError):
    """The host is, or resolves to, an address that is not on the public internet."""


def address_is_private(ip: str) -> bool:
    """True unless `ip` is a public unicast address. Unparseable counts as private.

    Covers loopback, link-local, private (RFC 1918, IPv6 ULA), reserved, multicast,
    unspecified, CGNAT 100.64/10, and IPv4 addresses hidden in IPv6 forms (v4-mapped,
    6to4, Teredo, NAT64).
    """
    text = ip.strip().strip("[]").split("%", 1)[0]  # brackets, IPv6 zone id
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return True
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour]
        if address.teredo:
            embedded.extend(address.teredo)
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(v4 is not None and address_is_private(str(v4)) for v4 in embedded):
            return True
    if address.version == 4 and address in _CGNAT:
        return True
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
        or not address.is_global
    )


def _addresses(infos) -> list[str]:
    seen: list[str] = []
    for info in infos:
        address = info[4][0]
        if address not in seen:
            seen.append(address)
    return seen


def _refuse_private(host: str, addresses: list[str]) -> list[str]:
    if not addresses:
        raise PrivateTargetRefused(f"{host} does not resolve to any address")
    private = [a for a in addresses if address_is_private(a)]
    if private:
        raise PrivateTargetRefused(
            f"{host} resolves to a non-public address ({', '.join(private)})"
        )
    return addresses


def check_host(host: str, port: int) -> list[str]:
    """Resolve `host`; raise PrivateTargetRefused if any address is private, else return them.

    DNS failures raise OSError (socket.gaierror) as getaddrinfo does."""
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    return _refuse_private(host, _addresses(infos))


async def check_host_async(host: str, port: int) -> list[str]:
    """check_host through the running loop's getaddrinfo (does not block the loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    return _refuse_private(host, _addresses(infos))
