"""superimap.platform.netguard: which addresses count as internal, and host checks by resolution."""

from __future__ import annotations

import asyncio
import socket
import ssl
from urllib.parse import urlsplit

import aiohttp
import httpx2
import pytest

from devtools.testing.dovecot import write_test_certificates
from superimap.imapclient import ImapConnection
from superimap.platform.netguard import (
    CheckedConnector,
    CheckedTransport,
    PrivateTargetRefused,
    address_is_private,
    check_host,
    connect,
    connect_async,
    resolve_checked,
    resolve_checked_async,
)
from tests.helpers.delivery import ThreadedReceiver
from tests.helpers.rebinding import PUBLIC as REBINDING_PUBLIC
from tests.helpers.rebinding import rebinding


@pytest.fixture
def listener_port():
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


PRIVATE = [
    "127.0.0.1",
    "127.255.0.9",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",  # TEST-NET
    "::1",
    "::",
    "fe80::1",
    "fe80::1%eth0",
    "fd00::1",  # ULA
    "fc00::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # v4-mapped
    "::ffff:10.0.0.1",
    "2002:7f00:0001::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "[::1]",
    "not an address",
    "",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:2800:220:1:248:1893:25c8:1946"]


@pytest.mark.parametrize("ip", PRIVATE)
def test_it_counts_internal_addresses_as_private(ip):
    assert address_is_private(ip) is True


@pytest.mark.parametrize("ip", PUBLIC)
def test_it_counts_public_addresses_as_public(ip):
    assert address_is_private(ip) is False


def test_it_refuses_a_host_resolving_to_loopback():
    with pytest.raises(PrivateTargetRefused, match="localhost"):
        check_host("localhost", 80)
    with pytest.raises(PrivateTargetRefused):
        check_host("127.0.0.1", 80)
    with pytest.raises(PrivateTargetRefused):
        asyncio.run(resolve_checked_async("localhost", 443))


def test_it_returns_the_addresses_of_a_public_host():
    # An IP literal resolves without any DNS server.
    assert check_host("93.184.216.34", 443) == ["93.184.216.34"]
    assert asyncio.run(resolve_checked_async("8.8.8.8", 80)) == ["8.8.8.8"]


def test_a_refusal_is_a_value_error():
    assert issubclass(PrivateTargetRefused, ValueError)


def test_the_operators_switch_skips_the_check_but_not_the_lookup():
    assert resolve_checked("127.0.0.1", 80, allow_private=True) == ["127.0.0.1"]
    assert asyncio.run(resolve_checked_async("127.0.0.1", 80, allow_private=True)) == ["127.0.0.1"]


# --- connecting: to the checked address, with the name kept for TLS and HTTP ---------------


def test_connect_goes_to_the_address_it_checked_and_no_other(listener_port):
    port = listener_port
    with rebinding() as dns:
        name = dns.script("mail.rebind.test", REBINDING_PUBLIC, "127.0.0.1")
        with pytest.raises(ConnectionRefusedError):  # the public address (refused here)
            connect(name, port, timeout=2, allow_private=False)
        with pytest.raises(PrivateTargetRefused):  # the next lookup: internal
            asyncio.run(connect_async(name, port, allow_private=False))
    assert dns.public_connects == [(REBINDING_PUBLIC, port)]
    assert dns.lookups[name] == 2


def test_connect_reaches_internal_addresses_where_allowed(listener_port):
    with rebinding() as dns:
        name = dns.script("mail.rebind.test", "127.0.0.1")
        connect(name, listener_port, timeout=2, allow_private=True).close()

        async def connect_it():
            (await connect_async(name, listener_port, allow_private=True)).close()

        asyncio.run(connect_it())


class _TlsServer:
    """A TLS server on 127.0.0.1 with a certificate for NAME from a throw-away CA; records
    the SNI name each client sent and the first request, answers as IMAP or HTTP."""

    def __init__(self, tmp_path, http: bool) -> None:
        files = write_test_certificates(tmp_path / "tls", hostnames=(NAME,))
        self.ca_pem = files.ca_cert.read_text()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(files.server_cert, files.server_key)
        self.server_names: list[str | None] = []
        self.context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        self.requests: list[bytes] = []
        self.http = http

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer) -> None:
        if self.http:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        else:
            writer.write(b"* OK ready\r\n")
        await writer.drain()
        writer.close()


NAME = "mail.rebind.test"


def test_imap_tls_is_verified_for_the_name_not_the_address(tmp_path, settings):
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True  # the test server is on 127.0.0.1

    async def scenario(server: _TlsServer):
        port = await server.start()
        conn = await ImapConnection.open(
            NAME,
            port,
            implicit_tls=True,
            insecure=False,
            timeout=5,
            max_literal_size=1024,
            ca_pem=server.ca_pem,
        )
        conn.abort()
        server.server.close()
        return conn.greeting_text

    server = _TlsServer(tmp_path, http=False)
    with rebinding() as dns:
        dns.script(NAME, "127.0.0.1")
        assert asyncio.run(scenario(server)) == "ready"
    assert server.server_names == [NAME]


def test_aiohttp_keeps_the_name_for_tls_and_the_host_header(tmp_path):
    async def scenario(server: _TlsServer):
        port = await server.start()
        client_tls = ssl.create_default_context(cadata=server.ca_pem)
        connector = CheckedConnector(allow_private=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"https://{NAME}:{port}/x", ssl=client_tls) as response:
                body = await response.text()
        server.server.close()
        return port, body

    server = _TlsServer(tmp_path, http=True)
    with rebinding() as dns:
        dns.script(NAME, "127.0.0.1")
        port, body = asyncio.run(scenario(server))
    assert body == "ok" and server.server_names == [NAME]
    assert f"\r\nHost: {NAME}:{port}\r\n".encode() in server.requests[0]


def test_the_httpx_transport_keeps_the_host_header_and_refuses_internal_names():
    receiver = ThreadedReceiver()
    port = urlsplit(receiver.url).port
    try:
        with rebinding() as dns:
            dns.script(NAME, "127.0.0.1")
            with httpx2.Client(transport=CheckedTransport(allow_private=True)) as client:
                assert client.get(f"http://{NAME}:{port}/x").status_code == 200
            with httpx2.Client(transport=CheckedTransport(allow_private=False)) as client:
                with pytest.raises(PrivateTargetRefused):
                    client.get(f"http://{NAME}:{port}/x")
                with pytest.raises(PrivateTargetRefused):
                    client.get(f"http://127.0.0.1:{port}/x")
                with pytest.raises(httpx2.ConnectError):
                    client.get("http://does-not-resolve.invalid/")
        [request] = receiver.received
        assert request.headers["Host"] == f"{NAME}:{port}"
    finally:
        receiver.close()
