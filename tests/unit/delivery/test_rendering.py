"""The worker appends the per-send fields to the payload's stored JSON text instead of
decoding and re-encoding it (http.render_stored_request): the body must be the same JSON
as the full encoding, with both signatures valid, whatever the stored text looks like."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from devtools.testing.webhook_receiver import verify_spec_signature, verify_standard_webhook
from superimap.delivery.http import render_request, render_stored_request
from superimap.partners.models import new_webhook_secret

API_KEY = "key-" + "k" * 36
SECRETS = (new_webhook_secret(), new_webhook_secret())
PAYLOAD = {
    "sha1": "ab" * 20,
    "user_tag": "t\u00e9g \u2603",
    "rfc822": 'Subject: "signature" \\ quoted\r\n\r\nCaf\u00e9 \U0001f600\r\n',
    "envelope": {"subject": "x", "to": [{"mailbox": "a", "host": "b"}]},
    "uid": 7,
    "internal_date": None,
}


def render(stored: str, sha1: str | None, **kwargs):
    return render_stored_request(
        stored,
        sha1,
        event_id=kwargs.get("event_id", str(uuid.uuid4())),
        kind=kwargs.get("kind", "new_mail"),
        api_key=API_KEY,
        webhook_secrets=SECRETS,
        timestamp=int(time.time()),
    )


def assert_valid(raw: bytes, headers: dict, expected: dict) -> dict:
    body = json.loads(raw)
    assert {
        k: v for k, v in body.items() if k not in {"event_id", "event", "timestamp", "signature"}
    } == expected
    assert verify_spec_signature(body, API_KEY)
    assert all(verify_standard_webhook(headers, raw, secret) for secret in SECRETS)
    return body


@pytest.mark.parametrize(
    "stored",
    [
        json.dumps(PAYLOAD),  # how Django's JSONField writes it on SQLite (ASCII escapes)
        json.dumps(PAYLOAD, ensure_ascii=False, separators=(",", ":")),
        json.dumps(PAYLOAD, indent=2) + "\n",  # whitespace before the closing brace
    ],
)
def test_it_appends_the_send_fields_to_the_stored_text(stored):
    event_id = str(uuid.uuid4())
    raw, headers = render(stored, PAYLOAD["sha1"], event_id=event_id)
    body = assert_valid(raw, headers, PAYLOAD)
    assert (body["event_id"], body["event"]) == (event_id, "new_mail")
    assert raw.startswith(stored.rstrip()[:-1].rstrip().encode())  # the stored text, not re-encoded


def test_an_empty_object_gets_no_leading_comma():
    raw, headers = render("{}", "ab" * 20)
    body = json.loads(raw)
    assert list(body) == ["event_id", "event", "timestamp", "signature"]
    assert verify_spec_signature({**body, "sha1": "ab" * 20}, API_KEY)


@pytest.mark.parametrize("key", ["event_id", "event", "timestamp", "signature"])
def test_a_payload_holding_a_send_key_is_encoded_whole_and_the_send_value_wins(key):
    payload = {**PAYLOAD, key: "stored"}
    raw, headers = render(json.dumps(payload), PAYLOAD["sha1"])
    body = json.loads(raw)
    assert body[key] != "stored"
    assert raw.count(f'"{key}"'.encode()) == 1  # one key, not a duplicate
    assert verify_spec_signature(body, API_KEY)


def test_without_a_stored_sha1_it_falls_back_to_the_full_encoding():
    stored = json.dumps(PAYLOAD)
    raw, headers = render(stored, None, event_id="e1")
    expected, _ = render_request(
        PAYLOAD,
        event_id="e1",
        kind="new_mail",
        api_key=API_KEY,
        webhook_secrets=SECRETS,
        timestamp=json.loads(raw)["timestamp"],
    )
    assert raw == expected


def test_the_kind_is_json_quoted():
    raw, headers = render(json.dumps(PAYLOAD), PAYLOAD["sha1"], kind='we"ird')
    assert json.loads(raw)["event"] == 'we"ird'
