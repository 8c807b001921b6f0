"""Content-Security-Policy on every page, in every environment."""

from __future__ import annotations

import pytest

from superimap.mailboxes.links import make_link
from superimap.mailboxes.models import MailboxUser


def policy(response) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return {
        part.split()[0]: " ".join(part.split()[1:])
        for part in (p.strip() for p in header.split(";"))
        if part
    }


@pytest.mark.parametrize("environment", ["development", "production", "test"])
def test_every_kind_of_page_has_a_content_security_policy(
    client, plain_connection, settings, environment
):
    settings.SUPERIMAP_ENV = environment
    settings.PRODUCTION = environment == "production"
    settings.SECURE_SSL_REDIRECT = False
    user = MailboxUser.objects.create(connection=plain_connection, tag="alice")
    pages = {
        "/admin/login/": 200,
        make_link(user.id, "connect").removeprefix(settings.PUBLIC_URL): 200,
        make_link(user.id, "disconnect").removeprefix(settings.PUBLIC_URL): 200,
        "/connect/forged": 404,
        "/api/v1/docs": 200,
        "/api/v1/connections": 401,
        "/healthz": 200,
    }
    for path, status in pages.items():
        r = client.get(path)
        assert r.status_code == status, path
        rules = policy(r)
        assert rules["default-src"] == "'self'", path
        assert rules["script-src"] == "'self'", path
        assert rules["frame-ancestors"] == "'none'", path
        assert rules["object-src"] == "'none'", path


def test_the_dashboard_limits_where_its_forms_post(client, db):
    assert policy(client.get("/admin/login/"))["form-action"] == "'self'"
