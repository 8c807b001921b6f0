"""The claim reads a row's sha1 from its payload text in Python (queue._sha1) instead of
SQLite's json_extract, which parsed every row's whole payload, the rows the claim skips
too. What it gives must be what json_extract(payload, '$.sha1') gave for every payload:
the string, None when absent (such a row is signed from its decoded payload,
render_request), and other values as json_extract gives them. Compared with the real
SQLite function."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from superimap.delivery import queue
from superimap.delivery.payloads import new_mail_payload

SHA = hashlib.sha1(b"mail").hexdigest()
MAIL = new_mail_payload(
    provider_code="PLAIN",
    user_tag="t",
    raw=b'Subject: "sha1": "0000"\r\n\r\n{"sha1": "not this one"}',
    envelope={"subject": '"sha1": x'},
    uid=1,
    uid_validity=1,
    folder="INBOX",
    internal_date=None,
)

PAYLOADS = [
    json.dumps(MAIL),  # as Django's JSONField stores it: sha1 first
    json.dumps(MAIL, separators=(",", ":")),
    json.dumps({"user_tag": "t", "sha1": SHA}),  # not first: decoded
    json.dumps({"sha1": SHA.upper()}),  # not our hex: decoded, same text
    json.dumps({"sha1": "sha-1"}),  # the tests' short values
    json.dumps({"sha1": None}),
    json.dumps({"sha1": 7}),
    json.dumps({"sha1": ["a", {"b": 1}]}),
    json.dumps({"sha1": True}),
    json.dumps({"sha1": 1.5}),
    json.dumps({"user_tag": "t"}),
    json.dumps({"user_tag": '"sha1": "' + SHA + '"'}),  # only inside a string
    json.dumps({"nested": {"sha1": SHA}}),  # only in a nested object
    json.dumps({"nested": {"sha1": SHA}, "sha1": "top"}),
    json.dumps([{"sha1": SHA}]),  # not an object
    '  {  "sha1" :  "' + SHA + '" , "a": 1}',
    "{}",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_sha1_read_in_python_is_what_json_extract_gave(payload):
    with sqlite3.connect(":memory:") as db:
        (expected,) = db.execute("SELECT json_extract(?, '$.sha1')", [payload]).fetchone()
    assert queue._sha1(payload) == expected


def test_a_stored_payloads_sha1_is_read_from_its_head():
    assert queue._LEADING_SHA1.match(json.dumps(MAIL)).group(1) == MAIL["sha1"]
