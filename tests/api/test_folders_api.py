"""`folders` per connection and per user (issue 8 item 2, design.md 4.10)."""

import pytest

from superimap.mailboxes.models import MailboxUser
from tests.helpers.api import assert_error

USERS = "/connections/PLAIN/users"


def test_it_sets_folders_per_connection(api, plain_connection):
    r = api.put("/connections/PLAIN", {"folders": ["INBOX", "\\junk", "Lists/dev"]})
    assert r.status_code == 200, r.content
    assert r.json()["folders"] == ["INBOX", "\\Junk", "Lists/dev"]
    assert api.get("/connections/PLAIN").json()["folders"] == ["INBOX", "\\Junk", "Lists/dev"]


def test_a_users_folders_win_and_changing_them_restarts_its_session(api, plain_connection):
    r = api.post(USERS, {"tag": "u1", "login_username": "u1", "password": "pw"})
    assert r.json()["folders"] == []
    version = MailboxUser.objects.get(tag="u1").session_version
    r = api.put(f"{USERS}/u1", {"folders": ["\\Inbox", "\\Sent"]})
    assert r.status_code == 200, r.content
    assert r.json()["folders"] == ["\\Inbox", "\\Sent"]
    assert MailboxUser.objects.get(tag="u1").session_version != version


@pytest.mark.parametrize(
    "value",
    ["INBOX", ["\\Spam"], [""], ["INBOX", "INBOX"], ["a\nb"], [1], [f"f{i}" for i in range(11)]],
)
def test_it_refuses_bad_folders(api, plain_connection, value):
    assert_error(api.put("/connections/PLAIN", {"folders": value}), 422)
    assert_error(api.post(USERS, {"tag": "u2", "folders": value}), 422)
