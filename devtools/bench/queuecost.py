"""CPU of the delivery queue's SQL per delivery: claim_due and record_outcomes alone.

    python -m devtools.bench.queuecost --out bench-results/queuecost.json [--small-payload]

A fresh SQLite database (or --postgres), the delivery bench's new_mail rows (~2 KB
payloads), then batches of each size claimed and recorded as delivered (200) in this
thread, timed with time.thread_time(): no HTTP, no event loop. With --small-payload the
stored payloads are cut to their sha1 before the runs: the difference is what carrying the
payload in the rows that the claim and the outcome rewrite costs (the side-table question
of issue 20).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

from devtools.bench.delivery import _configure, _insert, _setup


def _shrink_payloads() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "UPDATE delivery_delivery SET payload = "
                "jsonb_build_object('sha1', payload->>'sha1', 'x', 1)"
            )
            cursor.execute("VACUUM FULL delivery_delivery")
        else:
            cursor.execute(
                "UPDATE delivery_delivery SET payload = "
                "json_object('sha1', json_extract(payload, '$.sha1'), 'x', 1)"
            )
            cursor.execute("VACUUM")


def _run(batch: int, rows: int) -> dict:
    from django.utils import timezone

    from superimap.delivery import fairness, queue
    from superimap.delivery.http import PostResult

    caps = fairness.Caps.for_concurrency(10_000)
    claim_cpu = record_cpu = 0.0
    done = 0
    for _ in range(rows // batch):
        now = timezone.now()
        started = time.thread_time()
        claimed = queue.claim_due(
            "bench", batch, now, timedelta(seconds=60), fairness.Shares(caps).room(1)
        )
        claim_cpu += time.thread_time() - started
        outcomes = [queue.Outcome(c, PostResult(200, "ok", "", 3), now) for c in claimed]
        started = time.thread_time()
        queue.record_outcomes("bench", outcomes, timezone.now())
        record_cpu += time.thread_time() - started
        done += len(claimed)
    return {
        "batch": batch,
        "deliveries": done,
        "claim_cpu_ms_per_delivery": round(claim_cpu * 1000 / done, 4),
        "record_cpu_ms_per_delivery": round(record_cpu * 1000 / done, 4),
        "queue_cpu_ms_per_delivery": round((claim_cpu + record_cpu) * 1000 / done, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.queuecost")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=2400, help="deliveries per batch size")
    parser.add_argument("--batches", default="1,12,25,50", help="claim/record batch sizes")
    parser.add_argument("--small-payload", action="store_true")
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.batches.split(",")]
    load = [round(x, 2) for x in os.getloadavg()]
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="superimap-bench-"))
        database_url = None
        if args.postgres:
            from devtools.testing.postgres import PostgresServer

            database_url = stack.enter_context(PostgresServer()).url
        _configure(Path(tmp), database_url, 50)
        from django.db import connections

        user = _setup("http://127.0.0.1:9")  # never contacted
        _insert(user, 0, sum(args.rows // size * size for size in sizes))
        if args.small_payload:
            _shrink_payloads()
        results = [
            {
                "benchmark": "queuecost",
                "db_engine": "postgresql" if args.postgres else "sqlite",
                "payload": "sha1 only" if args.small_payload else "~2 KB new_mail",
                "load_average_at_start": load,
                **_run(size, args.rows),
            }
            for size in sizes
        ]
        connections.close_all()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
