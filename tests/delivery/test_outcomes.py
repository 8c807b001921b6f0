"""What the worker does with each answer: retry schedule, success, 403, no URL, timeout,
redirect. A real receiver on 127.0.0.1 and a controllable clock; no sleeping for retries."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

from aiohttp import web

from devtools.testing.webhook_receiver import HANG
from superimap.delivery import outbox
from superimap.delivery.models import Delivery, DeliveryAttempt
from superimap.mailboxes.models import MailboxUser
from tests.helpers.delivery import make_partner, make_user

SCHEDULE = [10, 60, 360, 2160, 12960, 77760]  # the default WEBHOOK_RETRY_SCHEDULE


def connected_event(partner, **user_fields) -> Delivery:
    return outbox.enqueue_user_event(
        Delivery.Kind.USER_CONNECTED, make_user(partner, **user_fields)
    )


def test_retry_schedule_then_failed_with_every_attempt_kept(
    seeded_providers, make_receiver, process, clock
):
    long_body = "".join(f"{i:04d}" for i in range(1280))  # 5 KiB, every prefix distinct
    receiver = make_receiver(responses=lambda event: (500, long_body))
    delivery = connected_event(make_partner(receiver.url))
    clock.set(delivery.next_attempt_at)

    assert process() == 1
    for number, gap in enumerate(SCHEDULE, start=1):
        delivery.refresh_from_db()
        assert delivery.status == Delivery.Status.PENDING and delivery.attempts == number
        actual = (delivery.next_attempt_at - clock()).total_seconds()
        assert gap * 0.8 <= actual <= gap * 1.2, (number, actual)
        # Not before it is due.
        clock.set(delivery.next_attempt_at - timedelta(milliseconds=500))
        assert process() == 0
        assert len(receiver.received) == number
        clock.set(delivery.next_attempt_at)
        assert process() == 1
        receiver.wait_for(number + 1)

    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED
    assert delivery.attempts == 7 and delivery.last_status_code == 500
    assert delivery.last_error == "HTTP 500"
    attempts = list(DeliveryAttempt.objects.filter(delivery=delivery).order_by("number"))
    assert [a.number for a in attempts] == list(range(1, 8))
    for attempt in attempts:
        assert attempt.status_code == 500
        assert attempt.response_excerpt == long_body[:1024]
        assert attempt.error == ""
    # Failed is final: nothing more is sent, however late it gets.
    clock.advance(86400 * 30)
    assert process() == 0
    assert len(receiver.received) == 7
    assert len({e.json["event_id"] for e in receiver.received}) == 1


def test_500s_then_200_is_delivered_once(seeded_providers, make_receiver, process, clock):
    receiver = make_receiver(responses=[(500, "a"), (500, "b")])
    delivery = connected_event(make_partner(receiver.url))
    for _ in range(3):
        clock.set(Delivery.objects.get(id=delivery.id).next_attempt_at)
        assert process() == 1
    clock.advance(86400)
    assert process() == 0
    assert [e.reply for e in receiver.received] == [(500, "a"), (500, "b"), (200, "OK")]
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DELIVERED and delivery.attempts == 3
    assert delivery.last_error == "" and delivery.last_status_code == 200
    codes = list(DeliveryAttempt.objects.order_by("number").values_list("status_code", flat=True))
    assert codes == [500, 500, 200]


def test_any_2xx_up_to_206_is_success_and_207_is_not(
    seeded_providers, make_receiver, process, clock
):
    receiver = make_receiver(responses=[(201, ""), (206, ""), (207, ""), (204, "")])
    partner = make_partner(receiver.url)
    deliveries = [connected_event(partner) for _ in range(3)]
    clock.set(max(d.next_attempt_at for d in deliveries))
    for delivery in deliveries:
        # One at a time so the scripted replies map to deliveries in order.
        Delivery.objects.exclude(id=delivery.id).filter(attempts=0).update(
            next_attempt_at=clock() + timedelta(days=1)
        )
        Delivery.objects.filter(id=delivery.id).update(next_attempt_at=clock())
        assert process() == 1
    statuses = [Delivery.objects.get(id=d.id).status for d in deliveries]
    assert statuses == ["delivered", "delivered", "pending"]


def test_403_archives_the_user_and_stops_but_not_a_tracer_user(
    seeded_providers, make_receiver, process, clock
):
    receiver = make_receiver(responses=lambda event: (403, "forbidden"))
    partner = make_partner(receiver.url)
    plain = connected_event(partner)
    tracer = connected_event(partner, enable_tracer=True)
    clock.set(max(plain.next_attempt_at, tracer.next_attempt_at))
    assert process() == 2
    clock.advance(86400)
    assert process() == 0
    assert len(receiver.received) == 2
    for delivery in (plain, tracer):
        delivery.refresh_from_db()
        assert delivery.status == Delivery.Status.CANCELLED
        assert delivery.last_status_code == 403
        assert DeliveryAttempt.objects.get(delivery=delivery).status_code == 403
    assert MailboxUser.objects.get(id=plain.user_id).archived is True
    assert MailboxUser.objects.get(id=plain.user_id).archived_at is not None
    assert MailboxUser.objects.get(id=tracer.user_id).archived is False


def test_no_url_is_skipped_then_retry_now_delivers(seeded_providers, make_receiver, process, clock):
    receiver = make_receiver()
    partner = make_partner(None)
    delivery = connected_event(partner)
    assert delivery.status == Delivery.Status.SKIPPED
    assert "no user_connected webhook URL" in delivery.last_error
    clock.advance(60)
    assert process() == 0
    assert receiver.received == []

    partner.user_connected_webhook = f"{receiver.url}/connected"
    partner.save()
    assert Delivery.retry_now(Delivery.objects.filter(id=delivery.id)) == 1
    clock.advance(60)
    assert process() == 1
    [event] = receiver.wait_for(1)
    assert event.json["event_id"] == str(delivery.event_id)
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DELIVERED


def test_url_removed_after_enqueue_is_skipped_without_a_request(
    seeded_providers, make_receiver, process, clock
):
    receiver = make_receiver()
    partner = make_partner(receiver.url)
    delivery = connected_event(partner)
    partner.user_connected_webhook = ""
    partner.save()
    clock.advance(60)
    assert process() == 1
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SKIPPED
    assert receiver.received == []


def test_hanging_receiver_is_cut_at_the_timeout_and_retried(
    seeded_providers, make_receiver, process, clock
):
    receiver = make_receiver(responses=[HANG])
    delivery = connected_event(make_partner(receiver.url))
    clock.set(delivery.next_attempt_at)
    assert process(timeout_seconds=1) == 1
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING and delivery.last_status_code is None
    assert delivery.last_error == "timed out"
    [attempt] = DeliveryAttempt.objects.filter(delivery=delivery)
    assert attempt.error == "timed out" and attempt.status_code is None
    assert 900 <= attempt.duration_ms < 5000
    assert 8 <= (delivery.next_attempt_at - clock()).total_seconds() <= 12

    clock.set(delivery.next_attempt_at)
    assert process(timeout_seconds=1) == 1
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DELIVERED
    assert len(receiver.received) == 2


def test_redirects_are_not_followed(seeded_providers, process, clock):
    hits: list[str] = []

    async def start(request):
        hits.append(request.path)
        raise web.HTTPFound("/final")

    async def final(request):
        hits.append(request.path)
        return web.Response(text="followed")

    async def scenario():
        app = web.Application()
        app.router.add_post("/start", start)
        app.router.add_route("*", "/final", final)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return runner, f"http://127.0.0.1:{port}"

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner, url = asyncio.run_coroutine_threadsafe(scenario(), loop).result(5)
    try:
        partner = make_partner(None, user_connected_webhook=f"{url}/start")
        delivery = connected_event(partner)
        clock.set(delivery.next_attempt_at)
        assert process() == 1
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert hits == ["/start"]
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING
    assert delivery.last_status_code == 302 and delivery.last_error == "HTTP 302"
    assert DeliveryAttempt.objects.get(delivery=delivery).status_code == 302
