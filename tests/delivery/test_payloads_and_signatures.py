"""What arrives at the receiver: spec payload fields and both signatures (spec "Webhooks",
"Webhook Security"; design.md section 5)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from django.utils import timezone

from devtools.testing.webhook_receiver import verify_spec_signature, verify_standard_webhook
from superimap.delivery import outbox
from superimap.delivery.models import Delivery, DeliveryAttempt
from superimap.delivery.payloads import new_mail_payload
from superimap.engine import writer
from superimap.sync.changes import Observed
from superimap.sync.envelope import envelope, parse_headers
from superimap.sync.persist import FetchedMessage
from tests.helpers.delivery import make_partner, make_user

UTF8_MAIL = (
    "From: =?utf-8?q?Ren=C3=A9e?= <renee@example.com>\r\n"
    "To: Bob <bob@example.org>, carol@example.net\r\n"
    "Subject: =?utf-8?b?SMOpbGxvIOKYgw==?=\r\n"
    "Message-ID: <m1@example.com>\r\n"
    "Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
    "\r\n"
    "Caf\u00e9 \u2603 \U0001f600\r\n"
).encode()
LATIN1_MAIL = (
    b"From: a@example.com\r\nSubject: latin\r\nMessage-ID: <m2@example.com>\r\n\r\n"
    b"Caf\xe9 na\xefve\r\n"
)
NUL_MAIL = b"From: a@example.com\r\nSubject: nul\r\nMessage-ID: <m3@example.com>\r\n\r\na\x00b\r\n"


def new_mail(user, raw: bytes, uid: int = 1) -> Delivery:
    env = envelope(parse_headers(raw))
    payload = new_mail_payload(
        provider_code=user.connection.provider.code,
        user_tag=user.tag,
        raw=raw,
        envelope=env,
        uid=uid,
        uid_validity=7,
        folder="INBOX",
        internal_date="2025-06-02T10:00:00+00:00",
    )
    return outbox.enqueue(Delivery.Kind.NEW_MAIL, user, payload, message_id=env["message_id"])


def assert_signed(event, partner, delivery: Delivery) -> dict:
    body = event.json
    assert event.valid_spec_signature is True
    assert event.valid_standard_signature is True
    # Recompute both independently of the receiver's helpers.
    expected = hmac.new(
        partner.api_key.encode(), f"{body['timestamp']}{body['sha1']}".encode(), hashlib.sha256
    ).hexdigest()
    assert body["signature"] == expected
    key = base64.b64decode(partner.webhook_secret.removeprefix("whsec_"))
    signed = f"{event.headers['webhook-id']}.{event.headers['webhook-timestamp']}.".encode()
    digest = hmac.new(key, signed + event.body, hashlib.sha256).digest()
    assert event.headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()
    assert body["event_id"] == event.headers["webhook-id"] == str(delivery.event_id)
    assert body["event"] == delivery.kind
    assert isinstance(body["timestamp"], int) and abs(body["timestamp"] - time.time()) < 60
    assert event.headers["webhook-timestamp"] == str(body["timestamp"])
    assert event.headers["Content-Type"].startswith("application/json")
    assert event.headers["User-Agent"].startswith("SuperIMAP/")
    # Wrong keys do not verify: the checks above are not vacuous.
    assert not verify_spec_signature(body, partner.api_key + "x")
    other = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert not verify_standard_webhook(event.headers, event.body, other)
    return body


@pytest.mark.parametrize(
    ("raw", "exact_bytes_expected"),
    [(UTF8_MAIL, False), (LATIN1_MAIL, True), (NUL_MAIL, True)],
    ids=["utf8", "invalid-utf8", "nul-byte"],
)
def test_new_mail_arrives_signed_with_spec_fields(
    seeded_providers, make_receiver, process, raw, exact_bytes_expected
):
    receiver = make_receiver()
    partner = make_partner(receiver.url)
    receiver.receiver.api_key = partner.api_key
    receiver.receiver.whsec_secret = partner.webhook_secret
    user = make_user(partner)
    delivery = new_mail(user, raw)

    assert process() == 1
    [event] = receiver.wait_for(1)
    assert event.method == "POST" and event.path == "/new-mail"
    body = assert_signed(event, partner, delivery)

    assert body["imap_provider_code"] == "PLAIN"
    assert body["user_tag"] == user.tag
    assert body["sha1"] == hashlib.sha1(body["rfc822"].encode("utf-8")).hexdigest()
    assert body["uid"] == 1 and body["uid_validity"] == 7 and body["folder"] == "INBOX"
    env = body["envelope"]
    for key in ("date", "subject", "from", "sender", "reply_to", "to", "cc", "bcc"):
        assert key in env
    assert "in_reply_to" in env and "message_id" in env
    if exact_bytes_expected:
        assert base64.b64decode(body["rfc822_base64"]) == raw
        assert "\x00" not in body["rfc822"]
    else:
        assert "rfc822_base64" not in body
        assert body["rfc822"] == raw.decode("utf-8")
        assert env["subject"] == "H\u00e9llo \u2603"
        assert env["message_id"] == "<m1@example.com>"
        assert env["to"][0]["mailbox"] == "bob" and env["to"][0]["host"] == "example.org"
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DELIVERED and delivery.delivered_at is not None
    [attempt] = DeliveryAttempt.objects.filter(delivery=delivery)
    assert attempt.number == 1 and attempt.status_code == 200 and attempt.response_excerpt == "OK"
    assert attempt.url == f"{receiver.url}/new-mail"


def test_user_connected_and_disconnected(seeded_providers, make_receiver, process):
    receiver = make_receiver()
    partner = make_partner(receiver.url)
    receiver.receiver.api_key = partner.api_key
    receiver.receiver.whsec_secret = partner.webhook_secret
    user = make_user(partner)
    connected = outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, user)
    disconnected = outbox.enqueue_user_event(Delivery.Kind.USER_DISCONNECTED, user)

    assert process() == 2
    events = {e.path: e for e in receiver.wait_for(2)}
    body = assert_signed(events["/connected"], partner, connected)
    assert body["email"] == user.email
    assert body["user_tag"] == user.tag
    assert body["sha1"] == hashlib.sha1(user.tag.encode()).hexdigest()
    assert body["imap_provider_code"] == "PLAIN"
    body = assert_signed(events["/disconnected"], partner, disconnected)
    assert "email" not in body
    assert body["user_tag"] == user.tag
    assert body["sha1"] == hashlib.sha1(user.tag.encode()).hexdigest()
    assert set(Delivery.objects.values_list("status", flat=True)) == {"delivered"}


def test_user_error_and_user_recovered_are_signed_to_their_own_urls(
    seeded_providers, make_receiver, process
):
    receiver = make_receiver()
    partner = make_partner(
        receiver.url,
        user_error_webhook=f"{receiver.url}/error",
        user_recovered_webhook=f"{receiver.url}/recovered",
    )
    receiver.receiver.api_key = partner.api_key
    receiver.receiver.whsec_secret = partner.webhook_secret
    user = make_user(partner, failing_since=timezone.now())
    error = outbox.enqueue_user_error(user, "auth_failed", "login refused: [AUTHENTICATIONFAILED]")
    recovered = outbox.enqueue_user_recovered(user, "idle")

    assert process() == 2
    events = {e.path: e for e in receiver.wait_for(2)}
    body = assert_signed(events["/error"], partner, error)
    assert body["event"] == "user_error"
    assert body["status"] == "auth_failed"
    assert body["error"] == "login refused: [AUTHENTICATIONFAILED]"
    assert body["failing_since"] == user.failing_since.isoformat()
    assert body["sha1"] == hashlib.sha1(user.tag.encode()).hexdigest()
    assert body["user_tag"] == user.tag and body["imap_provider_code"] == "PLAIN"
    body = assert_signed(events["/recovered"], partner, recovered)
    assert body["event"] == "user_recovered" and body["status"] == "idle"
    assert body["failing_since"] == user.failing_since.isoformat()


def test_a_partner_without_a_user_error_url_gets_skipped_deliveries(seeded_providers):
    partner = make_partner("http://127.0.0.1:9")
    user = make_user(partner)
    error = outbox.enqueue_user_error(user, "tls_failed", "certificate check failed")
    assert error.status == Delivery.Status.SKIPPED
    assert error.last_error == "partner has no user_error webhook URL"


def test_each_send_is_signed_with_a_fresh_timestamp(seeded_providers, make_receiver, process):
    """Retries carry the send time, re-signed, and the same event_id for dedupe."""
    receiver = make_receiver(responses=[(500, "no")])
    partner = make_partner(receiver.url)
    receiver.receiver.api_key = partner.api_key
    receiver.receiver.whsec_secret = partner.webhook_secret
    delivery = outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, make_user(partner))
    process()
    Delivery.objects.filter(id=delivery.id).update(next_attempt_at=delivery.next_attempt_at)
    time.sleep(1.1)  # a new wall-clock second for the signature timestamp, not for the retry
    process()
    first, second = receiver.wait_for(2)
    assert first.json["event_id"] == second.json["event_id"] == str(delivery.event_id)
    assert second.json["timestamp"] > first.json["timestamp"]
    assert first.valid_spec_signature and second.valid_spec_signature
    assert first.valid_standard_signature and second.valid_standard_signature


def test_change_events_are_signed_to_their_own_urls_in_order(
    seeded_providers, make_receiver, process
):
    receiver = make_receiver()
    partner = make_partner(
        receiver.url,
        message_updated_webhook=f"{receiver.url}/updated",
        message_deleted_webhook=f"{receiver.url}/deleted",
    )
    receiver.receiver.api_key = partner.api_key
    receiver.receiver.whsec_secret = partner.webhook_secret
    user = make_user(partner, owner_node="n1", uid_validity=7)
    message = FetchedMessage(1, len(UTF8_MAIL), timezone.now(), UTF8_MAIL)
    writer.persist_batch(user.id, "n1", 7, "INBOX", [message])

    def look(seen, gone=()):
        return writer.write_changes(writer.ChangeJob(user.id, "n1", "INBOX", 7, seen, list(gone)))

    assert look([Observed(1, "")]) == 0  # first seen: its flags at delivery
    assert look([Observed(1, "\\Answered \\Seen")]) == 1
    assert look([], gone=[1]) == 1
    sent = 0
    for _ in range(3):  # each event waits for the one before it (per-user order)
        sent += process()
    assert sent == 3
    events = receiver.wait_for(3)
    assert [e.path for e in events] == ["/new-mail", "/updated", "/deleted"]
    deliveries = list(Delivery.objects.filter(user=user).order_by("id"))
    new, updated, deleted = (
        assert_signed(e, partner, d) for e, d in zip(events, deliveries, strict=True)
    )
    assert updated["event"] == "message_updated" and deleted["event"] == "message_deleted"
    assert updated["old_flags"] == [] and updated["new_flags"] == ["\\Answered", "\\Seen"]
    assert deleted["flags"] == ["\\Answered", "\\Seen"]
    for body in (updated, deleted):
        assert body["new_mail_event_id"] == new["event_id"]
        assert body["message_id"] == "<m1@example.com>"
        assert (body["uid"], body["uid_validity"], body["folder"]) == (1, 7, "INBOX")
        assert body["user_tag"] == user.tag
