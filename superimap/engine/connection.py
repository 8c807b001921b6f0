"""The asyncio side of one IMAP connection: owns the socket, the timeouts and TLS.

The protocol itself lives in superimap.imap (sans-IO); this module only moves bytes and
waits. Every wait has a timeout, so a stalled server can never hang a mailbox task.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from superimap.imap import (
    Bye,
    ClientProtocol,
    Continuation,
    Event,
    Greeting,
    RemoteProtocolError,
    TaggedResponse,
)

READ_SIZE = 64 * 1024


class ServerBye(Exception):
    """The server said BYE (or closed) and the session must reconnect."""


class CommandFailed(Exception):
    """A command got NO or BAD."""

    def __init__(self, command: str, response: TaggedResponse) -> None:
        super().__init__(f"{command} answered {response.status}: {response.text[:200]}")
        self.response = response


def client_tls_context(insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if insecure:
        # Only for loopback test providers (self-signed certificates).
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class ImapConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: ClientProtocol,
        timeout: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.timeout = timeout
        self._backlog: deque[Event] = deque()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        implicit_tls: bool,
        insecure: bool,
        timeout: float,
        max_literal_size: int,
    ) -> ImapConnection:
        context = client_tls_context(insecure) if implicit_tls else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context else None, limit=READ_SIZE
            ),
            timeout,
        )
        connection = cls(reader, writer, ClientProtocol(max_literal_size=max_literal_size), timeout)
        try:
            greeting = await connection.next_event(timeout)
            if isinstance(greeting, Bye):
                raise ServerBye(f"server refused the connection: {greeting.text[:200]}")
            if not isinstance(greeting, Greeting):
                raise RemoteProtocolError(f"expected a greeting, got {greeting!r}")
        except BaseException:
            connection.abort()
            raise
        return connection

    async def start_tls(self, host: str, insecure: bool) -> None:
        """STARTTLS: ask, then upgrade the transport in place."""
        await self.command(*self.protocol.starttls())
        await asyncio.wait_for(
            self.writer.start_tls(client_tls_context(insecure), server_hostname=host),
            self.timeout,
        )

    async def _read_more(self, timeout: float) -> None:
        data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
        events = self.protocol.receive_data(data)  # b"" at EOF raises unless after BYE
        if not data:
            raise ServerBye("connection closed by the server")
        self._backlog.extend(events)

    async def next_event(self, timeout: float) -> Event:
        """The next server event; TimeoutError if none arrives in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._backlog:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("no response from the IMAP server")
            await self._read_more(remaining)
        return self._backlog.popleft()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.timeout)

    async def command(
        self, tag: str, data: bytes, timeout: float | None = None, check: bool = True
    ) -> tuple[list[Event], TaggedResponse]:
        """Send a command and collect untagged events until its tagged response."""
        await self.send(data)
        return await self.collect(tag, timeout or self.timeout, check=check, name=data[:40])

    async def collect(
        self, tag: str, timeout: float, *, check: bool = True, name: bytes = b""
    ) -> tuple[list[Event], TaggedResponse]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        untagged: list[Event] = []
        while True:
            event = await self.next_event(max(0.0, deadline - loop.time()))
            if isinstance(event, TaggedResponse) and event.tag == tag:
                if check and event.status != "OK":
                    command = name.decode("ascii", "replace").split(" ")[1:2]
                    raise CommandFailed(" ".join(command) or tag, event)
                return untagged, event
            if isinstance(event, Bye):
                raise ServerBye(f"server said BYE: {event.text[:200]}")
            if isinstance(event, Continuation):
                raise RemoteProtocolError("unexpected continuation request")
            untagged.append(event)

    def take_backlog(self) -> list[Event]:
        events = list(self._backlog)
        self._backlog.clear()
        return events

    async def logout(self) -> None:
        """Polite goodbye; any failure just means we close harder."""
        try:
            tag, data = self.protocol.logout()
            await self.send(data)
            await asyncio.wait_for(self._drain_until_closed(tag), 2)
        except Exception:  # noqa: BLE001 - a failed goodbye changes nothing
            pass

    async def _drain_until_closed(self, tag: str) -> None:
        while True:
            event = await self.next_event(2)
            if isinstance(event, TaggedResponse) and event.tag == tag:
                return

    def abort(self) -> None:
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except Exception:  # noqa: BLE001 - closing harder is the answer to any failure
            self.abort()
        except asyncio.CancelledError:
            self.abort()
            raise
