"""uvicorn's HTTP/1.1 protocol (h11) with the limits an ASGI middleware cannot set.

The front door (frontdoor.py) bounds what a request may hold once its head has arrived.
Before that, uvicorn alone holds the connection, with no limit on how many are open and no
deadline for a request head (its keep-alive timeout starts after a response, and any byte
received cancels it), so connections that trickle a head in, or say nothing, would stay
forever. This protocol:

- closes a connection past WEB_MAX_CONNECTIONS open ones at once, with a 503;
- closes a connection whose request head is not complete WEB_HEADER_TIMEOUT seconds after
  it opened or after its previous response (408);
- answers 431 and closes when a request head (request line and headers) passes
  WEB_MAX_HEADER_BYTES: h11's max_incomplete_event_size (set to the same in
  runtime.web_config) bounds only a head still incomplete, and one that arrives in a
  single read could be as large as the read. The close lingers (as nginx's
  lingering_close): the answer goes out with a FIN, what the client still sends is read and
  dropped for up to LINGER_SECONDS or LINGER_BYTES, then the socket closes. Closing at once
  with unread bytes would make the kernel send a reset, and a client still writing its head
  would see a broken pipe instead of the 431.

h11 is chosen explicitly: uvicorn would pick httptools when installed, which has no cap on
header size.

After a burst of connections (at least BURST open at once) has mostly ended, the memory
they freed is handed back to the system (glibc's malloc_trim, at most every TRIM_EVERY
seconds): glibc keeps freed memory for reuse, so a burst of 1,000 attacking connections
left 13-16 MiB of RSS behind it (bench.slowbody).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time

import h11
from django.conf import settings
from uvicorn.protocols.http.h11_impl import H11Protocol


def _raw_answer(status: str, text: str) -> bytes:
    body = f"{text}\n".encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
        "x-content-type-options: nosniff\r\n\r\n"
    ).encode() + body


TOO_MANY_CONNECTIONS = _raw_answer("503 Service Unavailable", "Too many connections.")
HEAD_TIMEOUT = _raw_answer("408 Request Timeout", "The request head did not arrive in time.")
HEAD_TOO_LARGE = _raw_answer(
    "431 Request Header Fields Too Large", "The request head is too large."
)


LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024

BURST = 100
TRIM_EVERY = 10.0
TRIM_DELAY = 2.0


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


class MemoryReturn:
    """Once the open connections fall to a quarter of a burst's peak, calls malloc_trim
    TRIM_DELAY seconds later (the rest of the burst is usually gone by then)."""

    def __init__(self) -> None:
        self.trim = _malloc_trim()
        self.peak = 0
        self.last = -TRIM_EVERY
        self.trims = 0

    def opened(self, count: int) -> None:
        self.peak = max(self.peak, count)

    def closed(self, count: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if self.peak < BURST or count > self.peak // 4 or self.trim is None:
            return
        now = time.monotonic()
        if now - self.last < TRIM_EVERY:
            return
        self.last, self.peak = now, count
        if loop is None:
            self.trim_now()
        else:
            loop.call_later(TRIM_DELAY, self.trim_now)

    def trim_now(self) -> None:
        self.trims += 1
        self.trim(0)


memory_return = MemoryReturn()


class GuardedH11Protocol(H11Protocol):
    head_timer: asyncio.TimerHandle | None = None
    head_seen = 0  # bytes of the current request head so far
    head_tail = b""  # its last 3 bytes, for an end (CR LF CR LF) split between reads
    lingering: int | None = None  # bytes still to drop after a 431, or None
    linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > settings.WEB_MAX_CONNECTIONS:
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        memory_return.opened(len(self.connections))
        self._wait_for_head()

    def data_received(self, data: bytes) -> None:
        if self.lingering is not None:
            self.lingering -= len(data)
            if self.lingering <= 0:
                self.transport.close()
            return
        if self.conn.their_state is h11.IDLE and not self._head_fits(data):
            self._stop_waiting()
            self._answer_and_linger(HEAD_TOO_LARGE)
            return
        super().data_received(data)
        if self.head_timer is not None and self.conn.their_state is not h11.IDLE:
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._wait_for_head()

    def eof_received(self) -> None:
        if self.lingering is not None:
            self.transport.close()
            return
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None
        super().connection_lost(exc)
        memory_return.closed(len(self.connections), self.loop)

    def _head_fits(self, data: bytes) -> bool:
        window = self.head_tail + data
        end = window.find(b"\r\n\r\n")
        if end >= 0:
            size = self.head_seen - len(self.head_tail) + end + 4
            self.head_seen, self.head_tail = 0, b""
        else:
            self.head_seen += len(data)
            self.head_tail = window[-3:]
            size = self.head_seen
        return size <= settings.WEB_MAX_HEADER_BYTES

    def _answer_and_linger(self, answer: bytes) -> None:
        self.transport.write(answer)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.lingering = LINGER_BYTES
        self.linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _wait_for_head(self) -> None:
        self._stop_waiting()
        self.head_timer = self.loop.call_later(settings.WEB_HEADER_TIMEOUT, self._head_late)

    def _stop_waiting(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_late(self) -> None:
        self.head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self.conn.our_state is h11.IDLE:
                self.transport.write(HEAD_TIMEOUT)
            self.transport.close()
