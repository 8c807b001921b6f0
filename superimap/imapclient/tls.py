"""TLS for the IMAP connection, done by the connection itself (design.md 4.13).

The socket is a plain TCP transport; an ``ssl.SSLObject`` over two ``MemoryBIO``s turns the
ciphertext the loop reads (into the thread's shared buffer) into plaintext (read into a
second shared buffer) and the commands into records. uvloop's TLS transport
(``create_connection(ssl=...)``, ``start_tls``) kept a 256 KiB read buffer and its own
objects per connection: ~6 KiB more of RSS per idle TLS mailbox than this.

This module only holds the state; ImapConnection drives it (handshake, reads, writes).
"""

from __future__ import annotations

import asyncio
import ssl
import threading

# Ciphertext goes into the incoming BIO at most this much at a time, the plaintext read
# out after each piece: a BIO keeps the largest size it ever held, so a 256 KiB read
# written whole would leave each connection that once read one (a big message) with a
# 256 KiB block. After one 1 MB FETCH per connection: 39.6-40.2 KiB of RSS per
# connection with 4 KiB pieces, 46.5-46.8 with 8, 57.2-58.0 with 16 (idle before: ~44);
# after 300 KB 151.5 whole; the same CPU within noise (design.md 4.13).
FEED_SIZE = 4 * 1024

# Plaintext comes out into one buffer per thread (an event loop runs in one): the
# connection's framer copies it before anything else reads into it. SSLObject.read() hands
# over at most one record, 16 KiB.
PLAIN_BUFFER_SIZE = 16 * 1024
_plain_buffers = threading.local()


def thread_buffer(store: threading.local, size: int) -> memoryview:
    """The calling thread's buffer of ``size`` bytes kept in ``store``, made on first use."""
    view = getattr(store, "view", None)
    if view is None:
        view = store.view = memoryview(bytearray(size))
    return view


def plain_buffer() -> memoryview:
    return thread_buffer(_plain_buffers, PLAIN_BUFFER_SIZE)


class TlsLayer:
    """One connection's TLS state: the SSLObject and its two BIOs, whether the handshake is
    done (and who waits for it), and writes that wait for a renegotiation to finish."""

    __slots__ = ("incoming", "outgoing", "sslobj", "handshake", "pending")

    def __init__(self, context: ssl.SSLContext, host: str, waiter: asyncio.Future | None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        # server_hostname: SNI, and the name the certificate is checked against when the
        # context says check_hostname (as uvloop did with the same context).
        self.sslobj = context.wrap_bio(
            self.incoming, self.outgoing, server_side=False, server_hostname=host
        )
        # The future the opener awaits until the handshake is done; None after.
        self.handshake: asyncio.Future | None = waiter
        # Plaintext that SSLObject.write() refused with SSLWantReadError (a TLS 1.2
        # renegotiation waits for the server): written, in order, once records come.
        self.pending: list[bytes] | None = None

    def drained(self) -> bool:
        """Nothing left to read: no ciphertext in the BIO, no plaintext in OpenSSL. Another
        read() could only raise SSLWantReadError (an exception per read of a mail)."""
        return not self.incoming.pending and not self.sslobj.pending()
