"""Envelope, Message-ID and sha1 from raw messages (pure functions)."""

from __future__ import annotations

import hashlib
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

import pytest

from superimap.sync.envelope import (
    _simple_headers,
    decode_text,
    envelope,
    message_id_or_digest,
    parse_headers,
    sha1_of,
)

RAW = (
    b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
    b"From: =?UTF-8?B?SsO2cmcgTcO8bGxlcg==?= <joerg@example.de>\r\n"
    b'To: a@example.com, "B, Person" <b@example.com>\r\n'
    b"Cc: c@example.com\r\n"
    b"Subject: =?ISO-8859-1?Q?Gr=FC=DFe?= aus Berlin\r\n"
    b"In-Reply-To: <parent@example.de>\r\n"
    b"Message-ID: <abc@example.de>\r\n"
    b"\r\n"
    b"Hello\r\n"
)


def test_it_decodes_rfc2047_subject_and_names():
    env = envelope(parse_headers(RAW))
    assert env["subject"] == "Grüße aus Berlin"
    assert env["from"] == [
        {"name": "Jörg Müller", "route": None, "mailbox": "joerg", "host": "example.de"}
    ]


def test_it_lists_every_address_with_imap_fields():
    env = envelope(parse_headers(RAW))
    assert [a["mailbox"] for a in env["to"]] == ["a", "b"]
    assert env["to"][1]["name"] == "B, Person"
    assert env["cc"][0]["host"] == "example.com"
    assert env["bcc"] is None


def test_it_defaults_sender_and_reply_to_to_from():
    env = envelope(parse_headers(RAW))
    assert env["sender"] == env["from"]
    assert env["reply_to"] == env["from"]


def test_it_keeps_date_message_id_and_in_reply_to():
    env = envelope(parse_headers(RAW))
    assert env["date"] == "Wed, 17 Jul 1996 02:23:25 -0700 (PDT)"
    assert env["message_id"] == "<abc@example.de>"
    assert env["in_reply_to"] == "<parent@example.de>"


def test_it_survives_garbage_headers():
    raw = b"Subject: =?bogus?Q?x?=\r\nFrom: <<<\r\nX-Bad: \xff\xfe\x00\r\n\r\n"
    env = envelope(parse_headers(raw))
    assert env["subject"] == "=?bogus?Q?x?="
    assert env["message_id"] is None


def test_it_stands_in_for_a_missing_message_id_with_the_digest():
    sha1 = sha1_of(b"Subject: x\r\n\r\nbody")
    assert message_id_or_digest({"message_id": None}, sha1) == f"<{sha1}@no-message-id.superimap>"


def test_it_hashes_the_utf8_rfc822_field_even_for_invalid_utf8():
    raw = b"Subject: x\r\n\r\n\xff\xfe"
    expected = hashlib.sha1(raw.decode("utf-8", errors="replace").encode("utf-8")).hexdigest()
    assert sha1_of(raw) == expected


def test_it_replaces_nul_in_a_message_id():
    assert message_id_or_digest({"message_id": "<a\x00b@x>"}, "0" * 40) == "<a\ufffdb@x>"


# --- the fast paths give what the stdlib gives ---------------------------------------------

# Header blocks (as parse_headers cuts them: up to the blank line) that the direct parse
# takes, and those it leaves to the stdlib parser (which notes their defects).
SIMPLE_HEADS = [
    b"",
    b"Subject: x",
    b"Subject: x\r\n",
    b"From: a@b\r\nTo: c@d, e@f\r\nSubject:  two  spaces  \r\nX-Empty:",
    b"Subject: folded\r\n over\r\n\tlines\r\nTo: a@b",
    b"Subject: bare LF\nTo: a@b\n continued",
    b"X-8bit: caf\xc3\xa9\r\nX-Nul: a\x00b\r\nX-Latin: \xe9t\xe9",
    b"Content-Type: multipart/mixed;\r\n boundary=x",
    b"A:b\r\nA: second\r\nFrom: =?utf-8?q?J=C3=B6rg?= <j@x>",
    b"Subject: x\n",
    b"X-Blank:   \r\n folded after blanks\r\nX-Tail: x\r\n \r\n",
    b"X-Tabs:\t \t value\r\n\t\r\nTo: a@b\r\n",
]
LEFT_TO_THE_STDLIB = [
    b" leading continuation\r\nSubject: x",
    b"From someone@example.com Mon Jan 1 00:00:00 2026\r\nSubject: x",
    b"Subject: x\r\nnot a field\r\nTo: y",
    b"Subject: x\r\n: no name",
    b"Sub ject: x",
    b"Subject: bare\rCR",
    b"Subject: x\r\n\r\nTo: after a blank line",
    b"\xe9t\xe9: 8-bit name",
    b"\n",
    b"Subject: x\n\n",
    b"Subject: x\r\n\r\n",
]


