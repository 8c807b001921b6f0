"""Reconnect now, pause and resume a mailbox through the API (issue 17)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from superimap.delivery.models import Delivery
from superimap.engine import store
from superimap.engine.leases import watchable
from superimap.mailboxes.models import MailboxUser
from tests.helpers.api import assert_error

ALICE = {"tag": "alice", "email": "alice@example.com", "password": "alice-pw-secret"}
BASE = "/connections/PLAIN/users/alice"


@pytest.fixture
def alice(api, plain_connection) -> MailboxUser:
    assert api.post("/connections/PLAIN/users", ALICE).status_code == 201
    user = MailboxUser.objects.get(tag="alice")
    MailboxUser.objects.filter(id=user.id).update(
        status="auth_failed", last_error="login refused", consecutive_failures=3
    )
    user.refresh_from_db()
    return user


def test_reconnect_asks_the_engine_for_a_new_session(api, alice):
    version, changed = alice.session_version, alice.updated_at
    r = api.post(f"{BASE}/reconnect", {})
    assert r.status_code == 202, r.content
    assert r.json()["tag"] == "alice"
    alice.refresh_from_db()
    # What the engine compares at each refresh (supervisor.refresh) and how it finds it.
    assert alice.session_version != version
    assert alice.updated_at > changed


@pytest.mark.parametrize("action", ["reconnect", "pause", "resume"])
def test_an_unknown_user_is_404(api, plain_connection, action):
    assert_error(api.post(f"/connections/PLAIN/users/nobody/{action}", {}), 404)


@pytest.mark.parametrize("action", ["reconnect", "pause", "resume"])
def test_another_partners_user_is_404(outsider_api, alice, action):
    assert_error(outsider_api.post(f"{BASE}/{action}", {}), 404)
    alice.refresh_from_db()
    assert alice.paused_at is None


@pytest.mark.parametrize("action", ["reconnect", "pause", "resume"])
def test_a_missing_key_is_401(client, alice, action):
    r = client.post(f"/api/v1{BASE}/{action}")
    assert_error(r, 401, "unauthorized")


@pytest.mark.parametrize("action", ["reconnect", "pause", "resume"])
def test_an_archived_user_is_409(api, alice, action):
    api.delete(BASE)
    assert_error(api.post(f"{BASE}/{action}", {}), 409, "archived")


@pytest.mark.parametrize("action", ["reconnect", "pause"])
def test_a_user_not_connected_is_409(api, plain_connection, action):
    api.post("/connections/PLAIN/users", {"tag": "bob"})
    assert_error(api.post(f"/connections/PLAIN/users/bob/{action}", {}), 409, "not_connected")


def test_pause_shows_paused_and_takes_the_mailbox_from_the_engine(api, alice):
    r = api.post(f"{BASE}/pause", {})
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "paused"
    assert r.json()["paused_at"] is not None
    assert api.get(BASE).json()["status"] == "paused"
    assert not MailboxUser.objects.filter(watchable(True), id=alice.id).exists()
    # The stopping session's last report does not overwrite it.
    store.save_statuses({alice.id: ("stopped", "", 0)})
    alice.refresh_from_db()
    assert alice.status == "paused"
    # Twice is fine and keeps the first pause time.
    paused_at = alice.paused_at
    assert api.post(f"{BASE}/pause", {}).status_code == 200
    alice.refresh_from_db()
    assert alice.paused_at == paused_at


def test_reconnect_of_a_paused_user_is_409(api, alice):
    api.post(f"{BASE}/pause", {})
    assert_error(api.post(f"{BASE}/reconnect", {}), 409, "paused")


def test_resume_gives_the_mailbox_back_to_the_engine(api, alice):
    MailboxUser.objects.filter(id=alice.id).update(uid_validity=7, last_uid=42)
    api.post(f"{BASE}/pause", {})
    alice.refresh_from_db()
    version = alice.session_version
    r = api.post(f"{BASE}/resume", {})
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "new"
    assert r.json()["paused_at"] is None
    alice.refresh_from_db()
    assert alice.session_version != version
    assert MailboxUser.objects.filter(watchable(True), id=alice.id).exists()
    # The checkpoint is kept: the next session catches up from it.
    assert (alice.uid_validity, alice.last_uid) == (7, 42)


def test_resume_of_a_user_not_paused_changes_nothing(api, alice):
    version = alice.session_version
    r = api.post(f"{BASE}/resume", {})
    assert r.status_code == 200
    assert r.json()["status"] == "auth_failed"
    alice.refresh_from_db()
    assert alice.session_version == version


def test_the_routes_are_in_the_openapi_schema(api):
    paths = api.get("/openapi.json").json()["paths"]
    for action, ok in [("reconnect", "202"), ("pause", "200"), ("resume", "200")]:
        responses = paths[f"/api/v1/connections/{{code}}/users/{{tag}}/{action}"]["post"][
            "responses"
        ]
        assert {ok, "401", "404", "409", "422"} <= set(responses)


def test_a_paused_mailboxs_last_report_tells_the_partner_nothing(api, alice):
    MailboxUser.objects.filter(id=alice.id).update(
        failing_since=timezone.now() - timedelta(hours=2)
    )
    api.post(f"{BASE}/pause", {})
    # The session stopping after the pause reports its failures one last time.
    store.save_statuses({alice.id: ("stopped", "login refused", 3)})
    assert not Delivery.objects.filter(user=alice, kind="user_error").exists()
