"""Filters before the webhook (sync/filters.py) without I/O: each row of MATCHES is a filter
list, a message and the name of the filter that selects it (None: filtered); each row of
INVALID is a value the API and the dashboard refuse, and where they say it is wrong."""

from __future__ import annotations

import json

import pytest

from superimap.sync.envelope import envelope, parse_headers
from superimap.sync.filters import (
    Facts,
    FilterError,
    compile_filters,
    effective,
    first_match,
    parse_filters,
)

PLAIN = (
    b"From: Bill <Bill@Shop.Example>\r\n"
    b"To: a@one.example, b@two.example\r\n"
    b"Cc: Carol <carol@cc.example>\r\n"
    b"Delivered-To: inbox+sales@corp.example\r\n"
    b"Subject: =?utf-8?q?Your_Invoice_n=C2=B012?=\r\n"
    b"Content-Type: text/plain\r\n\r\nhello\r\n"
)
ATTACHED = (
    b"From: x@y.example\r\nSubject: report\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
    b'--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="r.pdf"\r\n'
    b"\r\nJVBERi0=\r\n--b--\r\n"
)
# multipart/mixed without a filename or an attachment disposition: no attachment.
MIXED_INLINE = ATTACHED.replace(b'Content-Disposition: attachment; filename="r.pdf"\r\n', b"")
HEADER_OF_ATTACHED = ATTACHED[: ATTACHED.index(b"\r\n\r\n") + 4]


def facts(raw: bytes, folder: str = "INBOX", whole: bool = True) -> Facts:
    headers = parse_headers(raw)
    return Facts(envelope(headers), headers, folder, len(raw), raw, whole)


def f(**conditions) -> dict:
    return {"name": conditions.pop("name", "f"), **conditions}


# (id, filters, message facts, expected: the selecting filter's name or None)
MATCHES = [
    ("from an address, any case", [f(**{"from": "bill@shop.example"})], facts(PLAIN), "f"),
    ("from a domain", [f(**{"from": "@SHOP.example"})], facts(PLAIN), "f"),
    ("from a domain is that domain, not a parent", [f(**{"from": "@example"})], facts(PLAIN), None),
    ("from another address", [f(**{"from": "bob@shop.example"})], facts(PLAIN), None),
    (
        "a list: any of its values",
        [f(**{"from": ["no@x.example", "@shop.example"]})],
        facts(PLAIN),
        "f",
    ),
    ("to: any address of the header", [f(to="@two.example")], facts(PLAIN), "f"),
    ("cc", [f(cc="carol@cc.example")], facts(PLAIN), "f"),
    ("cc is not to", [f(to="carol@cc.example")], facts(PLAIN), None),
    ("delivered-to", [f(delivered_to="inbox+sales@corp.example")], facts(PLAIN), "f"),
    ("delivered-to a domain", [f(delivered_to="@corp.example")], facts(PLAIN), "f"),
    ("delivered-to absent", [f(delivered_to="@corp.example")], facts(ATTACHED), None),
    (
        "subject contains, decoded, any case",
        [f(subject_contains="INVOICE N°12")],
        facts(PLAIN),
        "f",
    ),
    ("subject does not contain", [f(subject_contains="receipt")], facts(PLAIN), None),
    ("folder", [f(folder="Work")], facts(PLAIN, "Work"), "f"),
    ("folder names are exact", [f(folder="work")], facts(PLAIN, "Work"), None),
    ("INBOX in any case", [f(folder="inbox")], facts(PLAIN, "INBOX"), "f"),
    ("min size inclusive", [f(min_size=len(PLAIN))], facts(PLAIN), "f"),
    ("under min size", [f(min_size=len(PLAIN) + 1)], facts(PLAIN), None),
    ("max size inclusive", [f(max_size=len(PLAIN))], facts(PLAIN), "f"),
    ("over max size", [f(max_size=len(PLAIN) - 1)], facts(PLAIN), None),
    ("has attachments", [f(has_attachments=True)], facts(ATTACHED), "f"),
    ("has none", [f(has_attachments=True)], facts(PLAIN), None),
    ("mixed without a file has none", [f(has_attachments=True)], facts(MIXED_INLINE), None),
    ("has_attachments false selects mail without", [f(has_attachments=False)], facts(PLAIN), "f"),
    (
        "header only: a multipart/mixed top counts",
        [f(has_attachments=True)],
        facts(HEADER_OF_ATTACHED, whole=False),
        "f",
    ),
    (
        "conditions AND: all hold",
        [f(**{"from": "@shop.example"}, subject_contains="invoice")],
        facts(PLAIN),
        "f",
    ),
    (
        "conditions AND: one fails",
        [f(**{"from": "@shop.example"}, subject_contains="receipt")],
        facts(PLAIN),
        None,
    ),
    (
        "filters OR: the first that matches names it",
        [f(name="a", to="z@z.example"), f(name="b", cc="@cc.example"), f(name="c", min_size=0)],
        facts(PLAIN),
        "b",
    ),
    (
        "filters OR: none matches",
        [f(name="a", to="z@z.example"), f(name="b", max_size=1)],
        facts(PLAIN),
        None,
    ),
]


