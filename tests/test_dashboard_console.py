"""The operator console (issue 17): lists an operator can work from, actions that skip
the back-off or pause a mailbox, read-only records, times in DASHBOARD_TIME_ZONE."""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from superimap.accounts import users as accounts_users
from superimap.delivery.models import Delivery, EndpointHealth
from superimap.mailboxes.models import MailboxUser, MailLog
from tests.helpers.delivery import ThreadedReceiver

PASSWORD = "correct horse battery staple"
EVENT = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.fixture(autouse=True)
def fast_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("boss", "boss@example.com", PASSWORD)


def logged_in(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user, backend="django.contrib.auth.backends.ModelBackend")
    return client


@pytest.fixture
def admin(admin_user) -> Client:
    return logged_in(admin_user)


@pytest.fixture
def failing(plain_connection) -> MailboxUser:
    user = MailboxUser.objects.create(
        connection=plain_connection,
        tag="alice",
        email="alice@example.com",
        password="alice-imap-secret",
        connected_at=timezone.now(),
        folders=["INBOX", "\\Sent"],
    )
    MailboxUser.objects.filter(id=user.id).update(
        status="auth_failed",
        last_error="login refused: [AUTHENTICATIONFAILED] Authentication failed.",
        consecutive_failures=2,
        status_changed_at=datetime(2026, 3, 1, 10, 0, 5, tzinfo=UTC),
        failing_since=datetime(2026, 3, 1, 9, 59, 58, tzinfo=UTC),
    )
    user.refresh_from_db()
    return user


@pytest.fixture
def delivery(partner, failing) -> Delivery:
    MailLog.objects.create(
        user=failing, uid=1, uid_validity=1, identity="ident-1", subject="Quarterly invoice 42"
    )
    return Delivery.objects.create(
        event_id=EVENT,
        kind="new_mail",
        partner=partner,
        user=failing,
        dedup_key="ident-1",
        payload={"envelope": {"subject": "Quarterly invoice 42"}},
        status=Delivery.Status.FAILED,
        attempts=6,
        last_error="connection refused by 127.0.0.1:9 (nothing listening?)",
        next_attempt_at=timezone.now(),
    )


def run_action(admin, action: str, *users):
    return admin.post(
        "/admin/mailboxes/mailboxuser/",
        {"action": action, "_selected_action": [u.id for u in users]},
    )


# The mailbox list.


def test_the_mailbox_list_says_why_since_when_and_when_next(admin, failing):
    page = admin.get("/admin/mailboxes/mailboxuser/").content.decode()
    assert "login refused: [AUTHENTICATIONFAILED] Authentication failed." in page
    assert "2026-03-01 09:59:58" in page  # failing since, to the second
    # Two refused logins: 600 s after the status was written (backoff_delay, no jitter).
    assert "2026-03-01 10:10:05" in page
    assert "INBOX, \\Sent" in page
    assert "Owner app" in page  # the partner


def test_the_mailbox_list_filters_failing_and_paused_mailboxes(admin, failing, plain_connection):
    MailboxUser.objects.create(
        connection=plain_connection, tag="bob", password="x", connected_at=timezone.now()
    )
    r = admin.get("/admin/mailboxes/mailboxuser/?state=failing")
    assert {u.tag for u in r.context["cl"].result_list} == {"alice"}
    accounts_users.pause_user(failing)
    r = admin.get("/admin/mailboxes/mailboxuser/?state=paused")
    assert {u.tag for u in r.context["cl"].result_list} == {"alice"}
    assert "Paused" in r.content.decode()


def test_reconnect_now_restarts_the_selected_sessions(admin, failing):
    version = failing.session_version
    assert run_action(admin, "reconnect_now", failing).status_code == 302
    failing.refresh_from_db()
    assert failing.session_version != version


def test_pause_and_resume_from_the_list(admin, failing):
    run_action(admin, "pause_mailboxes", failing)
    failing.refresh_from_db()
    assert failing.paused_at is not None and failing.status == "paused"
    r = run_action(admin, "reconnect_now", failing)
    messages = [str(m) for m in r.wsgi_request._messages]
    assert any("is paused" in m for m in messages)
    run_action(admin, "resume_mailboxes", failing)
    failing.refresh_from_db()
    assert failing.paused_at is None and failing.status == "new"


# The deliveries list.


def test_the_deliveries_list_shows_what_an_operator_needs(admin, delivery):
    page = admin.get("/admin/delivery/delivery/").content.decode()
    assert ">0f1e2d3c<" in page  # the short event id
    assert "Quarterly invoice 42" in page
    assert "connection refused by 127.0.0.1:9 (nothing listening?)" in page
    assert "alice" in page


