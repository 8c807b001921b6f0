"""Server-side command framing and the in-memory mailbox used by the chaos server."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from devtools.imap.mailstore import Mailbox, SearchError, in_set, parse_search_date
from devtools.imap.server import (
    LITERAL_CONTINUATION,
    BadCommand,
    Command,
    RawLine,
    ServerCommandParser,
    format_internaldate,
    tagged,
)
from superimap.imap.errors import RemoteProtocolError


def events_of(parser: ServerCommandParser, data: bytes) -> list:
    parser.receive_data(data)
    events = []
    while (event := parser.next_event()) is not None:
        events.append(event)
    return events


def test_it_parses_commands_with_uid_prefix_and_lists() -> None:
    events = events_of(ServerCommandParser(), b"a1 uid fetch 1:* (UID BODY.PEEK[])\r\nA2 NOOP\r\n")
    assert events == [
        Command("a1", "UID FETCH", ("1:*", ("UID", "BODY.PEEK[]"))),
        Command("A2", "NOOP", ()),
    ]


def test_it_asks_for_synchronizing_literals_but_not_for_literal_plus() -> None:
    parser = ServerCommandParser()
    assert events_of(parser, b"A1 LOGIN {5}\r\n") == []
    assert parser.pending_output() == LITERAL_CONTINUATION
    assert events_of(parser, b'user0 "pass0"\r\nA2 LOGIN {1+}\r\nx y\r\n') == [
        Command("A1", "LOGIN", (b"user0", "pass0")),
        Command("A2", "LOGIN", (b"x", "y")),
    ]
    assert parser.pending_output() == b""


def test_it_returns_the_raw_line_after_idle() -> None:
    parser = ServerCommandParser()
    assert events_of(parser, b"A1 IDLE\r\n") == [Command("A1", "IDLE", ())]
    parser.expect_line()
    assert events_of(parser, b"DONE\r\nA2 NOOP\r\n") == [
        RawLine(b"DONE"),
        Command("A2", "NOOP", ()),
    ]


def test_it_reports_unreadable_commands() -> None:
    assert events_of(ServerCommandParser(), b'A1 LOGIN "open\r\nX\r\n') == [
        BadCommand("A1", "unterminated quoted string"),
        BadCommand("*", "missing tag or command"),
    ]


def test_it_limits_the_command_line() -> None:
    with pytest.raises(RemoteProtocolError):
        events_of(ServerCommandParser(max_line_length=10), b"A1 LOGIN aaaaaaaaaaa")


def test_it_renders_responses() -> None:
    assert tagged("A1", "OK", "done", "READ-ONLY") == b"A1 OK [READ-ONLY] done\r\n"
    moment = datetime(1996, 7, 7, 2, 44, 25, tzinfo=UTC)
    assert format_internaldate(moment) == "07-Jul-1996 02:44:25 +0000"


@pytest.mark.parametrize(
    ("value", "uid_set", "expected"),
    [(3, "1:*", True), (3, "4:*", True), (2, "4:*", False), (5, "1,5", True), (5, "6:4", True)],
)
def test_uid_sets_follow_rfc_3501(value: int, uid_set: str, expected: bool) -> None:
    assert in_set(value, uid_set, largest=3 if value <= 3 else 9) is expected


def mailbox_with(count: int) -> Mailbox:
    mailbox = Mailbox(uidvalidity=7)
    for number in range(count):
        mailbox.append(b"m%d" % number, datetime(2024, 1, 1 + number, tzinfo=UTC))
    return mailbox


def test_it_searches() -> None:
    mailbox = mailbox_with(3)
    assert mailbox.uid_search(("ALL",)) == [1, 2, 3]
    assert mailbox.uid_search(("UID", "2:*")) == [2, 3]
    assert mailbox.uid_search(("SINCE", "2-Jan-2024", "UID", "1:2")) == [2]
    with pytest.raises(SearchError):
        mailbox.uid_search(("FROZBOZZ",))


def test_peek_leaves_messages_unseen_but_a_body_fetch_marks_them_seen() -> None:
    mailbox = mailbox_with(1)
    mailbox.uid_fetch("1", ("BODY.PEEK[]",), readonly=False)
    assert mailbox.messages[0].flags == set()
    assert mailbox.uid_fetch("1", ("BODY.PEEK[]",), readonly=True) == [
        b"* 1 FETCH (UID 1 BODY[] {2}\r\nm0)\r\n"
    ]
    mailbox.uid_fetch("1", ("BODY[]",), readonly=True)
    assert mailbox.messages[0].flags == set()
    response = mailbox.uid_fetch("1", ("BODY[]",), readonly=False)
    assert response == [b"* 1 FETCH (UID 1 BODY[] {2}\r\nm0 FLAGS (\\Seen))\r\n"]


def test_renumbering_keeps_messages_and_restarts_uids() -> None:
    mailbox = mailbox_with(3)
    del mailbox.messages[0]
    mailbox.renumber(99)
    assert [m.uid for m in mailbox.messages] == [1, 2]
    assert (mailbox.uidvalidity, mailbox.uidnext) == (99, 3)


def test_it_parses_search_dates() -> None:
    assert parse_search_date("1-Feb-2024") == date(2024, 2, 1)
    with pytest.raises(SearchError):
        parse_search_date("31-Feb-2024")
