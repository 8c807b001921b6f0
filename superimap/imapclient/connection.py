"""The asyncio side of one IMAP connection: owns the transport, the timeouts and TLS.

The protocol itself lives in superimap.imap (sans-IO); this module only moves bytes and
waits. It is an asyncio (buffered) protocol rather than a pair of streams so that an idle mailbox
costs one parked future and no extra tasks: thousands of them sit in IDLE at once. Every
wait has a deadline, so a stalled server can never hang a mailbox task.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import threading
import time

from django.conf import settings

from superimap.imap import (
    Bye,
    ClientProtocol,
    Continuation,
    Event,
    Exists,
    Expunge,
    Fetch,
    Greeting,
    ImapError,
    MailboxStatus,
    RemoteProtocolError,
    TaggedResponse,
    Vanished,
)
from superimap.imapclient.deadlines import shared_deadlines, whole_second
from superimap.imapclient.errors import CommandFailed, ServerBye, TlsCertificateFailed
from superimap.imapclient.tls import FEED_SIZE, TlsLayer, plain_buffer, thread_buffer
from superimap.platform import netguard


@functools.lru_cache(maxsize=256)
def client_tls_context(insecure: bool, ca_pem: str = "") -> ssl.SSLContext:
    """One shared context per mode and CA bundle, never one per connection: a connection
    keeps its context alive, and each create_default_context() parses the whole system CA
    store (~0.9 MB of RSS per TLS mailbox and ~25 ms of CPU per handshake before this was
    cached). A connection's own bundle (``imap_tls_ca``) replaces the system CAs.
    """
    if ca_pem and not insecure:
        return ssl.create_default_context(cadata=ca_pem)
    context = ssl.create_default_context()
    if insecure:
        # Loopback test providers, and connections with imap_tls_verify false.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# What a read hands the loop to fill: one buffer per thread (an event loop runs in one),
# shared by every connection of that loop. A read fills it and buffer_updated() copies the
# bytes out before the loop reads for any other connection.
READ_BUFFER_SIZE = 256 * 1024
_read_buffers = threading.local()


def _read_buffer() -> memoryview:
    return thread_buffer(_read_buffers, READ_BUFFER_SIZE)


class ImapConnection(asyncio.BufferedProtocol):
    """A BufferedProtocol: the loop reads into the thread's shared buffer. As a plain
    Protocol, uvloop's TLS transport allocated a 256 KiB bytes object for every read and
    shrank it to what came (a malloc, and an mmap/munmap where glibc put it out of the
    heap), and the shrunk blocks were left in the heap between the sessions' long-lived
    objects (design.md 4.13).

    TLS is the connection's own (tls.py): the transport is plain TCP, the ciphertext read
    into the shared buffer goes through an SSLObject over MemoryBIOs, and so do the
    writes. uvloop's TLS transport kept a 256 KiB buffer and its objects per connection."""

    def __init__(self, protocol: ClientProtocol, timeout: float) -> None:
        self.protocol = protocol
        self.timeout = timeout
        # The loop this connection runs in (built by its factory, in the loop): the waits
        # read it here, where asyncio.get_running_loop() is a getpid() system call each
        # time (CPython's check for a fork), ~8 per IDLE re-issue.
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._buffer = _read_buffer()
        self._tls: TlsLayer | None = None  # once TLS starts (implicit, or after STARTTLS)
        # Events not taken yet: a list, not a deque (whose first block is ~600 bytes per
        # connection); it is short and empty while the session waits (design.md 4.13).
        self._backlog: list[Event] = []
        self._waiter: asyncio.Future | None = None
        # The waiter's deadline (loop time) and the one timer that enforces it, kept from
        # one wait to the next (next_event); or, for a deadline on a whole second (an
        # IDLE's), that second, whose timer every connection waiting for it shares.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.shared_deadline = 0
        self._error: BaseException | None = None
        self._interrupted = False
        # False while collect() waits: untagged responses alone do not wake it.
        self._wake_untagged = True
        # Counts EXISTS responses wherever they arrive (in IDLE, or amid another command's
        # responses), so the session never misses news that came with something else.
        self.exists_seen = 0
        # The message count of the last EXISTS (of the selected folder, or of a SELECT).
        self.exists_count: int | None = None
        # When the last EXISTS arrived (time.time()): a new mail's push time, finer than its
        # whole-second INTERNALDATE (rollups.py).
        self.exists_at: float | None = None
        # Counts FETCH responses with FLAGS, EXPUNGE and VANISHED wherever they arrive: the
        # session's change events (engine/changewatch.py) look when it grew.
        self.changes_seen = 0
        # A DONE that ends an IDLE, written together with the next command (owe_done()).
        self._owed: tuple[bytes, str] | None = None
        # The tag of an IDLE written behind a command (command(then_idle=True)) that the
        # session has not taken up yet (take_idle_ahead()).
        self._idle_ahead: str | None = None
        # The last ``* STATUS`` per mailbox, an answer to STATUS or a NOTIFY report (RFC
        # 5465), wherever it arrived: the session reads news of its other folders here.
        self.statuses: dict[str, MailboxStatus] = {}
        self.greeting_text = ""  # tells the server software (engine/session.py idle_period)

    # --- opening ----------------------------------------------------------------------------

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
        ca_pem: str = "",
    ) -> ImapConnection:
        loop = asyncio.get_running_loop()
        context = client_tls_context(insecure, ca_pem) if implicit_tls else None
        protocol = ClientProtocol(max_literal_size=max_literal_size)
        async with asyncio.timeout(timeout):
            # One lookup, checked, and the connection goes to that address (not the name
            # again), so DNS cannot hand a private address to the connection itself.
            sock = await netguard.connect_async(
                host, port, allow_private=settings.IMAP_ALLOW_PRIVATE_HOSTS
            )
            try:
                _, connection = await loop.create_connection(
                    lambda: cls(protocol, timeout), sock=sock
                )
            except BaseException:
                sock.close()
                raise
            if context is not None:
                try:
                    await connection._handshake(context, host)
                except ssl.SSLCertVerificationError as exc:
                    connection.abort()
                    raise TlsCertificateFailed(host, exc) from exc
                except BaseException:
                    connection.abort()
                    raise
        try:
            greeting = await connection.next_event(timeout)
            if isinstance(greeting, Bye):
                raise ServerBye(f"server refused the connection: {greeting.text[:200]}")
            if not isinstance(greeting, Greeting):
                raise RemoteProtocolError(f"expected a greeting, got {greeting!r}")
            connection.greeting_text = greeting.text[:200]
        except BaseException:
            connection.abort()
            raise
        return connection

    async def start_tls(self, host: str, insecure: bool, ca_pem: str = "") -> None:
        """STARTTLS: ask, then TLS over the same transport from the next byte on."""
        await self.command(*self.protocol.starttls())
        context = client_tls_context(insecure, ca_pem)
        try:
            async with asyncio.timeout(self.timeout):
                await self._handshake(context, host)
        except ssl.SSLCertVerificationError as exc:
            raise TlsCertificateFailed(host, exc) from exc

    async def _handshake(self, context: ssl.SSLContext, host: str) -> None:
        """Start TLS on the transport and wait until the handshake is done. A failed one
        raises its SSLError (SSLCertVerificationError for a certificate), a connection
        closed meanwhile ConnectionResetError."""
        if self._error is not None:
            raise self._error
        waiter = self.loop.create_future()
        tls = self._tls = TlsLayer(context, host, waiter)
        try:
            self._tls_handshake(tls)  # the ClientHello
        except ssl.SSLError as exc:
            self._fail(exc)
            raise
        self._tls_flush(tls)
        await waiter

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        # The framer copies the bytes into its own buffer: no bytes object in between.
        if self._tls is None:
            self.data_received(self._buffer[:nbytes])
        else:
            self._tls_received(self._tls, self._buffer[:nbytes])

    # --- TLS (tls.py) -----------------------------------------------------------------------

    def _tls_received(self, tls: TlsLayer, data: memoryview) -> None:
        """Ciphertext in: on with the handshake, plaintext out to data_received(); a
        close_notify is the server's EOF; any other TLS error fails the connection like a
        reset (the session reconnects)."""
        try:
            for start in range(0, len(data), FEED_SIZE):
                tls.incoming.write(data[start : start + FEED_SIZE])
                if tls.handshake is not None and not self._tls_handshake(tls):
                    continue
                if not self._tls_read(tls) or self._error is not None:
                    break
            else:
                if tls.pending is not None:
                    self._tls_retry(tls)
        except ssl.SSLError as exc:
            self._tls_flush(tls)  # the alert that tells the server why, if any
            self._fail(exc)
            self._wake()
            return
        self._tls_flush(tls)

    def _tls_handshake(self, tls: TlsLayer) -> bool:
        """One step of the handshake; True once it is done. SSLError propagates."""
        try:
            tls.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        waiter, tls.handshake = tls.handshake, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def _tls_read(self, tls: TlsLayer) -> bool:
        """Hand what plaintext there is to data_received(); False at the server's
        close_notify (then handled as eof_received())."""
        view = plain_buffer()
        size = len(view)
        read = tls.sslobj.read
        while True:
            try:
                count = read(size, view)
            except ssl.SSLWantReadError:
                return True
            except ssl.SSLZeroReturnError:
                count = 0
            if not count:
                self.eof_received()
                return False
            self.data_received(view[:count])
            if self._error is not None:
                return False
            if tls.drained():
                return True

    def _tls_write(self, tls: TlsLayer, data: bytes) -> None:
        if tls.pending is not None:
            tls.pending.append(data)  # behind what waits already, in order
            return
        try:
            tls.sslobj.write(data)
        except ssl.SSLWantReadError:
            tls.pending = [data]
        self._tls_flush(tls)

    def _tls_retry(self, tls: TlsLayer) -> None:
        """Writes that waited for the server (a renegotiation), in order, while it lets."""
        pending = tls.pending
        while pending:
            try:
                tls.sslobj.write(pending[0])
            except ssl.SSLWantReadError:
                return
            pending.pop(0)
        tls.pending = None

    def _tls_flush(self, tls: TlsLayer) -> None:
        if tls.outgoing.pending and self.transport is not None:
            data = tls.outgoing.read()
            if not self.transport.is_closing():
                self.transport.write(data)

    def data_received(self, data: bytes | memoryview) -> None:
        try:
            events = self.protocol.receive_data(data)
        except ImapError as exc:
            events = []
            self._fail(exc)
        # Wake the waiter for what it may act on: any event, or only a tagged answer, BYE
        # or continuation while collect() waits (it just gathers the untagged ones); not
        # for a read that completed no response (a part of a literal).
        wake = self._error is not None or (self._wake_untagged and bool(events))
        for event in events:
            if isinstance(event, Exists):
                self.exists_seen += 1
                self.exists_count = event.count
                self.exists_at = time.time()
            elif isinstance(event, MailboxStatus):
                self.statuses[event.name] = event
            elif isinstance(event, Expunge | Vanished) or _flag_update(event):
                self.changes_seen += 1
            elif isinstance(event, TaggedResponse | Bye | Continuation):
                wake = True
        self._backlog.extend(events)
        if wake:
            self._wake()

    def eof_received(self) -> bool:
        if self._tls is not None and self._tls.handshake is not None:
            self._fail(ConnectionResetError("connection closed during the TLS handshake"))
        try:
            self.protocol.receive_data(b"")
            self._fail(ServerBye("connection closed by the server"))
        except ImapError as exc:
            self._fail(exc)
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and self._tls is not None and self._tls.handshake is not None:
            exc = ConnectionResetError("connection closed during the TLS handshake")
        self._fail(exc or ServerBye("connection closed"))
        self._wake()
        self._stop_timer()  # it would keep the closed connection until its deadline

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if self._tls is not None and self._tls.handshake is not None:
            waiter, self._tls.handshake = self._tls.handshake, None
            if not waiter.done():
                waiter.set_exception(self._error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- waiting ----------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Wake an interruptible wait (the session is stopping)."""
        self._interrupted = True
        self._wake()

    async def next_event(
        self, timeout: float, interruptible: bool = False, untagged_wakes: bool = True
    ) -> Event | None:
        """The next server event; None if interrupted; TimeoutError if none comes in time.
        ``untagged_wakes=False`` (collect): while none is there, wait until a tagged
        answer, BYE or continuation comes (the untagged ones before it are then there too:
        one wake-up of the session for a FETCH answer and its OK that came apart)."""
        loop = self.loop
        deadline = loop.time() + timeout
        while not self._backlog:
            if self._error is not None:
                raise self._error
            if interruptible and self._interrupted:
                return None
            waiter = self._waiter = loop.create_future()
            self._deadline = deadline
            second = whole_second(deadline)
            # A wait until a whole second (an IDLE's: engine/session.py idle_wait) takes
            # that second's timer, shared by every connection of the loop waiting for it
            # (imapclient/deadlines.py), and holds no timer of its own (design.md 4.13).
            # Any other: one timer per connection, not a timer (or an asyncio.timeout
            # context) per wait: each mail waits ~7 times, and the timer already armed is
            # kept when it fires no later than this deadline (_check_deadline looks again
            # then). It is replaced when it would fire in the first half of this wait: an
            # IDLE (25 min) after a command (30 s) would otherwise be woken 30 s in only to
            # re-arm.
            if second:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                if self.shared_deadline != second:
                    shared_deadlines(loop).add(second, self)
            elif (
                self._timer is None
                or self._timer_at > deadline
                or self._timer_at < deadline - timeout / 2
            ):
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(deadline, self._check_deadline)
                self._timer_at = deadline
            self._wake_untagged = untagged_wakes
            try:
                await waiter
            finally:
                self._waiter = None
                self._wake_untagged = True
        return self._backlog.pop(0)

    def _check_deadline(self) -> None:
        """The timer fired: fail the waiter past its deadline, else arm for that one."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms a timer
        loop = waiter.get_loop()
        # uvloop keeps time in whole milliseconds: a timer may fire within 1 ms before.
        if loop.time() >= self._deadline - 0.001:
            waiter.set_exception(TimeoutError())
        else:
            self._timer = loop.call_at(self._deadline, self._check_deadline)
            self._timer_at = self._deadline

    def deadline_due(self) -> None:
        """The shared timer of the second this connection waited for fired: fail the
        waiter if that is still its deadline (a wait with a timer of its own, started
        since, is left to it)."""
        waiter = self._waiter
        second = whole_second(self._deadline)
        if waiter is None or waiter.done() or not second:
            return
        if self.loop.time() >= self._deadline - 0.001:
            waiter.set_exception(TimeoutError())
        else:
            shared_deadlines(self.loop).add(second, self)

    def _stop_timer(self) -> None:
        self.shared_deadline = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def owe_done(self, done: bytes, idle_tag: str) -> None:
        """End an IDLE with the next write instead of a write of its own: the next
        command goes out in the same packet as the DONE (one syscall and one round trip
        fewer per new message), and command() collects the IDLE's tagged OK first."""
        self._owed = (done, idle_tag)

    async def send(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self.transport is None or self.transport.is_closing():
            raise ServerBye("connection is closed")
        if self._owed is not None:
            data = self._owed[0] + data
            self._owed = None
        if self._tls is None:
            self.transport.write(data)
        else:
            try:
                self._tls_write(self._tls, data)
            except ssl.SSLError as exc:
                self._fail(exc)
                raise

    async def command(
        self,
        tag: str,
        data: bytes,
        timeout: float | None = None,
        check: bool = True,
        then_idle: bool = False,
    ) -> tuple[list[Event], TaggedResponse]:
        """Send a command and collect untagged events until its tagged response (after
        the tagged response of an IDLE whose DONE went out with it).

        ``then_idle``: an IDLE goes out in the same write, behind the command; the session
        takes it up (take_idle_ahead()) when it waits, or the next command ends it first."""
        if self._idle_ahead is not None:  # a command built in spite of it (the protocol refuses)
            await self.end_idle_ahead(timeout)
        owed = self._owed[1] if self._owed is not None else None
        if then_idle:
            idle_tag, idle = self.protocol.idle()
            data += idle
        await self.send(data)
        if then_idle:
            self._idle_ahead = idle_tag
        before: list[Event] = []
        if owed is not None:
            before, _ = await self.collect(owed, timeout or self.timeout, name=b"* IDLE")
        untagged, tagged = await self.collect(
            tag, timeout or self.timeout, check=check, name=data[:40]
        )
        return before + untagged, tagged

    def take_idle_ahead(self) -> str | None:
        """The tag of an IDLE written behind the last command, now the session's to wait
        in (its continuation may have come already: protocol.idle_accepted)."""
        tag, self._idle_ahead = self._idle_ahead, None
        return tag

    async def end_idle_ahead(self, timeout: float | None = None) -> None:
        """Another command comes before the session waited in the IDLE written ahead (call
        this before building it: the protocol allows only DONE while idling): once the
        server accepted the IDLE, its DONE goes out with that command (owe_done()); a
        server that refused it has ended it already. What came meanwhile stays for that
        command's answer. Nothing to do without an IDLE ahead."""
        tag, self._idle_ahead = self._idle_ahead, None
        if tag is None:
            return
        events: list[Event] = []
        refused = await self.idle_started(tag, timeout or self.timeout, events)
        self._backlog[:0] = events
        if refused is None:
            self.owe_done(self.protocol.done(), tag)

    def put_back(self, events: list[Event]) -> None:
        """Events taken out of the stream (idle_started's ``keep``) are the next ones again."""
        self._backlog[:0] = events

    async def idle_started(
        self, tag: str, timeout: float, keep: list[Event] | None = None
    ) -> TaggedResponse | None:
        """Wait until the server accepted the IDLE ``tag`` (its continuation taken from the
        events): None; or refused it: its tagged answer. Other events go to ``keep``."""
        loop = self.loop
        deadline = loop.time() + timeout
        while not (
            self.protocol.idle_accepted and not (self._backlog and _continuation_in(self._backlog))
        ):
            event = await self.next_event(max(0.0, deadline - loop.time()))
            if isinstance(event, TaggedResponse) and event.tag == tag:
                return event
            if isinstance(event, Bye):
                raise ServerBye("server said BYE")
            if keep is not None and not isinstance(event, Continuation):
                keep.append(event)
        return None

    async def collect(
        self, tag: str, timeout: float, *, check: bool = True, name: bytes = b""
    ) -> tuple[list[Event], TaggedResponse]:
        loop = self.loop
        deadline = loop.time() + timeout
        untagged: list[Event] = []
        while True:
            event = await self.next_event(max(0.0, deadline - loop.time()), untagged_wakes=False)
            if isinstance(event, TaggedResponse) and event.tag == tag:
                if check and event.status != "OK":
                    command = name.decode("ascii", "replace").split(" ")[1:2]
                    raise CommandFailed(" ".join(command) or tag, event)
                return untagged, event
            if isinstance(event, Bye):
                raise ServerBye(f"server said BYE: {event.text[:200]}")
            if isinstance(event, Continuation):
                if self._idle_ahead is not None:
                    continue  # the IDLE written ahead was accepted (protocol.idle_accepted)
                raise RemoteProtocolError("unexpected continuation request")
            untagged.append(event)

    # --- closing ----------------------------------------------------------------------------

    async def logout(self) -> None:
        """Polite goodbye; any failure just means we close harder."""
        try:
            await self.end_idle_ahead(2.0)
            tag, data = self.protocol.logout()
            await self.send(data)
            await self.collect(tag, 2.0, check=False)
        except (ImapError, ServerBye, CommandFailed, OSError, TimeoutError):
            pass

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


def _continuation_in(events: list[Event]) -> bool:
    for event in events:  # a loop, not any() over a generator: once or twice per mail
        if isinstance(event, Continuation):
            return True
    return False


def _flag_update(event: Event) -> bool:
    """A FETCH with FLAGS and no message data: a flag change (unsolicited, or the answer to
    a flags-only FETCH), not the answer to a body or size FETCH that asked for FLAGS too."""
    return (
        isinstance(event, Fetch)
        and event.flags is not None
        and event.body is None
        and event.size is None
        and "BODY[HEADER]" not in event.attributes
    )
