"""Filters before the webhook per connection and per user (issue 21 item 2, design.md 4.3):
set, shown and checked by the API; a user's own win over its connection's."""

import pytest
from django.utils import timezone

from superimap.mailboxes.models import MailboxUser, MailLog
from tests.helpers.api import assert_error

USERS = "/connections/PLAIN/users"
SHOP = {"name": "shop", "from": ["@Shop.example"], "min_size": 0, "has_attachments": False}
MINE = {"name": "mine", "to": "me@corp.example", "subject_contains": "invoice"}


def test_it_sets_and_shows_a_connections_filters(api, plain_connection):
    r = api.put("/connections/PLAIN", {"filters": [SHOP]})
    assert r.status_code == 200, r.content
    assert r.json()["filters"] == [SHOP]
    assert api.get("/connections/PLAIN").json()["filters"] == [SHOP]
    plain_connection.refresh_from_db()
    assert plain_connection.filters == [SHOP]
    # [] clears them: everything is delivered.
    assert api.put("/connections/PLAIN", {"filters": []}).json()["filters"] == []


def test_a_users_filters_win_over_its_connections(api, plain_connection):
    api.put("/connections/PLAIN", {"filters": [SHOP]})
    r = api.post(USERS, {"tag": "u1", "login_username": "u1", "password": "pw"})
    assert r.status_code == 201, r.content
    assert (r.json()["filters"], r.json()["filters_in_force"]) == (None, [SHOP])
    r = api.put(f"{USERS}/u1", {"filters": [MINE]})
    assert r.status_code == 200, r.content
    assert (r.json()["filters"], r.json()["filters_in_force"]) == ([MINE], [MINE])
    got = api.get(f"{USERS}/u1").json()
    assert (got["filters"], got["filters_in_force"]) == ([MINE], [MINE])
    # The user's empty list (set) delivers everything, whatever the connection says ...
    assert api.put(f"{USERS}/u1", {"filters": []}).json()["filters_in_force"] == []
    # ... and null gives the connection's back.
    r = api.put(f"{USERS}/u1", {"filters": None})
    assert (r.json()["filters"], r.json()["filters_in_force"]) == (None, [SHOP])
    assert MailboxUser.objects.get(tag="u1").filters is None
    # A change that says nothing of filters keeps them.
    api.put(f"{USERS}/u1", {"filters": [MINE]})
    api.put(f"{USERS}/u1", {"enable_tracer": True})
    assert MailboxUser.objects.get(tag="u1").filters == [MINE]


def test_a_user_is_created_with_its_filters(api, plain_connection):
    r = api.post(USERS, {"tag": "u2", "filters": [MINE]})
    assert r.status_code == 201, r.content
    assert MailboxUser.objects.get(tag="u2").filters == [MINE]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ([{"name": "a", "from": "@a.example", "sender": "x@a.example"}], "sender"),  # unknown
        ([{"name": "a", "to": "not an address"}], "not an address"),
        ([{"name": "a", "cc": ["ok@a.example", "nobody"]}], "nobody"),
        ([{"name": "a", "min_size": -1}], "min_size"),
        ([{"name": "a", "max_size": "10"}], "max_size"),
        ([{"name": "a", "min_size": 10, "max_size": 9}], "max_size"),
        ([{"name": "a"}], "condition"),
        ([{"to": "@a.example"}], "name"),
        ([{"name": "a", "to": "@a.example"}, {"name": "A", "to": "@b.example"}], "name"),
        ([{"name": "a", "has_attachments": "yes"}], "has_attachments"),
        ({"name": "a", "to": "@a.example"}, "filters"),
    ],
)
def test_it_refuses_a_bad_filter_with_422(api, plain_connection, value, says):
    error = assert_error(api.put("/connections/PLAIN", {"filters": value}), 422)
    assert says in str(error), error
    assert_error(api.post(USERS, {"tag": "u3", "filters": value}), 422)
    assert not MailboxUser.objects.filter(tag="u3").exists()
    plain_connection.refresh_from_db()
    assert plain_connection.filters == []


def test_a_filtered_message_is_listed_as_a_skip_with_its_detail(api, plain_connection):
    api.post(USERS, {"tag": "u4", "filters": [MINE]})
    user = MailboxUser.objects.get(tag="u4")
    now = timezone.now()
    rows = ((1, "", "filter mine"), (2, "filtered", "no filter matched (mine)"))
    for uid, reason, detail in rows:
        MailLog.objects.create(
            user=user,
            uid=uid,
            uid_validity=1,
            folder="INBOX",
            subject=f"s{uid}",
            skipped_reason=reason,
            detail=detail,
            internal_date=now,
        )
    r = api.get(f"{USERS}/u4/messages", status="skipped")
    assert r.status_code == 200, r.content
    assert [(m["uid"], m["reason"], m["detail"]) for m in r.json()["messages"]] == [
        (2, "filtered", "no filter matched (mine)")
    ]
    r = api.get(f"{USERS}/u4/messages", reason="filtered")
    assert [m["uid"] for m in r.json()["messages"]] == [2]
