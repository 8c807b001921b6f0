"""The admin dashboard: login lockout, write-only secrets, drill-down and actions."""

import pytest
from django.test import Client
from django.utils import timezone

from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser, MailLog
from superimap.partners.models import Connection, ImapProvider

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def fast_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("boss", "boss@example.com", PASSWORD)


@pytest.fixture
def admin(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user, backend="django.contrib.auth.backends.ModelBackend")
    return client


@pytest.fixture
def user(plain_connection) -> MailboxUser:
    return MailboxUser.objects.create(
        connection=plain_connection,
        tag="alice",
        email="alice@example.com",
        password="alice-imap-secret",
        oauth_refresh_token="alice-refresh-token",
        connected_at=timezone.now(),
    )


def login(client: Client, password: str, ip: str = "127.0.0.1"):
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": "boss", "password": password},
        REMOTE_ADDR=ip,
    )


def changelist_tags(response) -> set[str]:
    return {u.tag for u in response.context["cl"].result_list}


def test_it_logs_in(client, admin_user):
    r = login(client, PASSWORD)
    assert r.status_code == 302
    assert r["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_it_refuses_a_wrong_password(client, admin_user):
    assert login(client, "wrong").status_code == 200
    assert client.get("/admin/").status_code == 302


def test_it_locks_out_after_three_bad_logins(client, admin_user):
    for _ in range(3):
        login(client, "wrong")
    r = login(client, PASSWORD)
    assert r.status_code == 429
    assert client.get("/admin/").status_code == 302


def test_it_does_not_lock_out_another_ip(client, admin_user):
    for _ in range(3):
        login(client, "wrong", ip="10.0.0.1")
    assert login(Client(), PASSWORD, ip="10.0.0.2").status_code == 302


def test_it_never_renders_user_secrets(admin, user):
    r = admin.get(f"/admin/mailboxes/mailboxuser/{user.id}/change/")
    assert r.status_code == 200
    assert b"alice-imap-secret" not in r.content
    assert b"alice-refresh-token" not in r.content
    assert b"- encrypted -" in r.content


def test_it_keeps_the_stored_password_when_the_field_is_left_empty(admin, user):
    r = admin.get(f"/admin/mailboxes/mailboxuser/{user.id}/change/")
    form = r.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None}
    data.update(
        connection=user.connection_id, password="", oauth_refresh_token="", email="new@example.com"
    )
    data["connected_at_0"], data["connected_at_1"] = "2025-01-01", "00:00:00"
    r = admin.post(f"/admin/mailboxes/mailboxuser/{user.id}/change/", data)
    assert r.status_code == 302, r.context["adminform"].form.errors
    user.refresh_from_db()
    assert user.email == "new@example.com"
    assert user.password == "alice-imap-secret"
    assert user.oauth_refresh_token == "alice-refresh-token"


def test_it_never_renders_the_connection_client_secret(admin, partner):
    connection = Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="GMAIL_OAUTH2"),
        oauth_client_id="cid",
        oauth_client_secret="gmail-client-secret",
    )
    r = admin.get(f"/admin/partners/connection/{connection.id}/change/")
    assert r.status_code == 200
    assert b"gmail-client-secret" not in r.content


def test_it_never_renders_mailbox_secrets_on_the_partner_page(admin, partner, user):
    r = admin.get(f"/admin/partners/partner/{partner.id}/change/")
    assert r.status_code == 200
    assert b"alice-imap-secret" not in r.content
    assert b"alice-refresh-token" not in r.content


def test_it_edits_the_user_error_and_user_recovered_urls(admin, partner):
    r = admin.get(f"/admin/partners/partner/{partner.id}/change/")
    assert r.status_code == 200
    assert b'name="user_error_webhook"' in r.content
    assert b'name="user_recovered_webhook"' in r.content


def test_it_links_partners_to_their_connections(admin, partner, plain_connection):
    r = admin.get("/admin/partners/partner/")
    url = f"/admin/partners/connection/?partner__id__exact={partner.id}"
    assert url.encode() in r.content
    r = admin.get(url)
    assert r.status_code == 200
    assert list(r.context["cl"].result_list) == [plain_connection]


