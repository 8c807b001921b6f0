"""The hosted connect/disconnect pages reached through a user's signed links."""

import hashlib
import time
from unittest import mock

import pytest
from django.core import signing
from django.db import connection

from superimap.delivery.models import Delivery
from superimap.mailboxes import links
from superimap.mailboxes.links import make_link
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider

FORM = {"email": "alice@example.com", "password": "alice-imap-pw"}


@pytest.fixture
def user(plain_connection) -> MailboxUser:
    return MailboxUser.objects.create(connection=plain_connection, tag="alice")


@pytest.fixture
def check_login():
    with mock.patch(
        "superimap.mailboxes.views.check_login", autospec=True, return_value=None
    ) as patched:
        yield patched


def path(user, action="connect") -> str:
    return make_link(user.id, action).split("127.0.0.1:8000", 1)[1]


class SignedInThePast(signing.TimestampSigner):
    def timestamp(self):
        return signing.b62_encode(int(time.time()) - links.LINK_MAX_AGE_SECONDS - 60)


def test_it_shows_the_password_form(client, user):
    r = client.get(path(user))
    assert r.status_code == 200
    assert b'name="password"' in r.content
    assert b"Owner app" in r.content


def test_it_answers_404_for_a_forged_link(client, user):
    assert client.get(path(user) + "x").status_code == 404


def test_it_answers_404_for_a_link_signed_with_another_key(client, user):
    token = signing.dumps({"u": user.id, "a": "connect"}, key="not-our-key", salt=links._SALT)
    assert client.get(f"/connect/{token}").status_code == 404


def test_it_answers_404_for_an_expired_link(client, user):
    token = SignedInThePast(salt=links._SALT).sign_object({"u": user.id, "a": "connect"})
    r = client.get(f"/connect/{token}")
    assert r.status_code == 404
    assert b"expired" in r.content


def test_it_answers_404_for_a_disconnect_link_used_to_connect(client, user):
    token = path(user, "disconnect").split("/")[-1]
    assert client.get(f"/connect/{token}").status_code == 404


def test_it_answers_404_for_an_archived_user(client, user):
    user.archive()
    assert client.get(path(user)).status_code == 404


def test_it_validates_the_form(client, user, check_login):
    r = client.post(path(user), {"email": "not-an-email", "password": ""})
    assert r.status_code == 200
    assert b"errorlist" in r.content
    check_login.assert_not_called()
    user.refresh_from_db()
    assert user.connected_at is None


def test_it_shows_a_failed_credential_check_and_saves_nothing(client, user, check_login):
    check_login.return_value = "The mail server refused this username and password."
    r = client.post(path(user), FORM)
    assert r.status_code == 200
    assert b"refused this username and password" in r.content
    assert b"alice-imap-pw" not in r.content
    user.refresh_from_db()
    assert (user.password, user.connected_at, user.email) == ("", None, "")
    assert not Delivery.objects.exists()


def test_it_checks_the_login_with_the_email_by_default(client, user, check_login):
    client.post(path(user), FORM)
    check_login.assert_called_once_with(user.connection, "alice@example.com", "alice-imap-pw")


def test_it_saves_encrypted_credentials_on_success(client, user, check_login):
    client.post(path(user), FORM)
    user.refresh_from_db()
    assert user.password == "alice-imap-pw"
    assert user.connected_at is not None
    assert user.login_username == "alice@example.com"
    with connection.cursor() as cursor:
        cursor.execute("SELECT password FROM mailboxes_mailboxuser WHERE id = %s", [user.id])
        assert cursor.fetchone()[0].startswith("gAAAAA")


def test_it_owes_user_connected_to_the_engines_first_login(client, user, check_login):
    client.post(path(user), FORM)
    user.refresh_from_db()
    assert user.connect_pending  # sent by the engine (tests/engine/test_user_connected.py)
    assert not Delivery.objects.exists()


def test_connecting_again_owes_a_new_user_connected(client, user, check_login):
    client.post(path(user), FORM)
    user.refresh_from_db()
    first = (user.connect_pending, user.session_version)
    client.post(path(user), FORM)  # same password, a new link: a new connect all the same
    user.refresh_from_db()
    assert user.connect_pending and user.connect_pending != first[0]
    assert user.session_version != first[1]  # the session logs in again to tell it


def test_it_redirects_to_an_allowed_success_callback(client, user, check_login):
    r = client.post(path(user) + "?success=http://app.example/done?id=1", FORM)
    assert r.status_code == 302
    assert r["Location"] == "http://app.example/done?id=1"


def test_it_redirects_to_a_host_in_allowed_redirect_hosts(client, user, check_login):
    partner = user.connection.partner
    partner.allowed_redirect_hosts = "other.example, third.example"
    partner.save()
    r = client.post(path(user) + "?success=https://third.example/ok", FORM)
    assert r["Location"] == "https://third.example/ok"


@pytest.mark.parametrize(
    "callback",
    [
        "http://evil.example/phish",
        "javascript:alert(1)",
        "//evil.example/",
        "http://app.example@evil.example/",
    ],
)
def test_it_refuses_an_open_redirect_with_an_error_page(
    client, user, check_login, callback, caplog
):
    r = client.post(path(user), {**FORM, "success": callback})
    assert r.status_code == 400
    assert b"allowed redirect hosts" in r.content
    assert "callback refused" in caplog.text
    user.refresh_from_db()
    assert user.connected_at is None and not check_login.called


