"""What one Delivery row costs the database: INSERT, claim UPDATE, outcome UPDATE.

    python -m devtools.bench.deliveryrow --out bench-results/deliveryrow.json [--postgres]

The schema is the checkout's, built by its migrations (run it in two checkouts to compare
them); the event ids are the engine's (`writer._new_event_ids`). A table of --preload
delivered rows, then --rows new_mail rows in groups of 20 as the engine writes them (one
multi-row INSERT per transaction), claimed 20 per transaction as the worker's claim UPDATE
does, and delivered 20 per transaction by its fenced outcome UPDATE (the checkout's SQL).
Foreign-key checks are off (no partner or user rows needed), the same in every checkout. The
payload goes to its own table, delivery_payload (delivery 0007), as the engine writes it; a
checkout before 0007 had it in the Delivery row, and its copy of this bench a --side-table
what-if that sized the change.
--payload-bytes N: a new_mail payload of ~N bytes of JSON (an rfc822 of random words, as the
chaos server's mails; bench.e2e's are ~1,900) instead of the ~1 KB default; PostgreSQL
compresses and TOASTs a row above ~2 KB. --pg-alter SQL (what-if, repeatable): a statement
run after the migrations, e.g. another storage setting of the payload column.

Per row and phase: CPU of the process doing the work (SQLite: this one; PostgreSQL: the
backend) and what reached the write-ahead log: WAL frames (4 KB pages) on SQLite, WAL bytes
on PostgreSQL, whose HOT share of the UPDATEs is given too (an UPDATE that is not HOT
writes a new entry in every index of the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

GROUP = 20
USERS = 2000
PAYLOAD = json.dumps(
    {"sha1": "x" * 40, "subject": "s" * 60, "from": "a@example.com", "text": "lorem ipsum " * 70}
)
COLUMNS = (
    "event_id, kind, partner_id, user_id, message_id, dedup_key, status, attempts, "
    "max_attempts, failures, next_attempt_at, claimed_by, last_error, created_at, backfill"
)
PAYLOADS = "delivery_payload"  # DeliveryPayload's table
CLAIM = (
    "UPDATE delivery_delivery SET attempts = attempts + 1, claimed_by = 'bench', "
    "lease_until = {lease} WHERE id IN ({ids})"
)
# The worker's fenced UPDATE of delivered rows as the checkout writes it (queue.py), or as
# main wrote it before deliveryrow (the status term then used an index of pending rows).
OUTCOME_BEFORE = (
    "UPDATE delivery_delivery SET status = %s, delivered_at = %s, claimed_by = '', "
    "lease_until = NULL, last_status_code = %s, last_error = '' WHERE id IN ({ids}) "
    "AND attempts = %s AND claimed_by = %s AND status = 'pending'"
)


def _outcome_sql(count: int) -> str:
    from superimap.delivery import queue

    if hasattr(queue, "_delivered_sql"):
        return queue._delivered_sql(count)
    return OUTCOME_BEFORE.format(ids=", ".join(["%s"] * count))


def _configure(var_dir: Path, database_url: str) -> None:
    os.environ.update(
        SUPERIMAP_ENV="test",
        VAR_DIR=str(var_dir),
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="superimap.settings",
        LOG_LEVEL="WARNING",
    )
    from django.core.management import call_command

    from superimap.platform import prepare

    prepare.setup()
    call_command("migrate", interactive=False, verbosity=0)
    from django.db import connection

    connection.close()


class _Sqlite:
    mark = "?"
    lease = "'2030-01-01 00:00:00'"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode=WAL", "foreign_keys=OFF", "synchronous=NORMAL"):
            self.db.execute(f"PRAGMA {pragma}")

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def execute(self, sql: str, params=()) -> list:
        return self.db.execute(sql, params).fetchall()

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def event_id(self, value) -> str:
        return value.hex

    def quiet(self) -> None:
        """No checkpoint during a phase: the WAL's growth is what the phase wrote."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("PRAGMA wal_autocheckpoint=0")

    def cpu(self) -> float:
        return time.process_time()

    def wal(self) -> float:
        wal = Path(f"{self.path}-wal")
        return wal.stat().st_size / (4096 + 24) if wal.exists() else 0.0

    def hot_share(self) -> float | None:
        return None

    def sizes_kb(self) -> dict:
        return {"file": round(self.path.stat().st_size / 1024)}


