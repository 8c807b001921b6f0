import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from superimap.delivery.models import Delivery, DeliveryAttempt
from superimap.mailboxes.models import MailboxUser
from tests.helpers.api import assert_error


@pytest.fixture
def user(plain_connection) -> MailboxUser:
    return MailboxUser.objects.create(connection=plain_connection, tag="alice")


def make_delivery(user, status="failed", kind="new_mail", attempts=7) -> Delivery:
    return Delivery.objects.create(
        kind=kind,
        partner=user.connection.partner,
        user=user,
        message_id=f"<{uuid.uuid4()}@example.com>" if kind == "new_mail" else "",
        payload={"sha1": "x"},
        status=status,
        attempts=attempts,
        next_attempt_at=timezone.now(),
    )


def test_it_lists_deliveries_newest_first(api, user):
    first, second = make_delivery(user), make_delivery(user, status="delivered")
    r = api.get("/deliveries")
    assert r.status_code == 200
    assert [d["event_id"] for d in r.json()] == [str(second.event_id), str(first.event_id)]
    assert r.json()[0]["user_tag"] == "alice"


def test_it_filters_by_status(api, user):
    failed = make_delivery(user, status="failed")
    make_delivery(user, status="delivered")
    r = api.get("/deliveries", status="failed")
    assert [d["event_id"] for d in r.json()] == [str(failed.event_id)]


def test_it_filters_by_kind(api, user):
    make_delivery(user, kind="new_mail")
    connected = make_delivery(user, kind="user_connected")
    r = api.get("/deliveries", kind="user_connected")
    assert [d["event_id"] for d in r.json()] == [str(connected.event_id)]


def test_it_refuses_an_unknown_status_filter(api, user):
    assert_error(api.get("/deliveries", status="lost"), 422, "validation_error")


def test_it_limits_the_list(api, user):
    for _ in range(3):
        make_delivery(user)
    assert len(api.get("/deliveries", limit=2).json()) == 2
    assert_error(api.get("/deliveries", limit=0), 422)


def test_it_lists_deliveries_without_n_plus_1(api, user, django_assert_max_num_queries):
    for _ in range(5):
        delivery = make_delivery(user)
        for number in (1, 2):
            DeliveryAttempt.objects.create(
                delivery=delivery,
                number=number,
                started_at=timezone.now(),
                url="http://127.0.0.1:9/",
                status_code=500,
            )
    with django_assert_max_num_queries(3):
        r = api.get("/deliveries")
    assert len(r.json()) == 5
    assert [a["number"] for a in r.json()[0]["attempt_log"]] == [1, 2]


def test_it_retries_a_failed_delivery(api, user):
    delivery = make_delivery(user, status="failed", attempts=7)
    r = api.post(f"/deliveries/{delivery.event_id}/retry")
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "pending"
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    assert delivery.max_attempts == 14


@pytest.mark.parametrize("status", ["skipped", "cancelled"])
def test_it_retries_skipped_and_cancelled_deliveries(api, user, status):
    delivery = make_delivery(user, status=status, attempts=0)
    assert api.post(f"/deliveries/{delivery.event_id}/retry").status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "pending"


@pytest.mark.parametrize("status", ["delivered", "pending"])
def test_it_refuses_to_retry_a_delivered_or_pending_delivery(api, user, status):
    delivery = make_delivery(user, status=status)
    assert_error(api.post(f"/deliveries/{delivery.event_id}/retry"), 409)
    delivery.refresh_from_db()
    assert delivery.status == status


def test_it_answers_404_for_an_unknown_event(api, user):
    assert_error(api.post(f"/deliveries/{uuid.uuid4()}/retry"), 404)


def test_it_answers_422_for_a_malformed_event_id(api, user):
    assert_error(api.post("/deliveries/not-a-uuid/retry"), 422)


def test_it_hides_deliveries_from_another_partner(outsider_api, user):
    make_delivery(user)
    assert outsider_api.get("/deliveries").json() == []


def test_it_stops_another_partner_retrying_a_delivery(outsider_api, user):
    delivery = make_delivery(user, status="failed")
    assert_error(outsider_api.post(f"/deliveries/{delivery.event_id}/retry"), 404)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.max_attempts) == ("failed", 7)


def test_it_filters_by_the_user_error_and_user_recovered_kinds(api, user):
    error = make_delivery(user, kind="user_error")
    recovered = make_delivery(user, kind="user_recovered")
    make_delivery(user, kind="user_connected")
    assert [d["event_id"] for d in api.get("/deliveries", kind="user_error").json()] == [
        str(error.event_id)
    ]
    assert [d["event_id"] for d in api.get("/deliveries", kind="user_recovered").json()] == [
        str(recovered.event_id)
    ]


def test_a_user_shows_since_when_it_has_been_failing(api, user):
    assert api.get("/connections/PLAIN/users/alice").json()["failing_since"] is None
    since = timezone.now()
    MailboxUser.objects.filter(id=user.id).update(status="tls_failed", failing_since=since)
    body = api.get("/connections/PLAIN/users/alice").json()
    assert body["status"] == "tls_failed"
    assert abs(parse_datetime(body["failing_since"]) - since) < timedelta(milliseconds=1)


def test_it_pages_with_the_next_cursor_and_keeps_the_body_a_list(api, user):
    made = [make_delivery(user) for _ in range(5)]
    newest_first = [str(d.event_id) for d in reversed(made)]
    r = api.get("/deliveries", limit=2)
    assert [d["event_id"] for d in r.json()] == newest_first[:2]
    cursor = r["Next-Cursor"]
    assert r["Link"] == f'</api/v1/deliveries?limit=2&cursor={cursor}>; rel="next"'
    seen = [d["event_id"] for d in r.json()]
    while "Next-Cursor" in r:
        r = api.get("/deliveries", limit=2, cursor=r["Next-Cursor"])
        seen += [d["event_id"] for d in r.json()]
    assert seen == newest_first
    assert "Link" not in r


def test_it_lists_the_deliveries_since_a_time(api, user):
    old, new = make_delivery(user), make_delivery(user)
    Delivery.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(hours=2))
    since = (timezone.now() - timedelta(hours=1)).isoformat()
    r = api.get("/deliveries", since=since)
    assert [d["event_id"] for d in r.json()] == [str(new.event_id)]
    assert "Next-Cursor" not in r


def test_it_refuses_a_since_without_a_time_zone_or_a_bad_cursor(api, user):
    assert_error(api.get("/deliveries", since="2026-01-01T00:00:00"), 422, "invalid_field")
    assert_error(api.get("/deliveries", since="yesterday"), 422, "validation_error")
    assert_error(api.get("/deliveries", cursor="0"), 422, "validation_error")


def test_the_next_page_link_never_carries_the_api_key(client, partner, user):
    for _ in range(3):
        make_delivery(user)
    r = client.get("/api/v1/deliveries", {"api_key": partner.api_key, "limit": 1})
    assert r.status_code == 200 and len(r.json()) == 1
    assert "api_key" not in r["Link"] and partner.api_key not in r["Link"]
    assert r["Link"] == f'</api/v1/deliveries?limit=1&cursor={r["Next-Cursor"]}>; rel="next"'
