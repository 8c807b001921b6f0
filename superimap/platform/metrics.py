"""Prometheus metrics of this process (design.md section 11): the counters and histograms.

Counters live in the process that does the work (engine, worker); `/metrics` on the web
process adds gauges read from the database (superimap/metricsview.py), so one scrape of
`superimap up` shows it all. Engine and worker processes run on their own can expose theirs
with METRICS_PORT; the database gauges (`superimap_engine_mailbox_sessions` among them)
cover every process. The process counters appear only where their service runs.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from superimap.platform.rollups import BOUNDS

# Registered by the services that move them (expose()), so a process without an engine or a
# worker (`superimap web` alone) does not show their counters as a misleading 0.
EMAILS_PROCESSED = Counter(
    "superimap_emails_processed", "New emails persisted by this process's engine", registry=None
)
MAILBOX_SESSIONS = Gauge(
    "superimap_mailbox_sessions", "Mailbox sessions this process runs", registry=None
)
WEBHOOK_ATTEMPTS = Counter(
    "superimap_webhook_attempts",
    "Webhook POST attempts by outcome: delivered; retrying (refused or unreachable, another "
    "attempt is scheduled); failed (refused, no retries left); cancelled (410 or 403); "
    "skipped (no webhook URL); stale (its lease was lost, not recorded)",
    ["outcome"],
    registry=None,
)
# A delivery left pending after an attempt will be tried again: the attempt's outcome is
# "retrying", not the delivery's status (the deliveries gauge counts those as pending).
ATTEMPT_OUTCOMES = {"pending": "retrying"}
MAIL_SKIPPED = Counter(
    "superimap_mail_skipped",
    "Messages this process's engine recorded as skipped (no new_mail), by reason",
    ["reason"],
    registry=None,
)
NODES_TAKEN_OVER = Counter(
    "superimap_engine_nodes_taken_over",
    "Dead engine nodes (lease over, or process gone) whose mailboxes this engine freed",
    registry=None,
)
# Latency histograms (same buckets as the dashboard's rollups; no per-user or per-partner
# labels, so the series stay bounded).
PUSH_TO_COMMIT = Histogram(
    "superimap_push_to_commit_seconds",
    "New mail: the message's INTERNALDATE to the commit of its webhook delivery (engine)",
    buckets=BOUNDS,
    registry=None,
)
COMMIT_TO_DELIVERED = Histogram(
    "superimap_commit_to_delivered_seconds",
    "Webhook delivery: the commit of its row to the partner's 2xx (worker)",
    ["kind"],
    buckets=BOUNDS,
    registry=None,
)
WEBHOOK_RESPONSE = Histogram(
    "superimap_webhook_response_seconds",
    "Time partner endpoints took to answer a webhook POST, by outcome class",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=None,
)
RESPONSE_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
# Its value is read from the database pools (dbpool.py sets the function).
DB_QUEUE = Gauge("superimap_db_queue_length", "Calls waiting for a database thread", registry=None)
# SQLite's write gate between processes (platform/sqlite3/base.py): how often and how long
# this process's write transactions waited for another's turn, and how long it held it.
SQLITE_GATE_WAITS = Counter(
    "superimap_sqlite_gate_waits",
    "SQLite write transactions of this process that found the write gate taken and waited",
    registry=None,
)
SQLITE_GATE_WAIT_SECONDS = Counter(
    "superimap_sqlite_gate_wait_seconds",
    "Seconds this process's SQLite write transactions waited for the write gate",
    registry=None,
)
SQLITE_GATE_TURNS = Counter(
    "superimap_sqlite_gate_turns",
    "SQLite write transactions of this process (turns at the write gate)",
    registry=None,
)
SQLITE_GATE_HELD_SECONDS = Counter(
    "superimap_sqlite_gate_held_seconds",
    "Seconds this process held the SQLite write gate (BEGIN to COMMIT or ROLLBACK)",
    registry=None,
)
SQLITE_GATE_METRICS = (
    SQLITE_GATE_TURNS,
    SQLITE_GATE_WAITS,
    SQLITE_GATE_WAIT_SECONDS,
    SQLITE_GATE_HELD_SECONDS,
)
ENGINE_METRICS = (
    EMAILS_PROCESSED,
    MAILBOX_SESSIONS,
    MAIL_SKIPPED,
    NODES_TAKEN_OVER,
    PUSH_TO_COMMIT,
)
WORKER_METRICS = (WEBHOOK_ATTEMPTS, COMMIT_TO_DELIVERED, WEBHOOK_RESPONSE)
_exposed: set[int] = set()


def expose(metrics) -> None:
    """Show these metrics on this process's /metrics (and METRICS_PORT); idempotent."""
    for metric in metrics:
        if id(metric) not in _exposed:
            REGISTRY.register(metric)
            _exposed.add(id(metric))
