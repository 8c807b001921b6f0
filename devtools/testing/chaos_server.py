"""The chaos IMAP server: in-memory mailboxes, a mail generator and injected wire faults.

Users are ``user{i}`` / ``pass{i}`` (XOAUTH2: token ``token-for-user{i}``, as ``user{i}`` or
``user{i}@any.domain``). Every generated
message has a unique Message-ID recorded in ``generated`` so tests can check that each one
was delivered exactly once. Faults only touch the wire, never the store, except
UIDVALIDITY_CHANGE, which renumbers a mailbox but keeps its messages, and
``expunge_rate``: a UID FETCH of bodies then expunges some of the messages it asks for just
before answering, the way a concurrent client does, answering for each a NIL body or
nothing, then OK or NO [EXPUNGEISSUED]; ``expunged`` lists them (username, Message-ID).
``expunge_first``: that many body fetches expunge one message each whatever the rate says,
so a test that needs the path sees it on every run.

Every generated message also carries ``X-Chaos-Generated: <time.time()>`` so a benchmark
can measure push-to-persist latency on the same clock.

Run: ``python -m devtools.testing.chaos_server --port 1143 --users 100 --chaos``; add
``--tls-cert/--tls-key`` for implicit TLS (IMAPS) and ``--control`` to take commands on stdin
(``push COUNT RATE``, ``stats``, ``quit``; see :func:`_control`), as the engine benchmark does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import enum
import errno
import json
import logging
import random
import ssl
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime

from devtools.imap.mailstore import (
    Mailbox,
    SearchError,
    StoredMessage,
    body_answer_key,
    in_set,
    render_flags,
)
from devtools.imap.server import (
    BadCommand,
    Command,
    RawLine,
    ServerCommandParser,
    ServerEvent,
    continuation,
    tagged,
    untagged,
    untagged_data,
)
from superimap.helpformat import DefaultsHelpFormatter
from superimap.imap.errors import RemoteProtocolError
from superimap.imap.framing import Value

log = logging.getLogger(__name__)

CAPABILITIES = "IMAP4rev1 IDLE LITERAL+ SASL-IR AUTH=PLAIN AUTH=XOAUTH2"
_NOT_AUTHENTICATED = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "LOGIN", "AUTHENTICATE"})
_AUTHENTICATED = frozenset(
    {
        "CAPABILITY",
        "NOOP",
        "LOGOUT",
        "SELECT",
        "EXAMINE",
        "IDLE",
        "LIST",
        "STATUS",
        "NOTIFY",
        "ENABLE",
    }
)
_SELECTED = _AUTHENTICATED | {"UID SEARCH", "UID FETCH"}
_TAGGED_GIBBERISH = (b"WHAT?! (((", b"\x00\xff\xfe\x01", b"OKAY [UIDNEXT x", b"{-1}")
_UNTAGGED_GIBBERISH = (
    b"* 7 FETCH (UID",
    b"* SEARCH one two",
    b"*\x00\xff\xfe garbage",
    b"* OK [UIDNEXT abc] nonsense",
    b"\x16\x03\x01\x02\x00",
    b"* 3 FETCH (UID 1 BODY[] {999999999999}",
)
_WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()


class Fault(enum.StrEnum):
    NO = "no"
    BAD = "bad"
    TAGGED_GIBBERISH = "tagged_gibberish"
    UNTAGGED_GIBBERISH = "untagged_gibberish"
    BYE = "bye"
    RESET = "reset"
    STALL = "stall"
    TRUNCATED_LITERAL = "truncated_literal"
    UIDVALIDITY_CHANGE = "uidvalidity_change"


# UIDVALIDITY changes force a slow catch-up by date: make them rarer than the others.
_FAULT_WEIGHTS = {fault: (0.2 if fault is Fault.UIDVALIDITY_CHANGE else 1.0) for fault in Fault}


class ChaosImapServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        users: int = 10,
        emails_per_minute: float = 0.0,
        chaos: bool = False,
        seed: int | None = None,
        chaos_rate: float = 0.02,
        ssl_context: ssl.SSLContext | None = None,
        expunge_rate: float = 0.0,
        expunge_first: int = 0,
        faults: Sequence[Fault] | None = None,
        folders: Sequence[str] = ("INBOX",),
        notify: bool = False,
        condstore: bool = False,
    ) -> None:
        self.host = host
        # Every user has these folders; generated mail goes to a random one of them. With
        # ``notify`` the server advertises NOTIFY (RFC 5465) and reports new mail in the
        # other folders to a session that asked, as * STATUS.
        self.folders = tuple(folders)
        self.capabilities = CAPABILITIES + (" NOTIFY" if notify else "")
        # CONDSTORE (RFC 7162) without QRESYNC, like Gmail: MODSEQ, CHANGEDSINCE, ENABLE.
        if condstore:
            self.capabilities += " ENABLE CONDSTORE"
        self.expunge_rate = expunge_rate
        self.expunges_owed = expunge_first
        # (username, uid): expunged when that user's next IDLE comes in, just before the
        # "+ idling" continuation (expunge_at_next_idle).
        self.expunge_at_idle: list[tuple[str, int]] = []
        self.faults = tuple(faults) if faults is not None else tuple(Fault)
        self.expunged: list[tuple[str, str]] = []
        self.ssl_context = ssl_context
        self.port = port
        self.users = users
        self.emails_per_minute = emails_per_minute
        self.chaos = chaos
        self.chaos_rate = chaos_rate
        self.random = random.Random(seed)
        self.generated: dict[str, str] = {}
        self.stats: Counter[str] = Counter()
        self.fault_counts: Counter[Fault] = Counter()
        self._mailboxes: dict[str, Mailbox] = {}
        self._forced: dict[str, deque[Fault]] = {}
        self.sessions: set[ImapSession] = set()
        self.sessions_by_user: dict[str, set[ImapSession]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._generator: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ImapSession(self), self.host, self.port, backlog=4096, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.emails_per_minute > 0:
            self._generator = asyncio.create_task(self._generate_forever())
        log.info("chaos IMAP server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._generator is not None:
            self._generator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._generator
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> ChaosImapServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- the store ----------------------------------------------------------------------

    def is_user(self, username: str) -> bool:
        number = username.removeprefix("user")
        return username.startswith("user") and number.isdigit() and int(number) < self.users

    def check_password(self, username: str, password: str) -> bool:
        return self.is_user(username) and password == "pass" + username.removeprefix("user")

    def mailbox(self, username: str, folder: str = "INBOX") -> Mailbox:
        key = username if folder == "INBOX" else f"{username}\x00{folder}"
        if key not in self._mailboxes:
            self._mailboxes[key] = Mailbox(self.random.randrange(1, 2**31))
        return self._mailboxes[key]

    def messages_of(self, username: str) -> list[StoredMessage]:
        return list(self.mailbox(username).messages)

    def add_message(
        self,
        username: str,
        raw: bytes,
        internal_date: datetime | None = None,
        folder: str = "INBOX",
    ) -> int:
        """Deliver ``raw`` to a folder of ``username``, notify idling sessions; return the
        UID."""
        if not self.is_user(username):
            raise KeyError(username)
        message = self.mailbox(username, folder).append(raw, internal_date or _now())
        self.stats["messages"] += 1
        for session in self.sessions_by_user.get(username, ()):
            session.mailbox_changed(folder)
        return message.uid

    def generate_message(self, username: str | None = None) -> str:
        """Deliver a new ~1 KB message to ``username`` (random user if None); return its
        Message-ID."""
        username = username or f"user{self.random.randrange(self.users)}"
        number = len(self.generated) + 1
        message_id = f"<chaos.{number}.{self.random.getrandbits(40):010x}@superimap.test>"
        now = _now()
        text = " ".join(self.random.choices(_WORDS, k=150))
        raw = (
            f"From: Chaos <chaos@superimap.test>\r\nTo: {username}@superimap.test\r\n"
            f"Subject: chaos message {number}\r\nDate: {format_datetime(now)}\r\n"
            f"Message-ID: {message_id}\r\nX-Chaos-Generated: {time.time():.6f}\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        ).encode()
        self.generated[message_id] = username
        folder = self.random.choice(self.folders) if len(self.folders) > 1 else self.folders[0]
        self.add_message(username, raw, now, folder)
        return message_id

    async def _generate_forever(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        made = 0
        interval = max(0.01, min(1.0, 60.0 / self.emails_per_minute))
        while True:
            await asyncio.sleep(interval)
            due = int((loop.time() - started) * self.emails_per_minute / 60.0)
            for _ in range(due - made):
                self.generate_message()
            made = max(made, due)

    async def push(self, count: int, per_second: float) -> None:
        """Generate ``count`` messages for random users at a steady ``per_second`` rate."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for made in range(count):
            delay = started + made / per_second - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.generate_message()

    async def flag_some(self, count: int, per_second: float) -> int:
        """Add a keyword of its own (``$bench<n>``) to ``count`` random INBOX messages at a
        steady rate, each one flag change another client makes; returns how many."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        users = [name for name in self._mailboxes if "\x00" not in name]
        done = 0
        for made in range(count):
            delay = started + made / per_second - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            candidates = [u for u in users if self._mailboxes[u].messages]
            if not candidates:
                break
            username = self.random.choice(candidates)
            message = self.random.choice(self._mailboxes[username].messages)
            self.set_flags(username, message.uid, message.flags | {f"$bench{made}"})
            done += 1
        return done

    # --- chaos --------------------------------------------------------------------------

    def inject_fault(self, username: str, kind: Fault | str) -> None:
        """Answer the next command of ``username`` (once logged in) with fault ``kind``."""
        self._forced.setdefault(username, deque()).append(Fault(kind))

    def pick_fault(self, username: str | None) -> Fault | None:
        forced = self._forced.get(username or "")
        if forced:
            return forced.popleft()
        if not self.chaos or self.random.random() >= self.chaos_rate:
            return None
        faults = [f for f in self.faults if username or f is not Fault.UIDVALIDITY_CHANGE]
        if not faults:
            return None
        return self.random.choices(faults, [_FAULT_WEIGHTS[f] for f in faults])[0]

    def expunge(self, username: str, uid: int) -> bool:
        """Remove a message as another client would; selected sessions get EXPUNGE."""
        mailbox = self.mailbox(username)
        message = next((m for m in mailbox.messages if m.uid == uid), None)
        if message is None:
            return False
        seq = mailbox.expunge(uid)
        self.expunged.append((username, _message_id(message.raw)))
        self.stats["expunged"] += 1
        for session in self.sessions_by_user.get(username, ()):
            if session.selected and session.reported_exists >= (seq or 0):
                session.reported_exists -= 1
                session.write(untagged_data(f"{seq} EXPUNGE"))
        return True

    def expunge_at_next_idle(self, username: str, uid: int) -> None:
        """Expunge ``uid`` when ``username``'s next IDLE arrives: the EXPUNGE reaches the
        client before the IDLE's continuation, as it can from a real server when another
        client expunges at that moment."""
        self.expunge_at_idle.append((username, uid))

    def set_flags(self, username: str, uid: int, flags: set[str], folder: str = "INBOX") -> bool:
        """Replace a message's flags as another client would; sessions that have the folder
        selected get an unsolicited FETCH (no MODSEQ: this server has no CONDSTORE)."""
        mailbox = self.mailbox(username, folder)
        seq = mailbox.seq_of(uid)
        if seq is None:
            return False
        message = mailbox.messages[seq - 1]
        message.flags = set(flags)
        message.modseq = mailbox.next_modseq()
        rendered = render_flags(message.flags).decode()
        for session in self.sessions_by_user.get(username, ()):
            if session.selected and session.selected_folder == folder:
                if session.reported_exists >= seq:
                    # With CONDSTORE enabled an unsolicited FETCH carries MODSEQ (3.2.4).
                    modseq = f" MODSEQ ({message.modseq})" if session.condstore else ""
                    session.write(untagged_data(f"{seq} FETCH (FLAGS {rendered}{modseq})"))
        return True

    def change_uidvalidity(self, username: str) -> None:
        mailbox = self.mailbox(username)
        mailbox.renumber(mailbox.uidvalidity + 1 + self.random.randrange(1000))
        for session in list(self.sessions_by_user.get(username, ())):
            if session.selected:
                code = f"UIDVALIDITY {mailbox.uidvalidity}"
                session.write(untagged("OK", "UIDs renumbered", code))
                session.write(untagged("BYE", "mailbox state changed"))
                session.close()


class ImapSession(asyncio.Protocol):
    """One client connection. Small on purpose: 20,000 of these must fit in one process."""

    __slots__ = (
        "server",
        "parser",
        "transport",
        "username",
        "selected",
        "selected_folder",
        "notify",
        "notify_pending",
        "readonly",
        "reported_exists",
        "idle_tag",
        "sasl",
        "closed",
        "stalled",
        "condstore",
    )

    def __init__(self, server: ChaosImapServer) -> None:
        self.server = server
        self.parser = ServerCommandParser()
        self.transport: asyncio.Transport | None = None
        self.username: str | None = None
        self.selected = False
        self.selected_folder = "INBOX"
        self.notify = False  # NOTIFY SET: report new mail in the other folders
        self.notify_pending: set[str] = set()  # reports due at the next response
        self.readonly = False
        self.reported_exists = 0
        self.idle_tag: str | None = None
        self.sasl: tuple[str, str, bool] | None = None  # tag, mechanism, challenge failed
        self.closed = False
        self.stalled = False
        self.condstore = False  # ENABLE CONDSTORE was sent

    # --- transport callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's TLS transport is not an asyncio.Transport subclass.
        self.transport = transport  # type: ignore[assignment]
        self.server.sessions.add(self)
        self.server.stats["connections"] += 1
        self.write(untagged("OK", "SuperIMAP chaos server ready", f"CAPABILITY {CAPABILITIES}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.sessions.discard(self)
        if self.username is not None:
            self.server.sessions_by_user[self.username].discard(self)

    def data_received(self, data: bytes) -> None:
        if self.stalled or self.closed:
            return
        self.parser.receive_data(data)
        try:
            while not self.closed and not self.stalled:
                event = self.parser.next_event()
                self.write(self.parser.pending_output())
                if event is None:
                    break
                self.handle(event)
        except RemoteProtocolError as error:
            self.write(untagged("BYE", f"protocol error: {error}"))
            self.close()

    # --- output -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if data and not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def mailbox_changed(self, folder: str = "INBOX") -> None:
        if folder != self.selected_folder and self.notify:
            self.notify_pending.add(folder)  # like EXISTS: sent now if idling, else later
        if self.idle_tag is not None and not self.stalled:
            self.sync_exists()

    def status_of(self, folder: str) -> str:
        assert self.username is not None
        mailbox = self.server.mailbox(self.username, folder)
        return (
            f'STATUS "{folder}" (MESSAGES {len(mailbox.messages)} UIDNEXT {mailbox.uidnext} '
            f"UIDVALIDITY {mailbox.uidvalidity})"
        )

    def sync_exists(self) -> None:
        if self.username is not None and self.notify_pending:
            for folder in sorted(self.notify_pending):
                self.write(untagged_data(self.status_of(folder)))
            self.notify_pending.clear()
        if not self.selected or self.username is None:
            return
        count = len(self.server.mailbox(self.username, self.selected_folder).messages)
        if count != self.reported_exists:
            self.reported_exists = count
            self.write(untagged_data(f"{count} EXISTS"))

    # --- commands -----------------------------------------------------------------------

    def handle(self, event: ServerEvent) -> None:
        self.server.stats["commands"] += 1
        if isinstance(event, RawLine):
            self.handle_line(event.data)
        elif isinstance(event, BadCommand):
            self.write(tagged(event.tag, "BAD", f"unreadable command: {event.reason}"))
        else:
            fault = self.server.pick_fault(self.username)
            if fault is None or self.apply_fault(fault, event):
                self.dispatch(event)

    def dispatch(self, command: Command) -> None:
        allowed = _SELECTED if self.selected else _AUTHENTICATED
        if self.username is None:
            allowed = _NOT_AUTHENTICATED
        handler = _HANDLERS.get(command.name)
        if handler is None or command.name not in allowed:
            self.write(tagged(command.tag, "BAD", f"{command.name} not allowed now"))
            return
        handler(self, command)

    def handle_line(self, line: bytes) -> None:
        if self.idle_tag is not None:
            tag, self.idle_tag = self.idle_tag, None
            if line.strip().upper() == b"DONE":
                self.write(tagged(tag, "OK", "IDLE terminated"))
            else:
                self.write(tagged(tag, "BAD", "expected DONE"))
        elif self.sasl is not None:
            tag, mechanism, failed = self.sasl
            self.sasl = None
            if failed:
                self.write(tagged(tag, "NO", "invalid credentials", "AUTHENTICATIONFAILED"))
            elif line.strip() == b"*":
                self.write(tagged(tag, "BAD", "authentication cancelled"))
            else:
                self.finish_authenticate(tag, mechanism, line.strip())

    def apply_fault(self, fault: Fault, command: Command) -> bool:
        """Put ``fault`` on the wire; return True if the command should still be answered."""
        self.server.fault_counts[fault] += 1
        tag = command.tag.encode("ascii", "replace")
        if fault in (Fault.NO, Fault.BAD):
            self.write(tagged(command.tag, fault.value.upper(), "chaos says so", "UNAVAILABLE"))
        elif fault is Fault.TAGGED_GIBBERISH:
            self.write(tag + b" " + self.server.random.choice(_TAGGED_GIBBERISH) + b"\r\n")
        elif fault is Fault.UNTAGGED_GIBBERISH:
            self.write(self.server.random.choice(_UNTAGGED_GIBBERISH) + b"\r\n")
            return True
        elif fault is Fault.BYE:
            self.write(untagged("BYE", "chaos: server shutting down", "UNAVAILABLE"))
            self.close()
        elif fault is Fault.RESET:
            self.abort()
        elif fault is Fault.STALL:
            self.stalled = True
            if self.transport is not None:
                self.transport.pause_reading()
        elif fault is Fault.TRUNCATED_LITERAL:
            self.write(b"* 1 FETCH (UID 1 BODY[] {1000}\r\n" + b"x" * 100)
            self.close()
        elif fault is Fault.UIDVALIDITY_CHANGE and self.username is not None:
            self.server.change_uidvalidity(self.username)
        return fault is Fault.UIDVALIDITY_CHANGE and not self.closed

    def cmd_capability(self, command: Command) -> None:
        self.write(untagged_data(f"CAPABILITY {self.server.capabilities}"))
        self.write(tagged(command.tag, "OK", "CAPABILITY completed"))

    def cmd_noop(self, command: Command) -> None:
        self.sync_exists()
        self.write(tagged(command.tag, "OK", "NOOP completed"))

    def cmd_logout(self, command: Command) -> None:
        self.write(untagged("BYE", "logging out"))
        self.write(tagged(command.tag, "OK", "LOGOUT completed"))
        self.close()

    def cmd_login(self, command: Command) -> None:
        if len(command.args) != 2:
            self.write(tagged(command.tag, "BAD", "LOGIN needs user and password"))
            return
        user, password = (_text(arg) for arg in command.args)
        self.logged_in(command.tag, user if self.server.check_password(user, password) else None)

    def cmd_authenticate(self, command: Command) -> None:
        mechanism = _text(command.args[0]).upper() if command.args else ""
        if mechanism not in ("PLAIN", "XOAUTH2"):
            self.write(tagged(command.tag, "NO", "unsupported mechanism"))
        elif len(command.args) > 1:
            self.finish_authenticate(command.tag, mechanism, _text(command.args[1]).encode())
        else:
            self.sasl = (command.tag, mechanism, False)
            self.parser.expect_line()
            self.write(continuation())

    def finish_authenticate(self, tag: str, mechanism: str, response: bytes) -> None:
        try:
            decoded = base64.b64decode(response, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            self.write(tagged(tag, "BAD", "invalid base64"))
            return
        user = _check_sasl(self.server, mechanism, decoded)
        if user is None and mechanism == "XOAUTH2":
            # Like Gmail: an error challenge the client must acknowledge with an empty line.
            self.sasl = (tag, mechanism, True)
            self.parser.expect_line()
            self.write(continuation(base64.b64encode(b'{"status":"401"}').decode()))
            return
        self.logged_in(tag, user)

    def logged_in(self, tag: str, user: str | None) -> None:
        if user is None:
            self.server.stats["login_failures"] += 1
            self.write(tagged(tag, "NO", "invalid credentials", "AUTHENTICATIONFAILED"))
            return
        self.server.stats["logins"] += 1
        self.username = user
        self.server.sessions_by_user.setdefault(user, set()).add(self)
        self.write(tagged(tag, "OK", "logged in", f"CAPABILITY {self.server.capabilities}"))

    def cmd_list(self, command: Command) -> None:
        """Each user has the server's folders (no special-use flags)."""
        pattern = _text(command.args[-1]) if command.args else ""
        for folder in self.server.folders:
            if pattern in ("*", "%", folder):
                self.write(untagged_data(f'LIST (\\HasNoChildren) "/" "{folder}"'))
        self.write(tagged(command.tag, "OK", "LIST completed"))

    def cmd_status(self, command: Command) -> None:
        name = _text(command.args[0]) if command.args else ""
        folder = "INBOX" if name.upper() == "INBOX" else name
        if folder not in self.server.folders:
            self.write(tagged(command.tag, "NO", "no such mailbox", "NONEXISTENT"))
            return
        self.write(untagged_data(self.status_of(folder)))
        self.write(tagged(command.tag, "OK", "STATUS completed"))

    def cmd_enable(self, command: Command) -> None:
        names = [_text(arg).upper() for arg in command.args]
        if "CONDSTORE" in names and "CONDSTORE" in self.server.capabilities:
            self.condstore = True
            self.write(untagged_data("ENABLED CONDSTORE"))
        self.write(tagged(command.tag, "OK", "ENABLE completed"))

    def cmd_notify(self, command: Command) -> None:
        if "NOTIFY" not in self.server.capabilities:
            self.write(tagged(command.tag, "BAD", "NOTIFY not supported"))
            return
        self.notify = True
        self.write(tagged(command.tag, "OK", "NOTIFY completed"))

    def cmd_select(self, command: Command) -> None:
        assert self.username is not None
        self.selected = False
        name = _text(command.args[0]) if len(command.args) == 1 else ""
        folder = "INBOX" if name.upper() == "INBOX" else name
        if folder not in self.server.folders:
            self.write(tagged(command.tag, "NO", "no such mailbox", "NONEXISTENT"))
            return
        self.selected_folder = folder
        mailbox = self.server.mailbox(self.username, folder)
        self.selected = True
        self.readonly = command.name == "EXAMINE"
        self.reported_exists = len(mailbox.messages)
        self.write(untagged_data("FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)"))
        self.write(untagged_data(f"{self.reported_exists} EXISTS"))
        self.write(untagged_data("0 RECENT"))
        self.write(untagged("OK", "UIDs valid", f"UIDVALIDITY {mailbox.uidvalidity}"))
        self.write(untagged("OK", "predicted next UID", f"UIDNEXT {mailbox.uidnext}"))
        self.write(untagged("OK", "limited", "PERMANENTFLAGS (\\Seen)"))
        if "CONDSTORE" in self.server.capabilities:
            self.write(untagged("OK", "modseq", f"HIGHESTMODSEQ {mailbox.highestmodseq}"))
        mode = "READ-ONLY" if self.readonly else "READ-WRITE"
        self.write(tagged(command.tag, "OK", f"{command.name} completed", mode))

    def cmd_uid_search(self, command: Command) -> None:
        assert self.username is not None
        try:
            uids = self.server.mailbox(self.username, self.selected_folder).uid_search(command.args)
        except SearchError as error:
            self.write(tagged(command.tag, "BAD", str(error)))
            return
        self.sync_exists()
        self.write(untagged_data(" ".join(["SEARCH", *map(str, uids)])))
        self.write(tagged(command.tag, "OK", "SEARCH completed"))

    def cmd_uid_fetch(self, command: Command) -> None:
        assert self.username is not None
        changed_since = None
        if len(command.args) == 3 and "CONDSTORE" in self.server.capabilities:
            modifier = command.args[2]
            words = [_text(w).upper() for w in modifier] if isinstance(modifier, tuple) else []
            if len(words) != 2 or words[0] != "CHANGEDSINCE" or not words[1].isdigit():
                self.write(tagged(command.tag, "BAD", "unsupported FETCH modifier"))
                return
            changed_since = int(words[1])
        elif len(command.args) != 2:
            self.write(tagged(command.tag, "BAD", "UID FETCH needs a set and items"))
            return
        uid_set, items = command.args[:2]
        names = items if isinstance(items, tuple) else (items,)
        wanted = tuple(_text(name).upper() for name in names)
        mailbox = self.server.mailbox(self.username, self.selected_folder)
        try:
            vanished, nil_answers = self.expunge_some(_text(uid_set), wanted)
            responses = mailbox.uid_fetch(_text(uid_set), wanted, self.readonly, changed_since)
        except SearchError as error:
            self.write(tagged(command.tag, "BAD", str(error)))
            return
        if vanished and self.server.random.random() < 0.5:
            self.server.random.shuffle(responses)  # another order than asked
        self.sync_exists()
        self.write(b"".join([*nil_answers, *responses]))
        if not vanished:
            self.write(tagged(command.tag, "OK", "FETCH completed"))
        elif self.server.random.random() < 0.5:
            self.write(tagged(command.tag, "OK", "Some messages were expunged", "EXPUNGEISSUED"))
        else:
            self.write(tagged(command.tag, "NO", "Some messages were expunged", "EXPUNGEISSUED"))

    def expunge_some(self, uid_set: str, items: tuple[str, ...]) -> tuple[int, list[bytes]]:
        """With ``expunge_rate``, expunge messages a body fetch asks for just before it is
        answered; return how many, and the NIL-body responses of those answered that way
        (the others are left out of the answer; by a UID range, none is)."""
        server = self.server
        if not (server.expunge_rate or server.expunges_owed):
            return 0, []
        key = body_answer_key(items)  # a whole or a partial body (a one-trip catch-up)
        if key is None:
            return 0, []
        assert self.username is not None
        mailbox = server.mailbox(self.username)
        largest = mailbox.largest_uid
        asked = [m.uid for m in mailbox.messages if in_set(m.uid, uid_set, largest)]
        victims = [uid for uid in asked if server.random.random() < server.expunge_rate]
        if asked and not victims and server.expunges_owed:
            victims = [asked[0]]
        server.expunges_owed = max(0, server.expunges_owed - len(victims))
        nil_answers = []
        for uid in victims:
            seq = mailbox.seq_of(uid)
            server.expunge(self.username, uid)
            # Left out of the answer, or NIL; always NIL for a range (a one-trip catch-up's
            # "n:*"): left out there, the client never learns the UID and a test could not
            # account for the message.
            if seq is not None and (":" in uid_set or server.random.random() < 0.5):
                nil_answers.append(untagged_data(f"{seq} FETCH (UID {uid} {key} NIL)"))
        return len(victims), nil_answers

    def cmd_idle(self, command: Command) -> None:
        self.idle_tag = command.tag
        self.parser.expect_line()
        server = self.server
        for username, uid in [e for e in server.expunge_at_idle if e[0] == self.username]:
            server.expunge_at_idle.remove((username, uid))
            server.expunge(username, uid)
        self.write(continuation("idling"))
        self.sync_exists()


