"""Which parts are alive (design.md 9): /healthz, the mailbox status a dead engine leaves
behind, and the liveness gauges of /metrics read the same heartbeats.

Engine nodes renew their EngineNode row every second (every refresh without a name lock),
workers their WorkerNode row every second. A part whose heartbeat is older than its limit
is dead (or stuck, which is as bad): an engine node after three refreshes
(3 x ENGINE_REFRESH_SECONDS), a worker after WEBHOOK_WORKER_ALIVE_SECONDS.

/healthz answers 503 when one of this box's engines (the node named ENGINE_NODE_NAME, or
ENGINE_NODE_NAME-1 ... -N with several engine processes: platform/children.py) or this box's
worker (the newest worker row of this host) is dead, when the part this process runs has
no heartbeat after its start-up, when the oldest due webhook has waited longer than
HEALTHZ_BACKLOG_SECONDS, or when the database does not answer. A dead node's row is
deleted by the node that takes its mailboxes over: /healthz then shows no engine for this
box, and the survivors count the takeover (superimap_engine_nodes_taken_over_total).
"""

from __future__ import annotations

import socket
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Min
from django.utils import timezone

from superimap.delivery.models import Delivery, WorkerNode
from superimap.engine.leases import watchable
from superimap.engine.models import EngineNode
from superimap.mailboxes.models import MailboxUser
from superimap.platform import children

# A mailbox held by a dead node, or left unowned while its status still says it is watched.
ENGINE_DOWN = "engine_down"
_WATCHING = {MailboxUser.Status.IDLE, MailboxUser.Status.POLLING, MailboxUser.Status.SYNCING}
# The parts this process runs (runtime.serve): {"engine": node name, "worker": worker id}.
_local: dict[str, str] = {}
_started = time.monotonic()
START_GRACE_SECONDS = 30.0


def runs(part: str, name: str) -> None:
    """This process runs ``part`` ("engine" or "worker") under ``name``."""
    _local[part] = name


def engine_dead_after() -> timedelta:
    return timedelta(seconds=3 * settings.ENGINE_REFRESH_SECONDS)


def worker_dead_after() -> timedelta:
    return timedelta(seconds=settings.WEBHOOK_WORKER_ALIVE_SECONDS)


def live_engine_nodes(now: datetime | None = None) -> set[str]:
    cutoff = (now or timezone.now()) - engine_dead_after()
    return set(EngineNode.objects.filter(last_seen__gte=cutoff).values_list("node_id", flat=True))


def shown_status(user: MailboxUser, live_nodes: set[str]) -> str:
    """The status to show for ``user`` (API, dashboard): ENGINE_DOWN when the engine node
    holding it is dead, or nobody holds it though its stored status says watched."""
    if user.archived or user.connected_at is None:
        return user.status
    if user.owner_node:
        return user.status if user.owner_node in live_nodes else ENGINE_DOWN
    return ENGINE_DOWN if user.status in _WATCHING else user.status


def unwatched_count(now: datetime | None = None) -> int:
    """Connected mailboxes no live engine node holds."""
    live = live_engine_nodes(now)
    rows = MailboxUser.objects.filter(watchable(settings.ALLOW_LOOPBACK_IMAP))
    return rows.exclude(owner_node__in=live).count()


def oldest_due_age(now: datetime) -> float:
    """Seconds the oldest due, unsent webhook has waited past its due time (0: none)."""
    due = Delivery.objects.filter(
        status=Delivery.Status.PENDING, next_attempt_at__lte=now
    ).aggregate(oldest=Min("next_attempt_at"))["oldest"]
    return max(0.0, (now - due).total_seconds()) if due else 0.0


def report() -> tuple[int, dict]:
    """(HTTP status, body) of /healthz."""
    try:
        body = _report(timezone.now())
    except DatabaseError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return 503, {"status": "failing", "problems": [f"database unavailable: {reason}"]}
    return (200 if not body["problems"] else 503), body


def _report(now: datetime) -> dict:
    host = socket.gethostname()
    problems: list[str] = []
    engine_limit = engine_dead_after().total_seconds()
    engines = []
    base = settings.ENGINE_NODE_NAME
    count = children.engine_processes(settings.ENGINE_PROCESSES)
    box_engines = {base, *children.engine_names(base, count)}
    for node in EngineNode.objects.order_by("node_id"):
        age = (now - node.last_seen).total_seconds()
        engines.append(
            {
                "node": node.node_id,
                "host": node.host,
                "heartbeat_age_seconds": round(age, 1),
                "alive": age <= engine_limit,
                "mailboxes": node.mailboxes_held,
                "this_box": node.node_id in box_engines,
            }
        )
    mine = [e for e in engines if e["this_box"]]
    for engine in mine:
        if not engine["alive"]:
            age = engine["heartbeat_age_seconds"]
            problems.append(f"engine {engine['node']}: no heartbeat for {age:.0f} s")
    if not mine and "engine" in _local and _past_start():
        problems.append(f"engine {_local['engine']}: no heartbeat row (freed as dead?)")

    worker_limit = worker_dead_after().total_seconds()
    workers = []
    for row in WorkerNode.objects.order_by("-last_seen"):
        age = (now - row.last_seen).total_seconds()
        workers.append(
            {
                "worker": row.worker_id,
                "host": row.host,
                "heartbeat_age_seconds": round(age, 1),
                "alive": age <= worker_limit and row.released_at is None,
                "this_box": row.host == host,
            }
        )
    local_worker = _local.get("worker")
    ours = [w for w in workers if w["this_box"]]
    if local_worker is not None:
        ours = [w for w in ours if w["worker"] == local_worker]
        if not ours and _past_start():
            problems.append(f"worker {local_worker}: no heartbeat row")
    if ours and not ours[0]["alive"]:
        problems.append(
            f"worker {ours[0]['worker']}: no heartbeat for {ours[0]['heartbeat_age_seconds']:.0f} s"
        )

    oldest_pending = Delivery.objects.filter(status=Delivery.Status.PENDING).aggregate(
        oldest=Min("created_at")
    )["oldest"]
    due_age = oldest_due_age(now)
    limit = settings.HEALTHZ_BACKLOG_SECONDS
    if due_age > limit:
        problems.append(f"oldest due webhook waiting {due_age:.0f} s (limit {limit} s)")
    return {
        "status": "failing" if problems else "ok",
        "problems": problems,
        "engines": engines,
        "workers": workers,
        "deliveries": {
            "oldest_pending_seconds": round((now - oldest_pending).total_seconds(), 1)
            if oldest_pending
            else 0.0,
            "oldest_due_seconds": round(due_age, 1),
            "backlog_limit_seconds": limit,
        },
    }


def _past_start() -> bool:
    return time.monotonic() - _started > START_GRACE_SECONDS
