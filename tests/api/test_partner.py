"""Partner self-service: settings, API key and signing secret rotation, test webhook."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from devtools.testing.webhook_receiver import describe, verify_spec_signature
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner
from tests.helpers.api import ApiClient, assert_error
from tests.helpers.delivery import ThreadedReceiver


@pytest.fixture
def receiver():
    receiver = ThreadedReceiver()
    yield receiver
    receiver.close()


def test_it_shows_the_partners_settings_without_secrets(api, partner):
    r = api.get("/partner")
    assert r.status_code == 200
    body = r.json()
    assert body["new_mail_webhook"] == "http://127.0.0.1:9/new-mail"
    assert body["success_url"] == "http://app.example/connected"
    assert set(body["effective_redirect_hosts"]) == {"127.0.0.1", "app.example"}
    assert partner.api_key.encode() not in r.content
    assert partner.webhook_secret.encode() not in r.content


def test_it_updates_webhook_urls_callbacks_and_hosts(api, partner):
    r = api.put(
        "/partner",
        {
            "new_mail_webhook": "https://hooks.example/mail",
            "success_url": "https://app.example/ok",
            "failure_url": "https://app.example/failed",
            "allowed_redirect_hosts": ["Other.Example", "third.example"],
        },
    )
    assert r.status_code == 200, r.content
    partner.refresh_from_db()
    assert partner.new_mail_webhook == "https://hooks.example/mail"
    assert partner.success_url == "https://app.example/ok"
    assert partner.allowed_redirect_hosts == "other.example,third.example"
    assert partner.user_connected_webhook == "http://127.0.0.1:9/connected"  # untouched


def test_change_urls_are_set_and_switching_them_on_or_off_restarts_sessions(api, partner):
    connection = Connection.objects.create(
        partner=partner, provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN")
    )
    user = MailboxUser.objects.create(connection=connection, tag="u", session_version="v0")
    r = api.put("/partner", {"message_updated_webhook": "https://hooks.example/updated"})
    assert r.status_code == 200, r.content
    assert r.json()["message_updated_webhook"] == "https://hooks.example/updated"
    assert r.json()["message_deleted_webhook"] == ""
    user.refresh_from_db()
    switched_on = user.session_version
    assert switched_on != "v0"
    # Another change URL while tracking is on already: no restart.
    api.put("/partner", {"message_deleted_webhook": "https://hooks.example/deleted"})
    user.refresh_from_db()
    assert user.session_version == switched_on
    api.put("/partner", {"message_updated_webhook": "", "message_deleted_webhook": ""})
    user.refresh_from_db()
    assert user.session_version != switched_on
    r = api.put("/partner", {"message_deleted_webhook": "ftp://x.example/"})
    assert r.status_code == 422


def test_it_takes_allowed_hosts_as_a_comma_separated_form_field(api, partner):
    r = api.client.put(
        "/api/v1/partner",
        b"allowed_redirect_hosts=a.example%2Cb.example",
        content_type="application/x-www-form-urlencoded",
        HTTP_X_API_KEY=partner.api_key,
    )
    assert r.status_code == 200, r.content
    assert r.json()["allowed_redirect_hosts"] == ["a.example", "b.example"]


@pytest.mark.parametrize(
    "body",
    [
        {"new_mail_webhook": "ftp://x.example/"},
        {"success_url": "javascript:alert(1)"},
        {"success_url": "https://[k\u00db\u008f\u00f4"},
        {"failure_url": "http://:80/"},
        {"allowed_redirect_hosts": ["bad host/"]},
        {"webhook_secret": "whsec_mine"},
    ],
)
def test_it_refuses_bad_settings_with_422(api, partner, body):
    assert_error(api.put("/partner", body), 422)


def test_it_clears_a_url_with_an_empty_string(api, partner):
    assert api.put("/partner", {"failure_url": ""}).status_code == 200
    partner.refresh_from_db()
    assert partner.failure_url == ""


def test_it_needs_the_api_key(partner):
    assert_error(ApiClient(None).get("/partner"), 401)


def test_it_rotates_the_api_key_keeping_the_old_one_for_the_grace_period(api, partner):
    old_key = partner.api_key
    r = api.post("/partner/rotate-api-key", {"grace_seconds": 3600})
    assert r.status_code == 200, r.content
    new_key = r.json()["api_key"]
    assert new_key != old_key
    assert ApiClient(new_key).get("/partner").status_code == 200
    assert ApiClient(old_key).get("/partner").status_code == 200
    assert ApiClient(new_key).get("/partner").json()["previous_api_key_valid_until"]
    # The grace period ends: the old key stops working, the new one goes on.
    Partner.objects.filter(pk=partner.pk).update(
        previous_api_key_until=timezone.now() - timedelta(seconds=1)
    )
    assert_error(ApiClient(old_key).get("/partner"), 401)
    assert ApiClient(new_key).get("/partner").status_code == 200


def test_it_ends_the_old_key_at_once_with_a_zero_grace(api, partner):
    old_key = partner.api_key
    new_key = api.post("/partner/rotate-api-key", {"grace_seconds": 0}).json()["api_key"]
    assert_error(ApiClient(old_key).get("/partner"), 401)
    assert ApiClient(new_key).get("/partner").status_code == 200


def test_it_refuses_a_grace_period_over_30_days(api, partner):
    assert_error(api.post("/partner/rotate-api-key", {"grace_seconds": 31 * 86400}), 422)


def test_it_rotates_the_signing_secret_and_sends_a_ping_signed_by_both(api, partner, receiver):
    old_secret = partner.webhook_secret
    api.put("/partner", {"new_mail_webhook": f"{receiver.url}/hook"})
    r = api.post("/partner/rotate-secret", {})
    assert r.status_code == 200, r.content
    new_secret = r.json()["webhook_secret"]
    assert new_secret.startswith("whsec_") and new_secret != old_secret

    r = api.post("/partner/test-webhook", {"kind": "new_mail"})
    assert r.status_code == 200, r.content
    result = r.json()
    assert result["status_code"] == 200 and result["succeeded"] is True
    assert result["latency_ms"] >= 0 and result["url"] == f"{receiver.url}/hook"
    [event] = receiver.wait_for(1)
    for secret in (old_secret, new_secret):
        assert Webhook(secret).verify(event.body, event.headers)["event"] == "ping"
    assert event.json["event_id"] == result["event_id"]
    assert verify_spec_signature(event.json, partner.api_key)
    assert describe(event).startswith("ping  for='new_mail'")


def test_it_reports_a_failing_receiver(api, partner):
    receiver = ThreadedReceiver(responses=[(500, "broken")])
    api.put("/partner", {"user_connected_webhook": f"{receiver.url}/c"})
    result = api.post("/partner/test-webhook", {"kind": "user_connected"}).json()
    assert result["status_code"] == 500 and result["succeeded"] is False
    assert result["response_excerpt"] == "broken"
    receiver.close()


def test_it_reports_an_unreachable_receiver(api, partner):
    result = api.post("/partner/test-webhook", {"kind": "user_disconnected"}).json()
    assert result["status_code"] is None and result["error"]


def test_it_answers_409_for_a_kind_without_url(api, partner):
    api.put("/partner", {"new_mail_webhook": ""})
    assert_error(api.post("/partner/test-webhook", {"kind": "new_mail"}), 409, "no_webhook_url")