_HANDLERS: dict[str, Callable[[ImapSession, Command], None]] = {
    "CAPABILITY": ImapSession.cmd_capability,
    "ENABLE": ImapSession.cmd_enable,
    "NOOP": ImapSession.cmd_noop,
    "LOGOUT": ImapSession.cmd_logout,
    "LOGIN": ImapSession.cmd_login,
    "AUTHENTICATE": ImapSession.cmd_authenticate,
    "SELECT": ImapSession.cmd_select,
    "EXAMINE": ImapSession.cmd_select,
    "LIST": ImapSession.cmd_list,
    "STATUS": ImapSession.cmd_status,
    "NOTIFY": ImapSession.cmd_notify,
    "UID SEARCH": ImapSession.cmd_uid_search,
    "UID FETCH": ImapSession.cmd_uid_fetch,
    "IDLE": ImapSession.cmd_idle,
}


def _check_sasl(server: ChaosImapServer, mechanism: str, decoded: str) -> str | None:
    if mechanism == "PLAIN":
        _, _, rest = decoded.partition("\0")
        user, _, password = rest.partition("\0")
        return user if server.check_password(user, password) else None
    fields = dict(part.split("=", 1) for part in decoded.split("\x01") if "=" in part)
    # Providers name the XOAUTH2 user by address: user1 or user1@any.domain is user1.
    user = fields.get("user", "").split("@", 1)[0]
    valid = server.is_user(user) and fields.get("auth") == f"Bearer token-for-{user}"
    return user if valid else None