class _Postgres:
    mark = "%s"
    lease = "now() + interval '60 s'"

    def __init__(self, url: str) -> None:
        import psycopg

        self.db = psycopg.connect(url, autocommit=True)
        self.db.execute("SET session_replication_role = replica")  # no FK checks
        self.pid = self.db.execute("SELECT pg_backend_pid()").fetchone()[0]

    def begin(self) -> None:
        self.db.execute("BEGIN")

    def execute(self, sql: str, params=()) -> list:
        cursor = self.db.execute(sql, params)
        return cursor.fetchall() if cursor.description else []

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def event_id(self, value):
        return value

    def quiet(self) -> None:
        self.db.execute("CHECKPOINT")
        self.db.execute("SELECT pg_stat_reset()")

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wal(self) -> float:
        return float(self.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0])

    def hot_share(self) -> float | None:
        time.sleep(1.2)  # a backend flushes its statistics at most once a second
        self.execute("SELECT pg_stat_clear_snapshot()")
        updated, hot = self.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE relname = 'delivery_delivery'"
        )[0]
        return round(hot / updated, 3) if updated else None

    def sizes_kb(self) -> dict:
        sizes = {}
        for table in ("delivery_delivery", PAYLOADS):
            heap, toast = self.execute(
                "SELECT pg_relation_size(oid), pg_relation_size(reltoastrelid) "
                "FROM pg_class WHERE relname = %s",
                [table],
            )[0]
            sizes[table] = {"heap": round(heap / 1024), "toast": round(toast / 1024)}
        return sizes


WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()


def mail_payload(size: int) -> str:
    """A new_mail payload of about ``size`` bytes of JSON: its rfc822 is random words, as
    the chaos server's mails (they compress about 2:1)."""
    words = random.Random(size)
    head = {
        "sha1": "x" * 40,
        "imap_provider_code": "PLAIN",
        "user_tag": "user17",
        "envelope": {"subject": "chaos message 1", "from": [{"address": "a@example.test"}]},
        "size": size,
        "uid": 1,
        "uid_validity": 1,
        "folder": "INBOX",
        "internal_date": "2026-12-07T18:00:00+00:00",
    }
    text = ""
    while len(json.dumps({**head, "rfc822": text})) < size:
        text += " " + words.choice(WORDS)
    return json.dumps({**head, "rfc822": text})


def _insert_groups(db, first: int, count: int) -> None:
    from django.db import connection

    from superimap.engine.writer import _new_event_ids

    row = (
        f"({db.mark}, 'new_mail', 1, {db.mark}, '', {db.mark}, 'pending', 0, 6, 0, "
        f"{db.mark}, '', '', {db.mark}, FALSE)"
    )
    for start in range(first, first + count, GROUP):
        stamp = connection.ops.adapt_datetimefield_value(datetime.now(UTC))
        params: list = []
        for number, event_id in zip(
            range(start, start + GROUP), _new_event_ids(GROUP), strict=True
        ):
            user = 1 + (number * 7919) % USERS
            params += [db.event_id(event_id), user, f"k{number}", stamp, stamp]
        db.begin()
        ids = db.execute(
            f"INSERT INTO delivery_delivery ({COLUMNS}) VALUES {', '.join([row] * GROUP)} "
            "RETURNING id",
            params,
        )
        pairs = ", ".join([f"({db.mark}, {db.mark})"] * GROUP)
        values = [value for (id_,) in ids for value in (id_, PAYLOAD)]
        db.execute(f"INSERT INTO {PAYLOADS} (delivery_id, payload) VALUES {pairs}", values)
        db.commit()


def _update_groups(db, template: str, ids: list[int]) -> None:
    for start in range(0, len(ids), GROUP):
        part = ids[start : start + GROUP]
        db.begin()
        db.execute(template.format(lease=db.lease, ids=", ".join(map(str, part))))
        db.commit()


