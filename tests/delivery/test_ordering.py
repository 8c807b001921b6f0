"""Per-user order (issue 16 item 1): a user's lifecycle event goes out only after every
earlier delivery of that user is final, and nothing of a user goes out after its
user_disconnected; mail stays parallel. The real Worker and claim, a real receiver."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from superimap.delivery import outbox, queue
from superimap.delivery.http import PostResult
from superimap.delivery.models import Delivery
from tests.helpers.delivery import make_partner, make_user

LEASE = timedelta(seconds=60)
LIFECYCLE = ["user_connected", "user_error", "user_recovered", "user_disconnected"]


def new_mail(user, n: int = 0) -> Delivery:
    payload = {"sha1": f"sha-{n}", "user_tag": user.tag, "subject": f"mail {n}"}
    return outbox.enqueue(Delivery.Kind.NEW_MAIL, user, payload, message_id=f"<{n}@o.test>")


def disconnected(user) -> Delivery:
    return outbox.enqueue_user_event(Delivery.Kind.USER_DISCONNECTED, user)


def sent(receiver) -> list[tuple[str, str, int]]:
    """(path, event_id, status answered) per request, in arrival order."""
    return [(e.path, e.json["event_id"], e.reply[0]) for e in receiver.received]


@pytest.mark.parametrize("kind", LIFECYCLE)
def test_a_lifecycle_event_waits_for_an_earlier_mail_in_back_off(
    seeded_providers, make_receiver, process, clock, kind
):
    receiver = make_receiver(responses=[(500, "down")])
    urls = {f"{k}_webhook": f"{receiver.url}/{k}" for k in LIFECYCLE}
    user = make_user(make_partner(receiver.url, **urls))
    mail = new_mail(user)
    event = outbox.enqueue(kind, user, {"sha1": "s", "user_tag": user.tag})
    clock.set(timezone.now() + timedelta(seconds=1))

    assert process() == 1  # the mail fails; the lifecycle event is held, not sent
    assert sent(receiver) == [("/new-mail", str(mail.event_id), 500)]
    clock.set(Delivery.objects.get(id=mail.id).next_attempt_at)
    assert process() == 2  # the retry, then the lifecycle event
    assert sent(receiver) == [
        ("/new-mail", str(mail.event_id), 500),
        ("/new-mail", str(mail.event_id), 200),
        (f"/{kind}", str(event.event_id), 200),
    ]


def test_a_lifecycle_event_waits_for_an_earlier_delivery_in_flight(seeded_providers):
    user = make_user(make_partner("http://127.0.0.1:9"))
    mail = new_mail(user)
    gone = disconnected(user)
    now = timezone.now() + timedelta(seconds=1)

    [in_flight] = queue.claim_due("node-a", 1, now, LEASE)
    assert in_flight.id == mail.id
    assert queue.claim_due("node-b", 10, now, LEASE) == []
    result = PostResult(200, "OK", "", 3)
    queue.record_outcomes("node-a", [queue.Outcome(in_flight, result, now)], now)
    assert [c.id for c in queue.claim_due("node-b", 10, now, LEASE)] == [gone.id]


def test_mail_stays_parallel_within_a_user_and_across_users(seeded_providers):
    partner = make_partner("http://127.0.0.1:9")
    busy, other = make_user(partner), make_user(partner)
    first = new_mail(busy, 1)
    now = timezone.now() + timedelta(seconds=1)
    [in_flight] = queue.claim_due("node-a", 1, now, LEASE)
    assert in_flight.id == first.id

    second = new_mail(busy, 2)
    held = disconnected(busy)
    connected = outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, other)
    other_mail = new_mail(other, 3)
    claimed = {c.id for c in queue.claim_due("node-b", 10, now, LEASE)}
    # The busy user's later mail is not held by its earlier one, the other user's events are
    # not held by the busy user's; only the busy user's user_disconnected waits.
    assert claimed == {second.id, connected.id, other_mail.id}
    assert Delivery.objects.get(id=held.id).attempts == 0


def test_nothing_of_a_user_goes_out_after_its_user_disconnected(
    seeded_providers, make_receiver, process, clock
):
    receiver = make_receiver()
    user = make_user(make_partner(receiver.url))
    mail = new_mail(user)
    gone = disconnected(user)
    assert process() == 2
    assert [path for path, _, _ in sent(receiver)] == ["/new-mail", "/disconnected"]

    # A replay of the mail alone (or "Retry now", or auto-replay after an outage) after the
    # partner was told the user left: cancelled at claim, not sent.
    assert Delivery.replay(Delivery.objects.filter(id=mail.id)) == 1
    clock.advance(1)
    assert process() == 0
    assert len(receiver.received) == 2
    mail.refresh_from_db()
    assert mail.status == Delivery.Status.CANCELLED
    assert mail.last_error == queue.SUPERSEDED_ERROR

    # A replay of both (a receiver rebuilding its data) keeps their order.
    assert Delivery.replay(Delivery.objects.filter(id__in=[mail.id, gone.id])) == 2
    clock.advance(1)
    assert process() == 2
    assert [path for path, _, _ in sent(receiver)[2:]] == ["/new-mail", "/disconnected"]


def test_a_skipped_user_disconnected_cancels_nothing(
    seeded_providers, make_receiver, process, clock
):
    receiver = make_receiver(responses=[(500, "down")])
    partner = make_partner(receiver.url, user_disconnected_webhook="")
    user = make_user(partner)
    mail = new_mail(user)
    clock.set(timezone.now() + timedelta(seconds=1))
    assert process() == 1
    gone = disconnected(user)  # no URL: skipped, never sent
    assert gone.status == Delivery.Status.SKIPPED
    clock.set(Delivery.objects.get(id=mail.id).next_attempt_at)
    assert process() == 1
    assert Delivery.objects.get(id=mail.id).status == Delivery.Status.DELIVERED
    assert [status for _, _, status in sent(receiver)] == [500, 200]