@pytest.mark.parametrize("term", ["invoice 42", "alice@example.com", "alice", "0f1e2d3c", EVENT])
def test_the_deliveries_list_finds_by_subject_email_tag_and_event_id(admin, delivery, term):
    r = admin.get("/admin/delivery/delivery/", {"q": term})
    assert [d.id for d in r.context["cl"].result_list] == [delivery.id]
    r = admin.get("/admin/delivery/delivery/", {"q": "no such thing"})
    assert list(r.context["cl"].result_list) == []


def test_the_latency_is_from_creation_to_delivery(admin, delivery):
    Delivery.objects.filter(id=delivery.id).update(
        status="delivered", delivered_at=delivery.created_at + timedelta(milliseconds=1250)
    )
    assert "1250 ms" in admin.get("/admin/delivery/delivery/").content.decode()


# Safe by default.


def test_deliveries_and_mail_logs_are_read_only(admin, delivery):
    log = MailLog.objects.get()
    for url in (
        f"/admin/delivery/delivery/{delivery.id}/delete/",
        f"/admin/mailboxes/maillog/{log.id}/delete/",
    ):
        assert admin.post(url, {"post": "yes"}).status_code == 403
    r = admin.post(
        f"/admin/delivery/delivery/{delivery.id}/change/", {"dedup_key": "edited", "status": "x"}
    )
    assert r.status_code == 403
    delivery.refresh_from_db()
    assert delivery.dedup_key == "ident-1"
    assert Delivery.objects.count() == 1 and MailLog.objects.count() == 1
    page = admin.get("/admin/delivery/delivery/").content.decode()
    assert "delete_selected" not in page
    assert "delete_selected" not in admin.get("/admin/mailboxes/maillog/").content.decode()


def test_the_stock_sections_are_out_of_the_way(admin):
    index = admin.get("/admin/").content.decode()
    assert "/admin/auth/group/" not in index
    assert "/admin/axes/" not in index
    assert admin.get("/admin/partners/imapprovider/add/").status_code == 403
    assert admin.get("/admin/auth/group/").status_code == 404


# Times.


def test_times_are_to_the_second_in_the_dashboard_time_zone(settings, admin_user, failing):
    settings.DASHBOARD_TIME_ZONE = "Europe/Paris"
    page = logged_in(admin_user).get("/admin/mailboxes/mailboxuser/").content.decode()
    assert "2026-03-01 10:59:58" in page  # 09:59:58 UTC is 10:59:58 in Paris in March


# Endpoints of a partner.


def test_the_partner_page_shows_endpoint_health_and_sends_a_test_webhook(admin, partner, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    receiver = ThreadedReceiver()
    try:
        partner.new_mail_webhook = f"{receiver.url}/hook"
        partner.save()
        EndpointHealth.objects.create(
            partner=partner,
            kind="user_connected",
            state=EndpointHealth.State.FAILING,
            consecutive_failures=4,
            last_error="connection refused by 127.0.0.1:9 (nothing listening?)",
        )
        page = admin.get(f"/admin/partners/partner/{partner.id}/change/").content.decode()
        assert "4 failure(s) in a row: connection refused by 127.0.0.1:9" in page
        assert page.count("Send test webhook") == len(partner.WEBHOOK_KINDS)
        r = admin.post(
            f"/admin/partners/partner/{partner.id}/test-webhook/",
            {"test_webhook_kind": "new_mail"},
            follow=True,
        )
        [event] = receiver.wait_for(1)
        assert event.json["event"] == "ping"
        assert f"Test new_mail webhook to {receiver.url}/hook: HTTP 200" in r.content.decode()
        r = admin.post(
            f"/admin/partners/partner/{partner.id}/test-webhook/",
            {"test_webhook_kind": "user_error"},
            follow=True,
        )
        assert "No user_error webhook URL is set." in r.content.decode()
    finally:
        receiver.close()


def test_the_mailbox_page_has_reconnect_pause_and_resume_buttons(admin, failing):
    page = admin.get(f"/admin/mailboxes/mailboxuser/{failing.id}/change/").content.decode()
    for label in ("Reconnect now", "Pause", "Resume"):
        assert f">{label}</button>" in page
    url = f"/admin/mailboxes/mailboxuser/{failing.id}/operate/"
    version = failing.session_version
    r = admin.post(url, {"operate": "reconnect"}, follow=True)
    assert "Reconnect requested for 1 mailbox(es)." in r.content.decode()
    failing.refresh_from_db()
    assert failing.session_version != version
    admin.post(url, {"operate": "pause"})
    failing.refresh_from_db()
    assert failing.status == "paused"
    admin.post(url, {"operate": "resume"})
    failing.refresh_from_db()
    assert failing.paused_at is None
    assert admin.get(url).status_code == 405