def _outcome_groups(db, ids: list[int]) -> None:
    from django.db import connection

    now = connection.ops.adapt_datetimefield_value(datetime.now(UTC))
    for start in range(0, len(ids), GROUP):
        part = ids[start : start + GROUP]
        sql = _outcome_sql(len(part)).replace("%s", db.mark)
        db.begin()
        db.execute(sql, ["delivered", now, 200, *part, 1, "bench"])
        db.commit()


def _read_groups(db, ids: list[int]) -> None:
    """What the claim reads of each row: the payload as JSON text (PostgreSQL:
    payload::text, detoasted and decompressed if it was stored so)."""
    text = "payload::text" if isinstance(db, _Postgres) else "payload"
    sql = f"SELECT delivery_id, {text} FROM {PAYLOADS} WHERE delivery_id IN ({{ids}})"
    for start in range(0, len(ids), GROUP):
        part = ids[start : start + GROUP]
        db.begin()
        db.execute(sql.format(ids=", ".join(map(str, part))))
        db.commit()


def run(db, preload: int, rows: int, alter: tuple = ()) -> dict:
    for statement in alter:
        db.execute(statement)
    _insert_groups(db, 0, preload)
    db.execute("UPDATE delivery_delivery SET status = 'delivered', attempts = 1")
    db.quiet()
    phases = {}

    def measure(name: str, work) -> None:
        cpu, wal = db.cpu(), db.wal()
        work()
        phases[name] = {
            "cpu_us_per_row": round((db.cpu() - cpu) * 1e6 / rows, 1),
            "wal_per_row": round((db.wal() - wal) / rows, 2),
        }

    measure("insert", lambda: _insert_groups(db, preload, rows))
    ids = [r[0] for r in db.execute("SELECT id FROM delivery_delivery WHERE status = 'pending'")]
    measure("read", lambda: _read_groups(db, ids))
    measure("claim", lambda: _update_groups(db, CLAIM, ids))
    measure("outcome", lambda: _outcome_groups(db, ids))
    return {
        "phases": phases,
        "hot_share": db.hot_share(),
        "sizes_kb": db.sizes_kb(),
        "payload_table": PAYLOADS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.deliveryrow")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preload", type=int, default=100_000, help="delivered rows first")
    parser.add_argument("--rows", type=int, default=10_000, help="rows measured")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL")
    parser.add_argument(
        "--payload-bytes",
        type=int,
        default=0,
        help="a new_mail payload of ~N bytes of JSON (bench.e2e's: ~1,900); 0: ~1 KB",
    )
    parser.add_argument(
        "--pg-alter",
        action="append",
        default=[],
        metavar="SQL",
        help="what-if: a statement run after the migrations (PostgreSQL), e.g. "
        "'ALTER TABLE delivery_delivery SET (toast_tuple_target = 128)'",
    )
    args = parser.parse_args(argv)
    global PAYLOAD
    if args.payload_bytes:
        PAYLOAD = mail_payload(args.payload_bytes)
    load = [round(x, 2) for x in os.getloadavg()]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="superimap-bench-")))
        if args.postgres:
            from devtools.testing.postgres import PostgresServer

            url = stack.enter_context(PostgresServer()).url
            _configure(tmp, url)
            db = _Postgres(url)
        else:
            _configure(tmp, f"sqlite:///{tmp}/db.sqlite3")
            db = _Sqlite(tmp / "db.sqlite3")
        result = run(db, args.preload, args.rows, tuple(args.pg_alter))
    result.update(
        benchmark="deliveryrow",
        backend="postgres" if args.postgres else "sqlite",
        wal_unit="bytes" if args.postgres else "4 KB frames",
        payload_json_bytes=len(PAYLOAD),
        pg_alter=args.pg_alter,
        preload=args.preload,
        rows=args.rows,
        load_average_at_start=load,
        python=platform.python_version(),
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        command="python -m devtools.bench.deliveryrow "
        f"--preload {args.preload} --rows {args.rows}"
        + (" --postgres" if args.postgres else "")
        + (f" --payload-bytes {args.payload_bytes}" if args.payload_bytes else "")
        + "".join(f" --pg-alter '{sql}'" for sql in args.pg_alter),
    )
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
