"""One way out to the network: every connection made for a partner (SSRF guard).

A partner chooses hosts SuperIMAP connects to (a PLAIN connection's imap_host and smtp_host,
a loopback provider's OAuth URLs, webhook URLs). Without a guard a partner could make the
service open connections to the cloud metadata endpoint, to services on the loopback
interface or to the operator's private network, read their answers (test-webhook reports
the first KiB) and tell open ports from closed ones by the error it reports.

The checks run on the addresses a name resolves to, not on the name: a public name may
resolve to 127.0.0.1. And a name may resolve to a public address at one lookup and to
127.0.0.1 at the next (DNS rebinding), so checking a name and then letting a client library
connect "by name" leaves a window. Hence one function, resolve_checked(), resolves once,
checks every address and hands them to the adapters below, which connect to exactly those
addresses; the host name is kept for TLS (SNI and the certificate check) and HTTP's Host:

- connect() / connect_async(): a connected socket (imaplib, asyncio protocols, aiosmtplib);
- resolve_checked_async() itself: the webhook client (delivery/webclient.py) connects to
  the addresses it returns;
- CheckedConnector: an aiohttp connector (the engine's OAuth token calls);
- CheckedTransport: an httpx2 transport (authlib's OAuth client in the hosted pages).

The operator's switches (WEBHOOK_ALLOW_PRIVATE, IMAP_ALLOW_PRIVATE_HOSTS) reach here as
allow_private: the name is still resolved once and the client still connects to the
address resolved, only the check is skipped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import aiohttp
import httpcore2
import httpx2
from aiohttp.abc import ResolveResult

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


def _addresses(host: str, port: int, infos, allow_private: bool) -> list[str]:
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} has no address")
    if not allow_private:
        for address in addresses:
            if address_is_private(address):
                raise PrivateTargetRefused(host, port, address)
    return addresses


def _bare(host: str) -> str:
    """An IPv6 literal may come in URL brackets ([::1])."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def resolve_checked(host: str, port: int, *, allow_private: bool = False) -> list[str]:
    """Resolve host once (getaddrinfo) and return its addresses; PrivateTargetRefused if any
    of them is private, unless allow_private. socket.gaierror (an OSError) when the name
    does not resolve. Connect to what this returns, never to the name again."""
    infos = socket.getaddrinfo(_bare(host), port, type=socket.SOCK_STREAM)
    return _addresses(host, port, infos, allow_private)


async def resolve_checked_async(host: str, port: int, *, allow_private: bool = False) -> list[str]:
    """resolve_checked() through the running loop's getaddrinfo (does not block the loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(_bare(host), port, type=socket.SOCK_STREAM)
    return _addresses(host, port, infos, allow_private)


def check_host(host: str, port: int) -> list[str]:
    """The save-time check of a partner's host (API, dashboard): resolve_checked() without
    the operator's switch, which the callers apply."""
    return resolve_checked(host, port)


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _sockaddr(address: str, port: int) -> tuple:
    return (address, port, 0, 0) if ":" in address else (address, port)


def connect(host: str, port: int, *, timeout: float | None, allow_private: bool) -> socket.socket:
    """A blocking socket connected to a checked address of host (each in turn, like
    socket.create_connection); the last error if none answers."""
    error: OSError | None = None
    for address in resolve_checked(host, port, allow_private=allow_private):
        sock = socket.socket(_family(address), socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(_sockaddr(address, port))
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    assert error is not None  # resolve_checked() returns at least one address
    raise error


async def connect_async(host: str, port: int, *, allow_private: bool) -> socket.socket:
    """connect() on the running loop: a non-blocking connected socket, to hand to
    loop.create_connection(sock=..., server_hostname=host) or aiosmtplib. The caller sets
    the deadline (asyncio.timeout)."""
    loop = asyncio.get_running_loop()
    error: OSError | None = None
    for address in await resolve_checked_async(host, port, allow_private=allow_private):
        sock = socket.socket(_family(address), socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, _sockaddr(address, port))
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    assert error is not None
    raise error


class CheckedConnector(aiohttp.TCPConnector):
    """An aiohttp connector that resolves every host through resolve_checked_async().

    aiohttp connects to exactly the addresses _resolve_host() returns. Overriding it (and
    not only the resolver) also covers IP literals, which aiohttp never hands to a
    resolver, and hosts reached by a redirect. PrivateTargetRefused comes out of the
    request unwrapped (it is no OSError, so aiohttp does not turn it into a DNS error)."""

    def __init__(self, *, allow_private: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.allow_private = allow_private

    async def _resolve_host(self, host: str, port: int, traces=None) -> list[ResolveResult]:
        addresses = await resolve_checked_async(host, port, allow_private=self.allow_private)
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [
            ResolveResult(hostname=host, host=a, port=port, family=_family(a), proto=0, flags=flags)
            for a in addresses
        ]


class _CheckedBackend(httpcore2.SyncBackend):
    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    def connect_tcp(
        self, host, port, timeout=None, local_address=None, socket_options=None
    ) -> httpcore2.NetworkStream:
        try:
            addresses = resolve_checked(host, port, allow_private=self.allow_private)
        except (OSError, UnicodeError) as exc:
            raise httpcore2.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        error: Exception | None = None
        for address in addresses:
            try:
                # An IP literal: the base class's create_connection() does no DNS lookup.
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error


class CheckedTransport(httpx2.HTTPTransport):
    """An httpx2 transport whose connections go to resolve_checked() addresses; TLS and the
    Host header keep the URL's host (httpcore2 takes both from the request's origin).
    Proxies from the environment are ignored: they would resolve the name themselves."""

    def __init__(self, *, allow_private: bool) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore2.ConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            network_backend=_CheckedBackend(allow_private),
        )