def _text(value: Value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _message_id(raw: bytes) -> str:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode("utf-8", "replace")
    return ""


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="superimap chaos-server",
        description="Run the SuperIMAP chaos IMAP server: users user0..userN-1 (passwords "
        "pass0..passN-1) who get generated mail.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=1143, help="port; 0 picks a free port")
    parser.add_argument("--users", type=int, default=100, help="how many mailboxes")
    parser.add_argument(
        "--emails-per-minute", type=float, default=60.0, help="new emails per minute, all users"
    )
    parser.add_argument("--chaos", action="store_true", help="inject random faults")
    parser.add_argument(
        "--chaos-rate", type=float, default=0.02, help="with --chaos: the chance of a fault"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    parser.add_argument("--tls-cert", help="PEM certificate (chain): serve implicit TLS")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument(
        "--tls-tickets",
        type=int,
        default=2,
        help="TLS 1.3 session tickets sent per connection (each costs the client ~6 KiB)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="print 'listening HOST PORT', then obey stdin lines: "
        "'push COUNT RATE' (messages/s; answers 'pushed COUNT'), 'stats' (one JSON line; "
        "'idle': users with a session in IDLE), 'idlers' (those users, a JSON list), 'quit'",
    )
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--folders",
        default="INBOX",
        help="comma-separated folders of every user; generated mail goes to a random one",
    )
    parser.add_argument("--notify", action="store_true", help="advertise and serve NOTIFY")
    parser.add_argument(
        "--max-open-files",
        type=int,
        default=0,
        help="raise RLIMIT_NOFILE to this (or the hard limit) first",
    )
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    if args.max_open_files:
        import resource

        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (args.max_open_files,) * 2)
        except (ValueError, OSError):  # not allowed to raise the hard limit: go up to it
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        context.num_tickets = args.tls_tickets
    server = ChaosImapServer(
        args.host,
        args.port,
        users=args.users,
        emails_per_minute=args.emails_per_minute,
        chaos=args.chaos,
        seed=args.seed,
        chaos_rate=args.chaos_rate,
        ssl_context=context,
        folders=[name for name in args.folders.split(",") if name],
        notify=args.notify,
    )
    runner = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        try:
            runner(_serve(server, args.control))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            print(
                f"superimap chaos-server: port {args.port} is in use (a chaos server running "
                "already?); stop it or choose another --port",
                file=sys.stderr,
            )
            raise SystemExit(2) from None


