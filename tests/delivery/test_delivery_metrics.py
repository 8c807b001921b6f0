"""Worker metrics move when the worker sends webhooks to a real receiver."""

from __future__ import annotations

from superimap.delivery import outbox
from superimap.delivery.models import Delivery
from superimap.testing.metrics import scrape, value
from tests.delivery.helpers import make_partner, make_user

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