def test_it_shows_the_error_page_before_the_form_for_a_refused_callback(client, user, caplog):
    r = client.get(path(user) + "?success=https://evil.example/x")
    assert r.status_code == 400
    assert b"evil.example" in r.content and b"<form" not in r.content
    assert "'evil.example' is not allowed" in caplog.text


def test_it_refuses_a_failure_callback_on_another_host_when_disconnecting(client, user, caplog):
    r = client.get(path(user, "disconnect") + "?failure=https://evil.example/x")
    assert r.status_code == 400
    assert "callback refused: failure" in caplog.text


@pytest.mark.parametrize(
    "callback",
    ["http://127.0.0.1:9/after-connect", "https://app.example/other-page"],
    ids=["webhook-host", "success-url-host"],
)
def test_it_allows_the_hosts_of_the_partners_own_urls_by_default(
    client, user, check_login, callback
):
    r = client.post(path(user) + f"?success={callback}", FORM)
    assert r.status_code == 302
    assert r["Location"] == callback


def test_it_allows_callbacks_to_hosts_set_through_the_api(client, user, check_login, api):
    assert api.put("/partner", {"allowed_redirect_hosts": ["crm.example"]}).status_code == 200
    r = client.post(path(user) + "?success=https://crm.example/done", FORM)
    assert r["Location"] == "https://crm.example/done"


def test_it_shows_a_page_when_the_partner_has_no_success_url(client, user, check_login):
    partner = user.connection.partner
    partner.success_url = ""
    partner.save()
    r = client.post(path(user), FORM)
    assert r.status_code == 200
    assert b"connected" in r.content


def test_it_disconnects_and_clears_credentials(client, user):
    user.password = "old-pw"
    user.email = "alice@example.com"
    user.connected_at = user.created_at
    user.save()
    r = client.post(path(user, "disconnect"))
    assert r.status_code == 302
    user.refresh_from_db()
    assert (user.password, user.oauth_refresh_token, user.connected_at) == ("", "", None)
    delivery = Delivery.objects.get()
    assert delivery.kind == "user_disconnected"
    assert delivery.payload["sha1"] == hashlib.sha1(b"alice").hexdigest()


def test_it_sends_no_event_when_disconnecting_a_user_that_was_not_connected(client, user):
    client.post(path(user, "disconnect"))
    assert not Delivery.objects.exists()


def test_it_answers_404_for_a_forged_disconnect_link(client, user):
    assert client.get("/disconnect/forged").status_code == 404


def test_it_sends_a_user_of_an_oauth_provider_to_its_consent_page(client, partner):
    gmail = Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="GMAIL_OAUTH2"),
        oauth_client_id="id",
        oauth_client_secret="secret",
    )
    user = MailboxUser.objects.create(connection=gmail, tag="g")
    r = client.get(path(user))
    assert r.status_code == 302
    assert r["Location"].startswith("https://accounts.google.com/o/oauth2/v2/auth?")
    assert "state=" in r["Location"]


# --- single-use links, disconnect confirmation ---------------------------------------------


def connected(user):
    user.password = "old-pw"
    user.email = "alice@example.com"
    user.login_username = "alice@example.com"
    user.connected_at = user.created_at
    user.save()
    return user


def test_a_connect_link_cannot_be_used_again_after_success(client, user, check_login):
    link = path(user)
    assert client.post(link, FORM).status_code == 302
    other = {"email": "mallory@evil.example", "password": "mallory-pw"}
    r = client.post(link, other)
    assert r.status_code == 404
    assert client.get(link).status_code == 404
    user.refresh_from_db()
    assert (user.email, user.password) == ("alice@example.com", "alice-imap-pw")
    assert check_login.call_count == 1


def test_a_failed_attempt_does_not_use_the_link_up(client, user, check_login):
    link = path(user)
    check_login.return_value = "The mail server refused this username and password."
    assert client.post(link, FORM).status_code == 200
    check_login.return_value = None
    assert client.post(link, FORM).status_code == 302


def test_each_link_is_single_use_on_its_own(client, user, check_login):
    first, second = path(user), path(user)
    assert first != second
    assert client.post(first, FORM).status_code == 302
    assert client.post(second, FORM).status_code == 302


def test_a_get_of_the_disconnect_link_changes_nothing(client, user):
    connected(user)
    for _ in range(3):  # a mail scanner, a link preview, the user
        r = client.get(path(user, "disconnect"))
        assert r.status_code == 200
        assert b'method="post"' in r.content
        assert b"csrfmiddlewaretoken" in r.content
    user.refresh_from_db()
    assert user.password == "old-pw" and user.connected_at is not None
    assert not Delivery.objects.exists()


def test_the_disconnect_confirmation_is_csrf_protected(user):
    from django.test import Client

    connected(user)
    browser = Client(enforce_csrf_checks=True)
    link = path(user, "disconnect")
    assert browser.post(link).status_code == 403  # a cross-site form post
    user.refresh_from_db()
    assert user.connected_at is not None
    page = browser.get(link)
    token = page.context["csrf_token"]
    r = browser.post(link, {"csrfmiddlewaretoken": str(token)})
    assert r.status_code == 302
    user.refresh_from_db()
    assert user.connected_at is None


def test_a_disconnect_link_cannot_be_used_again(client, user):
    connected(user)
    link = path(user, "disconnect")
    assert client.post(link).status_code == 302
    connected(user)  # connected again through a fresh connect link
    assert client.post(link).status_code == 404
    assert client.get(link).status_code == 404
    user.refresh_from_db()
    assert user.connected_at is not None
    assert Delivery.objects.filter(kind="user_disconnected").count() == 1
