"""The IMAP connection's own TLS (imapclient/tls.py, design.md 4.13): the socket stays a
plain TCP transport, and the connection runs TLS over an SSLObject and two MemoryBIOs
(uvloop's TLS transport kept a 256 KiB buffer per connection). Implicit TLS against the
chaos server with a test CA's certificate for 127.0.0.1, verified; STARTTLS against
Dovecot; the connection tests under uvloop, as the engine runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest
import uvloop
from django.db import close_old_connections

from devtools.testing.chaos_server import ChaosImapServer
from devtools.testing.dovecot import CertificateFiles, write_test_certificates
from devtools.testing.mail import make_message
from devtools.testing.users import chaos_users
from superimap.delivery.models import Delivery
from superimap.imap import Fetch, RemoteProtocolError
from superimap.imapclient import ImapConnection, TlsCertificateFailed
from superimap.mailboxes.models import MailboxUser
from tests.helpers.engine import LoopbackServer, RunningEngine, wait_for


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> CertificateFiles:
    return write_test_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True)
def _private_hosts(settings) -> None:
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True


def _tls_server(certificates: CertificateFiles) -> ChaosImapServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    return ChaosImapServer(users=1, chaos=False, seed=3, ssl_context=context)


async def _open(port: int, certificates: CertificateFiles, host: str = "127.0.0.1"):
    return await ImapConnection.open(
        host,
        port,
        implicit_tls=True,
        insecure=False,
        timeout=5,
        max_literal_size=4 * 1024 * 1024,
        ca_pem=certificates.ca_cert.read_text(),
    )


async def _logged_in(server: ChaosImapServer, certificates: CertificateFiles):
    conn = await _open(server.port, certificates)
    await conn.command(*conn.protocol.login("user0", "pass0"))
    await conn.command(*conn.protocol.select("INBOX"))
    (served,) = server.sessions
    return conn, served


def test_implicit_tls_runs_over_a_plain_transport(certificates) -> None:
    async def scenario():
        server = _tls_server(certificates)
        await server.start()
        try:
            conn, served = await _logged_in(server, certificates)
            try:
                return (
                    conn.transport.get_extra_info("ssl_object"),
                    served.transport.get_extra_info("ssl_object").version(),
                    conn.greeting_text,
                )
            finally:
                conn.abort()
        finally:
            await server.stop()

    client_ssl, server_version, greeting = uvloop.run(scenario())
    assert client_ssl is None  # not uvloop's TLS transport: no buffer of its own
    assert server_version == "TLSv1.3"  # and yet the server spoke TLS with it
    assert "chaos server ready" in greeting


def test_a_big_literal_over_tls_is_read_intact(certificates) -> None:
    """A message of ~1.5 MB: ~100 TLS records, read by the loop in pieces of up to 256 KiB,
    each fed to the TLS layer 4 KiB at a time."""
    body = "".join(
        f"line {i:07d} of a big message, with some text to fill it\n" for i in range(25000)
    )
    raw = make_message("big", "a@example.test", "user0@x", body, "<big@t>")
    assert len(raw) > 1_000_000

    async def scenario():
        server = _tls_server(certificates)
        await server.start()
        try:
            server.add_message("user0", raw)
            conn, _ = await _logged_in(server, certificates)
            try:
                events, _ = await conn.command(*conn.protocol.uid_fetch("1", "(BODY.PEEK[])"))
                return [event.body for event in events if isinstance(event, Fetch)]
            finally:
                conn.abort()
        finally:
            await server.stop()

    assert uvloop.run(scenario()) == [raw]


def test_the_servers_close_notify_ends_the_connection_like_an_eof(certificates) -> None:
    """The server's TLS shutdown waits for the client's close_notify (or its own 30 s
    timeout) before it closes the socket: the connection ends at the close_notify."""

    async def scenario():
        server = _tls_server(certificates)
        await server.start()
        try:
            conn, served = await _logged_in(server, certificates)
            served.close()
            started = time.monotonic()
            with pytest.raises(RemoteProtocolError) as raised:
                await conn.next_event(10)
            return str(raised.value), time.monotonic() - started, conn.transport.is_closing()
        finally:
            await server.stop()

    error, elapsed, closing = uvloop.run(scenario())
    assert error == "connection closed by the server without BYE"  # as at a TCP EOF
    assert elapsed < 2.0 and closing


def test_a_corrupt_tls_record_fails_the_connection(certificates) -> None:
    """Bytes that are no valid record (written under the server's TLS, straight to its
    socket): the waiting call raises the SSLError (an OSError: the session reconnects)
    and the transport is closed."""

    async def scenario():
        server = _tls_server(certificates)
        await server.start()
        try:
            conn, served = await _logged_in(server, certificates)
            _inject_garbage(served)
            with pytest.raises(ssl.SSLError):
                await conn.next_event(5)
            return conn.transport.is_closing()
        finally:
            await server.stop()

    assert uvloop.run(scenario())


def _inject_garbage(served) -> None:
    """An application-data record of 32 bytes that do not decrypt, past the TLS layer."""
    os.write(
        served.transport.get_extra_info("socket").fileno(), b"\x17\x03\x03\x00\x20" + bytes(32)
    )


def test_a_tls_error_mid_session_makes_the_session_reconnect(mail_partner, certificates):
    async def scenario():
        server = _tls_server(certificates)
        await server.start()
        await asyncio.to_thread(_tls_user, mail_partner, server.port)
        try:
            async with RunningEngine():
                await wait_for(lambda: _status() == "idle", timeout=10)
                (served,) = server.sessions
                _inject_garbage(served)
                await wait_for(lambda: server.stats["connections"] == 2, timeout=15)
                await wait_for(lambda: _status() == "idle", timeout=10)
                server.add_message("user0", make_message("after", "a@x.test", "user0@x", "hi"))
                await wait_for(lambda: _new_mail() == 1, timeout=10)
        finally:
            await server.stop()

    asyncio.run(scenario())


def _tls_user(partner, port: int) -> None:
    close_old_connections()
    chaos_users(partner, port, 1, imap_tls="implicit")


def _status() -> str:
    close_old_connections()
    return MailboxUser.objects.get().status


def _new_mail() -> int:
    close_old_connections()
    return Delivery.objects.filter(kind="new_mail").count()


def test_starttls_switches_the_same_transport(dovecot) -> None:
    dovecot.add_user("owntls", "secret-pw")

    async def scenario():
        conn = await ImapConnection.open(
            "127.0.0.1",
            dovecot.imap_port,
            implicit_tls=False,
            insecure=False,
            timeout=5,
            max_literal_size=65536,
        )
        try:
            plain = conn.transport
            await conn.start_tls("127.0.0.1", False, dovecot.cert_path.read_text())
            _, tagged = await conn.command(*conn.protocol.capability())
            capabilities = set(conn.protocol.capabilities)
            await conn.command(*conn.protocol.login("owntls", "secret-pw"))
            await conn.command(*conn.protocol.select("INBOX"))
            return (
                conn.transport is plain,
                conn.transport.get_extra_info("ssl_object"),
                capabilities,
            )
        finally:
            conn.abort()

    same, client_ssl, capabilities = uvloop.run(scenario())
    assert same and client_ssl is None
    assert "STARTTLS" not in capabilities  # Dovecot offers it only before TLS


def test_a_host_name_the_certificate_is_not_for_fails_verification(tmp_path) -> None:
    """server_hostname goes to the SSLObject: the name is checked as the context says."""
    only_the_address = write_test_certificates(tmp_path, hostnames=())

    async def scenario():
        server = _tls_server(only_the_address)
        await server.start()
        try:
            with pytest.raises(TlsCertificateFailed) as raised:
                await _open(server.port, only_the_address, host="localhost")
            return str(raised.value)
        finally:
            await server.stop()

    message = uvloop.run(scenario())
    assert "Hostname mismatch" in message and "localhost" in message


class Silent(LoopbackServer):
    """Accepts, reads, never answers (``close``: closes at once instead)."""

    def __init__(self, close: bool) -> None:
        self.close = close

    async def serve(self, reader, writer) -> None:
        if not self.close:
            await reader.read(65536)
            await asyncio.sleep(30)
        writer.close()


@pytest.mark.parametrize("close", [False, True])
def test_a_handshake_that_never_ends_times_out_and_a_closed_one_is_a_reset(
    certificates, close
) -> None:
    async def scenario():
        server = Silent(close)
        port = await server.start()
        try:
            started = time.monotonic()
            with pytest.raises(OSError) as raised:
                await ImapConnection.open(
                    "127.0.0.1",
                    port,
                    implicit_tls=True,
                    insecure=True,
                    timeout=0.5,
                    max_literal_size=65536,
                )
            return raised.value, time.monotonic() - started
        finally:
            await server.stop()

    error, elapsed = uvloop.run(scenario())
    if close:
        assert isinstance(error, ConnectionResetError)
    else:
        assert isinstance(error, TimeoutError) and 0.4 < elapsed < 2.0


class HoldingProxy(LoopbackServer):
    """Forwards 127.0.0.1 TCP to ``port``. Once ``arm()``ed, the next bytes from the client
    make it hold what the server sends until ``release()``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = False
        self.held: list[bytes] | None = None
        self.to_client: asyncio.StreamWriter | None = None

    def arm(self) -> None:
        self.armed = True

    def release(self) -> None:
        held, self.held = self.held or [], None
        for data in held:
            self.to_client.write(data)

    async def serve(self, client_reader, client_writer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.to_client = client_writer

        async def upstream() -> None:
            while data := await client_reader.read(65536):
                if self.armed:
                    self.armed, self.held = False, []
                writer.write(data)
            writer.close()

        async def downstream() -> None:
            while data := await reader.read(65536):
                if self.held is not None:
                    self.held.append(data)
                else:
                    client_writer.write(data)
            client_writer.close()

        with contextlib.suppress(asyncio.CancelledError):  # the loop ends first
            await asyncio.gather(upstream(), downstream(), return_exceptions=True)


def test_a_write_during_a_tls12_renegotiation_waits_for_it(certificates) -> None:
    """openssl s_server renegotiates (TLS 1.2, its 'r' command; -nbio, or it may sit in a
    blocking read and miss the command): the client answers the HelloRequest with a
    ClientHello, the proxy holds the server's answer, and a command written meanwhile
    (SSLObject.write: SSLWantReadError) goes out once the handshake is done, in order with
    one written after it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            *("openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1"),
            *("-cert", str(certificates.server_cert), "-key", str(certificates.server_key)),
            *("-tls1_2", "-crlf", "-no_ign_eof", "-msg", "-nbio"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    received: list[bytes] = []
    threading.Thread(target=lambda: received.extend(server.stdout), daemon=True).start()

    def tell(line: bytes) -> None:
        server.stdin.write(line + b"\n")
        server.stdin.flush()

    def got(text: bytes) -> bool:
        return any(text in line for line in received)

    async def until(check, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, [r for r in received if r[:1] != b" "]
            await asyncio.sleep(0.02)

    async def scenario():
        await until(lambda: got(b"ACCEPT"))
        proxy = HoldingProxy(port)
        proxy_port = await proxy.start()
        tell(b"* OK [CAPABILITY IMAP4rev1] ready")
        conn = await ImapConnection.open(
            "127.0.0.1",
            proxy_port,
            implicit_tls=True,
            insecure=True,
            timeout=5,
            max_literal_size=65536,
        )
        try:
            proxy.arm()
            tell(b"r")
            await until(lambda: got(b"HelloRequest"))
            await until(lambda: proxy.held)  # the ClientHello went, the answer is held
            first, second = conn.protocol.noop(), conn.protocol.noop()
            await conn.send(first[1])
            await conn.send(second[1])
            await asyncio.sleep(0.3)
            early = got(first[1].strip())
            proxy.release()
            await until(lambda: got(second[1].strip()))
            tell(f"{first[0]} OK done".encode())
            tell(f"{second[0]} OK done".encode())
            _, answer = await conn.collect(second[0], 5)
            return early, first[1].strip(), second[1].strip(), answer
        finally:
            conn.abort()
            await proxy.stop()

    try:
        early, first, second, answer = uvloop.run(scenario())
    finally:
        server.kill()
        server.wait()
    lines = [line.strip() for line in received]
    assert not early
    assert lines.index(first) < lines.index(second)
    # s_server's -msg: the first handshake and the renegotiation, each to its Finished.
    assert sum(line.endswith(b"], ServerHello") for line in lines) == 2
    assert sum(line.startswith(b"<<<") and b"Finished" in line for line in lines) == 2
    assert answer.status == "OK"
