"""persist_batch's rule at the database: every UID ends in exactly one state, dedup is on
what is really the same message, and a backfill may still send mail skipped as older."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.delivery.payloads import message_url, truncated_mail_payload
from superimap.engine import store, writer
from superimap.mailboxes.models import MailboxUser, MailLog
from superimap.sync.backfill import BackfillStep
from superimap.sync.persist import FetchedMessage, PersistResult
from tests.helpers.engine import loopback_connection

NODE = "n1"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def user(mail_partner) -> MailboxUser:
    # Connected: persist_batch discards a batch for a user that is not (nothing after the
    # user leaves, tests/engine/test_user_leaves.py).
    return MailboxUser.objects.create(
        connection=loopback_connection(mail_partner, 1),
        tag="u",
        owner_node=NODE,
        connected_at=WHEN,
    )


def persist(user, *messages: FetchedMessage, backfill: bool = False) -> PersistResult:
    step = BackfillStep(WHEN, max(m.uid for m in messages), len(messages)) if backfill else None
    return writer.persist_batch(user.id, NODE, 9, "INBOX", list(messages), step)


def whole(uid: int, raw: bytes) -> FetchedMessage:
    return FetchedMessage(uid=uid, size=len(raw), internal_date=WHEN, raw=raw)


def header_only(uid: int, raw: bytes, skip: str = "") -> FetchedMessage:
    head = raw[: raw.index(b"\r\n\r\n") + 4]
    return FetchedMessage(
        uid=uid, size=len(raw), internal_date=WHEN, raw=None, header=head, skip=skip
    )


def test_each_uid_ends_in_one_state_even_when_persisted_twice(user):
    raw = make_message("one", "a@x.test", "b@x.test", "body", "<one@t>")
    gone = FetchedMessage(uid=2, size=50, internal_date=None, raw=None, skip="expunged")
    first = persist(user, whole(1, raw), gone)
    again = persist(user, whole(1, raw), gone)  # a re-fetch after a crash
    assert (first.new, first.skips) == (1, {"expunged": 1})
    assert (again.new, again.skipped) == (0, 0)
    assert MailLog.objects.filter(user=user).count() == 2
    assert Delivery.objects.filter(user=user, kind="new_mail").count() == 1
    assert MailboxUser.objects.get(id=user.id).last_uid == 2


def test_dedup_is_on_sha1_or_message_id_size_and_date(user):
    first = make_message("one", "a@x.test", "b@x.test", "body", "<same@t>")
    longer = make_message("one", "a@x.test", "b@x.test", "a longer body", "<same@t>")
    twin = first.replace(b"body", b"BODY")  # same Message-ID, size and Date
    result = persist(user, whole(1, first), whole(2, first), whole(3, longer), whole(4, twin))
    assert result.new == 2 and result.skips == {"duplicate": 2}
    reasons = dict(MailLog.objects.filter(user=user).values_list("uid", "skipped_reason"))
    assert reasons == {1: "", 2: "duplicate", 3: "", 4: "duplicate"}


def test_a_skipped_message_is_no_dedup_reference(user):
    raw = make_message("one", "a@x.test", "b@x.test", "body", "<one@t>")
    persist(user, header_only(1, raw, skip="before_baseline"))
    result = persist(user, whole(2, raw))  # the same message again, never delivered
    assert result.new == 1


def test_a_backfill_sends_mail_skipped_as_before_baseline(user):
    raw = make_message("old", "a@x.test", "b@x.test", "body", "<old@t>")
    persist(user, header_only(1, raw, skip="before_baseline"))
    assert store.recorded_uids(user.id, 9, [1], "INBOX") == set()
    assert persist(user, whole(1, raw)).new == 0  # a catch-up leaves it skipped
    assert persist(user, whole(1, raw), backfill=True).new == 1
    row = MailLog.objects.get(user=user, uid=1)
    assert row.skipped_reason == "" and row.subject == "old"
    assert store.recorded_uids(user.id, 9, [1], "INBOX") == {1}


def test_mail_over_the_limit_is_delivered_truncated(user, settings):
    settings.PUBLIC_URL = "https://h.example"
    raw = make_message("big", "a@x.test", "b@x.test", "x" * 5000, "<big@t>")
    result = persist(user, header_only(7, raw))
    assert result.new == 1 and result.truncated == 1 and not result.skips
    payload = Delivery.objects.get(user=user).payload
    assert payload["truncated"] is True and payload["size"] == len(raw)
    assert (
        payload["rfc822_url"]
        == "https://h.example/api/v1/connections/LOOPBACK_PLAIN/users/u/messages/9/7?folder=INBOX"
    )


def test_the_message_url_quotes_the_tag(settings):
    settings.PUBLIC_URL = "https://h.example"
    url = message_url("PLAIN", "a?b#c%d", 5, 7)
    assert url == "https://h.example/api/v1/connections/PLAIN/users/a%3Fb%23c%25d/messages/5/7"
    payload = truncated_mail_payload(
        provider_code="PLAIN",
        user_tag="t",
        header=b"Subject: x\r\n\r\n",
        envelope={"subject": "x"},
        size=10,
        uid=7,
        uid_validity=5,
        folder="INBOX",
        internal_date=None,
    )
    assert "rfc822" not in payload
    assert payload["sha1"] == "9eae10bd6829e43f1de1f0d70ca2ae3955600d39"  # of the header
