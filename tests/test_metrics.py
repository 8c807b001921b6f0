"""The Prometheus endpoint."""

from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser


def test_it_serves_database_gauges(client, plain_connection):
    user = MailboxUser.objects.create(
        connection=plain_connection, tag="m", status=MailboxUser.Status.IDLE
    )
    Delivery.objects.create(
        kind="new_mail",
        partner=plain_connection.partner,
        user=user,
        payload={},
        next_attempt_at=user.created_at,
    )
    r = client.get("/metrics")
    assert r.status_code == 200
    text = r.content.decode()
    assert 'superimap_mailboxes{status="idle"} 1.0' in text
    assert 'superimap_deliveries{status="pending"} 1.0' in text
    assert "superimap_oldest_pending_delivery_seconds" in text


def test_it_requires_the_token_when_one_is_set(client, settings, db):
    settings.METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 401
    r = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret")
    assert r.status_code == 200


def test_it_reports_calls_waiting_for_a_database_thread(transactional_db):
    import asyncio
    import threading

    from devtools.testing.metrics import scrape, value
    from superimap.platform.dbpool import DbPool

    release = threading.Event()
    pool = DbPool(size=1)

    async def scenario():
        blocker = asyncio.create_task(pool.run(release.wait, 10))
        waiting = [asyncio.create_task(pool.run(lambda: None)) for _ in range(3)]
        await asyncio.sleep(0.2)
        during = await asyncio.to_thread(scrape)
        release.set()
        await asyncio.gather(blocker, *waiting)
        return during

    try:
        during = asyncio.run(scenario())
    finally:
        release.set()
        pool.shutdown()
    assert value(during, "superimap_db_queue_length") == 3
    assert value(scrape(), "superimap_db_queue_length") == 0


def test_it_refuses_metrics_on_the_web_port_in_production_without_a_token(client, settings, db):
    settings.PRODUCTION = True
    settings.METRICS_TOKEN = ""
    r = client.get("/metrics")
    assert r.status_code == 403
    assert b"superimap_" not in r.content
    settings.METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


def test_the_metrics_port_serves_the_database_gauges_for_a_web_process(plain_connection):
    from prometheus_client import generate_latest

    from superimap.metricsview import port_registry
    from superimap.platform.metrics import WORKER_METRICS, expose

    expose(WORKER_METRICS)  # what a worker process registers

    MailboxUser.objects.create(connection=plain_connection, tag="m")
    text = generate_latest(port_registry(with_database=True)).decode()
    assert 'superimap_mailboxes{status="new"} 1.0' in text
    assert "superimap_webhook_attempts_total" in text
    assert "superimap_mailboxes{" not in generate_latest(port_registry(False)).decode()
