"""Sans-IO server side: frame client commands and render responses (for the chaos server).

Usage: ``receive_data(bytes)``, then call ``next_event()`` until it returns None, writing
``pending_output()`` (continuations for synchronizing literals) to the client as you go.
After IDLE or an AUTHENTICATE challenge, call ``expect_line()`` so that the next line
(``DONE`` or a SASL response) comes back as a :class:`RawLine` instead of a command.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from superimap.imap.errors import RemoteProtocolError
from superimap.imap.framing import Framer, Value, parse_values

DEFAULT_MAX_COMMAND_LINE = 8 * 1024
DEFAULT_MAX_COMMAND_LITERAL = 64 * 1024
LITERAL_CONTINUATION = b"+ Ready for literal\r\n"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class Command:
    tag: str
    name: str  # upper-cased; "UID FETCH" / "UID SEARCH" for UID commands
    args: tuple[Value, ...]


@dataclass(frozen=True)
class RawLine:
    data: bytes


@dataclass(frozen=True)
class BadCommand:
    tag: str  # "*" when even the tag was unreadable
    reason: str


ServerEvent = Command | RawLine | BadCommand


class ServerCommandParser:
    def __init__(
        self,
        max_line_length: int = DEFAULT_MAX_COMMAND_LINE,
        max_literal_size: int = DEFAULT_MAX_COMMAND_LITERAL,
    ) -> None:
        self._output: list[bytes] = []
        self._framer = Framer(max_line_length, max_literal_size, self._continue_literal)
        self._expect_line = False

    def receive_data(self, data: bytes) -> None:
        self._framer.receive_data(data)

    def expect_line(self) -> None:
        self._expect_line = True

    def pending_output(self) -> bytes:
        data = b"".join(self._output)
        self._output.clear()
        return data

    def next_event(self) -> ServerEvent | None:
        """Return the next client event. Raises RemoteProtocolError if a limit is exceeded."""
        frame = self._framer.next_frame()
        if frame is None:
            return None
        if self._expect_line:
            self._expect_line = False
            return RawLine(frame.raw.rstrip(b"\r\n"))
        try:
            values = parse_values(frame)
        except RemoteProtocolError as error:
            return BadCommand(_tag_of(frame.lines[0]), str(error))
        return _command(values)

    def _continue_literal(self, size: int) -> None:
        self._output.append(LITERAL_CONTINUATION)


def _command(values: tuple[Value, ...]) -> ServerEvent:
    if len(values) < 2 or not isinstance(values[0], str | int):
        return BadCommand("*", "missing tag or command")
    tag = str(values[0])
    name, args = values[1], values[2:]
    if not isinstance(name, str):
        return BadCommand(tag, "missing command name")
    name = name.upper()
    if name == "UID":
        if not args or not isinstance(args[0], str):
            return BadCommand(tag, "UID needs a command")
        name, args = f"UID {args[0].upper()}", args[1:]
    return Command(tag, name, args)


def _tag_of(line: bytes) -> str:
    tag = line.split(b" ", 1)[0]
    return tag.decode("ascii", "replace") if tag and tag.isascii() else "*"


# --- rendering ---------------------------------------------------------------------------


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    return _status_line(tag, status, text, code)


def untagged(status: str, text: str, code: str | None = None) -> bytes:
    return _status_line("*", status, text, code)


def untagged_data(text: str) -> bytes:
    return f"* {text}\r\n".encode()


def continuation(text: str = "") -> bytes:
    return f"+ {text}\r\n".encode()


def quoted(value: str) -> bytes:
    return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8") + b'"'


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def fetch_response(seq: int, items: list[tuple[str, bytes]]) -> bytes:
    """``* seq FETCH (NAME value ...)``; values are pre-rendered (use quoted/literal)."""
    body = b" ".join(name.encode("ascii") + b" " + value for name, value in items)
    return b"* %d FETCH (" % seq + body + b")\r\n"


def format_internaldate(moment: datetime) -> str:
    """``17-Jul-1996 02:44:25 -0700`` for an aware datetime."""
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return (
        f"{moment.day:02d}-{_MONTHS[moment.month - 1]}-{moment.year:04d} "
        f"{moment:%H:%M:%S} {sign}{hours:02d}{minutes:02d}"
    )


def _status_line(tag: str, status: str, text: str, code: str | None) -> bytes:
    code_part = f"[{code}] " if code else ""
    return f"{tag} {status} {code_part}{text}\r\n".encode()
