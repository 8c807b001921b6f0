"""Filters before the webhook in the dashboard (issue 21 item 2): shown and edited as JSON on
the user's and the connection's page, checked by the API's rules (accounts/checks.py)."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.utils import timezone

from superimap.mailboxes.models import MailboxUser

SHOP = [{"name": "shop", "from": ["@shop.example"], "has_attachments": True}]


@pytest.fixture
def admin(admin_client) -> Client:
    """pytest-django's logged-in superuser client."""
    return admin_client


@pytest.fixture
def user(plain_connection) -> MailboxUser:
    return MailboxUser.objects.create(
        connection=plain_connection,
        tag="alice",
        email="alice@example.com",
        password="alice-imap-secret",
        connected_at=timezone.now(),
    )


def _form_data(admin: Client, url: str) -> dict:
    form = admin.get(url).context["adminform"].form
    data = {}
    for name, value in form.initial.items():
        if value is None:
            continue
        field = form.fields.get(name)
        data[name] = field.prepare_value(value) if field is not None else value
    return data


def test_it_edits_a_users_filters_and_refuses_a_bad_one(admin, user):
    url = f"/admin/mailboxes/mailboxuser/{user.id}/change/"
    assert b"only mail one of them selects is delivered" in admin.get(url).content
    data = _form_data(admin, url)
    data.update(connection=user.connection_id, password="", oauth_refresh_token="")
    data["connected_at_0"], data["connected_at_1"] = "2025-01-01", "00:00:00"
    bad = [{"name": "shop", "from": "shop.example"}]
    r = admin.post(url, {**data, "filters": json.dumps(bad)})
    assert r.status_code == 200
    assert "filters[0].from is not an address or @domain" in r.content.decode()
    r = admin.post(url, {**data, "filters": json.dumps([{"name": "x", "min_size": -5}])})
    assert r.status_code == 200 and "filters[0].min_size must be" in r.content.decode()
    user.refresh_from_db()
    assert user.filters is None
    r = admin.post(url, {**data, "filters": json.dumps(SHOP)})
    assert r.status_code == 302, r.context["adminform"].form.errors
    user.refresh_from_db()
    assert user.filters == SHOP
    assert b"@shop.example" in admin.get(url).content
    # Emptied: the connection's filters again.
    r = admin.post(url, {**data, "filters": ""})
    assert r.status_code == 302, r.context["adminform"].form.errors
    user.refresh_from_db()
    assert user.filters is None


def test_it_edits_a_connections_filters_and_refuses_an_unknown_field(admin, plain_connection):
    url = f"/admin/partners/connection/{plain_connection.id}/change/"
    data = _form_data(admin, url)
    data.update(oauth_client_secret="")
    r = admin.post(url, {**data, "filters": json.dumps([{"name": "a", "sender": "@x.example"}])})
    assert r.status_code == 200
    assert "filters[0].sender is not a filter field" in r.content.decode()
    r = admin.post(url, {**data, "filters": json.dumps(SHOP)})
    assert r.status_code == 302, r.context["adminform"].form.errors
    plain_connection.refresh_from_db()
    assert plain_connection.filters == SHOP
    r = admin.post(url, {**data, "filters": ""})
    assert r.status_code == 302, r.context["adminform"].form.errors
    plain_connection.refresh_from_db()
    assert plain_connection.filters == []
