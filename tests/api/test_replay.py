"""POST /api/v1/deliveries/replay: re-send a time range with the same event_id."""

from __future__ import annotations

import pytest

from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from tests.helpers.api import ApiClient, assert_error
from tests.helpers.delivery import T0, delivery_at, iso, replay


@pytest.fixture
def alice(plain_connection) -> MailboxUser:
    return MailboxUser.objects.create(connection=plain_connection, tag="alice")


@pytest.fixture
def bob(plain_connection) -> MailboxUser:
    return MailboxUser.objects.create(connection=plain_connection, tag="bob")


def test_it_replays_a_time_range_with_the_same_event_ids(api, alice):
    before = delivery_at(alice, 0.5)
    inside = [delivery_at(alice, 1), delivery_at(alice, 1.5, status="failed")]
    after = delivery_at(alice, 2)
    r = replay(api, since=iso(1), until=iso(2))
    assert r.status_code == 200
    assert r.json() == {"queued": 2, "not_replayable": 0}
    for delivery in inside:
        delivery.refresh_from_db()
        assert delivery.status == "pending"
        assert delivery.max_attempts == delivery.attempts + 7
        assert delivery.next_attempt_at > T0
    assert {str(d.event_id) for d in Delivery.objects.filter(status="pending")} == {
        str(d.event_id) for d in inside
    }
    for delivery in (before, after):
        delivery.refresh_from_db()
        assert delivery.status == "delivered"


def test_it_filters_by_event_user_tag_and_status(api, alice, bob):
    mail = delivery_at(alice, 1)
    delivery_at(alice, 1, kind="user_connected")
    delivery_at(bob, 1)
    delivery_at(alice, 1, status="failed")
    r = replay(
        api, since=iso(0), until=iso(3), event="new_mail", user_tag="alice", status="delivered"
    )
    assert r.json() == {"queued": 1, "not_replayable": 0}
    assert list(Delivery.objects.filter(status="pending")) == [mail]


def test_it_leaves_pending_ones_and_counts_purged_ones(api, alice):
    delivery_at(alice, 1, status="pending")
    delivery_at(alice, 1, payload_purged_at=T0)
    r = replay(api, since=iso(0), until=iso(3))
    assert r.json() == {"queued": 0, "not_replayable": 1}


def test_it_only_touches_the_callers_deliveries(api, alice, outsider):
    from superimap.partners.models import Connection, ImapProvider

    other = MailboxUser.objects.create(
        connection=Connection.objects.create(
            partner=outsider, provider=ImapProvider.objects.get(code="PLAIN"), imap_host="x"
        ),
        tag="alice",
    )
    theirs = delivery_at(other, 1)
    assert replay(api, since=iso(0), until=iso(3)).json()["queued"] == 0
    theirs.refresh_from_db()
    assert theirs.status == "delivered"


@pytest.mark.parametrize(
    "body",
    [
        {"since": iso(2), "until": iso(1)},
        {"since": iso(1)},
        {"since": "yesterday", "until": iso(1)},
        {"since": "2026-01-01T00:00:00", "until": "2026-01-02T00:00:00"},
        {"since": iso(0), "until": iso(1), "status": "pending"},
        {"since": iso(0), "until": iso(1), "event": "lost_mail"},
        {"since": iso(0), "until": iso(1), "extra": 1},
    ],
)
def test_it_refuses_bad_bodies_with_json_422(api, alice, body):
    assert_error(replay(api, **body), 422, "validation_error")


def test_it_needs_an_api_key(alice):
    anonymous = ApiClient(None)
    assert_error(
        anonymous.post("/deliveries/replay", {"since": iso(0), "until": iso(1)}),
        401,
        "unauthorized",
    )
