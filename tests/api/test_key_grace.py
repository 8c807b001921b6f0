"""Issue #15 item 1: a rotated API key in its grace period may keep using the data routes,
but cannot be turned against the owner (rotate keys or secrets, re-point webhooks, change
settings or connections): 403 key_in_grace."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from superimap.partners.models import Partner
from tests.helpers.api import ApiClient, assert_error


@pytest.fixture
def rotated(api, partner):
    """The owner rotated the key with the default grace: (the owner's new key, the old one
    as a leaked copy would use it)."""
    old_key = partner.api_key
    r = api.post("/partner/rotate-api-key", {})
    assert r.status_code == 200, r.content
    return ApiClient(r.json()["api_key"]), ApiClient(old_key)


def test_a_leaked_old_key_cannot_rotate_the_key_and_lock_the_owner_out(partner, rotated):
    owner, leaked = rotated
    assert_error(leaked.post("/partner/rotate-api-key", {"grace_seconds": 0}), 403, "key_in_grace")
    assert owner.get("/partner").status_code == 200
    assert Partner.objects.get(pk=partner.pk).api_key == owner.api_key


def test_a_leaked_old_key_cannot_rotate_the_webhook_secret(partner, rotated):
    _owner, leaked = rotated
    secret = partner.webhook_secret
    assert_error(leaked.post("/partner/rotate-secret", {"grace_seconds": 0}), 403, "key_in_grace")
    assert Partner.objects.get(pk=partner.pk).webhook_secret == secret


@pytest.mark.parametrize(
    "body",
    [
        {"new_mail_webhook": "https://attacker.example/steal"},
        {"success_url": "https://attacker.example/ok"},
        {"allowed_redirect_hosts": ["attacker.example"]},
        {"name": "Renamed"},
        {},
    ],
)
def test_a_leaked_old_key_cannot_change_the_partners_settings(partner, rotated, body):
    _owner, leaked = rotated
    assert_error(leaked.put("/partner", body), 403, "key_in_grace")
    saved = Partner.objects.get(pk=partner.pk)
    assert saved.new_mail_webhook == "http://127.0.0.1:9/new-mail"
    assert saved.success_url == "http://app.example/connected"
    assert (saved.name, saved.allowed_redirect_hosts) == ("Owner app", "")


def test_a_leaked_old_key_cannot_change_connections(partner, plain_connection, rotated):
    _owner, leaked = rotated
    plain = {"imap_provider_code": "FASTMAIL_PLAIN"}
    assert_error(leaked.post("/connections", plain), 403, "key_in_grace")
    changed = {"imap_host": "imap.attacker.example"}
    assert_error(leaked.put("/connections/PLAIN", changed), 403, "key_in_grace")
    patch = leaked.client.patch(
        "/api/v1/connections/PLAIN",
        '{"imap_host": "imap.attacker.example"}',
        content_type="application/json",
        HTTP_X_API_KEY=leaked.api_key,
    )
    assert_error(patch, 403, "key_in_grace")
    assert_error(leaked.delete("/connections/PLAIN"), 403, "key_in_grace")
    plain_connection.refresh_from_db()
    assert plain_connection.imap_host == "imap.example.com"
    assert partner.connections.count() == 1


def test_a_key_in_its_grace_period_keeps_using_the_data_routes(partner, plain_connection, rotated):
    _owner, old = rotated
    assert old.get("/partner").status_code == 200
    assert old.get("/connections").status_code == 200
    r = old.post("/connections/PLAIN/users", {"tag": "bob", "email": "bob@example.com"})
    assert r.status_code == 201, r.content
    assert old.put("/connections/PLAIN/users/bob", {"enable_tracer": True}).status_code == 200
    assert old.get("/connections/PLAIN/users/bob/messages").status_code == 200
    assert old.get("/deliveries").status_code == 200
    assert old.delete("/connections/PLAIN/users/bob").status_code == 204


def test_the_current_key_can_still_do_everything_during_the_grace(partner, rotated):
    owner, _leaked = rotated
    r = owner.put("/partner", {"new_mail_webhook": "https://hooks.example/mail"})
    assert r.status_code == 200, r.content
    # The owner ends the leaked key's grace by rotating again with none.
    newest = owner.post("/partner/rotate-api-key", {"grace_seconds": 0}).json()["api_key"]
    assert_error(owner.get("/partner"), 401)
    assert ApiClient(newest).get("/partner").status_code == 200


@pytest.fixture
def admin(django_user_model, settings) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-boss-1")
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


def _run_action(admin: Client, action: str, partner: Partner) -> None:
    r = admin.post("/admin/partners/partner/", {"action": action, "_selected_action": [partner.id]})
    assert r.status_code == 302, r.content


def test_the_dashboards_key_rotation_gets_the_apis_grace_period(admin, partner):
    old = ApiClient(partner.api_key)
    before = timezone.now()
    _run_action(admin, "rotate_api_key", partner)
    rotated = Partner.objects.get(pk=partner.pk)
    assert rotated.api_key != old.api_key
    until = rotated.previous_api_key_until
    assert before + timedelta(hours=24) <= until <= timezone.now() + timedelta(hours=24)
    # Deployments still on the old key keep working on data routes, not on settings.
    assert old.get("/partner").status_code == 200
    assert old.get("/deliveries").status_code == 200
    assert_error(old.post("/partner/rotate-api-key", {}), 403, "key_in_grace")
    assert ApiClient(rotated.api_key).get("/partner").status_code == 200


def test_the_dashboards_secret_rotation_signs_with_both_for_the_grace_period(admin, partner):
    old_secret = partner.webhook_secret
    _run_action(admin, "rotate_webhook_secret", partner)
    rotated = Partner.objects.get(pk=partner.pk)
    assert rotated.signing_secrets() == (rotated.webhook_secret, old_secret)
    assert rotated.previous_webhook_secret_until > timezone.now() + timedelta(hours=23)
