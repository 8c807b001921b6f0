"""ClientProtocol: a Dovecot-like session byte-in / event-out, and the state table."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from superimap.imap import (
    Bye,
    Capability,
    ClientProtocol,
    Continuation,
    Exists,
    Fetch,
    Flags,
    Greeting,
    LocalProtocolError,
    MailboxListing,
    Recent,
    RemoteProtocolError,
    SearchResult,
    State,
    TaggedResponse,
    UntaggedStatus,
)
from superimap.imap.utf7 import decode_mailbox_name, encode_mailbox_name

BODY = b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
DATE = datetime(2024, 3, 1, 10, 0, 0, tzinfo=timezone(timedelta(hours=1)))

# (command to send or None, server bytes, expected events, state afterwards)
TRANSCRIPT = [
    (
        None,
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ "
        b"AUTH=PLAIN] Dovecot ready.\r\n",
        [
            Greeting(
                "OK",
                (
                    "CAPABILITY",
                    ("IMAP4REV1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE")
                    + ("LITERAL+", "AUTH=PLAIN"),
                ),
                "Dovecot ready.",
            )
        ],
        State.NOT_AUTHENTICATED,
    ),
    (
        ("login", "user0", "pa ss"),
        b"A0001 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
        [TaggedResponse("A0001", "OK", ("CAPABILITY", ("IMAP4REV1", "IDLE")), "Logged in")],
        State.AUTHENTICATED,
    ),
    (
        ("select", "INBOX"),
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
        b"Flags permitted.\r\n"
        b"* 2 EXISTS\r\n* 0 RECENT\r\n"
        b"* OK [UIDVALIDITY 1709287200] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
        b"A0002 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n",
        [
            Flags(("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")),
            UntaggedStatus(
                "OK",
                (
                    "PERMANENTFLAGS",
                    ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\*"),
                ),
                "Flags permitted.",
            ),
            Exists(2),
            Recent(0),
            UntaggedStatus("OK", ("UIDVALIDITY", 1709287200), "UIDs valid"),
            UntaggedStatus("OK", ("UIDNEXT", 3), "Predicted next UID"),
            TaggedResponse(
                "A0002", "OK", ("READ-WRITE",), "Select completed (0.001 + 0.000 secs)."
            ),
        ],
        State.SELECTED,
    ),
    (
        ("uid_search", "UID 2:*"),
        b"* SEARCH 2\r\nA0003 OK Search completed (0.001 + 0.000 secs).\r\n",
        [
            SearchResult((2,)),
            TaggedResponse("A0003", "OK", None, "Search completed (0.001 + 0.000 secs)."),
        ],
        State.SELECTED,
    ),
    (
        ("uid_fetch", "2", "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[])"),
        b'* 2 FETCH (UID 2 RFC822.SIZE 43 INTERNALDATE "01-Mar-2024 10:00:00 +0100" BODY[] {43}\r\n'
        + BODY
        + b")\r\nA0004 OK Fetch completed.\r\n",
        [
            Fetch(
                2,
                uid=2,
                size=43,
                internal_date=DATE,
                body=BODY,
                attributes={
                    "UID": 2,
                    "RFC822.SIZE": 43,
                    "INTERNALDATE": "01-Mar-2024 10:00:00 +0100",
                    "BODY[]": BODY,
                },
            ),
            TaggedResponse("A0004", "OK", None, "Fetch completed."),
        ],
        State.SELECTED,
    ),
    (("idle",), b"+ idling\r\n", [Continuation("idling")], State.IDLING),
    (None, b"* 3 EXISTS\r\n* 1 RECENT\r\n", [Exists(3), Recent(1)], State.IDLING),
    (
        ("done",),
        b"A0005 OK Idle completed.\r\n",
        [TaggedResponse("A0005", "OK", None, "Idle completed.")],
        State.SELECTED,
    ),
    (
        ("logout",),
        b"* BYE Logging out\r\nA0006 OK Logout completed.\r\n",
        [Bye("Logging out"), TaggedResponse("A0006", "OK", None, "Logout completed.")],
        State.LOGOUT,
    ),
]
EXPECTED_COMMANDS = [
    b'A0001 LOGIN "user0" "pa ss"\r\n',
    b'A0002 SELECT "INBOX"\r\n',
    b"A0003 UID SEARCH UID 2:*\r\n",
    b"A0004 UID FETCH 2 (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])\r\n",
    b"A0005 IDLE\r\n",
    b"DONE\r\n",
    b"A0006 LOGOUT\r\n",
]


def send(protocol: ClientProtocol, command: tuple) -> bytes:
    result = getattr(protocol, command[0])(*command[1:])
    return result if isinstance(result, bytes) else result[1]


@pytest.mark.parametrize("chunk_size", [1, 7, 1 << 20])
def test_it_plays_a_dovecot_session(chunk_size: int) -> None:
    protocol = ClientProtocol()
    sent = []
    for command, data, events, state in TRANSCRIPT:
        if command:
            sent.append(send(protocol, command))
        received = []
        for start in range(0, len(data), chunk_size):
            received.extend(protocol.receive_data(data[start : start + chunk_size]))
        assert received == events
        assert protocol.state is state
    assert sent == EXPECTED_COMMANDS
    assert protocol.receive_data(b"") == []


def greeted(data: bytes = b"* OK ready\r\n") -> ClientProtocol:
    protocol = ClientProtocol()
    protocol.receive_data(data)
    return protocol


def logged_in() -> ClientProtocol:
    protocol = greeted()
    tag, _ = protocol.login("u", "p")
    protocol.receive_data(f"{tag} OK done\r\n".encode())
    return protocol


def selected() -> ClientProtocol:
    protocol = logged_in()
    tag, _ = protocol.select("INBOX")
    protocol.receive_data(f"{tag} OK done\r\n".encode())
    return protocol


def test_it_refuses_commands_before_the_greeting() -> None:
    with pytest.raises(LocalProtocolError):
        ClientProtocol().login("u", "p")


def test_it_treats_preauth_as_authenticated() -> None:
    assert greeted(b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n").state is State.AUTHENTICATED


def test_it_reports_a_bye_greeting() -> None:
    protocol = ClientProtocol()
    assert protocol.receive_data(b"* BYE too many connections\r\n") == [Bye("too many connections")]
    assert protocol.state is State.LOGOUT


@pytest.mark.parametrize(
    ("protocol_factory", "command"),
    [
        (greeted, ("select", "INBOX")),
        (greeted, ("uid_search", "ALL")),
        (logged_in, ("uid_fetch", "1", "(UID)")),
        (logged_in, ("login", "u", "p")),
        (greeted, ("list_mailboxes",)),
        (selected, ("starttls",)),
        (selected, ("done",)),
    ],
)
def test_it_refuses_commands_not_allowed_in_the_state(protocol_factory, command) -> None:
    with pytest.raises(LocalProtocolError):
        send(protocol_factory(), command)


def test_it_allows_only_done_while_idling_and_only_after_the_continuation() -> None:
    protocol = selected()
    protocol.idle()
    with pytest.raises(LocalProtocolError):
        protocol.done()
    with pytest.raises(LocalProtocolError):
        protocol.noop()
    protocol.receive_data(b"+ idling\r\n")
    assert protocol.done() == b"DONE\r\n"
    with pytest.raises(LocalProtocolError):
        protocol.done()


def test_a_rejected_idle_returns_to_the_previous_state() -> None:
    protocol = selected()
    tag, _ = protocol.idle()
    protocol.receive_data(f"{tag} BAD no idle here\r\n".encode())
    assert protocol.state is State.SELECTED


@pytest.mark.parametrize("answer", ["OK done", "BAD not behind a FETCH"])
def test_an_idle_written_behind_a_command_ends_only_with_its_own_answer(answer) -> None:
    """DONE, a FETCH and the next IDLE in one write: the first IDLE's OK comes while the
    second is pending and must not end it; the second's own answer does."""
    protocol = selected()
    first, _ = protocol.idle()
    protocol.receive_data(b"+ idling\r\n")
    protocol.done()
    fetch, _ = protocol.uid_fetch("5:*", "(UID BODY.PEEK[]<0.1001>)")
    second, _ = protocol.idle()
    protocol.receive_data(f"{first} OK idle done\r\n{fetch} OK fetched\r\n".encode())
    assert protocol.state is State.IDLING and not protocol.idle_accepted
    if answer.startswith("OK"):
        protocol.receive_data(b"+ idling\r\n")
        assert protocol.idle_accepted
        protocol.done()
    protocol.receive_data(f"{second} {answer}\r\n".encode())
    assert protocol.state is State.SELECTED and not protocol.idle_accepted


