"""Replay and retry are rate limited per partner (issue 15, item 5): a clear 429 JSON error
with Retry-After, nothing queued, and the dashboard's actions honour the same limit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client

from superimap.delivery.models import Delivery, ReplayAllowance
from superimap.mailboxes.models import MailboxUser
from tests.helpers.api import ApiClient, assert_error
from tests.helpers.delivery import delivery_at, iso, replay


@pytest.fixture(autouse=True)
def small_limit(settings):
    settings.WEBHOOK_REPLAY_BURST = 5
    settings.WEBHOOK_REPLAY_PER_SECOND = 1


@pytest.fixture
def alice(plain_connection) -> MailboxUser:
    return MailboxUser.objects.create(connection=plain_connection, tag="alice")


def statuses(deliveries) -> list[str]:
    return [Delivery.objects.get(id=d.id).status for d in deliveries]


def test_it_answers_429_with_retry_after_when_a_replay_exceeds_the_partners_limit(api, alice):
    first = [delivery_at(alice, 1) for _ in range(3)]
    second = [delivery_at(alice, 3) for _ in range(4)]
    assert replay(api, since=iso(0), until=iso(2)).json()["queued"] == 3

    r = replay(api, since=iso(2), until=iso(4))

    error = assert_error(r, 429, "replay_rate_limited")
    assert "4 deliveries" in error["message"] and "2 may be re-queued now" in error["message"]
    assert 1 <= int(r["Retry-After"]) <= 2
    assert statuses(second) == ["delivered"] * 4  # refused whole: nothing queued
    assert statuses(first) == ["pending"] * 3


def test_it_refuses_a_replay_larger_than_the_burst_with_422(api, alice):
    rows = [delivery_at(alice, 1) for _ in range(6)]
    r = replay(api, since=iso(0), until=iso(2))
    error = assert_error(r, 422, "replay_too_large")
    assert "at most 5" in error["message"] and "Split the time range" in error["message"]
    assert not r.has_header("Retry-After")
    assert statuses(rows) == ["delivered"] * 6


def test_the_limit_refills_with_time(api, alice):
    rows = [delivery_at(alice, 1) for _ in range(5)]
    assert replay(api, since=iso(0), until=iso(2)).json()["queued"] == 5
    Delivery.objects.update(status="delivered")
    assert_error(replay(api, since=iso(0), until=iso(2)), 429, "replay_rate_limited")
    # Five seconds later at one a second the bucket is full again.
    allowance = ReplayAllowance.objects.get()
    allowance.refilled_at -= timedelta(seconds=5)
    allowance.save()
    assert replay(api, since=iso(0), until=iso(2)).json()["queued"] == 5
    assert statuses(rows) == ["pending"] * 5


def test_one_partners_replays_do_not_spend_another_partners_limit(api, alice, outsider):
    from superimap.partners.models import Connection

    [delivery_at(alice, 1) for _ in range(5)]
    assert replay(api, since=iso(0), until=iso(2)).json()["queued"] == 5
    other = MailboxUser.objects.create(
        connection=Connection.objects.create(
            partner=outsider, provider=alice.connection.provider, imap_host="imap.example.org"
        ),
        tag="carol",
    )
    [delivery_at(other, 1) for _ in range(5)]
    r = replay(ApiClient(outsider.api_key), since=iso(0), until=iso(2))
    assert r.status_code == 200 and r.json()["queued"] == 5


def test_every_replay_call_costs_at_least_one(api, alice):
    for _ in range(5):
        assert replay(api, since=iso(0), until=iso(2)).json()["queued"] == 0
    assert_error(replay(api, since=iso(0), until=iso(2)), 429, "replay_rate_limited")


def test_the_retry_route_counts_against_the_same_limit(api, alice, settings):
    settings.WEBHOOK_REPLAY_BURST = 1
    failed = [delivery_at(alice, 1, status="failed") for _ in range(2)]
    assert api.post(f"/deliveries/{failed[0].event_id}/retry", {}).status_code == 200
    r = api.post(f"/deliveries/{failed[1].event_id}/retry", {})
    assert_error(r, 429, "replay_rate_limited")
    assert r["Retry-After"] == "1"
    assert statuses(failed) == ["pending", "failed"]


@pytest.fixture
def admin(django_user_model, settings) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-12345678")
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


@pytest.mark.parametrize("action", ["replay", "retry_now"])
def test_the_dashboards_actions_honour_the_partners_limit(admin, api, alice, action):
    status = "failed"
    [delivery_at(alice, 1, status=status) for _ in range(3)]
    assert replay(api, since=iso(0), until=iso(2)).json()["queued"] == 3  # 2 left
    rows = [delivery_at(alice, 3, status=status) for _ in range(4)]

    r = admin.post(
        "/admin/delivery/delivery/",
        {"action": action, "_selected_action": [d.id for d in rows]},
        follow=True,
    )

    page = r.content.decode()
    assert "nothing queued" in page and "Retry in" in page
    assert "0 delivery(ies) queued" in page
    assert statuses(rows) == [status] * 4
    # Within the limit the action works as before.
    r = admin.post(
        "/admin/delivery/delivery/",
        {"action": action, "_selected_action": [d.id for d in rows[:2]]},
        follow=True,
    )
    assert "nothing queued" not in r.content.decode()
    assert statuses(rows) == ["pending"] * 2 + [status] * 2
