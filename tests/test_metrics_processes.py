"""Metrics of real processes: `superimap up` shows the engine's counters on its /metrics; a
separate `imap-client` shows them on METRICS_PORT and `superimap web` shows its sessions."""

from __future__ import annotations

import urllib.request

import pytest
from django.conf import settings
from django.db import close_old_connections
from django.db import connection as db_connection
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from devtools.testing import free_port
from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner
from tests.helpers.processes import Processes, superimap_env, wait_until


def _samples(url: str) -> dict[str, float]:
    """Unlabelled samples of a /metrics page, by name; {} while it cannot be reached."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def _new_mail() -> int:
    close_old_connections()
    return Delivery.objects.filter(kind="new_mail").count()


@pytest.fixture
def watched(seeded_providers, dovecot) -> MailboxUser:
    dovecot.add_user("metrics-user", "pw")
    connection = Connection.objects.create(
        partner=Partner.objects.create(name="m", new_mail_webhook="http://127.0.0.1:9/m"),
        provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
        imap_host="127.0.0.1",
        imap_port=dovecot.imap_port,
        imap_tls="none",
    )
    return MailboxUser.objects.create(
        connection=connection,
        tag="metrics",
        login_username="metrics-user",
        password="pw",
        connected_at=timezone.now(),
    )


def _env(tmp_path, **extra):
    return superimap_env(
        f"sqlite:///{db_connection.settings_dict['NAME']}",
        settings.VAR_DIR,
        ALLOW_LOOPBACK_IMAP="true",
        ENGINE_REFRESH_SECONDS="1",
        **extra,
    )


def _idle(user_id: int) -> bool:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id).status == "idle"


@pytest.mark.slow
def test_superimap_up_counts_emails_and_sessions_on_its_metrics(watched, dovecot, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with Processes(tmp_path) as procs:
        procs.start(_env(tmp_path), "up", "--port", str(port))
        wait_until(lambda: _idle(watched.id), 60, "the mailbox to be watched")
        dovecot.deliver("metrics-user", make_message("counted", "a@x.test", "b@x.test", "x"))
        wait_until(lambda: _new_mail() == 1, 30, "the new_mail")
        samples = wait_until(
            lambda: (s := _samples(url)).get("superimap_engine_mailbox_sessions") and s,
            15,
            "a heartbeat",
        )
    assert samples["superimap_emails_processed_total"] == 1
    assert samples["superimap_mailbox_sessions"] == 1
    assert samples["superimap_engine_mailbox_sessions"] == 1


@pytest.mark.slow
def test_a_separate_engine_shows_its_counters_on_metrics_port(watched, dovecot, tmp_path):
    web_port, metrics_port = free_port(), free_port()
    with Processes(tmp_path) as procs:
        procs.start(_env(tmp_path, METRICS_PORT=str(metrics_port)), "imap-client")
        procs.start(_env(tmp_path), "web", "--port", str(web_port))
        wait_until(lambda: _idle(watched.id), 60, "the mailbox to be watched")
        dovecot.deliver("metrics-user", make_message("counted", "a@x.test", "b@x.test", "x"))
        wait_until(lambda: _new_mail() == 1, 30, "the new_mail")
        engine = wait_until(
            lambda: _samples(f"http://127.0.0.1:{metrics_port}/metrics"), 15, "engine metrics"
        )
        web = wait_until(
            lambda: (
                (s := _samples(f"http://127.0.0.1:{web_port}/metrics")).get(
                    "superimap_engine_mailbox_sessions"
                )
                and s
            ),
            15,
            "the web's database gauges",
        )
    assert engine["superimap_emails_processed_total"] == 1
    assert engine["superimap_mailbox_sessions"] == 1
    # The web process runs no engine: no engine counters (not a misleading 0), and the
    # heartbeat gauge shows the engine's sessions.
    assert "superimap_mailbox_sessions" not in web
    assert "superimap_emails_processed_total" not in web
    assert web["superimap_engine_mailbox_sessions"] == 1
