"""CONDSTORE / QRESYNC responses (RFC 7162): VANISHED, MODSEQ in FETCH, ENABLE."""

from __future__ import annotations

import pytest

from superimap.imap import ClientProtocol, LocalProtocolError, RemoteProtocolError
from superimap.imap.events import Fetch, Unknown, Vanished
from superimap.imap.framing import Framer
from superimap.imap.responses import parse_response


def parse(data: bytes):
    framer = Framer()
    framer.receive_data(data)
    frame = framer.next_frame()
    assert frame is not None
    return parse_response(frame)


@pytest.mark.parametrize(
    ("data", "event"),
    [
        (b"* VANISHED 5\r\n", Vanished(((5, 5),), False)),
        (b"* VANISHED (EARLIER) 1:3,7,9:8\r\n", Vanished(((1, 3), (7, 7), (8, 9)), True)),
        (b"* vanished (earlier) 41\r\n", Vanished(((41, 41),), True)),
        (b"* ENABLED QRESYNC\r\n", Unknown(b"* ENABLED QRESYNC\r\n")),
    ],
)
def test_vanished_and_enabled(data, event) -> None:
    assert parse(data) == event


@pytest.mark.parametrize(
    "data",
    [b"* VANISHED (LATER) 1\r\n", b"* VANISHED\r\n", b"* VANISHED 1:x\r\n", b"* VANISHED 1 2\r\n"],
)
def test_malformed_vanished_is_refused(data) -> None:
    with pytest.raises(RemoteProtocolError):
        parse(data)


@pytest.mark.parametrize(
    ("data", "uid", "flags", "modseq"),
    [
        (b"* 3 FETCH (UID 5 MODSEQ (12) FLAGS (\\Seen))\r\n", 5, ("\\Seen",), 12),
        (b"* 3 FETCH (FLAGS () UID 5)\r\n", 5, (), None),
        (b"* 1 FETCH (MODSEQ (90000000000) FLAGS ($Junk))\r\n", None, ("$Junk",), 90000000000),
    ],
)
def test_modseq_in_fetch(data, uid, flags, modseq) -> None:
    event = parse(data)
    assert isinstance(event, Fetch)
    assert (event.uid, event.flags, event.modseq) == (uid, flags, modseq)


def test_malformed_modseq_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        parse(b"* 1 FETCH (UID 1 MODSEQ 12)\r\n")


def test_vanished_membership_and_size() -> None:
    report = Vanished(((1, 3), (10, 10)))
    assert [uid for uid in range(12) if uid in report] == [1, 2, 3, 10]
    assert report.size() == 4


def test_enable_before_select() -> None:
    protocol = ClientProtocol()
    protocol.receive_data(b"* PREAUTH ready\r\n")
    tag, data = protocol.enable("QRESYNC")
    assert data == f"{tag} ENABLE QRESYNC\r\n".encode()
    with pytest.raises(LocalProtocolError):
        protocol.enable("QRESYNC\r\nA LOGOUT")


def test_notify_asks_for_flag_changes_when_told() -> None:
    protocol = ClientProtocol()
    protocol.receive_data(b"* PREAUTH ready\r\n")
    tag, data = protocol.notify_set(["Lists"], flag_changes=True)
    assert (
        data
        == (
            f"{tag} NOTIFY SET (selected (MessageNew MessageExpunge FlagChange)) "
            '(mailboxes ("Lists") (MessageNew))\r\n'
        ).encode()
    )
