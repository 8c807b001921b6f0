"""Worker metrics move when the worker sends webhooks to a real receiver."""

from __future__ import annotations

from devtools.testing.metrics import scrape, value
from superimap.delivery import outbox
from superimap.delivery.models import Delivery
from tests.helpers.delivery import make_partner, make_user

ATTEMPTS = "superimap_webhook_attempts_total"


def test_it_counts_webhook_attempts_by_outcome(seeded_providers, make_receiver, process):
    receiver = make_receiver(responses=[(200, "OK"), (500, "")])
    partner = make_partner(receiver.url)
    outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, make_user(partner))
    outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, make_user(partner))
    before = scrape()
    assert value(before, "superimap_deliveries", status="pending") == 2

    assert process() == 2

    after = scrape()
    assert (
        value(after, ATTEMPTS, outcome="delivered") - value(before, ATTEMPTS, outcome="delivered")
        == 1
    )
    # The 500 leaves its delivery pending, to be tried again: the attempt is "retrying".
    assert (
        value(after, ATTEMPTS, outcome="retrying") - value(before, ATTEMPTS, outcome="retrying")
        == 1
    )
    assert value(after, ATTEMPTS, outcome="pending") == 0
    assert value(after, "superimap_deliveries", status="delivered") == 1
    assert value(after, "superimap_deliveries", status="pending") == 1


def test_it_measures_latency_and_rolls_outcomes_up(
    seeded_providers, make_receiver, process, monkeypatch
):
    from superimap import rollupwriter
    from superimap.platform import rollups

    recorder = rollups.Recorder()
    monkeypatch.setattr(rollups, "RECORDER", recorder)
    receiver = make_receiver(responses=[(200, "OK"), (503, "")])
    partner = make_partner(receiver.url)
    outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, make_user(partner))
    outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, make_user(partner))
    before = scrape()

    assert process() == 2

    after = scrape()
    commit = "superimap_commit_to_delivered_seconds_count"
    response = "superimap_webhook_response_seconds_count"
    assert (
        value(after, commit, kind="user_connected") - value(before, commit, kind="user_connected")
        == 1
    )
    assert value(after, response, outcome="2xx") - value(before, response, outcome="2xx") == 1
    assert value(after, response, outcome="5xx") - value(before, response, outcome="5xx") == 1
    rows = recorder.take()
    assert sum(v["delivered"] for _, v in rows) == 1
    assert sum(v["failed_attempts"] for _, v in rows) == 1
    assert sum(sum(v["commit_to_delivered"]) for _, v in rows) == 1

    rollupwriter.write("worker-a", rows)
    from superimap.engine.models import MinuteRollup

    stored = MinuteRollup.objects.get(source="worker-a")
    assert (stored.delivered, stored.failed_attempts) == (1, 1)
