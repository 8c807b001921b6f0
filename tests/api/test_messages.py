"""GET .../users/{tag}/messages: what became of each message, where a partner sees skips."""

from __future__ import annotations

import pytest

from superimap.mailboxes.models import MailboxUser, MailLog
from tests.helpers.api import assert_error


@pytest.fixture
def user(plain_connection) -> MailboxUser:
    return MailboxUser.objects.create(connection=plain_connection, tag="alice")


def log_row(user, uid: int, reason: str = "") -> MailLog:
    return MailLog.objects.create(
        user=user,
        uid=uid,
        uid_validity=9,
        folder="INBOX",
        message_id=f"<m{uid}@t>",
        subject=f"subject {uid}",
        size=100 + uid,
        skipped_reason=reason,
    )


def test_it_lists_skipped_messages_with_their_reason(api, user):
    log_row(user, 1)
    log_row(user, 2, "expunged")
    log_row(user, 3, "duplicate")
    r = api.get("/connections/PLAIN/users/alice/messages", status="skipped")
    assert r.status_code == 200
    body = r.json()
    assert [(m["uid"], m["reason"], m["status"]) for m in body["messages"]] == [
        (3, "duplicate", "skipped"),
        (2, "expunged", "skipped"),
    ]
    first = body["messages"][0]
    assert first["uid_validity"] == 9 and first["folder"] == "INBOX"
    assert first["message_id"] == "<m3@t>" and first["subject"] == "subject 3"
    assert first["size"] == 103
    assert body["next_cursor"] is None


def test_it_lists_delivered_or_all_messages_and_filters_by_reason(api, user):
    log_row(user, 1)
    log_row(user, 2, "expunged")
    path = "/connections/PLAIN/users/alice/messages"
    delivered = api.get(path, status="delivered").json()["messages"]
    assert [(m["uid"], m["status"], m["reason"]) for m in delivered] == [(1, "delivered", None)]
    assert [m["uid"] for m in api.get(path).json()["messages"]] == [2, 1]
    assert [m["uid"] for m in api.get(path, reason="expunged").json()["messages"]] == [2]


def test_it_pages_with_a_cursor(api, user):
    for uid in range(1, 6):
        log_row(user, uid, "duplicate")
    path = "/connections/PLAIN/users/alice/messages"
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get(path, **params).json()
        seen += [m["uid"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [5, 4, 3, 2, 1]


def test_it_refuses_bad_filters_with_json_errors(api, user):
    path = "/connections/PLAIN/users/alice/messages"
    assert_error(api.get(path, status="lost"), 422, "validation_error")
    assert_error(api.get(path, cursor="abc"), 422, "validation_error")
    assert_error(api.get(path, limit=0), 422, "validation_error")
    assert_error(api.get("/connections/PLAIN/users/nobody/messages"), 404, "not_found")


def test_it_hides_messages_from_another_partner(outsider_api, user):
    log_row(user, 1, "expunged")
    r = outsider_api.get("/connections/PLAIN/users/alice/messages")
    assert_error(r, 404, "not_found")


def test_it_needs_an_api_key(user):
    from tests.helpers.api import ApiClient

    assert_error(ApiClient(None).get("/connections/PLAIN/users/alice/messages"), 401)
