"""Incremental framing of IMAP lines with literals, and a tokenizer for their values.

A *frame* is one complete response (or client command): a line, plus for every line that
ends in a literal marker ``{n}`` / ``{n+}`` the ``n`` bytes of the literal and the line
that continues after it. The framer checks every limit before buffering: a line longer
than ``max_line_length`` or a literal announced bigger than ``max_literal_size`` raises
:class:`RemoteProtocolError` at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeAlias

from superimap.imap.errors import RemoteProtocolError

DEFAULT_MAX_LINE_LENGTH = 64 * 1024
DEFAULT_MAX_LITERAL_SIZE = 64 * 1024 * 1024

_LITERAL_MARKER = re.compile(rb"\{(\d+)(\+?)\}\Z")
_MAX_NUMBER_DIGITS = 20

Value: TypeAlias = "None | int | str | bytes | tuple[Value, ...]"


@dataclass(frozen=True)
class Frame:
    """One complete response or command.

    ``lines`` are the line segments without their line ending; every segment but the
    last ends in a literal marker and is followed by ``literals[i]``.
    """

    lines: tuple[bytes, ...]
    literals: tuple[bytes, ...] = ()

    @property
    def raw(self) -> bytes:
        parts: list[bytes] = []
        for index, line in enumerate(self.lines):
            parts.append(line + b"\r\n")
            if index < len(self.literals):
                parts.append(self.literals[index])
        return b"".join(parts)


def literal_marker(line: bytes) -> tuple[int, bool] | None:
    """Return ``(size, synchronizing)`` if ``line`` ends with a literal marker."""
    match = _LITERAL_MARKER.search(line)
    if match is None:
        return None
    digits = match.group(1)
    if len(digits) > _MAX_NUMBER_DIGITS:
        raise RemoteProtocolError("literal size has too many digits")
    return int(digits), not match.group(2)


class Framer:
    """Collects complete frames from bytes that arrive split at arbitrary points."""

    def __init__(
        self,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_literal_size: int = DEFAULT_MAX_LITERAL_SIZE,
        on_sync_literal: Callable[[int], None] | None = None,
    ) -> None:
        self.max_line_length = max_line_length
        self.max_literal_size = max_literal_size
        self._on_sync_literal = on_sync_literal
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already searched for a line end
        # The lines and literals of a frame with literals, while it comes in; None between
        # frames and for a frame of one line (most are): no two lists per connection while
        # it waits (design.md 4.13).
        self._lines: list[bytes] | None = None
        self._literals: list[bytes] | None = None
        self._line_total = 0
        self._literal_total = 0
        self._literal_needed: int | None = None

    def receive_data(self, data: bytes | memoryview) -> None:
        self._buffer += data

    @property
    def has_partial_frame(self) -> bool:
        return bool(self._buffer or self._lines)

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None if more data is needed."""
        while True:
            if self._literal_needed is not None:
                if not self._take_literal(self._literal_needed):
                    return None
                continue
            line = self._take_line()
            if line is None:
                return None
            marker = literal_marker(line)
            if self._lines is None:
                if marker is None:
                    self._line_total = 0
                    return Frame((line,))
                self._lines, self._literals = [line], []
            else:
                self._lines.append(line)
                if marker is None:
                    return self._finish_frame(self._lines)
            self._announce_literal(*marker)

    def _take_literal(self, size: int) -> bool:
        if len(self._buffer) < size:
            return False
        assert self._literals is not None  # a literal follows the line that announced it
        self._literals.append(bytes(self._buffer[:size]))
        del self._buffer[:size]
        self._literal_needed = None
        return True

    def _take_line(self) -> bytes | None:
        newline = self._buffer.find(b"\n", self._scanned)
        if newline < 0:
            self._scanned = len(self._buffer)
            if self._line_total + len(self._buffer) > self.max_line_length:
                raise RemoteProtocolError(f"line longer than {self.max_line_length} bytes")
            return None
        end = newline - 1 if newline and self._buffer[newline - 1] == 0x0D else newline
        line = bytes(self._buffer[:end])
        del self._buffer[: newline + 1]
        self._scanned = 0
        self._line_total += len(line)
        if self._line_total > self.max_line_length:
            raise RemoteProtocolError(f"line longer than {self.max_line_length} bytes")
        return line

    def _announce_literal(self, size: int, synchronizing: bool) -> None:
        if self._literal_total + size > self.max_literal_size:
            raise RemoteProtocolError(
                f"literal of {size} bytes exceeds the limit of {self.max_literal_size}"
            )
        self._literal_total += size
        self._literal_needed = size
        if synchronizing and self._on_sync_literal is not None:
            self._on_sync_literal(size)

    def _finish_frame(self, lines: list[bytes]) -> Frame:
        frame = Frame(tuple(lines), tuple(self._literals or ()))
        self._lines = self._literals = None
        self._line_total = 0
        self._literal_total = 0
        return frame


# --- tokenizer ---------------------------------------------------------------------------

_OPEN = object()
_CLOSE = object()
# An atom's characters up to its end (space, parens, quote) or a '[' section.
_ATOM_RUN = re.compile(rb'[^ ()"\[]*')


