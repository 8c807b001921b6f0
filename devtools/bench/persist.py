"""CPU per persisted message: one transaction per batch vs group commit.

    python -m devtools.bench.persist --out bench-results/persist.json \\
        [--messages 2000] [--group 50] [--postgres | --database-url URL] [--profile]

A fresh SQLite database in a temp VAR_DIR (or --database-url), N users owned by this node,
and --messages messages of ~1 KB, one per batch (what IDLE pushes hand the engine: one new
UID at a time). Measured as CPU time of this process (time.process_time: SQLite runs in
it; a PostgreSQL server's own CPU is not included), so a busy machine slows the run but
hardly changes the figure; wall time per message beside it (commits, fsync, round trips):
- per_batch: ``writer.persist_batch`` once per batch, each its own transaction (before
  group commit);
- group: ``persister.persist_group`` with --group batches per transaction, each in its own
  savepoint (engine/persister.py).
--profile prints the functions with the most CPU for the group run.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.persist")
    parser.add_argument("--out", type=Path, default=Path("bench-results/persist.json"))
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--group", type=int, default=50, help="batches per group")
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temp dir")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="superimap-bench-persist-"))
        if args.postgres:
            from devtools.testing.postgres import PostgresServer

            args.database_url = stack.enter_context(PostgresServer()).url
        os.environ.update(
            SUPERIMAP_ENV="test",
            VAR_DIR=tmp,
            DATABASE_URL=args.database_url or f"sqlite:///{Path(tmp) / 'bench.sqlite3'}",
            DJANGO_SETTINGS_MODULE="superimap.settings",
            LOG_LEVEL="WARNING",
        )
        from django.core.management import call_command
        from django.db import connection

        from superimap.platform import prepare

        prepare.setup()
        call_command("migrate", interactive=False, verbosity=0)
        users = _users(args.group)
        per_batch = _per_batch(users, args.messages)
        group = _grouped(users, args.messages, args.group, args.profile)
        engine = connection.vendor
    result = {
        "benchmark": "persist",
        "db": engine,
        "messages": args.messages,
        "group_batches": args.group,
        "per_message": {"per_batch": per_batch, "group": group},
        "load_average_at_start": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"python -m devtools.bench.persist --messages {args.messages} "
        f"--group {args.group}" + (" --postgres" if args.postgres else ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _users(count: int) -> list[int]:
    from django.utils import timezone

    from superimap.mailboxes.models import MailboxUser
    from superimap.partners.models import Connection, ImapProvider, Partner

    partner = Partner.objects.create(name="Bench", new_mail_webhook="http://127.0.0.1:9/hook")
    connection = Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
        imap_host="127.0.0.1",
        imap_port=1,
        imap_tls="none",
    )
    now = timezone.now()
    return [
        MailboxUser.objects.create(
            connection=connection,
            tag=f"user{i}",
            password="pw",
            owner_node="bench",
            connected_at=now,
        ).id
        for i in range(count)
    ]


def _batches(users: list[int], first: int, count: int) -> list:
    from superimap.sync.persist import FetchedMessage, PersistJob

    words = "lorem ipsum dolor sit amet consectetur adipiscing elit " * 16
    batches = []
    for n in range(first, first + count):
        raw = (
            f"From: Bench <b@superimap.test>\r\nTo: u@superimap.test\r\nSubject: bench {n}\r\n"
            f"Date: Tue, 2 Jun 2026 10:00:00 +0000\r\nMessage-ID: <bench.{n}@superimap.test>\r\n"
            f"\r\n{words}\r\n"
        ).encode()
        user_id = users[n % len(users)]
        uid = n // len(users) + 1
        message = FetchedMessage(uid=uid, size=len(raw), internal_date=None, raw=raw)
        batches.append(PersistJob(user_id, "bench", 1, "INBOX", [message]))
    return batches


def _per_batch(users: list[int], messages: int) -> dict:
    from superimap.engine import writer

    batches = _batches(users, 0, messages)
    started, wall = time.process_time(), time.perf_counter()
    for b in batches:
        writer.persist_batch(b.user_id, b.node_id, b.uid_validity, b.folder, b.messages)
    return _per_message(started, wall, messages)


def _per_message(cpu_started: float, wall_started: float, messages: int) -> dict:
    return {
        "cpu_ms": round((time.process_time() - cpu_started) * 1000 / messages, 3),
        "wall_ms": round((time.perf_counter() - wall_started) * 1000 / messages, 3),
    }


def _grouped(users: list[int], messages: int, group: int, profile: bool) -> dict:
    from superimap.engine.persister import persist_group

    # UIDs above the per-batch run's: new mail, not duplicates of it.
    batches = _batches(users, messages + (-messages % len(users)), messages)
    profiler = cProfile.Profile() if profile else None
    started, wall = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    for start in range(0, len(batches), group):
        outcomes = persist_group(batches[start : start + group])
        if any(isinstance(outcome, Exception) for outcome in outcomes):
            raise RuntimeError(f"a batch failed: {outcomes}")
    if profiler:
        profiler.disable()
    figures = _per_message(started, wall, messages)
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return figures


if __name__ == "__main__":
    sys.exit(main())