def test_it_links_connections_to_their_users(admin, plain_connection, user):
    r = admin.get("/admin/partners/connection/")
    url = f"/admin/mailboxes/mailboxuser/?connection__id__exact={plain_connection.id}"
    assert url.encode() in r.content
    r = admin.get(url)
    assert r.status_code == 200
    assert changelist_tags(r) == {"alice"}


def run_action(admin, action: str, *users):
    return admin.post(
        "/admin/mailboxes/mailboxuser/",
        {"action": action, "_selected_action": [u.id for u in users]},
    )


def test_it_archives_and_restores_users(admin, user):
    assert run_action(admin, "archive_users", user).status_code == 302
    user.refresh_from_db()
    assert user.archived is True
    run_action(admin, "restore_users", user)
    user.refresh_from_db()
    assert user.archived is False


def test_it_refuses_to_restore_over_an_active_tag(admin, user):
    user.archive()
    MailboxUser.objects.create(connection=user.connection, tag="alice")
    run_action(admin, "restore_users", user)
    user.refresh_from_db()
    assert user.archived is True


def test_it_toggles_tracers(admin, user):
    run_action(admin, "enable_tracers", user)
    user.refresh_from_db()
    assert user.enable_tracer is True
    run_action(admin, "disable_tracers", user)
    user.refresh_from_db()
    assert user.enable_tracer is False


@pytest.mark.parametrize(
    "state, expected",
    [
        ("active", {"active", "tracer", "failed"}),
        ("archived", {"archived"}),
        ("tracer", {"tracer"}),
        ("auth_failed", {"failed"}),
        ("needs_attention", {"failed"}),
    ],
)
def test_it_filters_users_by_state(admin, plain_connection, state, expected):
    MailboxUser.objects.create(connection=plain_connection, tag="active")
    MailboxUser.objects.create(connection=plain_connection, tag="archived", archived=True)
    MailboxUser.objects.create(connection=plain_connection, tag="tracer", enable_tracer=True)
    MailboxUser.objects.create(
        connection=plain_connection,
        tag="failed",
        status="auth_failed",
        failing_since=timezone.now(),
        error_notified_at=timezone.now(),
    )
    r = admin.get("/admin/mailboxes/mailboxuser/", {"state": state})
    assert r.status_code == 200
    assert changelist_tags(r) == expected


@pytest.mark.parametrize(
    "params, expected",
    [
        ({}, {"<kept@t>", "<gone@t>", "<again@t>"}),
        ({"status": "delivered"}, {"<kept@t>"}),
        ({"status": "skipped"}, {"<gone@t>", "<again@t>"}),
        ({"reason": "expunged"}, {"<gone@t>"}),
        ({"reason": "duplicate"}, {"<again@t>"}),
    ],
)
def test_it_filters_mail_logs_by_status_and_reason(admin, user, params, expected):
    for uid, (message_id, reason) in enumerate(
        [("<kept@t>", ""), ("<gone@t>", "expunged"), ("<again@t>", "duplicate")], start=1
    ):
        MailLog.objects.create(
            user=user, uid=uid, uid_validity=1, message_id=message_id, skipped_reason=reason
        )
    r = admin.get("/admin/mailboxes/maillog/", params)
    assert r.status_code == 200
    page = r.content.decode()
    shown = {m for m in ("<kept@t>", "<gone@t>", "<again@t>") if m.strip("<>") in page}
    assert shown == expected


def make_delivery(user, status: str) -> Delivery:
    return Delivery.objects.create(
        kind="user_connected",
        partner=user.connection.partner,
        user=user,
        payload={},
        status=status,
        attempts=7,
        next_attempt_at=timezone.now(),
    )


def test_it_retries_selected_deliveries(admin, user):
    failed, delivered = make_delivery(user, "failed"), make_delivery(user, "delivered")
    r = admin.post(
        "/admin/delivery/delivery/",
        {"action": "retry_now", "_selected_action": [failed.id, delivered.id]},
    )
    assert r.status_code == 302
    failed.refresh_from_db()
    delivered.refresh_from_db()
    assert (failed.status, failed.max_attempts) == ("pending", 14)
    assert delivered.status == "delivered"


