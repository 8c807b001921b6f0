"""Envelope, Message-ID and sha1 from raw messages (pure functions)."""

from __future__ import annotations

import hashlib

from superimap.sync.envelope import envelope, message_id_or_digest, parse_headers, sha1_of

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
