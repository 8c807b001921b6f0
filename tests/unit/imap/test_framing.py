from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from superimap.imap.errors import ImapError, RemoteProtocolError
from superimap.imap.framing import (
    Frame,
    Framer,
    _scan_values,
    parse_values,
    parse_values_by_token,
)


def frames_of(framer: Framer, data: bytes) -> list[Frame]:
    framer.receive_data(data)
    frames = []
    while (frame := framer.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_it_frames_lines_and_literals() -> None:
    framer = Framer()
    data = b"* 1 FETCH (BODY[] {5}\r\nhello FLAGS ())\r\n* 2 EXISTS\r\n"
    assert frames_of(framer, data) == [
        Frame((b"* 1 FETCH (BODY[] {5}", b" FLAGS ())"), (b"hello",)),
        Frame((b"* 2 EXISTS",)),
    ]


def test_it_frames_across_one_byte_reads() -> None:
    framer = Framer()
    data = b"* 1 FETCH (BODY[] {3}\r\na\r\n)\r\nA1 OK done\r\n"
    frames = [frame for byte in data for frame in frames_of(framer, bytes([byte]))]
    assert [frame.raw for frame in frames] == [
        b"* 1 FETCH (BODY[] {3}\r\na\r\n)\r\n",
        b"A1 OK done\r\n",
    ]
    assert not framer.has_partial_frame


def test_it_accepts_non_synchronizing_literals_and_bare_lf() -> None:
    assert frames_of(Framer(), b"A1 LOGIN {2+}\nab x\n") == [
        Frame((b"A1 LOGIN {2+}", b" x"), (b"ab",))
    ]


def test_it_rejects_a_long_line_before_its_end_arrives() -> None:
    framer = Framer(max_line_length=10)
    with pytest.raises(RemoteProtocolError):
        frames_of(framer, b"* OK this is too long")


def test_it_rejects_an_oversized_literal_before_buffering_it() -> None:
    framer = Framer(max_literal_size=100)
    with pytest.raises(RemoteProtocolError):
        frames_of(framer, b"* 1 FETCH (BODY[] {101}\r\n")


def test_it_limits_the_total_of_literals_in_one_response() -> None:
    framer = Framer(max_literal_size=10)
    with pytest.raises(RemoteProtocolError):
        frames_of(framer, b"* 1 FETCH (A {6}\r\n123456 B {6}\r\n")


def test_it_rejects_a_literal_size_with_absurdly_many_digits() -> None:
    with pytest.raises(RemoteProtocolError):
        frames_of(Framer(), b"* X {" + b"9" * 5000 + b"}\r\n")


def test_it_calls_back_for_synchronizing_literals_only() -> None:
    sizes: list[int] = []
    framer = Framer(on_sync_literal=sizes.append)
    frames_of(framer, b"A1 LOGIN {1}\r\na {2+}\r\nbc\r\n")
    assert sizes == [1]


@pytest.mark.parametrize(
    ("line", "values"),
    [
        (b"a 12 NIL nil", ("a", 12, None, None)),
        (b'"quo\\"ted \\\\ x" ()', ('quo"ted \\ x', ())),
        (b"(1 (2 (3)))", ((1, (2, (3,))),)),
        (b"BODY[HEADER.FIELDS (FROM TO)]<0> x", ("BODY[HEADER.FIELDS (FROM TO)]<0>", "x")),
        (b"  (\\Seen   \\*)  ", (("\\Seen", "\\*"),)),
        (b"1:* 0042", ("1:*", 42)),
        # quoted strings with and without escapes (one slice or the escape loop)
        (b'"" "a b" "\\\\"', ("", "a b", "\\")),
        (b'"caf\xc3\xa9" x"y"z', ("caf\u00e9", "x", "y", "z")),
        # atoms: several bracket sections, parens and quotes inside them, digits after
        (b'a[b c]d[e "(f"]g h', ('a[b c]d[e "(f"]g', "h")),
        (b"[x]1 BODY[]<0> {5", ("[x]1", "BODY[]<0>", "{5")),
        (b"x]y 123456789012345678901", ("x]y", "123456789012345678901")),
    ],
)
def test_it_parses_values(line: bytes, values: tuple) -> None:
    assert parse_values(Frame((line,))) == values


def test_it_parses_literals_in_place() -> None:
    frame = Frame((b"(A {3}", b" B {0}", b")"), (b"x\r\n", b""))
    assert parse_values(frame) == (("A", b"x\r\n", "B", b""),)


def test_it_survives_deep_nesting_without_recursion() -> None:
    assert parse_values(Frame((b"(" * 50_000 + b")" * 50_000,)))


@pytest.mark.parametrize(
    "line", [b"(a", b"a)", b'"open', b"BODY[HEADER", b'"open\\', b'"a\\"', b"a[b]c[d", b"x [y"]
)
def test_it_rejects_malformed_values(line: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_values(Frame((line,)))


# The bytes that decide how values are read, and a few that do not.
_PIECES = [
    b" ",
    b"  ",
    b"(",
    b")",
    b'"',
    b"\\",
    b"[",
    b"]",
    b"{",
    b"}",
    b"NIL",
    b"nil",
    b"12",
    b"0",
    b"a",
    b"BODY[]<0>",
    b"\xc3\xa9",
    b"\xff",
    b"\t",
    b"9" * 21,
]
_segments = st.lists(st.sampled_from(_PIECES), max_size=14).map(b"".join)


@given(st.lists(_segments, min_size=1, max_size=3), st.integers(0, 3))
def test_the_one_call_scan_reads_what_the_token_by_token_parser_reads(segments, pos) -> None:
    """parse_values takes a frame from _scan_values when it reads it whole, else from
    parse_values_by_token (which also raises): the same values either way."""
    lines = tuple(s + b" {3}" for s in segments[:-1]) + (segments[-1],)
    frame = Frame(lines, (b"x\r\n",) * (len(lines) - 1))
    try:
        expected: object = parse_values_by_token(frame, 0, pos)
    except ImapError as exc:
        expected = type(exc)
    scanned = _scan_values(frame, 0, pos)
    if scanned is not None:
        assert scanned == expected
    try:
        assert parse_values(frame, 0, pos) == expected
    except ImapError as exc:
        assert type(exc) is expected


def test_the_scan_reads_a_one_trip_fetch_answer_and_leaves_escapes_to_the_tokens() -> None:
    line = b'(UID 7 RFC822.SIZE 12 INTERNALDATE "08-Dec-2026 00:00:00 +0000" BODY[]<0> {12}'
    frame = Frame((line, b")"), (b"Subject: x\r\n",))
    expected = (
        (
            "UID",
            7,
            "RFC822.SIZE",
            12,
            "INTERNALDATE",
            "08-Dec-2026 00:00:00 +0000",
            "BODY[]<0>",
            b"Subject: x\r\n",
        ),
    )
    assert _scan_values(frame, 0, 0) == expected == parse_values_by_token(frame, 0, 0)
    escaped = Frame((b'("a\\"b" c)',))
    assert _scan_values(escaped, 0, 0) is None
    assert parse_values(escaped) == (('a"b', "c"),)
