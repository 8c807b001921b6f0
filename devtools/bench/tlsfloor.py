"""The floor under the engine's memory per TLS mailbox: bare client connections.

    python -m devtools.bench.tlsfloor [--connections 3000] [--loop uvloop|asyncio]
        [--variant default|no-ca|tls12|plain] [--tls-tickets 2]
        [--transport memorybio|uvloop-ssl]

Opens N connections to one chaos IMAP server (a process of its own, implicit TLS, an ECDSA
P-256 certificate) with a protocol that only reads (the greeting), 50 handshakes at a time,
and prints RSS per connection (VmRSS with all open minus before, in KiB) and CPU per
connection (this process, handshakes included). Variants of the client context:
``default`` is what the engine uses for a connection that does not verify (Python's
create_default_context, system CAs loaded, verification off); ``no-ca`` a bare
PROTOCOL_TLS_CLIENT context; ``tls12`` the default at most TLS 1.2; ``plain`` no TLS.
``--tls-tickets``: TLS 1.3 session tickets the server sends per connection.
``--transport``: ``memorybio`` (the engine's way, imapclient/tls.py): a plain TCP transport
and a buffered protocol that reads the ciphertext into one shared buffer and runs TLS over
an SSLObject and two MemoryBIOs, fed 4 KiB at a time; ``uvloop-ssl``: the loop's TLS
transport (``create_connection(ssl=...)``, what the engine used before). design.md 4.13
quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ssl
import tempfile
import time
from pathlib import Path

from devtools.bench.engine import ChaosServerProcess, _rss_kb, raise_open_files
from superimap.imapclient.tls import FEED_SIZE, TlsLayer, plain_buffer


class ReadOnly(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


_SHARED = memoryview(bytearray(256 * 1024))  # the loop reads every connection into it


class ReadOnlyMemoryBio(asyncio.BufferedProtocol):
    """TLS over MemoryBIOs as ImapConnection runs it (the same TlsLayer, the same feed
    size and plaintext buffer), reading and dropping the plaintext."""

    def __init__(self, context: ssl.SSLContext, done: asyncio.Future) -> None:
        self.tls = TlsLayer(context, "localhost", done)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        self.step()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _SHARED

    def buffer_updated(self, nbytes: int) -> None:
        data = _SHARED[:nbytes]
        for start in range(0, nbytes, FEED_SIZE):
            self.tls.incoming.write(data[start : start + FEED_SIZE])
            self.step()

    def step(self) -> None:
        tls = self.tls
        try:
            if tls.handshake is not None:
                tls.sslobj.do_handshake()
                waiter, tls.handshake = tls.handshake, None
                waiter.set_result(None)
            view = plain_buffer()
            while tls.sslobj.read(len(view), view):
                pass
        except ssl.SSLWantReadError:
            pass
        if tls.outgoing.pending and self.transport is not None:
            self.transport.write(tls.outgoing.read())


def client_context(variant: str) -> ssl.SSLContext | None:
    if variant == "plain":
        return None
    if variant == "no-ca":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    else:
        context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if variant == "tls12":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


async def measure(port: int, count: int, variant: str, transport: str) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    context = client_context(variant)
    handshakes = asyncio.Semaphore(50)

    async def one():
        async with handshakes:
            if transport == "memorybio" and context is not None:
                done = loop.create_future()
                opened = await loop.create_connection(
                    lambda: ReadOnlyMemoryBio(context, done), "127.0.0.1", port
                )
                await done
                return opened
            return await loop.create_connection(
                ReadOnly,
                "127.0.0.1",
                port,
                ssl=context,
                server_hostname="localhost" if context else None,
            )

    gc.collect()
    rss_before, cpu_before = _rss_kb(), time.process_time()
    connections = await asyncio.gather(*(one() for _ in range(count)))
    cpu = time.process_time() - cpu_before
    await asyncio.sleep(2.0)  # greetings and session tickets read
    gc.collect()
    rss = (_rss_kb() - rss_before) / count
    for transport, _ in connections:
        transport.abort()
    return rss, cpu * 1000 / count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="RSS and CPU of bare TLS client connections.")
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--variant", choices=["default", "no-ca", "tls12", "plain"])
    parser.add_argument("--tls-tickets", type=int, default=2)
    parser.add_argument("--transport", choices=["memorybio", "uvloop-ssl"], default="memorybio")
    args = parser.parse_args(argv)
    variant = args.variant or "default"
    raise_open_files(65536)
    with tempfile.TemporaryDirectory(prefix="tlsfloor-") as var_dir:
        server = ChaosServerProcess(
            Path(var_dir), 10, variant != "plain", extra=(f"--tls-tickets={args.tls_tickets}",)
        )
        try:
            if args.loop == "uvloop":
                import uvloop

                rss, cpu = uvloop.run(
                    measure(server.port, args.connections, variant, args.transport)
                )
            else:
                rss, cpu = asyncio.run(
                    measure(server.port, args.connections, variant, args.transport)
                )
        finally:
            server.stop()
    print(
        f"{args.loop} {args.transport} {variant} tickets={args.tls_tickets} "
        f"N={args.connections}: "
        f"{rss:.1f} KiB and {cpu:.2f} ms of CPU per connection (OpenSSL {ssl.OPENSSL_VERSION})"
    )


if __name__ == "__main__":
    main()
