"""The dashboard goes through superimap/accounts as the API does: the same field checks (a
save the API would refuse is a form error) and the same side effects (new credentials owe
user_connected; a server setting restarts the sessions). Saving a model restarts nothing."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from superimap.accounts import connections as accounts_connections
from superimap.accounts import users as accounts_users
from superimap.accounts.errors import Refused
from superimap.delivery.models import EndpointHealth
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider
from tests.helpers.api import assert_error


@pytest.fixture(autouse=True)
def fast_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def admin(django_user_model) -> Client:
    boss = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-boss-1")
    client = Client()
    client.force_login(boss, backend="django.contrib.auth.backends.ModelBackend")
    return client


@pytest.fixture
def gmail(partner) -> Connection:
    return Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="GMAIL_OAUTH2"),
        oauth_client_id="cid",
        oauth_client_secret="gmail-client-secret",
    )


def _form_data(admin: Client, url: str) -> dict:
    """What the change page's form posts back unchanged."""
    form = admin.get(url).context["adminform"].form
    data = {}
    for name in form.fields:
        value = form[name].value()
        if isinstance(value, list | dict):
            value = json.dumps(value)
        if value is True:
            value = "on"
        if value not in (None, False):
            data[name] = value
    return data


def _user_form(admin: Client, user: MailboxUser) -> tuple[str, dict]:
    url = f"/admin/mailboxes/mailboxuser/{user.id}/change/"
    data = _form_data(admin, url)
    data.update(password="", oauth_refresh_token="")
    data.pop("connected_at", None)
    if user.connected_at is not None:
        data["connected_at_0"], data["connected_at_1"] = "2025-01-01", "00:00:00"
    return url, data


def _errors(response) -> str:
    assert response.status_code == 200, "saved, but the API refuses it"
    return str(response.context["adminform"].form.errors)


# --- the same side effects --------------------------------------------------------------------


def test_a_password_set_in_the_dashboard_owes_user_connected(admin, plain_connection):
    user = MailboxUser.objects.create(
        connection=plain_connection, tag="alice", email="alice@example.com"
    )
    url, data = _user_form(admin, user)
    r = admin.post(url, {**data, "password": "new-imap-pw"})
    assert r.status_code == 302, _errors(r)
    user.refresh_from_db()
    assert user.password == "new-imap-pw"
    assert user.connected_at is not None  # connected, as through the API
    assert user.connect_pending  # told by the engine's first login with it
    first = (user.connect_pending, user.session_version)
    url, data = _user_form(admin, user)
    r = admin.post(url, {**data, "email": "alice@example.org"})  # the password kept
    assert r.status_code == 302, _errors(r)
    user.refresh_from_db()
    assert user.connect_pending == first[0]  # no new credentials: nothing more to tell
    assert user.session_version != first[1]  # but the email is what the session uses


def test_a_provider_change_in_the_dashboard_restarts_its_sessions(admin, plain_connection):
    user = accounts_users.create_user(plain_connection, "alice", password="pw")
    version = user.session_version
    provider = plain_connection.provider
    url = f"/admin/partners/imapprovider/{provider.id}/change/"
    data = _form_data(admin, url)
    r = admin.post(url, {**data, "title": "Any IMAP server (renamed)"})
    assert r.status_code == 302, _errors(r)
    assert MailboxUser.objects.get(id=user.id).session_version == version
    r = admin.post(url, {**data, "imap_port": "1993"})
    assert r.status_code == 302, _errors(r)
    assert MailboxUser.objects.get(id=user.id).session_version != version


def test_saving_a_model_restarts_nothing(plain_connection):
    """The restart is the state change's (accounts), not a side effect of Model.save()."""
    user = accounts_users.create_user(plain_connection, "alice", password="pw")
    version = user.session_version
    user.password = "other"
    user.save()
    plain_connection.imap_port = 143
    plain_connection.save()
    assert MailboxUser.objects.get(id=user.id).session_version == version
    accounts_connections.save_connection(plain_connection)  # changed since it was loaded
    assert MailboxUser.objects.get(id=user.id).session_version != version


def test_a_webhook_url_set_again_through_the_api_is_no_longer_disabled(api, partner):
    """After a 410 Gone the worker clears the URL and marks the endpoint disabled; setting a
    URL again re-enables it, through the API as through the dashboard."""
    partner.disable_webhook("new_mail")
    EndpointHealth.objects.create(
        partner=partner, kind="new_mail", state=EndpointHealth.State.DISABLED
    )
    r = api.put("/partner", {"new_mail_webhook": "http://127.0.0.1:9/again"})
    assert r.status_code == 200, r.content
    assert EndpointHealth.objects.get(partner=partner).state == EndpointHealth.State.HEALTHY


