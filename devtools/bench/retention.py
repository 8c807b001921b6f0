"""Retention soak: does the SQLite file stop growing while mail keeps arriving?

    python -m devtools.bench.retention --out bench-results/retention.json \
        [--minutes 10] [--rate 50] [--retention-seconds 60] [--mail-kib 8]

The real Worker delivers new_mail rows created at --rate per second to a receiver in its
own process, and purges payloads older than --retention-seconds (standing in for
WEBHOOK_RETENTION_DAYS, so a soak of minutes shows what days would). Every 10 s it
samples the database and WAL file sizes and row counts. Rows and attempts are kept by
design, so the file still grows by their metadata; the report gives both slopes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from devtools.bench.delivery import _configure, _receiver_process, _setup


def _insert_mail(user, first: int, count: int, body: str) -> None:
    from django.db import connection, transaction
    from django.utils import timezone

    from superimap.delivery.models import Delivery
    from superimap.delivery.payloads import new_mail_payload

    rows = []
    for i in range(first, first + count):
        message_id = f"<soak-{i}@superimap.test>"
        raw = (
            f"From: s@example.com\r\nTo: r@example.org\r\nSubject: soak {i}\r\n"
            f"Message-ID: {message_id}\r\n\r\n{body}\r\n"
        ).encode()
        payload = new_mail_payload(
            provider_code="PLAIN",
            user_tag=user.tag,
            raw=raw,
            envelope={"subject": f"soak {i}", "message_id": message_id},
            uid=i + 1,
            uid_validity=1,
            folder="INBOX",
            internal_date=None,
        )
        rows.append(
            Delivery(
                kind=Delivery.Kind.NEW_MAIL,
                partner=user.connection.partner,
                user=user,
                message_id=message_id,
                payload=payload,
                next_attempt_at=timezone.now(),
            )
        )
    try:
        with transaction.atomic():
            Delivery.objects.bulk_create(rows)
    finally:
        connection.close()


def _sample(db_path: Path, started: float) -> dict:
    from django.db import connection

    from superimap.delivery.models import Delivery

    try:
        counts = {
            "rows": Delivery.objects.count(),
            "with_payload": Delivery.objects.filter(payload_purged_at__isnull=True).count(),
            "pending": Delivery.objects.filter(status=Delivery.Status.PENDING).count(),
        }
    finally:
        connection.close()
    wal = db_path.with_name(db_path.name + "-wal")
    return {
        "t": round(time.monotonic() - started, 1),
        "db_bytes": db_path.stat().st_size,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        **counts,
    }


async def _soak(user, args, db_path: Path) -> tuple[list[dict], dict]:
    from superimap.delivery.retention import Purger
    from superimap.delivery.worker import Worker
    from superimap.platform.dbpool import DbPool

    pool = DbPool()
    worker = Worker(pool, "soak", poll_interval=0.05)
    worker.purger = Purger(retention=timedelta(seconds=args.retention_seconds))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40000)[
        : args.mail_kib * 1024
    ]
    samples: list[dict] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    t0 = time.monotonic()
    total = int(args.minutes * 60 * args.rate)
    per_tick = max(1, args.rate // 10)
    made = 0
    next_sample = 0.0
    try:
        while made < total:
            n = min(per_tick, total - made)
            await asyncio.to_thread(_insert_mail, user, made, n, body)
            made += n
            worker.wake()
            if loop.time() - started >= next_sample:
                samples.append(await asyncio.to_thread(_sample, db_path, t0))
                print(json.dumps(samples[-1]), flush=True)
                next_sample += 10
            await asyncio.sleep(max(0.0, started + made / args.rate - loop.time()))
        await asyncio.sleep(5)
        samples.append(await asyncio.to_thread(_sample, db_path, t0))
    finally:
        stop.set()
        await task
        pool.shutdown()
    return samples, {"inserted": made, **worker.counts}


def _slope(samples: list[dict], key: str) -> float:
    """Least-squares growth per second of samples[key]."""
    xs = [s["t"] for s in samples]
    ys = [s[key] for s in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.retention")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=int, default=50)
    parser.add_argument("--retention-seconds", type=int, default=60)
    parser.add_argument("--mail-kib", type=int, default=8)
    args = parser.parse_args(argv)

    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    receiver = context.Process(target=_receiver_process, args=(child_end,), daemon=True)
    receiver.start()
    try:
        port = parent_end.recv()
        with tempfile.TemporaryDirectory(prefix="superimap-soak-") as tmp:
            _configure(Path(tmp), None, 50)
            from django.conf import settings

            db_path = Path(settings.DATABASES["default"]["NAME"])
            user = _setup(f"http://127.0.0.1:{port}")
            samples, counts = asyncio.run(_soak(user, args, db_path))
            parent_end.send("stop")
            received = len(parent_end.recv())
    finally:
        receiver.join(5)
        if receiver.is_alive():
            receiver.kill()

    # After the first retention period plus a purge interval the payload count is flat.
    settled = [s for s in samples if s["t"] >= args.retention_seconds + 30]
    rows_per_s = _slope(settled, "rows") if len(settled) > 2 else 0.0
    db_per_s = _slope(settled, "db_bytes") if len(settled) > 2 else 0.0
    result = {
        "benchmark": "retention-soak",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "minutes": args.minutes,
        "rate_per_s": args.rate,
        "mail_kib": args.mail_kib,
        "retention_seconds": args.retention_seconds,
        "received": received,
        "counts": counts,
        "settled_db_growth_bytes_per_s": round(db_per_s, 1),
        "settled_rows_per_s": round(rows_per_s, 1),
        "settled_db_bytes_per_row": round(db_per_s / rows_per_s, 1) if rows_per_s else None,
        "max_with_payload": max((s["with_payload"] for s in settled), default=None),
        "final": samples[-1],
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0 if received == counts["inserted"] else 1


if __name__ == "__main__":
    sys.exit(main())
