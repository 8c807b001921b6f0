"""The webhook HTTP client: keep-alive HTTP/1.1 POSTs on an asyncio Protocol.

Built for the worker's one job, a POST of a rendered body and its headers, at a fraction of
aiohttp's CPU per request (devtools/bench/webclients.py measures both). What it does:

- every connection goes to the addresses netguard.resolve_checked_async() returned for the
  URL's host, hostnames and IP literals alike (PrivateTargetRefused unless allow_private,
  WEBHOOK_ALLOW_PRIVATE); the name is kept for TLS (SNI, certificate check) and Host:;
- https with certificate verification (ssl.create_default_context(), as aiohttp's default);
- one total timeout per request (connect, send and answer), TimeoutError when it passes;
- no redirects (a 3xx is an answer like any other); user:password@ in a URL is Basic auth;
- a pool per origin (scheme, host, port): idle connections reused last-in first-out, closed
  after KEEPALIVE_SECONDS idle, when the receiver closes them, or after an answer with
  `Connection: close`, an HTTP/1.0 answer without keep-alive, or a body not read to its
  end; at most `limit` requests in flight for the whole session (the worker's concurrency);
- answers parsed by delivery/http11.py (1xx skipped, bounded header, 1 KiB excerpt).

Failures come out as WebError with the operator-readable text http.post() records (issue
17's words: DNS failure, certificate failure, connection refused, could not connect, closed
without answering), TimeoutError, or PrivateTargetRefused.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from superimap.delivery.http11 import EXCERPT_LIMIT, ResponseError, ResponseParser
from superimap.platform.netguard import resolve_checked_async

KEEPALIVE_SECONDS = 15.0  # aiohttp's keepalive_timeout default
_URL_CACHE_SIZE = 4096
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"

_default_tls: ssl.SSLContext | None = None


class WebError(Exception):
    """A POST that got no usable answer; str() is the text for last_error."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    excerpt: bytes
    retry_after: str  # the Retry-After header's text, "" when absent


def default_tls() -> ssl.SSLContext:
    """The system's CAs with hostname checks: what aiohttp's connector uses by default."""
    global _default_tls
    if _default_tls is None:
        context = ssl.create_default_context()
        context.set_alpn_protocols(("http/1.1",))
        _default_tls = context
    return _default_tls


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]
    host: str  # as resolved and checked (no brackets)
    port: int
    head: bytes  # "POST <path> HTTP/1.1\r\nHost: ...\r\n" + the session's fixed headers