async def _serve(server: ChaosImapServer, control: bool = False) -> None:
    async with server:
        if not control:
            while True:
                await asyncio.sleep(10)
                _log_stats(server)
        print(f"listening {server.host} {server.port}", flush=True)
        logger = asyncio.create_task(_log_forever(server))
        try:
            await _control(server)
        finally:
            logger.cancel()


async def _log_forever(server: ChaosImapServer) -> None:
    while True:
        await asyncio.sleep(10)
        _log_stats(server)


def _log_stats(server: ChaosImapServer) -> None:
    faults = ", ".join(f"{k}={v}" for k, v in sorted(server.fault_counts.items()))
    log.info(
        "sessions=%d generated=%d %s faults: %s",
        len(server.sessions),
        len(server.generated),
        " ".join(f"{k}={v}" for k, v in sorted(server.stats.items())),
        faults or "none",
    )


async def _control(server: ChaosImapServer) -> None:
    """Obey commands on stdin, one per line, answering on stdout; EOF or 'quit' stops."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pushes: set[asyncio.Task[None]] = set()

    async def push(count: int, rate: float) -> None:
        await server.push(count, rate)
        print(f"pushed {count}", flush=True)

    async def flag(count: int, rate: float) -> None:
        print(f"flagged {await server.flag_some(count, rate)}", flush=True)

    while line := await reader.readline():
        words = line.decode().split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "push" and len(words) == 3:
            task = asyncio.create_task(push(int(words[1]), float(words[2])))
            pushes.add(task)
            task.add_done_callback(pushes.discard)
        elif words[0] == "flag" and len(words) == 3:
            task = asyncio.create_task(flag(int(words[1]), float(words[2])))
            pushes.add(task)
            task.add_done_callback(pushes.discard)
        elif words[0] == "idlers":
            idle = {s.username for s in server.sessions if s.idle_tag is not None and not s.closed}
            print(json.dumps(sorted(idle)), flush=True)
        elif words[0] == "stats":
            idle = {s.username for s in server.sessions if s.idle_tag is not None and not s.closed}
            stats = {**server.stats, "sessions": len(server.sessions), "idle": len(idle)}
            print(json.dumps({"generated": len(server.generated), **stats}), flush=True)
        else:
            print(f"error unknown command {line.decode().strip()!r}", flush=True)
    for task in pushes:
        task.cancel()


if __name__ == "__main__":
    main()