def parse_values(frame: Frame, line: int = 0, pos: int = 0) -> tuple[Value, ...]:
    """Parse the values of ``frame`` from ``(line, pos)`` on into nested Python values.

    Atoms become ``str`` (digits become ``int``, ``NIL`` becomes None), quoted strings
    ``str``, literals ``bytes`` and parenthesized lists tuples. Bracketed sections stay
    part of their atom: ``BODY[HEADER.FIELDS (FROM)]<0>`` is one ``str``.
    The parser is iterative, so deep nesting cannot exhaust the stack.

    Each line segment is first cut into tokens by one regex call (_scan_values); a
    segment it cannot cut whole (a quoted string with escapes, an unterminated section or
    string, a stray character) and unbalanced parentheses go the token by token way
    (parse_values_by_token), which also raises the errors.
    """
    values = _scan_values(frame, line, pos)
    if values is not None:
        return values
    return parse_values_by_token(frame, line, pos)


# A token with the spaces before it: '(', ')', a quoted string without escapes, or an atom
# with its bracketed sections, as _tokens reads them. Group 1 the spaces, group 2 the token.
_TOKEN = re.compile(rb'( *)(\(|\)|"[^"\\]*"|(?:[^ ()"\[]|\[[^\]]*\])+)')


def _scan_values(frame: Frame, first_line: int, first_pos: int) -> tuple[Value, ...] | None:
    """parse_values' values when every segment of ``frame`` is plain tokens (_TOKEN) back
    to back, else None. One ``findall`` per segment instead of a generator step and an
    atom call per token: the FETCH answer of each new message."""
    lines = frame.lines
    last = len(lines) - 1
    stack: list[list[Value]] = []
    top: list[Value] = []
    for index in range(first_line, last + 1):
        text = lines[index]
        pos = first_pos if index == first_line else 0
        end = len(text)
        if index < last:
            marker = _LITERAL_MARKER.search(text)
            end = marker.start() if marker else end
        taken = pos
        for spaces, token in _TOKEN.findall(text, pos, end):
            taken += len(spaces) + len(token)
            first = token[0]
            if first == 0x28:  # (
                stack.append(top)
                top = []
            elif first == 0x29:  # )
                if not stack:
                    return None
                closed = tuple(top)
                top = stack.pop()
                top.append(closed)
            elif first == 0x22:  # "
                top.append(token[1:-1].decode("utf-8", "replace"))
            elif token.isdigit() and len(token) <= _MAX_NUMBER_DIGITS:
                top.append(int(token))
            elif token.upper() == b"NIL":
                top.append(None)
            else:
                top.append(token.decode("utf-8", "replace"))
        # findall skips what no token reads: then the tokens and their spaces do not cover
        # the segment up to its trailing spaces.
        if taken != end and text[taken:end].strip(b" "):
            return None
        if index < last:
            top.append(frame.literals[index])
    if stack:
        return None
    return tuple(top)


def parse_values_by_token(frame: Frame, line: int = 0, pos: int = 0) -> tuple[Value, ...]:
    """parse_values token by token (_tokens): any frame, and its errors."""
    stack: list[list[Value]] = [[]]
    for token in _tokens(frame, line, pos):
        if token is _OPEN:
            stack.append([])
        elif token is _CLOSE:
            if len(stack) == 1:
                raise RemoteProtocolError("unbalanced ')'")
            closed = tuple(stack.pop())
            stack[-1].append(closed)
        else:
            stack[-1].append(token)  # type: ignore[arg-type]
    if len(stack) != 1:
        raise RemoteProtocolError("unbalanced '('")
    return tuple(stack[0])


def _tokens(frame: Frame, first_line: int, first_pos: int) -> Iterator[object]:
    last = len(frame.lines) - 1
    for index in range(first_line, last + 1):
        text = frame.lines[index]
        pos = first_pos if index == first_line else 0
        end = len(text)
        if index < last:
            match = _LITERAL_MARKER.search(text)
            end = match.start() if match else end
        while pos < end:
            char = text[pos]
            if char == 0x20:
                pos += 1
            elif char == 0x28:
                pos += 1
                yield _OPEN
            elif char == 0x29:
                pos += 1
                yield _CLOSE
            elif char == 0x22:
                value, pos = _quoted(text, pos, end)
                yield value
            else:
                atom, pos = _atom(text, pos, end)
                yield atom
        if index < last:
            yield frame.literals[index]


def _quoted(text: bytes, pos: int, end: int) -> tuple[str, int]:
    close = text.find(b'"', pos + 1, end)
    if close >= 0 and text.find(b"\\", pos + 1, close) < 0:  # no escapes: one slice
        return text[pos + 1 : close].decode("utf-8", "replace"), close + 1
    out = bytearray()
    pos += 1
    while pos < end:
        char = text[pos]
        if char == 0x22:
            return out.decode("utf-8", "replace"), pos + 1
        if char == 0x5C and pos + 1 < end:
            pos += 1
            char = text[pos]
        out.append(char)
        pos += 1
    raise RemoteProtocolError("unterminated quoted string")


def _atom(text: bytes, pos: int, end: int) -> tuple[Value, int]:
    start = pos
    pos = _atom_run(text, pos, end)
    while pos < end and text[pos] == 0x5B:  # '[' opens a section that may hold spaces and parens
        close = text.find(b"]", pos, end)
        if close < 0:
            raise RemoteProtocolError("unterminated '[' in atom")
        pos = _atom_run(text, close + 1, end)
    return atom_value(text[start:pos]), pos


def _atom_run(text: bytes, pos: int, end: int) -> int:
    """Where the atom characters from ``pos`` on stop (one regex step, not a loop)."""
    run = _ATOM_RUN.match(text, pos, end)
    return run.end() if run is not None else pos


def atom_value(atom: bytes) -> Value:
    if atom.isdigit() and len(atom) <= _MAX_NUMBER_DIGITS:
        return int(atom)
    if atom.upper() == b"NIL":
        return None
    return atom.decode("utf-8", "replace")
