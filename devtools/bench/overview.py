"""How long the dashboard's front page takes with a big database.

    python -m devtools.bench.overview --deliveries 10000000 --mailboxes 10000 \\
        --out docs/bench/overview.json [--postgres] [--renders 10]

Fills a fresh database (SQLite in a temporary folder, or a private PostgreSQL) with
--mailboxes mailboxes (most idle; a few hundred backing off on one host, some with failed
logins), --deliveries webhook deliveries over the last 30 days (98 % delivered, 1 % failed,
the newest 1 % pending), a day of per-minute rollups of four processes, a failing endpoint,
engine nodes and workers; then renders GET /admin/ as a logged-in operator --renders times
(the first one is a warm-up, reported apart) and reports the times. Rows are written with
plain SQL executemany in transactions of 100,000.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

BATCH = 100_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.overview")
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--mailboxes", type=int, default=10_000)
    parser.add_argument("--renders", type=int, default=10)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-results/overview.json"))
    args = parser.parse_args(argv)
    result = run(args)
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    results.append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def run(args: argparse.Namespace) -> dict:
    load = os.getloadavg()[0]
    with ExitStack() as stack:
        var_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="overview-")))
        url = f"sqlite:///{var_dir / 'bench.sqlite3'}"
        if args.postgres:
            from devtools.testing.postgres import PostgresServer

            url = stack.enter_context(PostgresServer()).url
        os.environ.update(
            SUPERIMAP_ENV="test",
            VAR_DIR=str(var_dir),
            DATABASE_URL=url,
            DJANGO_SETTINGS_MODULE="superimap.settings",
            ALLOW_LOOPBACK_IMAP="true",
            LOG_LEVEL="WARNING",
        )
        from django.core.management import call_command

        from superimap.platform import prepare

        prepare.setup()
        call_command("migrate", interactive=False, verbosity=0)
        started = time.monotonic()
        partner_id, user_ids = _fill_mailboxes(args.mailboxes)
        _fill_deliveries(args.deliveries, partner_id, user_ids)
        _fill_rollups_and_parts(partner_id)
        fill_seconds = time.monotonic() - started
        _analyze()
        times, queries = _render(args.renders)
    return {
        "benchmark": "overview",
        "backend": "postgres" if args.postgres else "sqlite",
        "deliveries": args.deliveries,
        "mailboxes": args.mailboxes,
        "fill_seconds": round(fill_seconds, 1),
        "first_render_ms": times[0],
        "render_ms": {
            "p50": statistics.median(times[1:]),
            "max": max(times[1:]),
            "all": times[1:],
        },
        "queries_per_render": queries,
        "load_average_1m": load,
        "python": platform.python_version(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _fill_mailboxes(count: int) -> tuple[int, list[int]]:
    from django.utils import timezone

    from superimap.mailboxes.models import MailboxUser
    from superimap.partners.models import Connection, ImapProvider, Partner

    partner = Partner.objects.create(name="Bench", new_mail_webhook="http://127.0.0.1:9/new-mail")
    provider = ImapProvider.objects.get(code="LOOPBACK_PLAIN")
    good = Connection.objects.create(
        partner=partner, provider=provider, imap_host="127.0.0.1", imap_port=143, imap_tls="none"
    )
    other = Partner.objects.create(name="Bench 2", new_mail_webhook="http://127.0.0.1:9/n")
    bad = Connection.objects.create(
        partner=other, provider=provider, imap_host="127.0.0.2", imap_port=143, imap_tls="none"
    )
    now = timezone.now()
    rows = []
    for i in range(count):
        status, connection, error = MailboxUser.Status.IDLE, good, ""
        if i % 40 == 0:
            status, connection, error = MailboxUser.Status.BACKING_OFF, bad, "connection refused"
        elif i % 97 == 0:
            status, error = MailboxUser.Status.AUTH_FAILED, "LOGIN failed"
        rows.append(
            MailboxUser(
                connection=connection,
                tag=f"user{i}",
                email=f"user{i}@bench.test",
                password=f"pass{i}",
                connected_at=now,
                status=status,
                last_error=error,
                owner_node="bench-node",
            )
        )
    MailboxUser.objects.bulk_create(rows, batch_size=2000)
    return partner.id, list(MailboxUser.objects.values_list("id", flat=True))


def _fill_deliveries(count: int, partner_id: int, user_ids: list[int]) -> None:
    from django.db import connection, transaction

    from superimap.delivery.models import Delivery

    table = Delivery._meta.db_table
    columns = (
        "event_id, kind, partner_id, user_id, message_id, dedup_key, status, "
        "attempts, max_attempts, failures, next_attempt_at, claimed_by, last_status_code, "
        "last_error, created_at, delivered_at"
    )
    sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * 16)})"
    adapt = connection.ops.adapt_datetimefield_value
    now = datetime.now(UTC)
    span = timedelta(days=30).total_seconds()
    rng = random.Random(7)
    pending_from = int(count * 0.99)
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA synchronous = OFF")
    started = time.monotonic()
    for start in range(0, count, BATCH):
        rows = []
        for i in range(start, min(start + BATCH, count)):
            created = now - timedelta(seconds=span * (count - i) / count)
            if i >= pending_from:
                status, delivered, failures, code = "pending", None, 0, None
            elif rng.random() < 0.01:
                status, delivered, failures, code = "failed", None, 8, 500
            else:
                status, delivered, failures, code = "delivered", created, 0, 200
            rows.append(
                (
                    uuid.UUID(int=rng.getrandbits(128)).hex,
                    "new_mail",
                    partner_id,
                    user_ids[i % len(user_ids)],
                    f"<m{i}@bench.test>",
                    "",
                    status,
                    1,
                    8,
                    failures,
                    adapt(created),
                    "",
                    code,
                    "",
                    adapt(created),
                    adapt(delivered + timedelta(milliseconds=40)) if delivered else None,
                )
            )
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(sql, rows)
        done = min(start + BATCH, count)
        rate = done / (time.monotonic() - started)
        print(f"  {done:,} deliveries ({rate:,.0f}/s)", flush=True)


def _fill_rollups_and_parts(partner_id: int) -> None:
    from django.utils import timezone

    from superimap.delivery.models import EndpointHealth, WorkerNode
    from superimap.engine.models import EngineNode, MinuteRollup
    from superimap.platform import rollups

    now = timezone.now()
    current = now.replace(second=0, microsecond=0)
    rng = random.Random(3)
    rows = []
    for source in ("engine-a", "engine-b", "worker-a", "worker-b"):
        for ago in range(24 * 60):
            push = [0] * rollups.BUCKETS
            commit = [0] * rollups.BUCKETS
            mails = rng.randint(100, 400)
            for _ in range(20):
                push[rng.randint(0, 5)] += mails // 20
                commit[rng.randint(0, 4)] += mails // 20
            rows.append(
                MinuteRollup(
                    minute=current - timedelta(minutes=ago),
                    source=source,
                    new_mails=mails if source.startswith("engine") else 0,
                    delivered=mails if source.startswith("worker") else 0,
                    failed_attempts=rng.randint(0, 5) if source.startswith("worker") else 0,
                    push_to_commit=push if source.startswith("engine") else [0] * rollups.BUCKETS,
                    commit_to_delivered=commit
                    if source.startswith("worker")
                    else [0] * rollups.BUCKETS,
                    backlog=rng.randint(0, 50) if source.startswith("worker") else None,
                    backlog_oldest_seconds=rng.random() * 5
                    if source.startswith("worker")
                    else None,
                )
            )
    MinuteRollup.objects.bulk_create(rows, batch_size=2000)
    EndpointHealth.objects.create(
        partner_id=partner_id,
        kind="new_mail",
        state=EndpointHealth.State.FAILING,
        consecutive_failures=12,
        failing_since=now - timedelta(minutes=5),
        last_error="HTTP 502",
    )
    for node in ("bench-node", "other-node"):
        EngineNode.objects.create(
            node_id=node,
            host="bench",
            pid=1,
            version="bench",
            started_at=now,
            last_seen=now,
            mailboxes_held=5000,
            capacity=10000,
        )
    for i in range(4):
        WorkerNode.objects.create(
            worker_id=f"bench:{i}",
            host="bench",
            pid=i,
            version="bench",
            started_at=now,
            last_seen=now,
        )


def _analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _render(renders: int) -> tuple[list[float], int]:
    from django.contrib.auth import get_user_model
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    boss = get_user_model().objects.create_superuser("boss", "boss@bench.test", "x")
    client = Client()
    client.force_login(boss)
    times = []
    queries = 0
    for _ in range(renders + 1):
        reset_queries()
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get("/admin/")
            times.append(round((time.perf_counter() - started) * 1000, 1))
        assert response.status_code == 200, response.status_code
        assert b"chart-throughput-hour" in response.content
        queries = len(captured)
        slowest = sorted(captured.captured_queries, key=lambda q: -float(q["time"]))[:3]
    print("slowest queries of the last render:")
    for q in slowest:
        print(f"  {float(q['time']) * 1000:.1f} ms  {q['sql'][:300]}")
    return times, queries


if __name__ == "__main__":
    raise SystemExit(main())