def _stdlib(head: bytes):
    return BytesHeaderParser(policy=compat32).parsebytes(head)


def _same(fast, slow) -> bool:
    return (
        fast._headers == slow._headers
        and fast.get_payload() == slow.get_payload()
        and [type(d) for d in fast.defects] == [type(d) for d in slow.defects]
        and fast.get_unixfrom() == slow.get_unixfrom()
        and fast.get_content_type() == slow.get_content_type()
    )


@pytest.mark.parametrize("head", SIMPLE_HEADS)
def test_the_direct_parse_of_plain_fields_is_the_stdlib_parse(head):
    fast = _simple_headers(head)
    assert fast is not None
    assert _same(fast, _stdlib(head))
    assert _same(parse_headers(head + b"\r\n\r\nbody"), _stdlib(head))


@pytest.mark.parametrize("head", LEFT_TO_THE_STDLIB)
def test_anything_else_is_left_to_the_stdlib_parser(head):
    assert _simple_headers(head) is None
    assert _same(
        parse_headers(head),
        _stdlib(head[: head.find(b"\r\n\r\n")] if b"\r\n\r\n" in head else head),
    )


def _stdlib_envelope(raw: bytes) -> dict:
    """The envelope as it was made before the fast paths: the stdlib for every field."""
    end = raw.find(b"\r\n\r\n")
    headers = _stdlib(raw[:end] if end >= 0 else raw)

    def text(value):
        if value is None:
            return None
        try:
            return str(make_header(decode_header(str(value)))).strip()
        except (ValueError, LookupError, UnicodeError, AssertionError):
            return str(value).strip()

    def addresses(name):
        values = headers.get_all(name)
        if not values:
            return None
        found = [
            {
                "name": text(display) or None,
                "route": None,
                "mailbox": (address.rpartition("@")[0] if "@" in address else address) or None,
                "host": (address.rpartition("@")[2] if "@" in address else "") or None,
            }
            for display, address in getaddresses([str(v) for v in values])
            if display or address
        ]
        return found or None

    result = {"date": text(headers.get("Date")), "subject": text(headers.get("Subject"))}
    for key, name in [
        ("from", "From"), ("sender", "Sender"), ("reply_to", "Reply-To"),
        ("to", "To"), ("cc", "Cc"), ("bcc", "Bcc"),
    ]:  # fmt: skip
        result[key] = addresses(name)
    result["sender"] = result["sender"] or result["from"]
    result["reply_to"] = result["reply_to"] or result["from"]
    result["in_reply_to"] = text(headers.get("In-Reply-To"))
    result["message_id"] = text(headers.get("Message-ID"))
    return result


ENVELOPES = [
    RAW,
    b"Subject: =?bogus?Q?x?=\r\nFrom: <<<\r\nX-Bad: \xff\xfe\x00\r\n\r\n",
    b"from: lower@case.example\r\nTO: Upper <u@case.example>\r\nsubject:  padded  \r\n\r\n",
    b"Subject: \xc3\xa9t\xc3\xa9 8-bit\r\nFrom: J\xc3\xb6rg <j@x.example>\r\n\r\n",
    b"To: a@x.example\r\nTo: b@x.example\r\nCc: ,,\r\nBcc: undisclosed-recipients:;\r\n\r\n",
    b"Reply-To: r@x.example\r\nSender: s@x.example\r\nFrom: f@x.example\r\n\r\n",
    b"Subject: folded\r\n =?utf-8?q?caf=C3=A9?=\r\nDate: Mon,\r\n 7 Dec 2026\r\n\r\n",
    b" leading continuation\r\nSubject: x\r\nFrom: a@b\r\n\r\n",
    b"Message-ID: <a@b>\r\nMessage-ID: <second@b>\r\nIn-Reply-To: \r\n\r\n",
]


@pytest.mark.parametrize("raw", ENVELOPES)
def test_the_envelope_is_the_one_the_stdlib_gives(raw):
    assert envelope(parse_headers(raw)) == _stdlib_envelope(raw)
    assert envelope(parse_headers(raw)) == _stdlib_envelope(raw)  # from the address cache


@pytest.mark.parametrize(
    "text",
    ["plain", "  padded  ", "a\tb", "x\r\n y", "=?utf-8?q?caf=C3=A9?=", "a ?= b", "\x00", ""],
)
def test_decode_text_without_encoded_words_is_the_stripped_text(text):
    try:
        expected = str(make_header(decode_header(text))).strip()
    except (ValueError, LookupError, UnicodeError, AssertionError):
        expected = text.strip()
    assert decode_text(text) == expected
