"""An HTTP/1.1 response parser for the webhook client (delivery/webclient.py): bytes in,
status and the first KiB of the body out. No sockets, no asyncio: fed whatever arrived.

What a webhook needs and nothing more: the status, Retry-After, whether the connection may
be reused, and up to `excerpt_limit` bytes of the body. 1xx answers are skipped; bodies come
by Content-Length, chunked or until the receiver closes (HTTP/1.0 and answers with neither).
Reads are bounded: a head larger than `head_limit` is an error, and once the excerpt is full
the answer is finished there (the connection is then not reused, so the rest of a long or
slow body is never waited for, as aiohttp's response release does).
"""

from __future__ import annotations

import re

HEAD_LIMIT = 32 * 1024
EXCERPT_LIMIT = 1024
_CHUNK_LINE_LIMIT = 4096

_FIELDS = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|retry-after)[ \t]*:([^\r\n]*)", re.I
)

# Body modes.
_NONE, _LENGTH, _CHUNKED, _CLOSE = range(4)
# Chunked sub-states.
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class ResponseError(ValueError):
    """The receiver's answer is not HTTP/1.x we can read; the text is operator-readable."""


class ResponseParser:
    """One answer on one connection. feed() returns True once the answer is finished;
    `keep_alive` then says whether the connection can carry the next request."""

    __slots__ = (
        "head_limit",
        "excerpt_limit",
        "received",
        "status",
        "version",
        "retry_after",
        "keep_alive",
        "done",
        "_buf",
        "_excerpt",
        "_mode",
        "_remaining",
        "_chunk_state",
    )

    def __init__(self, excerpt_limit: int = EXCERPT_LIMIT, head_limit: int = HEAD_LIMIT) -> None:
        self.head_limit = head_limit
        self.excerpt_limit = excerpt_limit
        self.received = 0  # bytes of answer seen: 0 means "closed without answering"
        self.status = 0
        self.version = ""
        self.retry_after = ""
        self.keep_alive = False
        self.done = False
        self._buf = bytearray()
        self._excerpt = bytearray()
        self._mode = -1  # still reading the head
        self._remaining = 0
        self._chunk_state = _SIZE

    @property
    def excerpt(self) -> bytes:
        return bytes(self._excerpt)

    def feed(self, data: bytes) -> bool:
        if self.done:
            # Bytes after a finished answer: nothing was asked, so the connection is spoiled.
            self.keep_alive = False
            return True
        self.received += len(data)
        self._buf += data
        if self._mode < 0 and not self._head():
            return False
        return self._body()

    def eof(self) -> None:
        """The receiver closed: finishes a close-delimited body, else ResponseError."""
        self.keep_alive = False
        if self.done:
            return
        if self._mode == _CLOSE:
            self.done = True
            return
        if self.received == 0:
            raise ResponseError("the receiver closed the connection without answering")
        raise ResponseError("the receiver closed the connection before the end of its answer")

    # --- head ---------------------------------------------------------------------------

    def _head(self) -> bool:
        """Parse heads until a final (non-1xx) one is in; False if more bytes are needed."""
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end > self.head_limit or (end < 0 and len(self._buf) > self.head_limit):
                raise ResponseError(f"the answer's header is over {self.head_limit} bytes")
            if end < 0:
                return False
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            if self._parse_head(head):
                return True

    def _parse_head(self, head: bytes) -> bool:
        first = head.split(b"\r\n", 1)[0]
        parts = first.split(b" ", 2)
        if (
            len(parts) < 2
            or not parts[0].startswith(b"HTTP/1.")
            or len(parts[0]) != 8
            or len(parts[1]) != 3
            or not parts[1].isdigit()
        ):
            raise ResponseError(f"not an HTTP/1.x status line: {_show(first)}")
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            return False  # 100 Continue, 102, 103 Early Hints: the real answer follows
        self.status = status
        self.version = parts[0][5:].decode("ascii")
        length: int | None = None
        chunked = False
        encoded = False
        tokens: set[str] = set()
        # Only the fields that decide the framing and Retry-After are looked at.
        for name, value in _FIELDS.findall(head):
            key = name.lower()
            if key == b"content-length":
                text = value.strip()
                if not text.isdigit() or (length is not None and int(text) != length):
                    raise ResponseError(f"invalid Content-Length: {_show(text)}")
                length = int(text)
            elif key == b"transfer-encoding":
                encoded = True
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif key == b"connection":
                tokens.update(t.strip().lower() for t in value.decode("latin-1").split(","))
            else:
                self.retry_after = value.strip().decode("latin-1")
        if self.version == "1.1":
            self.keep_alive = "close" not in tokens
        else:
            self.keep_alive = "keep-alive" in tokens and "close" not in tokens
        if status in (101, 204, 304):
            self._mode = _NONE
            self.keep_alive = self.keep_alive and status != 101
        elif encoded:
            # Transfer-Encoding wins over Content-Length; not ending in chunked: until close.
            self._mode = _CHUNKED if chunked else _CLOSE
        elif length is not None:
            self._mode = _LENGTH
            self._remaining = length
        else:
            self._mode = _CLOSE
        if self._mode == _CLOSE:
            self.keep_alive = False
        return True

    # --- body ---------------------------------------------------------------------------

    def _body(self) -> bool:
        mode = self._mode
        if mode == _LENGTH:
            self._remaining -= self._take(self._remaining)
            if self._remaining == 0:
                return self._finish()
        elif mode == _CHUNKED:
            if self._chunks():
                return self._finish()
        elif mode == _CLOSE:
            self._take(len(self._buf))
        else:
            return self._finish()
        if len(self._excerpt) >= self.excerpt_limit:
            # Enough to show; the rest is not read (and the connection not reused).
            self.keep_alive = False
            self.done = True
            return True
        return False

    def _take(self, most: int) -> int:
        buf = self._buf
        n = min(most, len(buf))
        if n:
            room = self.excerpt_limit - len(self._excerpt)
            if room > 0:
                self._excerpt += buf[: min(n, room)]
            del buf[:n]
        return n

    def _chunks(self) -> bool:
        """True once the last chunk and the trailers are in."""
        buf = self._buf
        while True:
            state = self._chunk_state
            if state == _DATA:
                self._remaining -= self._take(self._remaining)
                if self._remaining:
                    return False
                self._chunk_state = _DATA_END
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > _CHUNK_LINE_LIMIT:
                    raise ResponseError("invalid chunked body: line too long")
                return False
            line = bytes(buf[:end])
            del buf[: end + 2]
            if state == _DATA_END:
                if line:
                    raise ResponseError("invalid chunked body: no CRLF after a chunk")
                self._chunk_state = _SIZE
            elif state == _SIZE:
                size = line.split(b";", 1)[0].strip()
                try:
                    self._remaining = int(size, 16)
                except ValueError:
                    raise ResponseError(f"invalid chunk size: {_show(size)}") from None
                if self._remaining < 0 or size[:1] in (b"+", b"-"):
                    raise ResponseError(f"invalid chunk size: {_show(size)}")
                self._chunk_state = _DATA if self._remaining else _TRAILER
            elif not line:  # _TRAILER: an empty line ends the body
                return True
            elif len(line) > _CHUNK_LINE_LIMIT:
                raise ResponseError("invalid chunked body: trailer too long")

    def _finish(self) -> bool:
        self.done = True
        if self._buf:
            self.keep_alive = False  # bytes nobody asked for
        return True


def _show(raw: bytes) -> str:
    return repr(raw[:80].decode("latin-1"))