def test_a_failed_select_leaves_the_authenticated_state() -> None:
    protocol = selected()
    tag, _ = protocol.select("Nope")
    protocol.receive_data(f"{tag} NO [NONEXISTENT] no such mailbox\r\n".encode())
    assert protocol.state is State.AUTHENTICATED


def test_a_failed_login_stays_not_authenticated() -> None:
    protocol = greeted()
    tag, _ = protocol.login("u", "bad")
    protocol.receive_data(f"{tag} NO [AUTHENTICATIONFAILED] nope\r\n".encode())
    assert protocol.state is State.NOT_AUTHENTICATED


def test_it_rejects_a_tagged_response_for_an_unknown_tag() -> None:
    protocol = greeted()
    with pytest.raises(RemoteProtocolError):
        protocol.receive_data(b"A0042 OK what?\r\n")
    with pytest.raises(RemoteProtocolError):
        protocol.receive_data(b"* 1 EXISTS\r\n")  # a failed connection stays failed


def test_it_rejects_an_unexpected_continuation() -> None:
    with pytest.raises(RemoteProtocolError):
        selected().receive_data(b"+ go ahead\r\n")


def test_it_rejects_data_pipelined_after_starttls() -> None:
    protocol = greeted()
    tag, _ = protocol.starttls()
    with pytest.raises(RemoteProtocolError):
        protocol.receive_data(f"{tag} OK Begin TLS\r\n* OK injected".encode())