@pytest.mark.parametrize(
    ("filters", "message", "expected"),
    [case[1:] for case in MATCHES],
    ids=[case[0] for case in MATCHES],
)
def test_which_filter_selects_a_message(filters, message, expected):
    assert first_match(parse_filters(filters), message) == expected


# (id, value, where the answer says it is wrong)
INVALID = [
    ("not a list", {"name": "a"}, "filters"),
    ("a filter not an object", ["from"], "filters[0]"),
    (
        "an unknown field",
        [f(**{"from": "@a.example", "sender": "x@y.example"})],
        "filters[0].sender",
    ),
    ("no name", [{"from": "@a.example"}], "filters[0].name"),
    ("an empty name", [f(name=" ", to="@a.example")], "filters[0].name"),
    ("no condition", [f()], "filters[0]"),
    ("a bad address", [f(to="not an address")], "filters[0].to"),
    ("a bad address in a list", [f(cc=["a@b.example", "nobody"])], "filters[0].cc[1]"),
    ("two @", [f(to="a@b@c.example")], "filters[0].to"),
    ("an empty list", [f(to=[])], "filters[0].to"),
    ("a negative size", [f(min_size=-1)], "filters[0].min_size"),
    ("a size as text", [f(max_size="10")], "filters[0].max_size"),
    ("a size as bool", [f(max_size=True)], "filters[0].max_size"),
    ("max below min", [f(min_size=10, max_size=9)], "filters[0].max_size"),
    ("has_attachments not bool", [f(has_attachments="yes")], "filters[0].has_attachments"),
    (
        "a repeated name",
        [f(name="a", to="@a.example"), f(name="A", to="@b.example")],
        "filters[1].name",
    ),
    ("too many", [f(name=str(i), to="@a.example") for i in range(51)], "filters"),
]


@pytest.mark.parametrize(
    ("value", "where"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_a_bad_filter_list_is_refused_naming_the_place(value, where):
    with pytest.raises(FilterError) as caught:
        parse_filters(value)
    assert caught.value.where == where


def test_a_good_filter_list_is_normalised():
    (one,) = parse_filters(
        [f(name=" vip ", **{"from": "Boss@Corp.Example"}, subject_contains="URGENT", folder="A")]
    )
    assert (one.name, one.from_, one.subject_contains, one.folder) == (
        "vip",
        ("boss@corp.example",),
        ("urgent",),
        ("A",),
    )
    assert parse_filters(None) == () and parse_filters([]) == ()


STORED = [f(name="shop", **{"from": "@shop.example"})]


@pytest.mark.parametrize(
    ("user", "connection", "expected"),
    [
        (None, None, ()),
        (None, STORED, ("shop",)),
        (None, json.dumps(STORED), ("shop",)),  # SQLite hands the JSON text
        ([f(name="mine", to="@a.example")], STORED, ("mine",)),  # the user's win
        ([], STORED, ()),  # the user's empty list, set: everything
        ("[]", json.dumps(STORED), ()),
        ("null", json.dumps(STORED), ("shop",)),  # JSON null: not set
        ('[{"bad": 1}]', None, ()),  # a hand-edited row that no longer checks
    ],
)
def test_the_filters_in_force(user, connection, expected):
    assert tuple(x.name for x in effective(user, connection)) == expected


def test_a_stored_value_is_compiled_once():
    text = json.dumps(STORED)
    assert compile_filters(text) is compile_filters(text)
