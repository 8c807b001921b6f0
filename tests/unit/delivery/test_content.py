"""include_parsed on a corpus of awkward MIME: every message parses without raising, and
what can be read is read. The messages are bytes as they arrive from IMAP servers."""

from __future__ import annotations

import pytest

from superimap.delivery.content import parse_content, with_content_options
from tests.helpers.messages import NESTED, WINMAIL, msg

SIMPLE = msg("Subject: hi", "Content-Type: text/plain; charset=utf-8", "", "Hello wörld")


BROKEN_BOUNDARY = msg(
    "Subject: broken",
    'Content-Type: multipart/mixed; boundary="declared"',
    "",
    "--actual",
    "Content-Type: text/plain",
    "",
    "text that sits behind the wrong boundary",
    "--actual--",
)

NO_END_BOUNDARY = msg(
    "Subject: truncated",
    'Content-Type: multipart/alternative; boundary="b"',
    "",
    "--b",
    "Content-Type: text/plain",
    "",
    "the plain part",
    "--b",
    "Content-Type: text/html",
    "",
    "<p>cut off mid-way",
)

EIGHT_BIT_HEADERS = msg(
    "Subject: Grüße aus Köln".encode("latin-1"),
    "From: Jürgen <j@example.test>".encode("latin-1"),
    'Content-Type: text/plain; name="caf\xe9.txt"'.encode("latin-1"),
    "",
    "body",
)


HTML_ONLY = msg(
    "Subject: html only",
    "Content-Type: text/html; charset=utf-8",
    "",
    "<html><body><b>only html</b></body></html>",
)

CHARSET_LIES = msg(
    "Subject: lies",
    'Content-Type: multipart/alternative; boundary="c"',
    "",
    "--c",
    "Content-Type: text/plain; charset=us-ascii",  # actually UTF-8
    "Content-Transfer-Encoding: 8bit",
    "",
    "Tschüss".encode(),
    "--c",
    "Content-Type: text/html; charset=no-such-charset",  # actually Latin-1
    "Content-Transfer-Encoding: 8bit",
    "",
    "<p>Tschüss</p>".encode("latin-1"),
    "--c--",
)

BAD_BASE64 = msg(
    "Subject: bad base64",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: base64",
    "",
    "SGVsbG8gd2*^!!9ybGQ=",
)

GARBAGE_HEADERS = msg(
    "Subject: =?utf-8?B?broken?=",
    "Content-Type: multipart/mixed; boundary=",
    "Content-Disposition: attachment; filename*=utf-8''%ZZ%",
    "",
    "\x00\x01 binary garbage \xff",
)

NOT_MIME_AT_ALL = b"\x00\xff\xfe garbage without headers \r\n\r\n\x00"

