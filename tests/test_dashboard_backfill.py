"""A backfill's progress on the user's page of the dashboard (design.md 4.12), and the sweep
action, which asks for a backfill of all mail."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.test import Client
from django.utils import timezone

from superimap.mailboxes.models import MailboxUser


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


def _page(admin: Client, user: MailboxUser) -> str:
    r = admin.get(f"/admin/mailboxes/mailboxuser/{user.id}/change/")
    assert r.status_code == 200
    return r.content.decode()


def test_the_users_page_shows_the_backfill_progress(admin, user):
    assert "Backfill" in _page(admin, user)
    MailboxUser.objects.filter(id=user.id).update(
        backfill_requested_at=timezone.now(),
        backfill_since=datetime(2026, 11, 1, 8, 30, tzinfo=UTC),
        backfill_until_uid=900,
        backfill_done=120,
        backfill_total=400,
    )
    assert "running: 120 / 400 (since 2026-11-01 08:30 UTC)" in _page(admin, user)
    MailboxUser.objects.filter(id=user.id).update(backfill_finished_at=timezone.now())
    assert "done: 120 / 400" in _page(admin, user)


def test_the_sweep_action_asks_for_a_backfill_of_all_mail(admin, user):
    r = admin.post(
        "/admin/mailboxes/mailboxuser/",
        {"action": "sweep_inboxes", "_selected_action": [user.id]},
        follow=True,
    )
    assert r.status_code == 200
    user.refresh_from_db()
    assert user.backfill_requested_at is not None and user.backfill_since is None
    assert "pending: 0 / 0 (all mail)" in _page(admin, user)
