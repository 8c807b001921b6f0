"""The backfill routes and fields (design.md 4.12): POST .../backfill with since or days, a
user created with backfill_days, progress in GET; errors as JSON (404, 409, 422)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from superimap.mailboxes.models import MailboxUser
from tests.helpers.api import assert_error

ALICE = {"tag": "alice", "email": "alice@example.com", "password": "alice-pw-secret"}
URL = "/connections/PLAIN/users/alice/backfill"


@pytest.fixture
def alice(api, plain_connection) -> MailboxUser:
    assert api.post("/connections/PLAIN/users", ALICE).status_code == 201
    return MailboxUser.objects.get(tag="alice")


def test_it_asks_for_a_backfill_of_the_last_days(api, alice):
    before = alice.session_version
    r = api.post(URL, {"days": 7})
    assert r.status_code == 202, r.content
    backfill = r.json()["backfill"]
    assert backfill["state"] == "pending" and (backfill["done"], backfill["total"]) == (0, 0)
    since = datetime.fromisoformat(backfill["since"])
    assert abs(since - (timezone.now() - timedelta(days=7))) < timedelta(seconds=30)
    assert r.json()["sweep_requested_at"] is None  # a window, not a sweep
    alice.refresh_from_db()
    assert abs(alice.backfill_since - since) < timedelta(milliseconds=1)  # JSON has ms
    assert alice.session_version != before  # the session restarts and runs it


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("2026-01-02T03:04:05+01:00", datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)),
        ("2026-01-02", datetime(2026, 1, 2, tzinfo=UTC)),  # a date: its midnight UTC
    ],
)
def test_it_takes_a_moment_or_a_date(api, alice, since, expected):
    r = api.post(URL, {"since": since})
    assert r.status_code == 202, r.content
    alice.refresh_from_db()
    assert alice.backfill_since == expected


def test_a_new_request_replaces_the_progress_of_the_last(api, alice):
    MailboxUser.objects.filter(id=alice.id).update(
        backfill_requested_at=timezone.now(),
        backfill_until_uid=40,
        backfill_position=12,
        backfill_done=12,
        backfill_total=40,
    )
    r = api.get("/connections/PLAIN/users/alice")
    assert r.json()["backfill"]["state"] == "running"
    assert (r.json()["backfill"]["done"], r.json()["backfill"]["total"]) == (12, 40)
    assert api.post(URL, {"days": 1}).status_code == 202
    alice.refresh_from_db()
    assert (alice.backfill_position, alice.backfill_done, alice.backfill_until_uid) == (
        None,
        0,
        None,
    )


def test_it_creates_a_user_with_a_backfill_window(api, plain_connection):
    r = api.post("/connections/PLAIN/users", {**ALICE, "backfill_days": 30})
    assert r.status_code == 201, r.content
    assert r.json()["backfill"]["state"] == "pending"
    user = MailboxUser.objects.get(tag="alice")
    assert abs(user.backfill_since - (timezone.now() - timedelta(days=30))) < timedelta(minutes=1)
    r = api.post("/connections/PLAIN/users", {"tag": "bob", "backfill_since": "2026-01-01"})
    assert r.status_code == 201, r.content  # run once bob connects (the hosted flow)
    assert MailboxUser.objects.get(tag="bob").backfill_since == datetime(2026, 1, 1, tzinfo=UTC)
    assert api.post("/connections/PLAIN/users", {"tag": "carol"}).json()["backfill"] is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"since": "2026-01-01", "days": 3},
        {"days": 0},
        {"days": 36501},
        {"since": "2026-01-01T00:00:00"},  # no time zone
        {"since": "2999-01-01"},  # in the future
        {"since": "yesterday"},
        {"days": 3, "folder": "INBOX"},
    ],
)
def test_it_refuses_a_bad_window_with_422(api, alice, body):
    assert_error(api.post(URL, body), 422)
    alice.refresh_from_db()
    assert alice.backfill_requested_at is None


def test_it_refuses_a_bad_window_on_create(api, plain_connection):
    body = {**ALICE, "backfill_days": 3, "backfill_since": "2026-01-01"}
    assert_error(api.post("/connections/PLAIN/users", body), 422)
    assert not MailboxUser.objects.filter(tag="alice").exists()


def test_it_answers_404_for_an_unknown_user_or_another_partners(api, outsider_api, alice):
    assert_error(api.post("/connections/PLAIN/users/nobody/backfill", {"days": 1}), 404)
    assert_error(outsider_api.post(URL, {"days": 1}), 404)
    alice.refresh_from_db()
    assert alice.backfill_requested_at is None


def test_it_refuses_an_archived_or_unconnected_user_with_409(api, alice):
    api.post("/connections/PLAIN/users", {"tag": "bob"})
    bob = "/connections/PLAIN/users/bob/backfill"
    assert_error(api.post(bob, {"days": 1}), 409, "not_connected")
    api.delete("/connections/PLAIN/users/alice")
    assert_error(api.post(URL, {"days": 1}), 409, "archived")
