"""The group commit's CPU per mail by phase, on the database thread alone.

    python -m devtools.bench.persistphases [--users 2000] [--group 15] [--rounds 800]
        [--postgres] [--out bench-results/persistphases.json]

A fresh database (SQLite in a temp VAR_DIR, or a throwaway PostgreSQL) with --users chaos
users owned by this node (as bench.engine makes them), then --rounds groups of --group
jobs, each one chaos-server-like message (~1.2 KB, with INTERNALDATE) for a different random
user, through ``persister.persist_group`` as the engine's database thread runs it. It reports
this thread's CPU (time.thread_time) per mail: the whole group commit (``total``: BEGIN to
COMMIT) and its phases, each the thread CPU inside one function of the writer: the fence
(``writer._fence``), the digests (``persist.prepare``: headers, envelope, sha1, identity),
the prefetch SELECTs, the planner, and the statements with the payloads (``writer._execute``).
``total`` minus the phases is BEGIN, COMMIT and the transaction's bookkeeping. No event loop,
no GIL contention and a warm cache: the figures are below the engine's (bench.engine's
``group_commit_cpu_ms_per_mail``), but they move with the code, not with the machine's load.
200 groups go first to warm up (and give the users rows to look up).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
WARM_UP = 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.persistphases")
    parser.add_argument("--out", type=Path, default=Path("bench-results/persistphases.json"))
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--group", type=int, default=15, help="jobs (one mail each) per group")
    parser.add_argument("--rounds", type=int, default=800, help="groups measured")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="superimap-bench-phases-"))
        database_url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        if args.postgres:
            from devtools.testing.postgres import PostgresServer

            database_url = stack.enter_context(PostgresServer()).url
        os.environ.update(
            SUPERIMAP_ENV="test",
            VAR_DIR=tmp,
            DATABASE_URL=database_url,
            DJANGO_SETTINGS_MODULE="superimap.settings",
            LOG_LEVEL="WARNING",
        )
        from django.core.management import call_command
        from django.db import connection

        from superimap.platform import prepare

        prepare.setup()
        call_command("migrate", interactive=False, verbosity=0)
        phases = _run(args.users, args.group, args.rounds)
        vendor = connection.vendor
    result = {
        "benchmark": "persistphases",
        "db": vendor,
        "users": args.users,
        "group": args.group,
        "rounds": args.rounds,
        "thread_cpu_us_per_mail": phases,
        "load_average_at_start": [round(x, 2) for x in load],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m devtools.bench.persistphases "
        f"--users {args.users} --group {args.group} --rounds {args.rounds}"
        + (" --postgres" if args.postgres else ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


def _run(user_count: int, group: int, rounds: int) -> dict[str, float]:
    from devtools.testing.users import chaos_users
    from superimap.engine import persister, writer
    from superimap.mailboxes.models import MailboxUser
    from superimap.partners.models import Partner
    from superimap.sync import persist
    from superimap.sync.persist import FetchedMessage, PersistJob

    partner = Partner.objects.create(name="Bench", new_mail_webhook="http://127.0.0.1:9/hook")
    chaos_users(partner, 1, user_count, idle_for=timedelta(hours=1), imap_tls="none")
    MailboxUser.objects.update(owner_node="bench")
    users = list(MailboxUser.objects.values_list("id", flat=True))
    rng = random.Random(1)
    uids: collections.Counter[int] = collections.Counter()
    made = [0]

    def job(user_id: int) -> PersistJob:
        made[0] += 1
        number = made[0]
        now = datetime.now(UTC).replace(microsecond=0)
        raw = (
            f"From: Chaos <chaos@superimap.test>\r\nTo: user{user_id}@superimap.test\r\n"
            f"Subject: chaos message {number}\r\nDate: {format_datetime(now)}\r\n"
            f"Message-ID: <chaos.{number}.{rng.getrandbits(40):010x}@superimap.test>\r\n"
            f"X-Chaos-Generated: {time.time():.6f}\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{' '.join(rng.choices(WORDS, k=150))}\r\n"
        ).encode()
        uids[user_id] += 1
        message = FetchedMessage(uids[user_id], len(raw), now, raw, seen_at=time.time())
        return PersistJob(user_id, "bench", 1, "INBOX", [message])

    spent: collections.Counter[str] = collections.Counter()
    for module, name, phase in (
        (writer, "_fence", "fence"),
        (persist, "prepare", "digests"),
        (writer, "_prefetch", "prefetch"),
        (persist, "plan_group", "plan"),
        (writer, "_execute", "statements"),
    ):
        setattr(module, name, _timed(getattr(module, name), phase, spent))
    for _ in range(WARM_UP):
        persister.persist_group([job(u) for u in rng.sample(users, group)])
    spent.clear()
    for _ in range(rounds):
        jobs = [job(u) for u in rng.sample(users, group)]
        started = time.thread_time_ns()
        outcomes = persister.persist_group(jobs)
        spent["total"] += time.thread_time_ns() - started
        if not all(getattr(outcome, "new", 0) == 1 for outcome in outcomes):
            raise RuntimeError(f"a job was not persisted as one new mail: {outcomes}")
    mails = rounds * group
    return {phase: round(ns / 1000 / mails, 1) for phase, ns in spent.items()}


def _timed(fn, phase: str, spent: collections.Counter):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        started = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[phase] += time.thread_time_ns() - started

    return timed


if __name__ == "__main__":
    sys.exit(main())
