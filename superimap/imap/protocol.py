"""Sans-IO IMAP4rev1 client: feed it bytes, get events; ask it for command bytes.

The caller owns the socket. ``receive_data(b"")`` signals end of file.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Iterable

from superimap.imap.errors import LocalProtocolError, RemoteProtocolError
from superimap.imap.events import (
    Bye,
    Capability,
    Continuation,
    Event,
    Greeting,
    ResponseCode,
    TaggedResponse,
    UntaggedStatus,
)
from superimap.imap.framing import DEFAULT_MAX_LINE_LENGTH, DEFAULT_MAX_LITERAL_SIZE, Framer
from superimap.imap.responses import parse_response
from superimap.imap.utf7 import encode_mailbox_name


class State(enum.Enum):
    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    AUTHENTICATED = "AUTHENTICATED"
    SELECTED = "SELECTED"
    IDLING = "IDLING"
    LOGOUT = "LOGOUT"


_ANY_STATE = frozenset({"CAPABILITY", "NOOP", "LOGOUT"})
ALLOWED_COMMANDS: dict[State, frozenset[str]] = {
    State.NOT_AUTHENTICATED: _ANY_STATE | {"LOGIN", "AUTHENTICATE", "STARTTLS"},
    State.AUTHENTICATED: _ANY_STATE
    | {"SELECT", "EXAMINE", "IDLE", "LIST", "STATUS", "NOTIFY", "ENABLE"},
    State.SELECTED: _ANY_STATE
    | {"SELECT", "EXAMINE", "IDLE", "LIST", "STATUS", "NOTIFY", "UID SEARCH", "UID FETCH"},
    State.IDLING: frozenset(),  # only done()
    State.LOGOUT: frozenset(),
}

# State after a tagged OK / NO for a command; missing entries leave the state alone.
_AFTER_OK: dict[str, State] = {
    "LOGIN": State.AUTHENTICATED,
    "AUTHENTICATE": State.AUTHENTICATED,
    "SELECT": State.SELECTED,
    "EXAMINE": State.SELECTED,
}
_AFTER_NO: dict[str, State] = {
    "SELECT": State.AUTHENTICATED,
    "EXAMINE": State.AUTHENTICATED,
}

_UID_SET = re.compile(r"[0-9*:,]+")
_FORBIDDEN_CHARS = ("\r", "\n", "\0")


# Every connection to one server has the same capabilities: one frozenset (and one set of
# its strings) for them all instead of ~1 KB per connection (design.md 4.13).
_CAPABILITY_SETS: dict[frozenset[str], frozenset[str]] = {}
_CAPABILITY_SETS_MAX = 256


def shared_capabilities(names: Iterable[str]) -> frozenset[str]:
    """``names`` as a frozenset equal to it, the same object for equal sets (up to
    _CAPABILITY_SETS_MAX different sets are kept)."""
    capabilities = frozenset(names)
    shared = _CAPABILITY_SETS.get(capabilities)
    if shared is not None:
        return shared
    if len(_CAPABILITY_SETS) < _CAPABILITY_SETS_MAX:
        _CAPABILITY_SETS[capabilities] = capabilities
    return capabilities


class ClientProtocol:
    """State machine for one IMAP client connection."""

    def __init__(
        self,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_literal_size: int = DEFAULT_MAX_LITERAL_SIZE,
        tag_prefix: str = "A",
    ) -> None:
        self._framer = Framer(max_line_length, max_literal_size)
        self._tag_prefix = tag_prefix
        self._tag_counter = 0
        self._pending: dict[str, str] = {}
        self._greeted = False
        self._bye = False
        self._broken: RemoteProtocolError | None = None
        self._idle_tag: str | None = None
        self._idle_accepted = False
        self._state_before_idle = State.SELECTED
        self.state = State.NOT_AUTHENTICATED
        self.capabilities: frozenset[str] = frozenset()

    @property
    def pending_tags(self) -> frozenset[str]:
        return frozenset(self._pending)

    @property
    def idle_accepted(self) -> bool:
        """IDLE was sent and the server's continuation has come: done() may follow."""
        return self.state is State.IDLING and self._idle_accepted

    # --- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes | memoryview) -> list[Event]:
        """Feed bytes from the server (``b""`` at EOF) and return the complete events."""
        if self._broken is not None:
            raise RemoteProtocolError(f"connection already failed: {self._broken}")
        try:
            if not data:
                self._receive_eof()
                return []
            self._framer.receive_data(data)
            events: list[Event] = []
            while (frame := self._framer.next_frame()) is not None:
                events.append(self._handle(parse_response(frame)))
            return events
        except RemoteProtocolError as error:
            self._broken = error
            raise

    def _receive_eof(self) -> None:
        if self._framer.has_partial_frame:
            raise RemoteProtocolError("connection closed in the middle of a response")
        if not self._bye and self.state is not State.LOGOUT:
            raise RemoteProtocolError("connection closed by the server without BYE")

    def _handle(self, event: Event) -> Event:
        if not self._greeted:
            return self._handle_greeting(event)
        if isinstance(event, TaggedResponse):
            self._handle_tagged(event)
        elif isinstance(event, Continuation):
            self._handle_continuation()
        elif isinstance(event, Bye):
            self._bye = True
            self.state = State.LOGOUT
        elif isinstance(event, Capability):
            self.capabilities = shared_capabilities(event.names)
        elif isinstance(event, UntaggedStatus):
            self._note_code(event.code)
        return event

    def _handle_greeting(self, event: Event) -> Event:
        self._greeted = True
        if isinstance(event, Bye):
            self._bye = True
            self.state = State.LOGOUT
            return event
        if not isinstance(event, UntaggedStatus) or event.status not in ("OK", "PREAUTH"):
            raise RemoteProtocolError(f"expected a greeting, got {event!r}")
        self._note_code(event.code)
        if event.status == "PREAUTH":
            self.state = State.AUTHENTICATED
        return Greeting(event.status, event.code, event.text)

    def _handle_tagged(self, event: TaggedResponse) -> None:
        command = self._pending.pop(event.tag, None)
        if command is None:
            raise RemoteProtocolError(f"tagged response for unknown tag {event.tag!r}")
        self._note_code(event.code)
        if command == "IDLE":
            self._end_idle(event.tag)
        elif command == "STARTTLS" and event.status == "OK":
            if self._framer.has_partial_frame:
                raise RemoteProtocolError("data received after STARTTLS OK (injection?)")
            self.capabilities = frozenset()
        if self.state in (State.LOGOUT, State.IDLING):
            return
        table = {"OK": _AFTER_OK, "NO": _AFTER_NO}.get(event.status, {})
        self.state = table.get(command, self.state)

    def _handle_continuation(self) -> None:
        if self.state is State.IDLING and not self._idle_accepted:
            self._idle_accepted = True
        elif "AUTHENTICATE" not in self._pending.values():
            raise RemoteProtocolError("unexpected continuation request")

    def _end_idle(self, tag: str) -> None:
        # Only this IDLE's answer ends it: the OK of the one before may come after the
        # next IDLE was written (an IDLE behind a command, the DONE in the same write).
        if self._idle_tag == tag:
            if self.state is State.IDLING:
                self.state = self._state_before_idle
            self._idle_tag = None

    def _note_code(self, code: ResponseCode | None) -> None:
        if code and code[0] == "CAPABILITY":
            self.capabilities = shared_capabilities(code[1])

    # --- commands -----------------------------------------------------------------------

    def login(self, user: str, password: str) -> tuple[str, bytes]:
        return self._command("LOGIN", quote(user) + b" " + quote(password))

    def authenticate_xoauth2(
        self, user: str, access_token: str, sasl_ir: bool = True
    ) -> tuple[str, bytes]:
        """``AUTHENTICATE XOAUTH2`` with the initial response inline (SASL-IR).

        With ``sasl_ir=False`` the server answers ``+``; then send
        ``authenticate_continue(xoauth2_initial_response(user, token))``.
        """
        if not sasl_ir:
            return self._command("AUTHENTICATE", b"XOAUTH2")
        encoded = base64.b64encode(xoauth2_initial_response(user, access_token))
        return self._command("AUTHENTICATE", b"XOAUTH2 " + encoded)

    def authenticate_continue(self, response: bytes = b"") -> bytes:
        """Answer a SASL continuation; an empty response acknowledges an error challenge."""
        if "AUTHENTICATE" not in self._pending.values():
            raise LocalProtocolError("no AUTHENTICATE in progress")
        return base64.b64encode(response) + b"\r\n"

    def capability(self) -> tuple[str, bytes]:
        return self._command("CAPABILITY")

    def noop(self) -> tuple[str, bytes]:
        return self._command("NOOP")

    def select(self, mailbox: str, readonly: bool = False) -> tuple[str, bytes]:
        name = "EXAMINE" if readonly else "SELECT"
        return self._command(name, quote(encode_mailbox_name(mailbox)))

    def list_mailboxes(
        self, reference: str = "", pattern: str = "*", special_use_only: bool = False
    ) -> tuple[str, bytes]:
        """``LIST``; with ``special_use_only`` the RFC 6154 selection option
        ``LIST (SPECIAL-USE) ...`` (only for servers advertising SPECIAL-USE), which lists
        just the mailboxes that have a special use, each with its flags."""
        arguments = quote(encode_mailbox_name(reference)) + b" "
        arguments += quote(encode_mailbox_name(pattern))
        if special_use_only:
            arguments = b"(SPECIAL-USE) " + arguments
        return self._command("LIST", arguments)

    def status(self, mailbox: str, items: str = "UIDNEXT UIDVALIDITY") -> tuple[str, bytes]:
        _check_text(items)
        return self._command("STATUS", quote(encode_mailbox_name(mailbox)) + f" ({items})".encode())

    def notify_set(self, mailboxes: list[str], flag_changes: bool = False) -> tuple[str, bytes]:
        """RFC 5465: new mail and expunges of the selected mailbox as usual (and flag
        changes, which NOTIFY would otherwise silence), and a ``* STATUS`` report when
        mail arrives in one of ``mailboxes``."""
        names = b" ".join(quote(encode_mailbox_name(name)) for name in mailboxes)
        events = b"MessageNew MessageExpunge" + (b" FlagChange" if flag_changes else b"")
        arguments = b"SET (selected (" + events + b"))"
        if mailboxes:
            arguments += b" (mailboxes (" + names + b") (MessageNew))"
        return self._command("NOTIFY", arguments)

    def enable(self, *extensions: str) -> tuple[str, bytes]:
        """RFC 5161 ENABLE, e.g. ``enable("QRESYNC")`` (RFC 7162): before SELECT."""
        for name in extensions:
            if not name.replace("=", "").replace("-", "").isalnum():
                raise LocalProtocolError(f"invalid extension name {name!r}")
        return self._command("ENABLE", " ".join(extensions).encode("ascii"))

    def uid_search(self, criteria: str) -> tuple[str, bytes]:
        _check_text(criteria)
        return self._command("UID SEARCH", criteria.encode("utf-8"))

    def uid_fetch(self, uid_set: str, items: str) -> tuple[str, bytes]:
        if not _UID_SET.fullmatch(uid_set):
            raise LocalProtocolError(f"invalid UID set {uid_set!r}")
        _check_text(items)
        return self._command("UID FETCH", f"{uid_set} {items}".encode())

    def idle(self) -> tuple[str, bytes]:
        state = self.state
        tag, data = self._command("IDLE")
        self._state_before_idle = state
        self._idle_tag = tag
        self._idle_accepted = False
        self.state = State.IDLING
        return tag, data

    def done(self) -> bytes:
        """End IDLE. Allowed once the server has sent its continuation."""
        if self.state is not State.IDLING or not self._idle_accepted:
            raise LocalProtocolError("DONE is only allowed after the server accepted IDLE")
        self.state = self._state_before_idle
        return b"DONE\r\n"

    def logout(self) -> tuple[str, bytes]:
        tag, data = self._command("LOGOUT")
        self.state = State.LOGOUT
        return tag, data

    def starttls(self) -> tuple[str, bytes]:
        if self._pending:
            raise LocalProtocolError("STARTTLS must not be pipelined")
        return self._command("STARTTLS")

    def _command(self, name: str, arguments: bytes = b"") -> tuple[str, bytes]:
        if not self._greeted:
            raise LocalProtocolError("no greeting received yet")
        if self._broken is not None:
            raise LocalProtocolError("connection already failed")
        if name not in ALLOWED_COMMANDS[self.state]:
            raise LocalProtocolError(f"{name} not allowed in state {self.state.value}")
        self._tag_counter += 1
        tag = f"{self._tag_prefix}{self._tag_counter:04d}"
        self._pending[tag] = name
        line = f"{tag} {name}".encode("ascii")
        if arguments:
            line += b" " + arguments
        return tag, line + b"\r\n"


def quote(value: str) -> bytes:
    """Quote a string; CR, LF and NUL cannot be quoted and are refused."""
    _check_text(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return b'"' + escaped.encode("utf-8") + b'"'


def xoauth2_initial_response(user: str, access_token: str) -> bytes:
    _check_text(user)
    _check_text(access_token)
    return f"user={user}\x01auth=Bearer {access_token}\x01\x01".encode()


def _check_text(value: str) -> None:
    if any(char in value for char in _FORBIDDEN_CHARS):
        raise LocalProtocolError("CR, LF and NUL are not allowed in command arguments")
