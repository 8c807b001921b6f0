"""delivery/http11.py: the webhook client's response parser, fed bytes as they may arrive."""

from __future__ import annotations

import pytest

from superimap.delivery.http11 import ResponseError, ResponseParser

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

# (name, answer bytes, eof after them?, status, excerpt, keep_alive)
FINISHED = [
    ("content-length", OK, False, 200, b"ok", True),
    ("empty body", b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", False, 202, b"", True),
    ("no body for 204", b"HTTP/1.1 204 No Content\r\n\r\n", False, 204, b"", True),
    (
        "no body for 304",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        False,
        304,
        b"",
        True,
    ),
    (
        "connection close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        False,
        200,
        b"ok",
        False,
    ),
    (
        "connection close among tokens, any case",
        b"HTTP/1.1 200 OK\r\nconnection: Upgrade, CLOSE\r\ncontent-length: 2\r\n\r\nok",
        False,
        200,
        b"ok",
        False,
    ),
    (
        "http/1.0 closes by default",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        False,
        200,
        b"ok",
        False,
    ),
    (
        "http/1.0 keep-alive",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        False,
        200,
        b"ok",
        True,
    ),
    ("http/1.0 until close", b"HTTP/1.0 500 Oops\r\n\r\nbroken", True, 500, b"broken", False),
    ("http/1.1 until close", b"HTTP/1.1 200 OK\r\n\r\nall of it", True, 200, b"all of it", False),
    (
        "chunked",
        CHUNKED + b"2\r\nok\r\n3;ext=1\r\n!!!\r\n0\r\n\r\n",
        False,
        200,
        b"ok!!!",
        True,
    ),
    (
        "chunked with trailers",
        CHUNKED + b"A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n",
        False,
        200,
        b"0123456789",
        True,
    ),
    (
        "chunked wins over content-length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        False,
        200,
        b"ok",
        True,
    ),
    (
        "other transfer-coding: until close",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz",
        True,
        200,
        b"zz",
        False,
    ),
    ("100 continue skipped", b"HTTP/1.1 100 Continue\r\n\r\n" + OK, False, 200, b"ok", True),
    (
        "several 1xx skipped",
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK,
        False,
        200,
        b"ok",
        True,
    ),
    (
        "3xx is an answer",
        b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n",
        False,
        302,
        b"",
        True,
    ),
    ("no reason phrase", b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", False, 200, b"ok", True),
    (
        "same content-length twice",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        False,
        200,
        b"ok",
        True,
    ),
    (
        "bytes after the answer spoil the connection",
        OK + b"HTTP/1.1 200 OK\r\n",
        False,
        200,
        b"ok",
        False,
    ),
]


@pytest.mark.parametrize(
    "name,raw,eof,status,excerpt,keep_alive", FINISHED, ids=[c[0] for c in FINISHED]
)
def test_answers_are_read_whole_or_byte_by_byte(name, raw, eof, status, excerpt, keep_alive):
    for pieces in ([raw], [raw[i : i + 1] for i in range(len(raw))]):
        parser = ResponseParser()
        finished = False
        for piece in pieces:
            finished = parser.feed(piece)
        if eof:
            assert not finished
            parser.eof()
        else:
            assert finished
        assert (parser.status, parser.excerpt, parser.keep_alive) == (status, excerpt, keep_alive)


def test_only_a_kib_of_a_long_body_is_read_and_the_connection_not_reused():
    body = b"x" * 5000
    for head in (
        b"HTTP/1.1 500 Oops\r\nContent-Length: 5000\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n",
        b"HTTP/1.1 500 Oops\r\n\r\n",
    ):
        parser = ResponseParser()
        assert not parser.feed(head + body[:600])
        assert parser.feed(body[600:1500])  # the excerpt is full: done, the rest unread
        assert parser.excerpt == body[:1024] and not parser.keep_alive


def test_retry_after_is_kept_as_text():
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 429 Slow Down\r\nRetry-After:  120 \r\nContent-Length: 0\r\n\r\n")
    assert (parser.status, parser.retry_after) == (429, "120")


# (name, answer bytes, eof after them?, error text starts with)
BROKEN = [
    ("nothing at all", b"", True, "the receiver closed the connection without answering"),
    (
        "half a head",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        True,
        "the receiver closed the connection before",
    ),
    (
        "short body",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok",
        True,
        "the receiver closed the connection before",
    ),
    (
        "unfinished chunks",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
        True,
        "the receiver closed",
    ),
    ("not http", b"SSH-2.0-OpenSSH_9.6\r\n\r\n", False, "not an HTTP/1.x status line"),
    ("http/2 preface", b"HTTP/2 200\r\n\r\n", False, "not an HTTP/1.x status line"),
    ("bad status", b"HTTP/1.1 2x0 OK\r\n\r\n", False, "not an HTTP/1.x status line"),
    (
        "bad content-length",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        False,
        "invalid Content-Length",
    ),
    (
        "conflicting content-lengths",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        False,
        "invalid Content-Length",
    ),
    (
        "bad chunk size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        False,
        "invalid chunk size",
    ),
    (
        "no CRLF after a chunk",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n",
        False,
        "invalid chunked body",
    ),
    (
        "endless header",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 40000,
        False,
        "the answer's header is over",
    ),
]


@pytest.mark.parametrize("name,raw,eof,error", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_answers_are_errors_in_words(name, raw, eof, error):
    parser = ResponseParser()
    with pytest.raises(ResponseError) as caught:
        assert not parser.feed(raw)
        assert eof
        parser.eof()
    assert str(caught.value).startswith(error)
