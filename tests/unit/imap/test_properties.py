"""Property-based tests: split-invariance, garbage tolerance and literal limits."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.imap.server import ServerCommandParser, format_internaldate, literal, quoted
from superimap.imap import (
    ClientProtocol,
    Exists,
    Expunge,
    Fetch,
    ImapError,
    Recent,
    RemoteProtocolError,
    SearchResult,
    UntaggedStatus,
)

numbers = st.integers(min_value=0, max_value=2**32)
words = st.from_regex(r"[A-Za-z0-9.,!?()-]{1,12}", fullmatch=True)
texts = st.lists(words, min_size=1, max_size=5).map(" ".join)
flags = st.lists(st.sampled_from(["\\Seen", "\\Answered", "\\Flagged", "$Label1"]), unique=True)
dates = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(datetime(1970, 1, 2), datetime(2100, 1, 1)).map(
        lambda d: d.replace(microsecond=0)
    ),
    st.integers(-12 * 60, 14 * 60),
)


@st.composite
def fetches(draw: st.DrawFn) -> tuple[bytes, Fetch]:
    seq, uid, moment = draw(numbers), draw(numbers), draw(dates)
    body, flag_list = draw(st.binary(max_size=300)), tuple(draw(flags))
    date_text = format_internaldate(moment)
    data = (
        b"* %d FETCH (UID %d RFC822.SIZE %d INTERNALDATE " % (seq, uid, len(body))
        + quoted(date_text)
        + b" FLAGS ("
        + " ".join(flag_list).encode()
        + b") BODY[] "
        + literal(body)
        + b")\r\n"
    )
    attributes = {
        "UID": uid,
        "RFC822.SIZE": len(body),
        "INTERNALDATE": date_text,
        "FLAGS": flag_list,
        "BODY[]": body,
    }
    return data, Fetch(seq, uid, len(body), moment, body, flag_list, attributes)


def simple(keyword: str, event_type: type) -> st.SearchStrategy[tuple[bytes, object]]:
    return numbers.map(lambda n: (b"* %d %s\r\n" % (n, keyword.encode()), event_type(n)))


searches = st.lists(numbers, max_size=20).map(
    lambda ids: (
        " ".join(["* SEARCH", *map(str, ids)]).encode() + b"\r\n",
        SearchResult(tuple(ids)),
    )
)
statuses = st.builds(
    lambda code, value, text: (
        f"* OK [{code} {value}] {text}\r\n".encode(),
        UntaggedStatus("OK", (code, value), text),
    ),
    st.sampled_from(["UIDVALIDITY", "UIDNEXT", "UNSEEN", "HIGHESTMODSEQ"]),
    numbers,
    texts,
)
responses = st.lists(
    st.one_of(
        fetches(),
        searches,
        statuses,
        simple("EXISTS", Exists),
        simple("RECENT", Recent),
        simple("EXPUNGE", Expunge),
    ),
    min_size=1,
    max_size=8,
)


def greeted() -> ClientProtocol:
    protocol = ClientProtocol(max_literal_size=10_000)
    protocol.receive_data(b"* OK ready\r\n")
    return protocol


@given(responses, st.data())
def test_split_points_do_not_change_the_events(pairs, data) -> None:
    wire = b"".join(raw for raw, _ in pairs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    protocol = greeted()
    events = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        if end > start:  # b"" would mean end of file
            events.extend(protocol.receive_data(wire[start:end]))
    assert events == [event for _, event in pairs]


@settings(max_examples=25)
@given(responses)
def test_one_byte_at_a_time_gives_the_same_events(pairs) -> None:
    wire = b"".join(raw for raw, _ in pairs)
    protocol = greeted()
    events = [event for i in range(len(wire)) for event in protocol.receive_data(wire[i : i + 1])]
    assert events == [event for _, event in pairs]


garbage_pieces = st.sampled_from(
    [
        b"*",
        b" ",
        b"\r\n",
        b"\n",
        b"(",
        b")",
        b"[",
        b"]",
        b'"',
        b"\\",
        b"{5}",
        b"{3+}",
        b"{99999999}",
        b"FETCH",
        b"SEARCH",
        b"OK",
        b"BYE",
        b"A0001",
        b"+",
        b"1",
        b"NIL",
        b"\x00",
        b"\xff",
        b"UID",
    ]
)
garbage = st.one_of(st.binary(max_size=500), st.lists(garbage_pieces, max_size=80).map(b"".join))


@given(garbage, st.integers(1, 64))
def test_garbage_raises_only_imap_errors(data: bytes, chunk: int) -> None:
    for protocol in (ClientProtocol(max_line_length=200, max_literal_size=100), greeted()):
        try:
            for start in range(0, len(data), chunk):
                protocol.receive_data(data[start : start + chunk])
            protocol.receive_data(b"")
        except ImapError:
            pass


@given(garbage)
def test_the_server_parser_survives_garbage(data: bytes) -> None:
    parser = ServerCommandParser(max_line_length=200, max_literal_size=100)
    try:
        parser.receive_data(data)
        while parser.next_event() is not None:
            pass
    except RemoteProtocolError:
        pass


@given(st.integers(1, 10_000), st.integers(1, 10**15))
def test_an_oversized_literal_fails_on_its_announcement(limit: int, excess: int) -> None:
    protocol = ClientProtocol(max_literal_size=limit)
    protocol.receive_data(b"* OK ready\r\n")
    try:
        protocol.receive_data(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % (limit + excess))
    except RemoteProtocolError:
        return
    raise AssertionError("the literal was accepted")


@given(st.integers(0, 2_000))
def test_a_literal_at_the_limit_is_accepted(limit: int) -> None:
    protocol = ClientProtocol(max_literal_size=limit)
    protocol.receive_data(b"* OK ready\r\n")
    events = protocol.receive_data(b"* 1 FETCH (BODY[] %s)\r\n" % literal(b"x" * limit))
    assert events[0].body == b"x" * limit