def test_eof_is_an_error_unless_the_server_said_bye() -> None:
    with pytest.raises(RemoteProtocolError):
        selected().receive_data(b"")
    protocol = selected()
    protocol.receive_data(b"* BYE shutting down\r\n")
    assert protocol.receive_data(b"") == []


def test_eof_in_the_middle_of_a_literal_is_an_error() -> None:
    protocol = selected()
    protocol.receive_data(b"* BYE x\r\n* 1 FETCH (BODY[] {10}\r\nabc")
    with pytest.raises(RemoteProtocolError):
        protocol.receive_data(b"")


def test_it_tracks_capabilities() -> None:
    protocol = greeted()
    tag, data = protocol.capability()
    assert data == f"{tag} CAPABILITY\r\n".encode()
    events = protocol.receive_data(f"* CAPABILITY IMAP4rev1 IDLE\r\n{tag} OK\r\n".encode())
    assert events[0] == Capability(frozenset({"IMAP4REV1", "IDLE"}))
    assert protocol.capabilities == {"IMAP4REV1", "IDLE"}


def test_it_quotes_credentials_and_refuses_line_breaks() -> None:
    protocol = greeted()
    assert protocol.login('a"b', "c\\d")[1] == b'A0001 LOGIN "a\\"b" "c\\\\d"\r\n'
    with pytest.raises(LocalProtocolError):
        protocol.login("u", "p\r\nA2 LOGOUT")


def test_it_builds_xoauth2_with_sasl_ir() -> None:
    tag, data = greeted().authenticate_xoauth2("me@example.com", "tok")
    assert (
        data
        == b"A0001 AUTHENTICATE XOAUTH2 dXNlcj1tZUBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB0b2sBAQ==\r\n"
    )


def test_it_builds_xoauth2_without_sasl_ir() -> None:
    protocol = greeted()
    tag, data = protocol.authenticate_xoauth2("me", "tok", sasl_ir=False)
    assert data == b"A0001 AUTHENTICATE XOAUTH2\r\n"
    assert protocol.receive_data(b"+ \r\n") == [Continuation("")]
    assert protocol.authenticate_continue(b"x") == b"eA==\r\n"
    events = protocol.receive_data(f"{tag} OK welcome\r\n".encode())
    assert events[0].status == "OK" and protocol.state is State.AUTHENTICATED
    with pytest.raises(LocalProtocolError):
        protocol.authenticate_continue()


def test_it_examines_read_only_with_an_encoded_mailbox_name() -> None:
    assert (
        logged_in().select("Entwürfe & Co", readonly=True)[1]
        == b'A0002 EXAMINE "Entw&APw-rfe &- Co"\r\n'
    )


@pytest.mark.parametrize("name", ["INBOX", "Entwürfe", "日本語", "a&b", "[Gmail]/All Mail", "😀x"])
def test_modified_utf7_round_trips(name: str) -> None:
    encoded = encode_mailbox_name(name)
    assert encoded.isascii() and decode_mailbox_name(encoded) == name


def test_it_refuses_a_bad_uid_set() -> None:
    with pytest.raises(LocalProtocolError):
        selected().uid_fetch("1 BODY[]", "(UID)")


def test_it_lists_special_use_mailboxes_like_dovecot() -> None:
    protocol = logged_in()
    tag, data = protocol.list_mailboxes(special_use_only=True)
    assert data == b'A0002 LIST (SPECIAL-USE) "" "*"\r\n'
    events = protocol.receive_data(
        b'* LIST (\\HasNoChildren \\All) "/" "[Gmail]/All Mail"\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "/" "[Gmail]/Sent Mail"\r\n'
        + f"{tag} OK List completed (0.001 + 0.000 secs).\r\n".encode()
    )
    assert events[:2] == [
        MailboxListing(("\\HasNoChildren", "\\All"), "/", "[Gmail]/All Mail"),
        MailboxListing(("\\HasNoChildren", "\\Sent"), "/", "[Gmail]/Sent Mail"),
    ]
    assert protocol.state is State.AUTHENTICATED


def test_it_lists_with_an_encoded_pattern_in_the_selected_state() -> None:
    assert selected().list_mailboxes("", "Entwürfe/%")[1] == b'A0003 LIST "" "Entw&APw-rfe/%"\r\n'


def test_it_asks_for_the_status_of_another_folder() -> None:
    assert selected().status("Entwürfe")[1] == (
        b'A0003 STATUS "Entw&APw-rfe" (UIDNEXT UIDVALIDITY)\r\n'
    )


def test_it_sets_notify_for_the_selected_and_other_folders() -> None:
    assert selected().notify_set(["Lists", "Spam"])[1] == (
        b"A0003 NOTIFY SET (selected (MessageNew MessageExpunge))"
        b' (mailboxes ("Lists" "Spam") (MessageNew))\r\n'
    )


def test_it_refuses_status_before_login() -> None:
    with pytest.raises(LocalProtocolError):
        greeted().status("INBOX")