def test_it_replays_selected_deliveries_delivered_ones_too(admin, user):
    delivered, failed = make_delivery(user, "delivered"), make_delivery(user, "failed")
    pending, purged = make_delivery(user, "pending"), make_delivery(user, "delivered")
    Delivery.objects.filter(id=purged.id).update(payload_purged_at=timezone.now())
    r = admin.post(
        "/admin/delivery/delivery/",
        {
            "action": "replay",
            "_selected_action": [d.id for d in (delivered, failed, pending, purged)],
        },
        follow=True,
    )
    assert "2 delivery(ies) queued to be sent again." in r.content.decode()
    assert "1 had their payload purged" in r.content.decode()
    statuses = [Delivery.objects.get(id=d.id) for d in (delivered, failed, pending, purged)]
    assert [d.status for d in statuses] == ["pending", "pending", "pending", "delivered"]
    assert statuses[0].event_id == delivered.event_id and statuses[0].max_attempts == 14


def test_it_retries_all_failed_deliveries_of_a_partner(admin, user, outsider):
    selected, other_failed = make_delivery(user, "delivered"), make_delivery(user, "failed")
    foreign = Delivery.objects.create(
        kind="user_connected",
        partner=outsider,
        payload={},
        status="failed",
        next_attempt_at=timezone.now(),
    )
    admin.post(
        "/admin/delivery/delivery/",
        {"action": "retry_all_failed_for_partner", "_selected_action": [selected.id]},
    )
    other_failed.refresh_from_db()
    foreign.refresh_from_db()
    assert other_failed.status == "pending"
    assert foreign.status == "failed"


def test_it_shows_the_delivery_change_page(admin, user):
    delivery = make_delivery(user, "failed")
    assert admin.get(f"/admin/delivery/delivery/{delivery.id}/change/").status_code == 200


def test_the_delivery_change_page_shows_the_stored_payload_as_json(admin, user):
    delivery = make_delivery(user, "failed")
    delivery.payload = {"user_tag": "Zoë", "email": None}
    delivery.save()
    page = admin.get(f"/admin/delivery/delivery/{delivery.id}/change/").content.decode()
    assert "{&quot;user_tag&quot;: &quot;Zoë&quot;, &quot;email&quot;: null}" in page


def test_it_shows_the_overview_on_the_dashboard_index(admin_client, plain_connection):
    from superimap.delivery.models import Delivery
    from superimap.mailboxes.models import MailboxUser

    user = MailboxUser.objects.create(
        connection=plain_connection, tag="t", status=MailboxUser.Status.AUTH_FAILED
    )
    Delivery.objects.create(
        kind="new_mail",
        partner=plain_connection.partner,
        user=user,
        payload={},
        status=Delivery.Status.FAILED,
        next_attempt_at=user.created_at,
    )
    html = admin_client.get("/admin/").content.decode()
    assert "Overview" in html
    assert "Authentication failed" in html
    assert "?status__exact=failed" in html


def test_every_dashboard_list_and_add_page_renders(admin_client, user):
    from django.contrib import admin as django_admin
    from django.urls import NoReverseMatch, reverse

    for model in django_admin.site._registry:
        meta = model._meta
        changelist = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        assert admin_client.get(changelist).status_code == 200, changelist
        try:
            add = reverse(f"admin:{meta.app_label}_{meta.model_name}_add")
        except NoReverseMatch:
            continue
        assert admin_client.get(add).status_code in (200, 403), add


def test_it_warns_about_a_connection_without_certificate_verification(admin, plain_connection):
    plain_connection.imap_tls_verify = False
    plain_connection.save()
    listing = admin.get("/admin/partners/connection/").content.decode()
    assert "TLS certificate verification is off" in listing
    page = admin.get(f"/admin/partners/connection/{plain_connection.id}/change/").content.decode()
    assert "TLS certificate verification is off" in page


