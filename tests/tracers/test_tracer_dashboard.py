"""Tracer results on the dashboard: the TracerLog list and the overview panel."""

from datetime import timedelta

import pytest
from django.utils import timezone

from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider
from superimap.tracers.models import TracerLog


@pytest.fixture
def tracer_rows(plain_connection):
    user = MailboxUser.objects.create(connection=plain_connection, tag="t", enable_tracer=True)
    now = timezone.now()
    for uid, sent, latency in [
        ("fast", 10, 1.0),
        ("slow", 20, 3.0),
        ("lost", 30, None),
        ("old", 7200, 9.0),
    ]:
        sent_at = now - timedelta(seconds=sent)
        TracerLog.objects.create(
            tracer_uid=uid,
            user=user,
            sent_at=sent_at,
            detected_at=None if latency is None else sent_at + timedelta(seconds=latency),
        )
    return user


def test_the_overview_shows_tracers_of_the_last_hour(admin_client, tracer_rows):
    html = admin_client.get("/admin/").content.decode()
    assert "Tracers (last hour)" in html
    assert "2/3</a> detected, median latency 2.00 s" in html


def test_the_tracer_list_shows_latency_and_filters_undetected(admin_client, tracer_rows):
    url = "/admin/tracers/tracerlog/"
    html = admin_client.get(url).content.decode()
    assert "1.00 s" in html and "not detected" in html
    html = admin_client.get(url, {"detected": "no"}).content.decode()
    assert "lost" in html and "fast" not in html and "slow" not in html
    assert admin_client.get(url, {"o": "5"}).status_code == 200  # ordered by latency


def test_smtp_settings_of_a_connection(plain_connection, partner):
    assert plain_connection.smtp_server() == ("", 587, "starttls")
    plain_connection.smtp_host, plain_connection.smtp_port = "smtp.example.com", 465
    assert plain_connection.smtp_server() == ("smtp.example.com", 465, "implicit")
    gmail = Connection(partner=partner, provider=ImapProvider.objects.get(code="GMAIL_OAUTH2"))
    gmail.smtp_host = "ignored.example.com"
    assert gmail.smtp_server() == ("smtp.gmail.com", 587, "starttls")