CORPUS = {
    "simple": SIMPLE,
    "nested": NESTED,
    "broken_boundary": BROKEN_BOUNDARY,
    "no_end_boundary": NO_END_BOUNDARY,
    "eight_bit_headers": EIGHT_BIT_HEADERS,
    "winmail": WINMAIL,
    "html_only": HTML_ONLY,
    "charset_lies": CHARSET_LIES,
    "bad_base64": BAD_BASE64,
    "garbage_headers": GARBAGE_HEADERS,
    "not_mime": NOT_MIME_AT_ALL,
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_it_never_raises_and_always_has_the_same_shape(name):
    parsed = parse_content(CORPUS[name], max_chars=10_000)
    assert set(parsed) == {
        "text",
        "text_truncated",
        "html",
        "html_truncated",
        "attachments",
        "parse_defects",
    }
    for key in ("text", "html"):
        assert parsed[key] is None or (isinstance(parsed[key], str) and "\x00" not in parsed[key])
    for attachment in parsed["attachments"]:
        assert set(attachment) == {"filename", "content_type", "size", "content_id", "disposition"}
        assert isinstance(attachment["size"], int)


def test_it_reads_nested_multiparts():
    parsed = parse_content(NESTED, max_chars=10_000)
    assert parsed["text"].strip() == "plain body"
    assert parsed["html"].strip() == "<p>html body <img src=cid:logo@x></p>"
    assert parsed["attachments"] == [
        {
            "filename": None,
            "content_type": "image/png",
            "size": 100,
            "content_id": "<logo@x>",
            "disposition": "inline",
        },
        {
            "filename": "report.pdf",
            "content_type": "application/pdf",
            "size": 1008,
            "content_id": None,
            "disposition": "attachment",
        },
        {
            "filename": None,
            "content_type": "message/rfc822",
            "size": parsed["attachments"][2]["size"],
            "content_id": None,
            "disposition": None,
        },
    ]
    assert parsed["attachments"][2]["size"] > 0
    assert parsed["parse_defects"] == []


def test_it_flags_a_broken_boundary_and_keeps_what_it_can():
    parsed = parse_content(BROKEN_BOUNDARY, max_chars=10_000)
    assert "StartBoundaryNotFoundDefect" in parsed["parse_defects"]
    assert "text that sits behind the wrong boundary" in parsed["text"]
    assert parsed["attachments"] == []


def test_it_reads_parts_before_a_missing_end_boundary():
    parsed = parse_content(NO_END_BOUNDARY, max_chars=10_000)
    assert parsed["text"].strip() == "the plain part"
    assert "cut off mid-way" in parsed["html"]
    assert "CloseBoundaryNotFoundDefect" in parsed["parse_defects"]


def test_it_survives_8_bit_headers():
    parsed = parse_content(EIGHT_BIT_HEADERS, max_chars=10_000)
    assert parsed["text"].strip() == "body"


def test_it_lists_winmail_dat_as_an_attachment():
    parsed = parse_content(WINMAIL, max_chars=10_000)
    assert parsed["text"].strip() == "See attached."
    assert parsed["attachments"] == [
        {
            "filename": "winmail.dat",
            "content_type": "application/ms-tnef",
            "size": 204,
            "content_id": None,
            "disposition": "attachment",
        }
    ]


def test_it_gives_html_only_mail_no_text():
    parsed = parse_content(HTML_ONLY, max_chars=10_000)
    assert parsed["text"] is None
    assert "<b>only html</b>" in parsed["html"]
    assert parsed["attachments"] == []


def test_it_sees_through_charset_lies():
    parsed = parse_content(CHARSET_LIES, max_chars=10_000)
    assert parsed["text"].strip() == "Tschüss"
    assert parsed["html"].strip() == "<p>Tschüss</p>"
    assert "charset: declared us-ascii, decoded as utf-8" in parsed["parse_defects"]
    assert "charset: declared no-such-charset, decoded as cp1252" in parsed["parse_defects"]


def test_it_keeps_what_bad_base64_gives():
    parsed = parse_content(BAD_BASE64, max_chars=10_000)
    assert isinstance(parsed["text"], str)
    assert parsed["parse_defects"]


def test_it_caps_text_and_html_with_flags():
    long = msg(
        'Content-Type: multipart/alternative; boundary="x"',
        "",
        "--x",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "é" * 5000,
        "--x",
        "Content-Type: text/html",
        "",
        "<p>short</p>",
        "--x--",
    )
    parsed = parse_content(long, max_chars=1000)
    assert parsed["text"] == "é" * 1000 and parsed["text_truncated"] is True
    assert parsed["html"].strip() == "<p>short</p>" and parsed["html_truncated"] is False


def test_content_options_drop_rfc822_or_add_parsed():
    payload = {"sha1": "s", "rfc822": "raw", "rfc822_base64": "cmF3", "uid": 1}
    assert (
        with_content_options(
            payload, SIMPLE, include_rfc822=True, include_parsed=False, max_chars=1000
        )
        == payload
    )
    only_parsed = with_content_options(
        payload, SIMPLE, include_rfc822=False, include_parsed=True, max_chars=1000
    )
    assert "rfc822" not in only_parsed and "rfc822_base64" not in only_parsed
    assert only_parsed["sha1"] == "s" and only_parsed["text"] == "Hello wörld"
    assert payload["rfc822"] == "raw"  # the input is not changed
