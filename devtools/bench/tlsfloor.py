"""The floor under the engine's memory per TLS mailbox: bare client connections.

    python -m devtools.bench.tlsfloor [--connections 3000] [--loop uvloop|asyncio]
        [--variant default|no-ca|tls12|plain] [--tls-tickets 2]

Opens N connections to one chaos IMAP server (a process of its own, implicit TLS, an ECDSA
P-256 certificate) with a protocol that only reads (the greeting), 50 handshakes at a time,
and prints RSS per connection (VmRSS with all open minus before, in KiB) and CPU per
connection (this process, handshakes included). Variants of the client context:
``default`` is what the engine uses for a connection that does not verify (Python's
create_default_context, system CAs loaded, verification off); ``no-ca`` a bare
PROTOCOL_TLS_CLIENT context; ``tls12`` the default at most TLS 1.2; ``plain`` no TLS.
``--tls-tickets``: TLS 1.3 session tickets the server sends per connection.
design.md 4.13 quotes it.
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


class ReadOnly(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


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


async def measure(port: int, count: int, variant: str) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    context = client_context(variant)
    handshakes = asyncio.Semaphore(50)

    async def one():
        async with handshakes:
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

                rss, cpu = uvloop.run(measure(server.port, args.connections, variant))
            else:
                rss, cpu = asyncio.run(measure(server.port, args.connections, variant))
        finally:
            server.stop()
    print(
        f"{args.loop} {variant} tickets={args.tls_tickets} N={args.connections}: "
        f"{rss:.1f} KiB and {cpu:.2f} ms of CPU per connection (OpenSSL {ssl.OPENSSL_VERSION})"
    )


if __name__ == "__main__":
    main()
