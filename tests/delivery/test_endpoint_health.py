"""Long outages, endpoint health, auto-replay on recovery, 429 + Retry-After and 410 Gone.
A real receiver on 127.0.0.1 and the fake clock: a day passes in a second."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from django.utils import timezone

from superimap.delivery import outbox
from superimap.delivery.models import Delivery, EndpointHealth
from superimap.metricsview import DatabaseCollector
from superimap.partners.models import Partner
from tests.helpers.delivery import make_partner, make_user


def connected_event(partner, clock) -> Delivery:
    delivery = outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, make_user(partner))
    # Due "now" on the test's clock: the event happened at this point of the scenario.
    Delivery.objects.filter(id=delivery.id).update(next_attempt_at=clock())
    return delivery


def delivered_event_ids(receiver) -> Counter:
    return Counter(
        event.json["event_id"] for event in receiver.received if 200 <= event.reply[0] <= 206
    )


def health_of(partner, kind="user_connected") -> EndpointHealth:
    return EndpointHealth.objects.get(partner=partner, kind=kind)


def test_it_delivers_everything_once_after_a_20_hour_outage_without_manual_action(
    seeded_providers, make_receiver, process, clock
):
    down = {"value": True}
    receiver = make_receiver(responses=lambda event: (503, "down") if down["value"] else (200, ""))
    partner = make_partner(receiver.url)
    start = clock()
    events = []
    # One event every 30 minutes for 20 hours while the receiver answers 503; the worker
    # runs every 10 minutes of scenario time.
    while clock() < start + timedelta(hours=20):
        if len(events) < 40 and (clock() - start) >= timedelta(minutes=30 * len(events)):
            events.append(connected_event(partner, clock))
        process()
        clock.advance(600)
    assert len(events) == 40
    assert Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() == 0
    assert Delivery.objects.filter(status=Delivery.Status.FAILED).count() == 0  # still retrying
    health = health_of(partner)
    assert health.state == EndpointHealth.State.FAILING
    assert health.consecutive_failures >= 5

    down["value"] = False
    recovered_at = clock()
    while Delivery.objects.exclude(status=Delivery.Status.DELIVERED).exists():
        assert clock() - recovered_at < timedelta(hours=2), "not delivered soon after recovery"
        process()
        clock.advance(60)

    delivered = delivered_event_ids(receiver)
    assert set(delivered) == {str(e.event_id) for e in events}
    assert set(delivered.values()) == {1}  # exactly once per event_id
    assert health_of(partner).state == EndpointHealth.State.HEALTHY
    assert health_of(partner).consecutive_failures == 0


def test_it_replays_failed_deliveries_of_the_window_oldest_first_at_a_bounded_rate(
    seeded_providers, make_receiver, process, clock, settings
):
    settings.WEBHOOK_RETRY_SCHEDULE = [10]
    settings.WEBHOOK_FAILING_AFTER = 3
    settings.WEBHOOK_AUTO_REPLAY_RATE = 2
    down = {"value": True}
    receiver = make_receiver(responses=lambda event: (500, "") if down["value"] else (200, ""))
    partner = make_partner(receiver.url)
    events = [connected_event(partner, clock) for _ in range(6)]
    process()
    clock.advance(15)
    process()
    assert Delivery.objects.filter(status=Delivery.Status.FAILED).count() == 6
    assert health_of(partner).state == EndpointHealth.State.FAILING
    # One failed delivery is older than the auto-replay window: it stays failed.
    too_old = events[0]
    Delivery.objects.filter(id=too_old.id).update(created_at=timezone.now() - timedelta(hours=73))

    down["value"] = False
    trigger = connected_event(partner, clock)
    clock.advance(1)
    process()  # the new event succeeds: recovery, replay window opened
    assert health_of(partner).state == EndpointHealth.State.HEALTHY
    assert health_of(partner).replay_until is not None
    before = len(receiver.received)

    batches, steps = [], []
    while (count := process()) > 0:
        batches.append(count)
        steps.append({e.json["event_id"] for e in receiver.received[before:]})
        before = len(receiver.received)
        clock.advance(1)
    assert batches == [2, 2, 1]  # at most WEBHOOK_AUTO_REPLAY_RATE per step
    # Oldest first: each step replays the oldest still failed. The POSTs of one step run
    # at once, so they may arrive in either order.
    ids = [str(e.event_id) for e in events]
    assert steps == [set(ids[1:3]), set(ids[3:5]), {ids[5]}]
    assert Delivery.objects.get(id=too_old.id).status == Delivery.Status.FAILED
    assert Delivery.objects.get(id=trigger.id).status == Delivery.Status.DELIVERED
    assert health_of(partner).replay_until is None


def test_it_waits_as_429_retry_after_says_without_using_up_retries(
    seeded_providers, make_receiver, process, clock, settings
):
    settings.WEBHOOK_RETRY_SCHEDULE = [10]  # two attempts per round: 429s must not count
    replies = [(429, "slow down", {"Retry-After": "120"})] * 4
    receiver = make_receiver(responses=replies)
    partner = make_partner(receiver.url)
    first = connected_event(partner, clock)
    process()
    first.refresh_from_db()
    assert first.status == Delivery.Status.PENDING
    assert first.last_status_code == 429
    assert (first.next_attempt_at - clock()).total_seconds() == 120
    # Another delivery to the same endpoint is held until then too.
    second = connected_event(partner, clock)
    assert process() == 0
    second.refresh_from_db()
    assert second.next_attempt_at == first.next_attempt_at
    health = health_of(partner)
    assert health.consecutive_failures == 0 and health.state == EndpointHealth.State.HEALTHY

    for _ in range(2):  # three more 429s (two deliveries, then one)
        clock.set(Delivery.objects.get(id=first.id).next_attempt_at)
        process()
    # The fourth 429 went to whichever of the two POSTs (sent side by side) the receiver
    # answered first: wait until the later hold of the two.
    holds = Delivery.objects.filter(id__in=[first.id, second.id]).values_list(
        "next_attempt_at", flat=True
    )
    clock.set(max(holds))
    process()
    for delivery in (first, second):
        delivery.refresh_from_db()
        assert delivery.status == Delivery.Status.DELIVERED
    assert first.attempts >= 3  # more than the round's two attempts, none counted
    assert [e.reply[0] for e in receiver.received].count(429) == 4
    assert health_of(partner).consecutive_failures == 0


def test_it_caps_retry_after_and_reads_http_dates(
    seeded_providers, make_receiver, process, clock, settings
):
    settings.WEBHOOK_RETRY_AFTER_MAX = 600
    receiver = make_receiver(
        responses=[
            (429, "", {"Retry-After": "86400"}),
            (429, "", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),  # in the past
        ]
    )
    delivery = connected_event(make_partner(receiver.url), clock)
    process()
    delivery.refresh_from_db()
    assert (delivery.next_attempt_at - clock()).total_seconds() == 600
    clock.set(delivery.next_attempt_at)
    process()  # a date in the past means "now": the same run sends it again, and it succeeds
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DELIVERED
    assert [e.reply[0] for e in receiver.received] == [429, 429, 200]


def test_it_disables_the_kind_url_on_410_gone_and_tells_the_operator(
    seeded_providers, make_receiver, process, clock, admin_client
):
    receiver = make_receiver(responses=[(410, "gone")])
    partner = make_partner(receiver.url)
    gone = connected_event(partner, clock)
    process()
    gone.refresh_from_db()
    assert gone.status == Delivery.Status.CANCELLED
    assert "410 Gone" in gone.last_error
    partner = Partner.objects.get(id=partner.id)
    assert partner.user_connected_webhook == ""
    assert partner.new_mail_webhook == f"{receiver.url}/new-mail"  # other kinds untouched
    health = health_of(partner)
    assert health.state == EndpointHealth.State.DISABLED
    assert health.disabled_url == f"{receiver.url}/connected"

    # Later events of that kind are skipped, never sent, until a URL is set again.
    later = connected_event(partner, clock)
    clock.advance(60)
    process()
    later.refresh_from_db()
    assert later.status == Delivery.Status.SKIPPED
    assert len(receiver.received) == 1

    page = admin_client.get("/admin/").content.decode()
    assert "410 Gone" in page and f"{receiver.url}/connected" in page
    metrics = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in DatabaseCollector().collect()
        for sample in family.samples
    }
    assert metrics[("superimap_webhook_endpoints", (("state", "disabled"),))] == 1

    partner.user_connected_webhook = f"{receiver.url}/connected-v2"
    partner.save()
    Delivery.retry_now(Delivery.objects.filter(id=later.id))
    clock.advance(60)
    process()
    later.refresh_from_db()
    assert later.status == Delivery.Status.DELIVERED
    assert health_of(partner).state == EndpointHealth.State.HEALTHY


def test_it_shows_a_failing_endpoint_on_the_dashboard_and_in_metrics(
    seeded_providers, make_receiver, process, clock, admin_client, settings
):
    settings.WEBHOOK_FAILING_AFTER = 2
    receiver = make_receiver(responses=lambda event: (500, ""))
    partner = make_partner(receiver.url)
    connected_event(partner, clock)
    connected_event(partner, clock)
    process()
    assert health_of(partner).state == EndpointHealth.State.FAILING
    page = admin_client.get("/admin/").content.decode()
    assert "failing" in page and partner.name in page and "HTTP 500" in page
    samples = [
        sample
        for family in DatabaseCollector().collect()
        for sample in family.samples
        if sample.name == "superimap_webhook_endpoint_failing"
    ]
    assert [(s.labels, s.value) for s in samples] == [
        ({"partner_id": str(partner.id), "kind": "user_connected"}, 1.0)
    ]


def test_it_reads_retry_after_as_seconds_or_an_http_date():
    from superimap.delivery.http import parse_retry_after

    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:15:20 GMT", now) == 120.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0  # past: now
    for unusable in ("", "soon", "-5", "1.5", "Tue, 14 Nov 2023 22:15:20"):
        assert parse_retry_after(unusable, now) is None


def test_a_503_with_retry_after_counts_as_a_failure_but_waits_as_asked(
    seeded_providers, make_receiver, process, clock
):
    receiver = make_receiver(responses=[(503, "busy", {"Retry-After": "900"})])
    partner = make_partner(receiver.url)
    delivery = connected_event(partner, clock)
    process()
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING and delivery.attempts == 1
    assert delivery.max_attempts == 7  # used up one of the round's attempts
    assert (delivery.next_attempt_at - clock()).total_seconds() == 900  # not the 10 s step
    assert health_of(partner).consecutive_failures == 1


def wait_seconds(delivery, clock) -> float:
    delivery.refresh_from_db()
    return (delivery.next_attempt_at - clock()).total_seconds()


def test_429s_use_no_step_of_the_retry_schedule(seeded_providers, make_receiver, process, clock):
    """Issue 16 item 4: after five 429s with Retry-After, one 500 parked a delivery 17.6 h
    (the schedule's sixth step). The first real failure waits the first step, whatever
    came before it."""
    replies = [(429, "slow down", {"Retry-After": "5"})] * 5 + [(500, "oops")] * 2
    receiver = make_receiver(responses=replies)
    delivery = connected_event(make_partner(receiver.url), clock)
    for _ in range(5):
        process()
        assert wait_seconds(delivery, clock) == 5
        clock.set(delivery.next_attempt_at)
    process()  # the first 500
    assert 8 <= wait_seconds(delivery, clock) <= 12  # 10 s ±20 %, not 77,760 s
    assert delivery.failures == 1 and delivery.attempts == 6
    clock.set(delivery.next_attempt_at)
    process()  # the second 500: the second step
    assert 48 <= wait_seconds(delivery, clock) <= 72
    assert [e.reply[0] for e in receiver.received] == [429] * 5 + [500] * 2


def test_a_429_without_retry_after_waits_the_current_step_without_using_it(
    seeded_providers, make_receiver, process, clock
):
    receiver = make_receiver(responses=[(500, "a"), (429, "b"), (429, "c"), (500, "d")])
    delivery = connected_event(make_partner(receiver.url), clock)
    process()  # failure 1: the first step
    assert 8 <= wait_seconds(delivery, clock) <= 12
    for _ in range(2):  # 429s: as long as the next failure would wait (the second step)
        clock.set(delivery.next_attempt_at)
        process()
        assert 48 <= wait_seconds(delivery, clock) <= 72
    clock.set(delivery.next_attempt_at)
    process()  # failure 2: the second step, still
    assert 48 <= wait_seconds(delivery, clock) <= 72
    assert delivery.failures == 2 and delivery.attempts == 4


def test_a_new_round_starts_at_the_first_step(
    seeded_providers, make_receiver, process, clock, settings
):
    settings.WEBHOOK_RETRY_SCHEDULE = [10, 60, 360]
    receiver = make_receiver(responses=lambda event: (500, "down"))
    delivery = connected_event(make_partner(receiver.url), clock)
    for _ in range(4):
        process()
        delivery.refresh_from_db()
        clock.set(delivery.next_attempt_at)
    assert delivery.status == Delivery.Status.FAILED and delivery.attempts == 4
    assert Delivery.retry_now(Delivery.objects.filter(id=delivery.id)) == 1
    clock.set(Delivery.objects.get(id=delivery.id).next_attempt_at)
    process()
    assert 8 <= wait_seconds(delivery, clock) <= 12  # not the second step (attempt 5)
    assert delivery.attempts == 5 and delivery.failures == 1


def test_a_429_past_its_free_window_counts_against_the_endpoint_and_its_recovery_replays(
    seeded_providers, make_receiver, process, clock, settings
):
    """A receiver that has answered 429 for longer than the free window is not taking its
    mail: the delivery uses its retries (as before) and the endpoint counts the failures too,
    so it shows as failing and its recovery re-queues what failed meanwhile (before, the
    endpoint stayed healthy and the failed delivery waited for a manual retry)."""
    settings.WEBHOOK_RETRY_SCHEDULE = [10]  # two attempts per round; free window: one day
    settings.WEBHOOK_FAILING_AFTER = 2
    limited = {"value": True}
    receiver = make_receiver(
        responses=lambda event: (
            (429, "slow down", {"Retry-After": "60"}) if limited["value"] else (200, "")
        )
    )
    partner = make_partner(receiver.url)
    old = connected_event(partner, clock)
    Delivery.objects.filter(id=old.id).update(created_at=clock() - timedelta(days=2))
    process()
    old.refresh_from_db()
    assert old.status == Delivery.Status.PENDING and old.failures == 1  # a failure, not free
    assert (old.next_attempt_at - clock()).total_seconds() == 60  # at least its Retry-After
    health = health_of(partner)
    assert health.consecutive_failures == 1 and health.state == EndpointHealth.State.HEALTHY
    assert health.paused_until == clock() + timedelta(seconds=60)  # still honoured
    clock.advance(60)
    process()
    old.refresh_from_db()
    assert old.status == Delivery.Status.FAILED
    assert health_of(partner).state == EndpointHealth.State.FAILING

    limited["value"] = False
    clock.advance(60)
    connected_event(partner, clock)
    process()  # the new event's 200: recovered, the auto-replay window opens
    assert health_of(partner).state == EndpointHealth.State.HEALTHY
    process()  # the replay step re-queues the failed delivery, then it is sent
    old.refresh_from_db()
    assert old.status == Delivery.Status.DELIVERED
    assert delivered_event_ids(receiver)[str(old.event_id)] == 1