class _Connection(asyncio.Protocol):
    __slots__ = ("transport", "parser", "waiter", "closed", "idle_since")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            self.abort()  # nothing was asked: a broken or hostile receiver
            return
        try:
            finished = parser.feed(data)
        except ResponseError as exc:
            self.abort()
            self._answer(exc)
            return
        if finished:
            self._answer(None)

    def eof_received(self) -> bool:
        self.closed = True
        parser = self.parser
        if parser is not None:
            try:
                parser.eof()
            except ResponseError as exc:
                self._answer(exc)
            else:
                self._answer(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.parser is not None:
            self.eof_received()  # a reset mid-answer reads as a close there

    def _answer(self, error: Exception | None) -> None:
        waiter = self.waiter
        self.waiter = None
        if error is None:
            self.parser = None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(WebError(str(error)))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class WebhookSession:
    """Connections for webhook POSTs; close() (or `async with`) closes them all."""

    def __init__(
        self,
        limit: int,
        timeout_seconds: float,
        *,
        allow_private: bool,
        user_agent: str,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.limit = max(1, limit)
        self.timeout_seconds = timeout_seconds
        self.allow_private = allow_private
        self.tls = tls
        self._fixed = f"User-Agent: {user_agent}\r\nAccept: */*\r\n".encode("latin-1")
        self._targets: dict[str, _Target] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._in_flight = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> WebhookSession:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.abort()

    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        if self._closed:
            raise WebError("the session is closed")
        target = self._targets.get(url) or self._target(url)
        lines = [target.head, self._fixed]
        for name, value in headers.items():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        lines.append(body)
        request = b"".join(lines)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_seconds
        if self._in_flight >= self.limit:
            await self._wait_turn(deadline)
        self._in_flight += 1
        try:
            return await self._exchange(loop, target, request, deadline)
        finally:
            self._in_flight -= 1
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    async def _wait_turn(self, deadline: float) -> None:
        while self._in_flight >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            async with asyncio.timeout_at(deadline):
                await waiter

    async def _exchange(self, loop, target: _Target, request: bytes, deadline: float) -> Answer:
        conn = self._reuse(loop, target.origin)
        if conn is None:
            conn = _Connection()
            self._busy.add(conn)
            try:
                async with asyncio.timeout_at(deadline):
                    await self._connect(loop, conn, target)
            except BaseException:
                self._busy.discard(conn)
                conn.abort()
                raise
        else:
            self._busy.add(conn)
        parser = ResponseParser(EXCERPT_LIMIT)
        waiter = loop.create_future()
        conn.parser = parser
        conn.waiter = waiter
        timer = loop.call_at(deadline, _expire, waiter)
        keep = False
        try:
            conn.transport.write(request)  # type: ignore[union-attr]
            await waiter
            keep = parser.keep_alive and not conn.closed
            return Answer(parser.status, parser.excerpt, parser.retry_after)
        finally:
            timer.cancel()
            self._busy.discard(conn)
            conn.parser = None
            conn.waiter = None
            if keep and not self._closed:
                conn.idle_since = loop.time()
                self._idle.setdefault(target.origin, []).append(conn)
                if self._sweeper is None:
                    self._sweeper = loop.call_later(KEEPALIVE_SECONDS, self._sweep, loop)
            else:
                conn.abort()

    def _sweep(self, loop) -> None:
        """Close connections idle for KEEPALIVE_SECONDS (origins no longer posted to too)."""
        self._sweeper = None
        now = loop.time()
        for origin, idle in list(self._idle.items()):
            fresh = [c for c in idle if not c.closed and now - c.idle_since < KEEPALIVE_SECONDS]
            for conn in idle:
                if conn not in fresh:
                    conn.abort()
            if fresh:
                idle[:] = fresh
            else:
                del self._idle[origin]
        if self._idle:
            self._sweeper = loop.call_later(KEEPALIVE_SECONDS / 2, self._sweep, loop)

    def _reuse(self, loop, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE_SECONDS:
                # Older ones below are staler still: close those past the keep-alive time.
                while idle and now - idle[0].idle_since >= KEEPALIVE_SECONDS:
                    idle.pop(0).abort()
                return conn
            conn.abort()
        return None

    async def _connect(self, loop, conn: _Connection, target: _Target) -> None:
        host, port = target.host, target.port
        try:
            addresses = await resolve_checked_async(host, port, allow_private=self.allow_private)
        except socket.gaierror as exc:
            raise WebError(f"DNS lookup failed for {host}: {_os_reason(exc)}") from exc
        tls = None
        if target.origin[0] == "https":
            tls = self.tls or default_tls()
        error: OSError | None = None
        for address in addresses:
            try:
                await loop.create_connection(
                    lambda: conn,
                    address,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
                return
            except ssl.SSLCertVerificationError as exc:
                raise WebError(f"TLS certificate check failed for {host}:{port}: {exc}") from exc
            except OSError as exc:
                error = exc
        if isinstance(error, ConnectionRefusedError):
            raise WebError(f"connection refused by {host}:{port} (nothing listening?)")
        assert error is not None  # resolve_checked_async() returns at least one address
        raise WebError(f"could not connect to {host}:{port}: {_os_reason(error)}") from error

    def _target(self, url: str) -> _Target:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise WebError(f"invalid webhook URL: {exc}") from exc
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        if scheme not in ("http", "https") or not host:
            raise WebError(f"invalid webhook URL: {url[:200]!r}")
        default = 443 if scheme == "https" else 80
        port = port or default
        if ":" in host:
            shown = f"[{host}]"
        else:
            try:
                shown = host.encode("idna").decode("ascii")
            except UnicodeError as exc:
                raise WebError(f"invalid host name in the webhook URL: {exc}") from exc
            host = shown
        host_header = shown if port == default else f"{shown}:{port}"
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            path += "?" + quote(parts.query, safe=_PATH_SAFE + "?")
        head = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode("ascii")
        if parts.username is not None:
            # user:password@ in the URL: Basic auth, as aiohttp sends it.
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(secret.encode("latin-1")).decode("ascii")
            head += f"Authorization: Basic {token}\r\n".encode("ascii")
        target = _Target((scheme, host, port), host, port, head)
        if len(self._targets) >= _URL_CACHE_SIZE:
            self._targets.clear()
        self._targets[url] = target
        return target


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _os_reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__