def test_it_shows_no_warning_for_a_verified_connection(admin, plain_connection):
    listing = admin.get("/admin/partners/connection/").content.decode()
    assert "verification is off" not in listing and "without TLS" not in listing


def test_it_refuses_a_broken_ca_bundle_on_the_connection_form(admin, plain_connection):
    page = admin.get(f"/admin/partners/connection/{plain_connection.id}/change/")
    form = page.context["adminform"].form
    data = {name: form[name].value() or "" for name in form.fields}
    data.update(imap_tls_ca="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    response = admin.post(f"/admin/partners/connection/{plain_connection.id}/change/", data)
    assert response.status_code == 200  # the form again, with the error
    assert "The CA bundle is not a valid PEM certificate bundle" in response.content.decode()
    plain_connection.refresh_from_db()
    assert plain_connection.imap_tls_ca == ""


# --- partner secrets: a prefix only, revealed once at creation and on rotation ---------------


def test_the_partner_page_shows_only_a_prefix_of_its_secrets(admin, partner):
    r = admin.get(f"/admin/partners/partner/{partner.id}/change/")
    assert r.status_code == 200
    assert partner.api_key.encode() not in r.content
    assert partner.webhook_secret.encode() not in r.content
    assert partner.api_key[:6].encode() in r.content
    assert b"- encrypted -" in r.content
    listing = admin.get("/admin/partners/partner/")
    assert partner.api_key.encode() not in listing.content


def test_a_new_partners_secrets_are_revealed_once(admin, db):
    from superimap.partners.models import Partner

    r = admin.post("/admin/partners/partner/add/", {"name": "Fresh app"}, follow=True)
    assert r.status_code == 200
    partner = Partner.objects.get(name="Fresh app")
    assert partner.api_key.encode() in r.content
    assert partner.webhook_secret.encode() in r.content
    again = admin.get(f"/admin/partners/partner/{partner.id}/change/")
    assert partner.api_key.encode() not in again.content
    assert partner.webhook_secret.encode() not in again.content


@pytest.mark.parametrize("action", ["rotate_api_key", "rotate_webhook_secret"])
def test_rotating_a_secret_reveals_the_new_one_once(admin, partner, action):
    from superimap.partners.models import Partner

    old_key, old_secret = partner.api_key, partner.webhook_secret
    r = admin.post(
        "/admin/partners/partner/",
        {"action": action, "_selected_action": [partner.id]},
        follow=True,
    )
    assert r.status_code == 200
    partner = Partner.objects.get(id=partner.id)
    if action == "rotate_api_key":
        assert partner.api_key != old_key and partner.webhook_secret == old_secret
        assert partner.api_key.encode() in r.content
        assert Partner.for_api_key(old_key).key_in_grace  # the API's grace, data routes only
        assert Partner.for_api_key(partner.api_key) == partner
    else:
        assert partner.webhook_secret != old_secret and partner.api_key == old_key
        assert partner.webhook_secret.encode() in r.content
    again = admin.get(f"/admin/partners/partner/{partner.id}/change/")
    assert partner.api_key.encode() not in again.content
    assert partner.webhook_secret.encode() not in again.content


def test_it_edits_a_users_folders_and_refuses_an_unknown_flag(admin, user):
    url = f"/admin/mailboxes/mailboxuser/{user.id}/change/"
    form = admin.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None}
    data.update(connection=user.connection_id, password="", oauth_refresh_token="")
    data["connected_at_0"], data["connected_at_1"] = "2025-01-01", "00:00:00"
    r = admin.post(url, {**data, "folders": '["INBOX", "\\\\Spam"]'})
    assert r.status_code == 200 and "unknown special-use flag" in r.content.decode()
    r = admin.post(url, {**data, "folders": '["INBOX", "\\\\Junk"]'})
    assert r.status_code == 302, r.context["adminform"].form.errors
    user.refresh_from_db()
    assert user.folders == ["INBOX", "\\Junk"]
    assert b"Other folders" in admin.get(url).content
