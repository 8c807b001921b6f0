"""/healthz reports each part (issue 16 item 6): engine nodes and workers with their
heartbeat age, the delivery backlog; 503 when this box's engine or worker is dead or the
oldest due webhook waited too long. A mailbox held by a dead engine node shows
engine_down in the API and the dashboard, and /metrics has the gauges the README's alert
rules use."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from superimap.delivery import outbox
from superimap.delivery.models import Delivery, WorkerNode
from superimap.engine.models import EngineNode
from superimap.mailboxes.models import MailboxUser

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(plain_connection) -> MailboxUser:
    return MailboxUser.objects.create(
        connection=plain_connection,
        tag="alice",
        password="alice-imap-secret",
        connected_at=timezone.now(),
    )


def heartbeat(node: str, age: float, **fields) -> EngineNode:
    now = timezone.now()
    return EngineNode.objects.create(
        node_id=node,
        host=fields.pop("host", "box"),
        pid=1,
        version="t",
        started_at=now - timedelta(hours=1),
        last_seen=now - timedelta(seconds=age),
        **fields,
    )


def worker_beat(worker: str, age: float, host: str | None = None) -> WorkerNode:
    now = timezone.now()
    return WorkerNode.objects.create(
        worker_id=worker,
        host=host or socket.gethostname(),
        pid=1,
        version="t",
        started_at=now - timedelta(hours=1),
        last_seen=now - timedelta(seconds=age),
    )


def get_healthz():
    response = Client().get("/healthz")
    assert response["Content-Type"] == "application/json"
    return response.status_code, response.json()


def test_it_reports_live_parts_with_their_heartbeat_age(settings):
    settings.ENGINE_NODE_NAME = "box-engine"
    heartbeat("box-engine", 1, mailboxes_held=7)
    heartbeat("other-engine", 2, host="elsewhere")
    worker_beat("box:1", 0.5)
    status, body = get_healthz()
    assert status == 200 and body["status"] == "ok" and body["problems"] == []
    engines = {e["node"]: e for e in body["engines"]}
    assert engines["box-engine"]["alive"] and engines["box-engine"]["this_box"]
    assert engines["box-engine"]["mailboxes"] == 7
    assert 0.5 <= engines["box-engine"]["heartbeat_age_seconds"] < 5
    assert not engines["other-engine"]["this_box"]
    [worker] = body["workers"]
    assert worker["alive"] and worker["this_box"]
    assert body["deliveries"]["oldest_due_seconds"] == 0


def test_it_answers_503_when_this_boxs_engine_is_dead(settings):
    settings.ENGINE_NODE_NAME = "box-engine"
    heartbeat("box-engine", 3 * settings.ENGINE_REFRESH_SECONDS + 5)
    worker_beat("box:1", 0.5)
    status, body = get_healthz()
    assert status == 503 and body["status"] == "failing"
    assert body["problems"] == ["engine box-engine: no heartbeat for 20 s"]


def test_another_boxs_dead_engine_is_shown_but_not_a_failure_here(settings):
    settings.ENGINE_NODE_NAME = "box-engine"
    heartbeat("box-engine", 1)
    heartbeat("far-engine", 300)
    status, body = get_healthz()
    assert status == 200
    assert {e["node"]: e["alive"] for e in body["engines"]} == {
        "box-engine": True,
        "far-engine": False,
    }


def test_it_answers_503_when_this_boxs_newest_worker_is_dead(settings):
    worker_beat("box:1", 3600)  # an old one that was replaced: does not count
    worker_beat("box:2", settings.WEBHOOK_WORKER_ALIVE_SECONDS + 3)
    worker_beat("far:1", 0.5, host="elsewhere")
    status, body = get_healthz()
    assert status == 503
    # 8 s old when written, 9 s once half a second has passed before the check.
    assert body["problems"] in (
        ["worker box:2: no heartbeat for 8 s"],
        ["worker box:2: no heartbeat for 9 s"],
    )
    worker_beat("box:3", 0.2)  # a new worker on this box
    assert get_healthz()[0] == 200


def test_it_answers_503_when_the_oldest_due_webhook_waited_too_long(settings, user):
    settings.HEALTHZ_BACKLOG_SECONDS = 60
    delivery = outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, user)
    Delivery.objects.filter(id=delivery.id).update(
        next_attempt_at=timezone.now() - timedelta(seconds=120)
    )
    status, body = get_healthz()
    assert status == 503 and body["problems"] == ["oldest due webhook waiting 120 s (limit 60 s)"]
    assert body["deliveries"]["oldest_due_seconds"] >= 120
    # A delivery waiting for its retry (an endpoint down) is not a backlog.
    Delivery.objects.filter(id=delivery.id).update(
        next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    status, body = get_healthz()
    assert status == 200 and body["deliveries"]["oldest_due_seconds"] == 0
    assert body["deliveries"]["oldest_pending_seconds"] >= 0


def test_mailboxes_of_a_dead_engine_show_engine_down_in_the_api(api, user, settings):
    heartbeat("alive", 1)
    heartbeat("dead", 3 * settings.ENGINE_REFRESH_SECONDS + 1)
    MailboxUser.objects.filter(id=user.id).update(owner_node="dead", status="idle")
    code = user.connection.provider.code
    listed = api.get(f"/connections/{code}/users").json()
    assert [u["status"] for u in listed] == ["engine_down"]
    assert api.get(f"/connections/{code}/users/{user.tag}").json()["status"] == "engine_down"
    MailboxUser.objects.filter(id=user.id).update(owner_node="alive")
    assert api.get(f"/connections/{code}/users/{user.tag}").json()["status"] == "idle"
    # Nobody holds it, but its stored status says watched: not watched.
    MailboxUser.objects.filter(id=user.id).update(owner_node="")
    assert api.get(f"/connections/{code}/users/{user.tag}").json()["status"] == "engine_down"


def test_the_dashboard_shows_engine_down(admin_client, user, settings):
    heartbeat("dead", 3 * settings.ENGINE_REFRESH_SECONDS + 1)
    MailboxUser.objects.filter(id=user.id).update(owner_node="dead", status="idle")
    page = admin_client.get("/admin/mailboxes/mailboxuser/").content.decode()
    assert "engine down" in page


def test_metrics_show_heartbeat_ages_backlog_and_unwatched_mailboxes(settings, user):
    heartbeat("dead", 40)
    worker_beat("box:1", 12)
    MailboxUser.objects.filter(id=user.id).update(owner_node="dead", status="idle")
    text = Client().get("/metrics").content.decode()
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in _samples(text)}
    assert lines['superimap_engine_node_heartbeat_age_seconds{node="dead"}'] >= 40
    assert lines[f'superimap_worker_heartbeat_age_seconds{{host="{socket.gethostname()}"}}'] >= 12
    assert lines["superimap_mailboxes_unwatched"] == 1
    assert lines["superimap_oldest_due_delivery_seconds"] == 0


def _samples(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_dashboard_overview_names_dead_parts_and_unwatched_mailboxes(
    admin_client, user, settings
):
    settings.ENGINE_NODE_NAME = "dead"
    heartbeat("dead", 3 * settings.ENGINE_REFRESH_SECONDS + 1)
    MailboxUser.objects.filter(id=user.id).update(owner_node="dead", status="idle")
    page = admin_client.get("/admin/").content.decode()
    assert "1 connected mailbox not watched" in page
    assert "/healthz: engine dead: no heartbeat for 16 s" in page


def test_the_dashboard_lists_engine_nodes_and_workers_with_their_heartbeat(admin_client):
    heartbeat("node-1", 1)
    worker_beat("box:1", 100)
    nodes = admin_client.get("/admin/engine/enginenode/").content.decode()
    workers = admin_client.get("/admin/delivery/workernode/").content.decode()
    assert "alive, 1 s ago" in nodes
    assert "DEAD, 100 s ago" in workers
