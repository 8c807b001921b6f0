"""Webhook delivery throughput: the real Worker against a local receiver.

    python -m devtools.bench.delivery --out bench-results/delivery.json [--count 20000]

A fresh SQLite database in a temp VAR_DIR (or --database-url) and two phases, each with
the real Worker running until every delivery succeeded:
- backlog: N pending new_mail deliveries (~2 KB payloads) inserted up front: throughput;
  latency there includes the time a row waits in the queue. 20,000 by default (5,000 until
  issue 20 workerpipe): the phase has ~60 ms that are no throughput, ~7-9 ms from the start
  to the first POST and ~52 ms from the last POST's answer to its outcome recorded (a
  drained worker's outcomes wait for its next poll, 5.10), ~4 % of a 5,000-row phase at
  ~3,000/s and ~1 % of a 20,000-row one; the bare client has neither.
- steady: rows created at --rate per second while the worker runs (by a thread of the
  bench, waking the worker as the engine's wake-up would): end-to-end latency from
  Delivery.created_at to receipt.
- low (with --low-count N): the same at --low-rate per second (20): the CPU a delivery
  costs when each one comes alone (a wake-up, a claim and a record of its own).
The worker's CPU is the process's, minus the producer thread's (all of it, since
workerdb; before, its asyncio side, ~0.1-0.3 ms per delivery at 20/s, counted as the
worker's). A phase ends on an event set when the worker has counted its deliveries (since
workercpu2; before, a check every 10 ms, 50 ms in the produced phases, whose wake-ups were
counted as the worker's CPU).
- bare: the backlog's requests (rendered and signed beforehand) POSTed by one bare aiohttp
  session to the same receiver, twice: with --concurrency POSTs open (``worker_backlog_share``,
  as before), and with as many open as the worker may have to this one endpoint
  (``fairness.Caps``: WEBHOOK_ENDPOINT_CONCURRENCY, 40 % of the slots by default; every
  backlog row goes to one endpoint), the like-for-like ceiling
  (``worker_backlog_share_same_open``).
The receiver runs in its own process so it does not share the worker's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path


def _receiver_process(conn) -> None:
    """Child: serve 200s, note when each event_id arrived, hand the notes back on request."""
    from devtools.testing.webhook_receiver import WebhookReceiver

    async def main() -> None:
        arrivals: list[tuple[str, float]] = []
        receiver = WebhookReceiver()
        receiver.on_request = lambda event: arrivals.append((event.json["event_id"], time.time()))
        await receiver.start()
        conn.send(receiver.port)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "stop"
        await receiver.stop()
        conn.send(arrivals)

    asyncio.run(main())


def _configure(var_dir: Path, database_url: str | None, concurrency: int) -> None:
    os.environ.update(
        SUPERIMAP_ENV="test",
        VAR_DIR=str(var_dir),
        DATABASE_URL=database_url or f"sqlite:///{var_dir / 'bench.sqlite3'}",
        WEBHOOK_CONCURRENCY=str(concurrency),
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
        DJANGO_SETTINGS_MODULE="superimap.settings",
    )
    from django.core.management import call_command

    from superimap.platform import prepare

    prepare.setup()
    call_command("migrate", interactive=False, verbosity=0)


def _setup(url: str):
    from superimap.mailboxes.models import MailboxUser
    from superimap.partners.models import Connection, ImapProvider, Partner

    partner = Partner.objects.create(name="bench", new_mail_webhook=f"{url}/new-mail")
    connection = Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="PLAIN"),
        imap_host="imap.example.com",
        imap_port=993,
        imap_tls="implicit",
    )
    return MailboxUser.objects.create(connection=connection, tag="bench", password="pw")


def _insert(user, first: int, count: int) -> None:
    from django.db import transaction
    from django.utils import timezone

    from superimap.delivery.models import Delivery
    from superimap.delivery.payloads import new_mail_payload

    partner = user.connection.partner
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 28)[:1600]
    batch: list[Delivery] = []
    for i in range(first, first + count):
        message_id = f"<bench-{i}@superimap.test>"
        raw = (
            f"From: Sender <s@example.com>\r\nTo: r@example.org\r\nSubject: bench {i}\r\n"
            f"Message-ID: {message_id}\r\n\r\n{body}\r\n"
        ).encode()
        envelope = {
            "date": "2025-06-02T10:00:00+00:00",
            "subject": f"bench {i}",
            "from": [{"name": "Sender", "route": None, "mailbox": "s", "host": "example.com"}],
            "to": [{"name": None, "route": None, "mailbox": "r", "host": "example.org"}],
            "message_id": message_id,
        }
        payload = new_mail_payload(
            provider_code="PLAIN",
            user_tag=user.tag,
            raw=raw,
            envelope=envelope,
            uid=i + 1,
            uid_validity=1,
            folder="INBOX",
            internal_date=None,
        )
        batch.append(
            Delivery(
                kind=Delivery.Kind.NEW_MAIL,
                partner=partner,
                user=user,
                message_id=message_id,
                payload=payload,
                next_attempt_at=timezone.now(),
            )
        )
        if len(batch) == 1000 or i == first + count - 1:
            with transaction.atomic():
                Delivery.objects.bulk_create(batch)
            batch = []


POLL_SECONDS = 0.05  # the worker's poll (--poll-ms); WEBHOOK_POLL_MS is 500 by default


async def _deliver(count: int, concurrency: int, produce=None) -> tuple[float, float, dict]:
    """Run the Worker until `count` more deliveries succeeded; `produce(worker)` may feed
    rows while it runs (the steady-rate phase)."""
    from superimap.delivery.worker import Worker
    from superimap.platform.dbpool import DbPool

    pool = DbPool()
    worker = Worker(pool, "bench", concurrency=concurrency, poll_interval=POLL_SECONDS)
    stop = asyncio.Event()
    started = time.monotonic()
    cpu_started = time.process_time()
    task = asyncio.create_task(worker.run(stop))
    producer = asyncio.create_task(produce(worker)) if produce else None
    tty = sys.stdout.isatty()
    # The end is an event set where the worker counts its outcomes, not a check every
    # 10-50 ms: those wake-ups were this process's CPU, counted as the worker's (at 20/s
    # one per delivery; 300 at 20/s, 3 runs each: 1.97/2.04/2.01 -> 1.95/1.73/2.05 ms per
    # delivery, within the noise of a shared machine; workercpu2).
    done = asyncio.Event()
    recorded = worker._recorded

    def counted(outcomes, counts) -> None:
        recorded(outcomes, counts)
        if worker.counts.get("delivered", 0) >= count:
            done.set()

    worker._recorded = counted
    try:
        while not done.is_set() and not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 1.0)
            line = f"delivered {worker.counts.get('delivered', 0)}/{count}"
            print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)
        seconds = time.monotonic() - started
        if producer:
            await producer  # its thread has counted its CPU
        # The producer's inserts run in this process too: not the worker's CPU.
        cpu_seconds = time.process_time() - cpu_started - sum(_PRODUCER_CPU)
    finally:
        if producer:
            producer.cancel()
        stop.set()
        await task
        pool.shutdown()
    print()
    return seconds, cpu_seconds, dict(worker.counts)


async def _bare_posts(user, url: str, args, concurrency: int) -> tuple[float, float]:
    """Seconds (wall, CPU) a bare aiohttp client takes to POST the backlog's requests
    (rendered and signed beforehand, outside the timing) with ``concurrency`` open."""
    import aiohttp
    from asgiref.sync import sync_to_async

    from superimap.delivery.http import render_request
    from superimap.delivery.models import Delivery

    partner = user.connection.partner

    def rendered() -> list[tuple[bytes, dict]]:
        rows = Delivery.objects.filter(kind="new_mail").order_by("id")[: args.count]
        return [
            render_request(
                row.payload,
                event_id=f"bare-{row.event_id}",
                kind="new_mail",
                api_key=partner.api_key,
                webhook_secrets=(partner.webhook_secret,),
                timestamp=int(time.time()),
            )
            for row in rows
        ]

    requests = await sync_to_async(rendered)()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = list(reversed(requests))

        async def post_some() -> None:
            while queue:
                raw, headers = queue.pop()
                async with session.post(f"{url}/new-mail", data=raw, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"receiver answered {r.status}")

        started, cpu_started = time.monotonic(), time.process_time()
        await asyncio.gather(*(post_some() for _ in range(concurrency)))
        return time.monotonic() - started, time.process_time() - cpu_started


_PRODUCER_CPU: list[float] = []


def _steady_producer(user, first: int, count: int, rate: int):
    """Insert `rate` rows per second in 20 small batches a second, waking the worker: a
    thread of its own (the engine is another process), all of its CPU left out."""

    async def produce(worker) -> None:
        _PRODUCER_CPU.clear()
        loop = asyncio.get_running_loop()
        stopped = threading.Event()
        thread = threading.Thread(
            target=_produce, args=(user, first, count, rate, loop, worker.wake, stopped)
        )
        thread.start()
        try:
            await asyncio.shield(asyncio.wrap_future(_JOINED.submit(thread.join)))
        finally:
            stopped.set()

    return produce


_JOINED = ThreadPoolExecutor(max_workers=1)


def _produce(user, first: int, count: int, rate: int, loop, wake, stopped) -> None:
    from django.db import connection

    cpu_started = time.thread_time()
    try:
        per_tick = max(1, rate // 20)
        started = time.monotonic()
        made = 0
        while made < count and not stopped.is_set():
            n = min(per_tick, count - made)
            _insert(user, first + made, n)
            connection.close()  # as the engine's commit leaves the worker's connections
            made += n
            loop.call_soon_threadsafe(wake)
            if made >= count:
                break
            stopped.wait(max(0.0, started + made / rate - time.monotonic()))
    finally:
        connection.close()
        _PRODUCER_CPU.append(time.thread_time() - cpu_started)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.delivery")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=20000, help="backlog phase size")
    parser.add_argument("--steady-count", type=int, default=5000, help="steady phase size")
    parser.add_argument("--rate", type=int, default=500, help="steady phase rows per second")
    parser.add_argument("--low-count", type=int, default=0, help="low-rate phase size")
    parser.add_argument("--low-rate", type=int, default=20, help="low phase rows per second")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--poll-ms",
        type=int,
        default=50,
        help="the worker's poll interval (50, as before; the service's default is 500): at "
        "a low rate its idle polls are a good part of the CPU per delivery",
    )
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temp dir")
    parser.add_argument(
        "--postgres", action="store_true", help="a throwaway PostgreSQL (devtools/testing)"
    )
    args = parser.parse_args(argv)
    global POLL_SECONDS
    POLL_SECONDS = args.poll_ms / 1000
    load = [round(x, 2) for x in os.getloadavg()]

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    receiver = context.Process(target=_receiver_process, args=(child_end,), daemon=True)
    receiver.start()
    try:
        port = parent_end.recv()
        with ExitStack() as stack:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="superimap-bench-"))
            database_url = args.database_url
            if args.postgres:
                from devtools.testing.postgres import PostgresServer

                database_url = stack.enter_context(PostgresServer()).url
            _configure(Path(tmp), database_url, args.concurrency)
            from django.conf import settings
            from django.db import connections

            from superimap.delivery.models import Delivery

            user = _setup(f"http://127.0.0.1:{port}")
            print(f"backlog: inserting {args.count} deliveries ...", flush=True)
            _insert(user, 0, args.count)
            backlog = runner(_deliver(args.count, args.concurrency))
            print(f"steady: {args.steady_count} deliveries at {args.rate}/s ...", flush=True)
            produce = _steady_producer(user, args.count, args.steady_count, args.rate)
            steady = runner(_deliver(args.steady_count, args.concurrency, produce))
            low = None
            if args.low_count:
                print(f"low: {args.low_count} deliveries at {args.low_rate}/s ...", flush=True)
                first = args.count + args.steady_count
                produce = _steady_producer(user, first, args.low_count, args.low_rate)
                low = runner(_deliver(args.low_count, args.concurrency, produce))
            from superimap.delivery.fairness import Caps

            endpoint_cap = Caps.for_concurrency(args.concurrency).endpoint
            bare = {}
            for open_posts in (args.concurrency, endpoint_cap):
                print(f"bare: {args.count} posts, {open_posts} open, bare aiohttp ...", flush=True)
                url = f"http://127.0.0.1:{port}"
                bare[open_posts] = runner(_bare_posts(user, url, args, open_posts))
            parent_end.send("stop")
            arrivals = dict(parent_end.recv())
            rows = Delivery.objects.values_list("event_id", "message_id", "created_at")
            phase_of = {}
            created = {}
            for event_id, message_id, created_at in rows:
                number = int(message_id.split("-")[1].split("@")[0])
                phase_of[str(event_id)] = (
                    "backlog"
                    if number < args.count
                    else "steady"
                    if number < args.count + args.steady_count
                    else "low"
                )
                created[str(event_id)] = created_at.timestamp()
            engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
            connections.close_all()
    finally:
        receiver.join(5)
        if receiver.is_alive():
            receiver.kill()

    def latencies(phase: str) -> list[float]:
        return [
            (arrivals[k] - created[k]) * 1000
            for k, p in phase_of.items()
            if p == phase and k in arrivals
        ]

    common = {
        "benchmark": "delivery",
        "concurrency": args.concurrency,
        "python": platform.python_version(),
        "db_engine": engine,
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
        "poll_ms": args.poll_ms,
    }
    phases = [
        ("backlog", args.count, backlog, "all rows inserted first: latency includes queueing"),
        ("steady", args.steady_count, steady, f"rows created at {args.rate}/s while running"),
    ]
    if low is not None:
        phases.append(("low", args.low_count, low, f"rows created at {args.low_rate}/s"))
    results = []
    for phase, count, (seconds, cpu_seconds, counts), note in phases:
        values = latencies(phase)
        results.append(
            {
                **common,
                "phase": phase,
                "count": count,
                "delivered": counts.get("delivered", 0),
                "received": len(values),
                "seconds": round(seconds, 3),
                "deliveries_per_second": round(counts.get("delivered", 0) / seconds, 1),
                "worker_process_cpu_ms_per_delivery": round(cpu_seconds * 1000 / count, 3),
                "latency_ms_p50": round(_percentile(values, 0.50), 1),
                "latency_ms_p99": round(_percentile(values, 0.99), 1),
                "latency_ms_mean": round(statistics.fmean(values), 1) if values else 0.0,
                "latency_note": f"Delivery.created_at to receipt; {note}",
            }
        )
    backlog_rate = results[0]["deliveries_per_second"]
    for open_posts, (bare_seconds, bare_cpu) in bare.items():
        bare_rate = round(args.count / bare_seconds, 1)
        same = open_posts == endpoint_cap
        share = "worker_backlog_share_same_open" if same else "worker_backlog_share"
        results.append(
            {
                **common,
                "phase": "bare_aiohttp_endpoint_cap" if same else "bare_aiohttp",
                "count": args.count,
                "open_posts": open_posts,
                "seconds": round(bare_seconds, 3),
                "posts_per_second": bare_rate,
                "client_cpu_ms_per_post": round(bare_cpu * 1000 / args.count, 3),
                share: round(backlog_rate / bare_rate, 3),
                "note": (
                    "the backlog's rendered requests POSTed by one aiohttp session to the same "
                    "receiver, no database, no signing in the loop, with "
                    + (
                        "as many POSTs open as the worker may have to this endpoint"
                        if same
                        else "the worker's concurrency open (the worker may have fewer "
                        "open to one endpoint)"
                    )
                ),
            }
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    ok = all(r["delivered"] == r["count"] for r in results if "delivered" in r)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
