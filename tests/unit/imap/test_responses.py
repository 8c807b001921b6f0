"""Byte-in / event-out for single responses, including the quirks servers send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from superimap.imap.errors import RemoteProtocolError
from superimap.imap.events import (
    Bye,
    Capability,
    Continuation,
    Exists,
    Expunge,
    Fetch,
    Flags,
    MailboxListing,
    MailboxStatus,
    Recent,
    SearchResult,
    TaggedResponse,
    Unknown,
    UntaggedStatus,
)
from superimap.imap.framing import Framer
from superimap.imap.responses import parse_response


def parse(data: bytes):
    framer = Framer()
    framer.receive_data(data)
    frame = framer.next_frame()
    assert frame is not None and not framer.has_partial_frame
    return parse_response(frame)


@pytest.mark.parametrize(
    ("data", "event"),
    [
        (b"* 5 EXISTS\r\n", Exists(5)),
        (b"*  5   exists\r\n", Exists(5)),
        (b"* 0 RECENT\r\n", Recent(0)),
        (b"* 3 EXPUNGE\r\n", Expunge(3)),
        (b"* SEARCH\r\n", SearchResult(())),
        (b"* SEARCH 1 2 3\r\n", SearchResult((1, 2, 3))),
        (b"* search 4 5 (MODSEQ 17)\r\n", SearchResult((4, 5))),
        (
            b"* FLAGS (\\Answered \\Seen $Forwarded)\r\n",
            Flags(("\\Answered", "\\Seen", "$Forwarded")),
        ),
        (
            b"* CAPABILITY IMAP4rev1 idle AUTH=PLAIN\r\n",
            Capability(frozenset({"IMAP4REV1", "IDLE", "AUTH=PLAIN"})),
        ),
        (b"+ idling\r\n", Continuation("idling")),
        (b"+\r\n", Continuation("")),
        (b"* BYE Autologout; idle for too long\r\n", Bye("Autologout; idle for too long")),
        (
            b"* OK [UNSEEN 17] Message 17 is first unseen\r\n",
            UntaggedStatus("OK", ("UNSEEN", 17), "Message 17 is first unseen"),
        ),
        (
            b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n",
            UntaggedStatus("OK", ("PERMANENTFLAGS", ("\\Deleted", "\\Seen", "\\*")), "Limited"),
        ),
        (b"* OK [HIGHESTMODSEQ 1]\r\n", UntaggedStatus("OK", ("HIGHESTMODSEQ", 1), "")),
        (
            b"* OK [uidvalidity 3857529045] UIDs valid\r\n",
            UntaggedStatus("OK", ("UIDVALIDITY", 3857529045), "UIDs valid"),
        ),
        (
            b"* OK [X-WEIRD some args] text\r\n",
            UntaggedStatus("OK", ("X-WEIRD", "some args"), "text"),
        ),
        (b"* NO [ALERT] Disk full\r\n", UntaggedStatus("NO", ("ALERT",), "Disk full")),
        (b"* OK [no closing bracket\r\n", UntaggedStatus("OK", None, "[no closing bracket")),
        (
            b"A0002 OK [READ-ONLY] EXAMINE completed\r\n",
            TaggedResponse("A0002", "OK", ("READ-ONLY",), "EXAMINE completed"),
        ),
        (b"A0002 no  [TRYCREATE]  nope\r\n", TaggedResponse("A0002", "NO", ("TRYCREATE",), "nope")),
        (
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n',
            MailboxListing(("\\HasNoChildren",), "/", "INBOX"),
        ),
        (b'* list () "." inbox\r\n', MailboxListing((), ".", "INBOX")),
        (
            b'* LIST (\\All \\HasNoChildren) "/" "[Gmail]/All Mail"\r\n',
            MailboxListing(("\\All", "\\HasNoChildren"), "/", "[Gmail]/All Mail"),
        ),
        (b'* LIST (\\Noselect) NIL ""\r\n', MailboxListing(("\\Noselect",), None, "")),
        (
            b'* LIST (\\Junk) "/" "Entw&APw-rfe"\r\n',
            MailboxListing(("\\Junk",), "/", "Entw\u00fcrfe"),
        ),
        (b'* LIST () "/" {5}\r\nA "b"\r\n', MailboxListing((), "/", 'A "b"')),
        (b'* LIST () "/" 2024\r\n', MailboxListing((), "/", "2024")),
        (  # Dovecot sends this name as an atom
            b'* LIST (\\HasNoChildren \\Junk) "/" [Gmail]/Spam\r\n',
            MailboxListing(("\\HasNoChildren", "\\Junk"), "/", "[Gmail]/Spam"),
        ),
        (b'* LIST () "/" "a&-b"\r\n', MailboxListing((), "/", "a&b")),
        (b'* LIST () "/" "bad&utf7"\r\n', MailboxListing((), "/", "bad&utf7")),
        (
            b'* LIST (\\Sent) "/" Sent ("CHILDINFO" ("SUBSCRIBED"))\r\n',
            MailboxListing(("\\Sent",), "/", "Sent"),
        ),
        (
            b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n",
            MailboxStatus("blurdybloop", {"MESSAGES": 231, "UIDNEXT": 44292}),
        ),
        (
            b'* STATUS "Lists/&AOk-t&AOk-" (UIDNEXT 2 UIDVALIDITY 9 HIGHESTMODSEQ 4)\r\n',
            MailboxStatus("Lists/été", {"UIDNEXT": 2, "UIDVALIDITY": 9, "HIGHESTMODSEQ": 4}),
        ),
        (b"* STATUS inbox (UIDNEXT 5)\r\n", MailboxStatus("INBOX", {"UIDNEXT": 5})),
        (b"* 4 VANISHED\r\n", Unknown(b"* 4 VANISHED\r\n")),
    ],
)
def test_it_parses(data: bytes, event: object) -> None:
    assert parse(data) == event


def test_it_parses_a_full_fetch() -> None:
    data = (
        b'* 12 FETCH (UID 45 RFC822.SIZE 4286 INTERNALDATE "17-Jul-1996 02:44:25 -0700" '
        b"FLAGS (\\Seen) BODY[] {9}\r\nSubject\r\n)\r\n"
    )
    event = parse(data)
    assert event == Fetch(
        seq=12,
        uid=45,
        size=4286,
        internal_date=datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(-timedelta(hours=7))),
        body=b"Subject\r\n",
        flags=("\\Seen",),
        attributes=event.attributes,
    )
    assert set(event.attributes) == {"UID", "RFC822.SIZE", "INTERNALDATE", "FLAGS", "BODY[]"}


def test_it_reports_a_peek_body_as_body() -> None:
    event = parse(b"* 1 fetch (body.peek[] {2}\r\nhi uid 9)\r\n")
    assert (event.uid, event.body) == (9, b"hi")


def test_it_accepts_a_fetch_without_uid() -> None:
    assert parse(b"* 3 FETCH (FLAGS (\\Seen))\r\n") == Fetch(
        3, flags=("\\Seen",), attributes={"FLAGS": ("\\Seen",)}
    )


def test_it_accepts_a_space_padded_internaldate() -> None:
    event = parse(b'* 3 FETCH (INTERNALDATE " 7-Jul-1996 02:44:25 +0000")\r\n')
    assert event.internal_date == datetime(1996, 7, 7, 2, 44, 25, tzinfo=UTC)


def test_it_keeps_an_unparsable_internaldate_raw() -> None:
    event = parse(b'* 3 FETCH (INTERNALDATE "31-Feb-1996 99:44:25 +0000")\r\n')
    assert event.internal_date is None
    assert event.attributes["INTERNALDATE"] == "31-Feb-1996 99:44:25 +0000"


@pytest.mark.parametrize(
    "data",
    [
        b"* 1 FETCH (UID)\r\n",
        b"* 1 FETCH (UID abc)\r\n",
        b"* 1 FETCH UID 1\r\n",
        b"* SEARCH 1 two\r\n",
        b"* OK [UIDNEXT soon] x\r\n",
        b"A1 MAYBE fine\r\n",
        b"\x16\x03\x01\x00\r\n",
        b"*\r\n",
        b"* \xff\xfe\r\n",
        b'* LIST \\HasNoChildren "/" INBOX\r\n',
        b'* LIST () "/"\r\n',
        b'* LIST () "//" INBOX\r\n',
        b'* LIST () "/" (INBOX)\r\n',
        b'* LIST (("x")) "/" INBOX\r\n',
    ],
)
def test_it_rejects_garbage(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse(data)