# --- the same field checks --------------------------------------------------------------------


def test_the_dashboard_refuses_a_password_for_an_oauth_user(admin, api, gmail):
    user = MailboxUser.objects.create(connection=gmail, tag="bob", email="bob@example.com")
    body = {"password": "pw"}
    assert_error(api.put("/connections/GMAIL_OAUTH2/users/bob", body), 422, "invalid_field")
    url, data = _user_form(admin, user)
    assert "password does not apply to GMAIL_OAUTH2" in _errors(admin.post(url, {**data, **body}))
    assert MailboxUser.objects.get(id=user.id).password == ""


def test_the_dashboard_refuses_a_password_without_a_login_name(admin, api, plain_connection):
    user = MailboxUser.objects.create(connection=plain_connection, tag="bob")
    body = {"password": "pw"}
    assert_error(api.put("/connections/PLAIN/users/bob", body), 422, "missing_field")
    url, data = _user_form(admin, user)
    assert "login_username or email is required" in _errors(admin.post(url, {**data, **body}))


def test_the_dashboard_refuses_a_server_for_a_fixed_host_provider(admin, api, gmail):
    body = {"imap_host": "imap.example.com"}
    assert_error(api.put("/connections/GMAIL_OAUTH2", body), 422, "invalid_field")
    url = f"/admin/partners/connection/{gmail.id}/change/"
    data = _form_data(admin, url)
    assert "imap_host is fixed for GMAIL_OAUTH2" in _errors(admin.post(url, {**data, **body}))
    gmail.refresh_from_db()
    assert gmail.imap_host == ""


def test_the_dashboard_refuses_an_oauth_connection_without_its_client(admin, api, gmail):
    gmail.delete()
    body = {"imap_provider_code": "GMAIL_OAUTH2", "oauth_client_id": "cid"}
    assert_error(api.post("/connections", body), 422, "missing_field")
    provider = ImapProvider.objects.get(code="GMAIL_OAUTH2")
    form = {"partner": gmail.partner_id, "provider": provider.id, "oauth_client_id": "cid"}
    form.update(imap_tls_verify="on", folders="[]", oauth_client_secret="")
    r = admin.post("/admin/partners/connection/add/", form)
    assert "oauth_client_id and oauth_client_secret are required" in _errors(r)
    assert not Connection.objects.exists()


def test_the_dashboard_refuses_imap_without_tls_unless_opted_in(admin, api, plain_connection):
    body = {"imap_tls": "none"}
    assert_error(api.put("/connections/PLAIN", body), 422, "invalid_field")
    url = f"/admin/partners/connection/{plain_connection.id}/change/"
    data = _form_data(admin, url)
    assert "set imap_allow_plaintext to true" in _errors(admin.post(url, {**data, **body}))
    plain_connection.refresh_from_db()
    assert plain_connection.imap_tls == "implicit"
    r = admin.post(url, {**data, **body, "imap_allow_plaintext": "on"})
    assert r.status_code == 302, _errors(r)
    plain_connection.refresh_from_db()
    assert plain_connection.imap_tls == "none"


def test_the_dashboard_refuses_a_plain_connection_without_a_host(admin, api, partner):
    body = {"imap_provider_code": "PLAIN"}
    assert_error(api.post("/connections", body), 422, "missing_field")
    provider = ImapProvider.objects.get(code="PLAIN")
    form = {"partner": partner.id, "provider": provider.id, "imap_tls_verify": "on"}
    form.update(folders="[]", oauth_client_secret="")
    r = admin.post("/admin/partners/connection/add/", form)
    assert "imap_host is required for PLAIN" in _errors(r)
    assert not Connection.objects.exists()


def test_an_archived_twin_is_not_restored_over_an_active_user(plain_connection):
    first = accounts_users.create_user(plain_connection, "alice", password="pw")
    accounts_users.archive_user(first)
    accounts_users.create_user(plain_connection, "alice", password="pw2")
    with pytest.raises(Refused) as refused:
        accounts_users.restore_user(first)
    assert (refused.value.status, refused.value.code) == (409, "duplicate")
    assert MailboxUser.objects.get(id=first.id).archived
