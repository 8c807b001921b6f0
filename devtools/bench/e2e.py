"""End-to-end benchmark: IMAP push -> engine -> Delivery -> worker -> verified webhook.

    python -m devtools.bench.e2e --out bench-results/e2e.json \\
        [--rate 100] [--mailboxes 1000] [--duration 20] [--mode separate|up] \\
        [--backend sqlite|postgres]

Every part runs in a process of its own, on 127.0.0.1 only, as in production:
- the chaos IMAP server (devtools.testing.chaos_server) holding N users;
- a receiver (this module with --receiver) that checks both signatures of every request
  (the payload's ``signature`` with the partner's API key and the Standard Webhooks headers
  with its ``whsec_`` secret) and notes the arrival time;
- ``superimap imap-client`` and ``superimap worker`` (--mode separate), or one
  ``superimap up`` (--mode up).

Once all N mailboxes are in IDLE (their status in the database), the server pushes
rate x duration messages at --rate/s to random users. Each carries X-Chaos-Generated
(time.time() at the push); the receiver takes time.time() on arrival: one clock. The run
ends when every pushed message arrived or --drain seconds after the last push.

It reports latency p50/p99/max (push -> verified arrival), CPU seconds per message for each
process (its CPU during the push phase, divided by the messages pushed), RSS, lost and
duplicated messages (by the chaos server's Message-ID), invalid signatures, and the load
average at the start of the run and of the push (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from devtools.bench.engine import ChaosServerProcess, raise_open_files

OPEN_FILES = 65536


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.e2e")
    parser.add_argument("--out", type=Path, default=Path("bench-results/e2e.json"))
    parser.add_argument("--rate", type=float, default=100.0, help="pushed messages per second")
    parser.add_argument("--mailboxes", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of pushing")
    parser.add_argument("--mode", choices=["separate", "up"], default="separate")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--engines",
        type=int,
        default=1,
        help="engine processes (ENGINE_PROCESSES; 1 as before issue 20, 0 one per core); "
        "CPU is counted over each service's process and its children",
    )
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting of the throwaway PostgreSQL (it runs with fsync, "
        "synchronous_commit and full_page_writes off); e.g. --pg-setting fsync=on "
        "--pg-setting synchronous_commit=on for a durable server as in production",
    )
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to wait after")
    parser.add_argument("--online-timeout", type=float, default=600.0)
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver:
        return _receiver_main()
    result = run(args)
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    results.append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"appended to {args.out}")
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


# --- the receiver process -------------------------------------------------------------------


def _receiver_main() -> int:
    """Serve 200s, verify both signatures, note (message number, generated, arrived, ok)."""

    def note(event, arrived: float) -> tuple:
        rfc822 = event.json["rfc822"]
        ok = bool(event.valid_spec_signature and event.valid_standard_signature)
        return (_message_number(rfc822), _generated_at(rfc822), arrived, ok, event.json["event_id"])

    return serve_receiver(note)


def serve_receiver(note) -> int:
    """A receiver process: serve 200s, verify both signatures, keep ``note(event, arrived)``
    per request (and nothing else: 10,000s of bodies would skew RSS and GC).

    Driven on stdin: ``count`` answers the number of requests so far, ``dump PATH`` writes
    the notes as JSON, ``quit`` stops."""
    import asyncio

    import uvloop

    from devtools.testing.webhook_receiver import WebhookReceiver

    async def serve() -> None:
        notes: list[tuple] = []
        receiver = WebhookReceiver(
            api_key=os.environ["BENCH_API_KEY"], whsec_secret=os.environ["BENCH_WHSEC"]
        )
        receiver.received = _Discard()

        def on_request(event) -> None:
            notes.append(note(event, time.time()))

        receiver.on_request = on_request
        await receiver.start()
        print(f"listening {receiver.port}", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            words = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not words or words[0] == "quit":
                break
            if words[0] == "count":
                print(len(notes), flush=True)
            elif words[0] == "dump":
                Path(words[1]).write_text(json.dumps(notes))
                print("dumped", flush=True)
        await receiver.stop()

    uvloop.run(serve())
    return 0


class _Discard(list):
    def append(self, item) -> None:
        pass


def _message_number(rfc822: str) -> int:
    # The chaos server's Message-ID: <chaos.NUMBER.RANDOM@superimap.test>
    start = rfc822.index("Message-ID: <chaos.") + len("Message-ID: <chaos.")
    return int(rfc822[start : rfc822.index(".", start)])


def _by_second(notes: list[tuple]) -> list[dict]:
    """p50/p99/max latency (ms) of the messages pushed in each second of the push."""
    if not notes:
        return []
    first = min(note[1] for note in notes)
    seconds: dict[int, list[float]] = {}
    for _, generated, arrived, *_ in notes:
        seconds.setdefault(int(generated - first), []).append((arrived - generated) * 1000)
    rows = []
    for second in sorted(seconds):
        values = sorted(seconds[second])
        rows.append(
            {
                "second": second,
                "count": len(values),
                "p50": _percentile(values, 0.50),
                "p99": _percentile(values, 0.99),
                "max": round(values[-1], 1),
            }
        )
    return rows


def _timeline(stages: list[tuple], step: float = 0.5) -> dict[str, list[int]]:
    """Per ``step`` seconds from the first push: messages pushed, Delivery rows written (the
    engine), first attempts started (the worker's claims) and arrivals. A stall shows as a
    run of zeros in one column while the one before it goes on."""
    if not stages:
        return {}
    first = min(stage[0] for stage in stages)
    names = ("pushed", "rows", "attempts", "arrived")
    counts: dict[str, dict[int, int]] = {name: {} for name in names}
    for pushed, to_row, to_attempt, to_arrival in stages:
        moment = pushed
        for name, delta in zip(names, (0.0, to_row, to_attempt, to_arrival), strict=True):
            moment += delta
            slot = int((moment - first) / step)
            counts[name][slot] = counts[name].get(slot, 0) + 1
    last = max(max(column) for column in counts.values())
    return {name: [counts[name].get(slot, 0) for slot in range(last + 1)] for name in names}


def _generated_at(rfc822: str) -> float:
    start = rfc822.index("X-Chaos-Generated: ") + len("X-Chaos-Generated: ")
    return float(rfc822[start : rfc822.index("\r\n", start)])


class ListeningProcess:
    """A helper process of the benchmark (``python -m MODULE ARGS``) that prints ``listening
    PORT`` when ready and then answers one line per command on stdin; ``quit`` ends it."""

    def __init__(self, var_dir: Path, module: str, arg: str, log: str, env=None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, arg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(var_dir / log, "w"),  # noqa: SIM115 - lives as long
            text=True,
            bufsize=1,
            env=env,
        )
        line = self.process.stdout.readline().split()
        if line[:1] != ["listening"]:
            raise RuntimeError(f"{module} {arg} did not start: {line}")
        self.port = int(line[1])
        self.var_dir = var_dir

    def ask(self, command: str) -> str:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def stop(self) -> None:
        try:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


class Receiver(ListeningProcess):
    def __init__(self, var_dir: Path, api_key: str, whsec: str) -> None:
        env = {**os.environ, "BENCH_API_KEY": api_key, "BENCH_WHSEC": whsec}
        super().__init__(var_dir, "devtools.bench.e2e", "--receiver", "receiver.log", env)

    def count(self) -> int:
        return int(self.ask("count"))

    def notes(self) -> list[tuple[int, float, float, bool]]:
        """(message number, pushed at, arrived at, signatures ok) per request."""
        return [note[:4] for note in self.notes_with_event_ids()]

    def notes_with_event_ids(self) -> list[tuple[int, float, float, bool, str]]:
        """The same, and the delivery's event_id (to find its row and first attempt)."""
        path = self.var_dir / "arrivals.json"
        if self.ask(f"dump {path}") != "dumped":
            raise RuntimeError("receiver did not dump its notes")
        return [tuple(note) for note in json.loads(path.read_text())]


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    load_at_start = os.getloadavg()
    limit = raise_open_files(OPEN_FILES)
    if args.mailboxes + 200 > limit:
        raise SystemExit(f"{args.mailboxes} mailboxes need more than {limit} open files")
    with ExitStack() as stack:
        var_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="superimap-e2e-")))
        database_url = f"sqlite:///{var_dir / 'bench.sqlite3'}"
        if args.backend == "postgres":
            from devtools.testing.postgres import PostgresServer

            settings = dict(setting.split("=", 1) for setting in args.pg_setting)
            postgres = stack.enter_context(PostgresServer(**settings))
            database_url, args.postgres_pid = postgres.url, postgres.pid
        env = _environment(var_dir, database_url, args.mailboxes)
        env["ENGINE_PROCESSES"] = str(args.engines)
        os.environ.update(env)
        _setup_django()
        from superimap.partners.models import new_api_key, new_webhook_secret

        api_key, whsec = new_api_key(), new_webhook_secret()
        server = ChaosServerProcess(var_dir, args.mailboxes, tls=False)
        stack.callback(server.stop)
        receiver = Receiver(var_dir, api_key, whsec)
        stack.callback(receiver.stop)
        _make_mailboxes(args.mailboxes, server.port, receiver.port, api_key, whsec)
        services = _start_services(args.mode, var_dir, env)
        stack.callback(_stop_services, services)
        online = _wait_online(args.mailboxes, services, args.online_timeout)
        return _push_and_measure(args, server, receiver, services, load_at_start, online)
    raise AssertionError("unreachable")


def _environment(var_dir: Path, database_url: str, mailboxes: int) -> dict[str, str]:
    return {
        "SUPERIMAP_ENV": "test",
        "VAR_DIR": str(var_dir),
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "superimap.settings",
        "ALLOW_LOOPBACK_IMAP": "true",
        "LOG_LEVEL": "WARNING",
        "NUM_TRACERS": "0",
        "ENGINE_NODE_NAME": "bench-node",
        # One engine process, as the figures before issue 20 (e2e: --engines).
        "ENGINE_PROCESSES": "1",
        # Measures the pipeline, not the per-host login limit (50/s by default).
        "IMAP_LOGIN_BURST_PER_HOST": str(max(500, mailboxes)),
        "IMAP_LOGINS_PER_SECOND_PER_HOST": str(max(50, mailboxes)),
    }


def _setup_django() -> None:
    from django.core.management import call_command

    from superimap.platform import prepare

    prepare.setup()
    call_command("migrate", interactive=False, verbosity=0)


def _make_mailboxes(count: int, imap_port: int, hook_port: int, api_key: str, whsec: str):
    from devtools.testing.users import chaos_users
    from superimap.partners.models import Partner

    partner = Partner.objects.create(
        name="Bench",
        new_mail_webhook=f"http://127.0.0.1:{hook_port}/new-mail",
        api_key=api_key,
        webhook_secret=whsec,
    )
    chaos_users(partner, imap_port, count)
    from django.db import connections

    connections.close_all()


def _start_services(mode: str, var_dir: Path, env: dict) -> dict[str, subprocess.Popen]:
    """Each service with a METRICS_PORT of its own (_scrape) and, on PostgreSQL, its name
    as application_name (pg_stat_activity, _PgSampler)."""
    superimap = [sys.executable, "-m", "superimap.cli"]
    if mode == "up":
        commands = {"up": [*superimap, "up", "--host", "127.0.0.1", "--port", str(_free_port())]}
    else:
        commands = {"engine": [*superimap, "imap-client"], "worker": [*superimap, "worker"]}
    services = {}
    for name, command in commands.items():
        own = {"METRICS_PORT": str(_free_port())}
        if env["DATABASE_URL"].startswith("postgres"):
            separator = "&" if "?" in env["DATABASE_URL"] else "?"
            own["DATABASE_URL"] = f"{env['DATABASE_URL']}{separator}application_name=bench-{name}"
        services[name] = subprocess.Popen(
            command,
            stdout=open(var_dir / f"{name}.log", "w"),  # noqa: SIM115 - lives as long
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, **own},
        )
        services[name].metrics_port = int(own["METRICS_PORT"])
    return services


GATE_METRICS = (
    "superimap_sqlite_gate_turns_total",
    "superimap_sqlite_gate_waits_total",
    "superimap_sqlite_gate_wait_seconds_total",
    "superimap_sqlite_gate_held_seconds_total",
)


def _scrape(services: dict) -> dict[str, dict[str, float]]:
    """The SQLite write gate's counters of each service (empty on PostgreSQL)."""
    found: dict[str, dict[str, float]] = {}
    for name, process in services.items():
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=5
            ) as response:
                text = response.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            metric, _, value = line.partition(" ")
            if metric in GATE_METRICS:
                found.setdefault(name, {})[metric] = float(value)
    return found


def _gate_report(before: dict, after: dict, seconds: float) -> dict:
    """Per service, over the push: waits, seconds waited, share of the push spent waiting
    and holding the gate."""
    report = {}
    for name, values in after.items():
        start = before.get(name, {})

        def delta(metric: str, values=values, start=start) -> float:
            return values.get(metric, 0.0) - start.get(metric, 0.0)

        turns, waits, waited, held = (delta(metric) for metric in GATE_METRICS)
        report[name] = {
            "turns": int(turns),
            "mean_held_ms": round(held * 1000 / turns, 2) if turns else None,
            "waits": int(waits),
            "waited_seconds": round(waited, 2),
            "mean_wait_ms": round(waited * 1000 / waits, 2) if waits else None,
            "waiting_share": round(waited / seconds, 3),
            "held_share": round(held / seconds, 3),
        }
    return report


class _PgSampler(threading.Thread):
    """Every 50 ms during the push: what the engine's and the worker's backends are doing
    (pg_stat_activity state and wait event, and lock waits), as counts of samples."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.samples = 0
        self.counts: dict[str, dict[str, int]] = {}
        self.blocked: dict[str, dict[str, int]] = {}
        self.scans: dict[str, dict[str, int]] = {}

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            before = _table_scans(conn)
            while not self.stop.wait(0.05):
                rows = conn.execute(
                    "SELECT a.application_name, a.state, a.wait_event_type, a.wait_event, "
                    "left(a.query, 40), b.application_name, b.state, left(b.query, 40) "
                    "FROM pg_stat_activity a LEFT JOIN pg_stat_activity b "
                    "ON b.pid = (pg_blocking_pids(a.pid))[1] "
                    "WHERE a.application_name LIKE 'bench-%%' AND a.pid <> pg_backend_pid()"
                ).fetchall()
                self.samples += 1
                for app, state, wait_type, wait, query, b_app, b_state, b_query in rows:
                    if state == "idle":
                        key = "idle"
                    else:
                        what = f"{wait_type}:{wait}" if wait_type else "cpu"
                        key = f"{state} {what} | {_words(query)}"
                    bucket = self.counts.setdefault(app, {})
                    bucket[key] = bucket.get(key, 0) + 1
                    if b_app is not None:
                        # Who holds the lock it waits for, and what that one is doing.
                        key = f"{_words(query)} <- {b_app} {b_state} | {_words(b_query)}"
                        bucket = self.blocked.setdefault(app, {})
                        bucket[key] = bucket.get(key, 0) + 1
            after = _table_scans(conn)
            # Rows read by sequential scans during the push, per table: a plan that scans
            # a table growing with the push costs more with every second of it.
            self.scans = {
                table: {
                    "seq_scans": after[table][0] - before.get(table, (0, 0, 0))[0],
                    "seq_rows_read": after[table][1] - before.get(table, (0, 0, 0))[1],
                    "index_scans": after[table][2] - before.get(table, (0, 0, 0))[2],
                }
                for table in after
                if after[table][1] - before.get(table, (0, 0, 0))[1] > 0
            }

    def report(self) -> dict:
        return {
            "samples": self.samples,
            "sequential_scans": self.scans,
            "blocked_by_a_lock": {
                app: dict(sorted(keys.items(), key=lambda item: -item[1])[:8])
                for app, keys in self.blocked.items()
            },
            "by_service": {
                app: dict(sorted(keys.items(), key=lambda item: -item[1])[:12])
                for app, keys in self.counts.items()
            },
        }


def _stop_services(services: dict[str, subprocess.Popen]) -> None:
    for process in services.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in services.values():
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_online(count: int, services: dict, timeout: float) -> float:
    from django.db import connection

    from superimap.mailboxes.models import MailboxUser

    started = time.monotonic()
    while True:
        time.sleep(1.0)
        for name, process in services.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}")
        idle = MailboxUser.objects.filter(status=MailboxUser.Status.IDLE).count()
        connection.close()
        elapsed = time.monotonic() - started
        print(f"  {elapsed:6.1f}s idle {idle}/{count}", flush=True)
        if idle >= count:
            return elapsed
        if elapsed > timeout:
            raise RuntimeError(f"only {idle}/{count} mailboxes idle after {timeout:.0f}s")


def _push_and_measure(args, server, receiver, services, load_at_start, online) -> dict:
    expected = int(args.rate * args.duration)
    time.sleep(3.0)  # let the last status flushes settle
    pids = {"chaos_server": server.process.pid, "receiver": receiver.process.pid}
    pids.update({name: process.pid for name, process in services.items()})
    if getattr(args, "postgres_pid", None):
        # The server and its live backends: the database's CPU shares the box too.
        pids["postgres"] = args.postgres_pid
    load_at_push = os.getloadavg()
    cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    gate_before = _scrape(services)
    sampler = None
    statements = _PgStatements.start(args)
    tables = _PgTables(os.environ["DATABASE_URL"]) if args.backend == "postgres" else None
    if args.backend == "postgres":
        sampler = _PgSampler(os.environ["DATABASE_URL"])
        sampler.start()
    print(f"pushing {expected} messages at {args.rate:g}/s", flush=True)
    started = time.monotonic()
    server.send(f"push {expected} {args.rate}")
    if server.read_line() != f"pushed {expected}":
        raise RuntimeError("the chaos server did not push")
    pushed_at = time.monotonic()
    gate = _gate_report(gate_before, _scrape(services), pushed_at - started)
    if sampler is not None:
        sampler.stop.set()
        sampler.join()
    received = receiver.count()
    progress = [(round(pushed_at - started, 1), received)]  # (seconds since push, arrived)
    while received < expected and time.monotonic() < pushed_at + args.drain:
        time.sleep(0.5)
        received = receiver.count()
        progress.append((round(time.monotonic() - started, 1), received))
        print(f"  received {received}/{expected}", flush=True)
    time.sleep(1.0)  # duplicates that would follow the last message
    seconds = time.monotonic() - started
    cpu = {name: _cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    top_statements = statements.report(expected) if statements is not None else None
    table_report = tables.report(expected) if tables is not None else None
    rss = {name: _rss_mb(pid) for name, pid in pids.items()}
    notes = receiver.notes_with_event_ids()
    numbers = [note[0] for note in notes]
    distinct = set(numbers)
    latencies = sorted((note[2] - note[1]) * 1000 for note in notes)
    stages = _stages(notes)
    return {
        "benchmark": "e2e",
        "mode": args.mode,
        "backend": args.backend,
        "mailboxes": args.mailboxes,
        "rate": args.rate,
        "pushed": expected,
        "received": len(notes),
        "lost": len(set(range(1, expected + 1)) - distinct),
        "duplicated": len(numbers) - len(distinct),
        "invalid_signatures": sum(1 for note in notes if not note[3]),
        "latency_ms": {
            "p50": _percentile(latencies, 0.50),
            "p99": _percentile(latencies, 0.99),
            "max": round(latencies[-1], 1) if latencies else None,
        },
        "seconds": round(seconds, 1),
        "cpu_ms_per_message": {
            name: round(value * 1000 / max(1, expected), 3) for name, value in cpu.items()
        },
        "cpu_seconds": {name: round(value, 2) for name, value in cpu.items()},
        "rss_mb": rss,
        "online_seconds": round(online, 1),
        "arrived_after_push": progress,
        # Where the slow ones were: latency by the second of the push they were pushed in.
        "latency_ms_by_push_second": _by_second(notes),
        "per_half_second": _timeline(stages),
        # Where the time went, per message (_stages): push -> Delivery row written, row ->
        # first attempt started (waiting to be claimed), attempt -> arrived at the receiver.
        "stages_ms": _stage_summary(stages),
        "stages_ms_by_push_second": _stages_by_second(stages),
        # During the push: the SQLite write gate (waits, share of the push), or what the
        # PostgreSQL backends of the engine and the worker were doing.
        "gate": gate,
        "pg_activity": sampler.report() if sampler is not None else None,
        # With --pg-setting shared_preload_libraries=pg_stat_statements: the statements that
        # cost the server most over the push and drain, per message pushed.
        "pg_statements_per_message": top_statements,
        # PostgreSQL, over the push and drain: rows inserted / updated / HOT-updated per
        # message by table, scans per message by index (an index no query scans only costs),
        # the index sizes after, and WAL bytes per message (_PgTables).
        "pg_tables_per_message": table_report,
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "load_average_at_push": [round(x, 2) for x in load_at_push],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m devtools.bench.e2e "
        f"--rate {args.rate:g} --mailboxes {args.mailboxes} --duration {args.duration:g} "
        f"--mode {args.mode} --backend {args.backend}"
        + "".join(f" --pg-setting {setting}" for setting in args.pg_setting),
    }


class _PgStatements:
    """pg_stat_statements over the push and drain (only if the server preloads it)."""

    COLUMNS = (
        "calls",
        "total_plan_time",  # 0 unless --pg-setting pg_stat_statements.track_planning=on
        "total_exec_time",
        "rows",
        "shared_blks_hit",
        "shared_blks_read",
        "shared_blks_dirtied",
        "shared_blks_written",
        "wal_records",
        "wal_bytes",
    )

    def __init__(self, url: str) -> None:
        self.url = url

    @classmethod
    def start(cls, args):
        if args.backend != "postgres" or not any(
            "pg_stat_statements" in setting for setting in args.pg_setting
        ):
            return None
        statements = cls(os.environ["DATABASE_URL"])
        statements._sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        statements._sql("SELECT pg_stat_statements_reset()")
        return statements

    def _sql(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            cursor = db.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def report(self, messages: int, top: int = 15) -> list[dict]:
        rows = self._sql(
            f"SELECT query, {', '.join(self.COLUMNS)} FROM pg_stat_statements "
            "WHERE query NOT ILIKE '%pg_stat%' ORDER BY total_plan_time + total_exec_time DESC"
        )
        report = [
            {
                "query": "(all statements)",
                **{
                    name: round(sum(float(row[k]) for row in rows) / max(1, messages), 4)
                    for k, name in enumerate(self.COLUMNS, 1)
                },
            }
        ]
        for row in rows[:top]:
            entry = {"query": " ".join(row[0].split())[:200]}
            for name, value in zip(self.COLUMNS, row[1:], strict=True):
                entry[name] = round(float(value) / max(1, messages), 4)
            report.append(entry)
        # The same statement with IN lists or VALUES of other lengths is another entry of
        # pg_stat_statements: summed here by the statement's first 60 characters.
        families: dict[str, list[float]] = {}
        for row in rows:
            key = " ".join(row[0].split())[:60]
            sums = families.setdefault(key, [0.0] * (len(self.COLUMNS) + 1))
            sums[0] += 1
            for k, value in enumerate(row[1:], 1):
                sums[k] += float(value)
        for key, sums in sorted(families.items(), key=lambda item: -item[1][2] - item[1][3])[:top]:
            entry = {"family": key, "texts": int(sums[0])}
            for k, name in enumerate(self.COLUMNS, 1):
                entry[name] = round(sums[k] / max(1, messages), 4)
            report.append(entry)
        return report


class _PgTables:
    """pg_stat_user_tables / _indexes deltas and WAL written, over the push and drain.
    Statistics are flushed by each backend at most once a second (up to 10 s when idle):
    close over a drain of seconds, not exact."""

    TABLES = (
        "delivery_delivery",
        "delivery_payload",
        "mailboxes_maillog",
        "delivery_deliveryattempt",
    )

    def __init__(self, url: str) -> None:
        self.url = url
        self.before = self._snapshot()

    def _snapshot(self) -> dict:
        import psycopg

        names = ", ".join(f"'{name}'" for name in self.TABLES)
        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute("SELECT pg_stat_clear_snapshot()")
            tables = db.execute(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del "
                f"FROM pg_stat_user_tables WHERE relname IN ({names})"
            ).fetchall()
            indexes = db.execute(
                "SELECT relname, indexrelname, idx_scan, pg_relation_size(indexrelid) "
                f"FROM pg_stat_user_indexes WHERE relname IN ({names})"
            ).fetchall()
            wal = db.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]
        return {
            "tables": {row[0]: row[1:] for row in tables},
            "indexes": {(row[0], row[1]): row[2:] for row in indexes},
            "wal": float(wal),
        }

    def report(self, messages: int) -> dict:
        after, before, n = self._snapshot(), self.before, max(1, messages)
        tables = {}
        for name, values in sorted(after["tables"].items()):
            old = before["tables"].get(name, (0, 0, 0, 0))
            ins, upd, hot, deleted = (a - b for a, b in zip(values, old, strict=True))
            tables[name] = {
                "inserted": round(ins / n, 3),
                "updated": round(upd / n, 3),
                "hot_updated": round(hot / n, 3),
                "hot_share": round(hot / upd, 3) if upd else None,
                "deleted": round(deleted / n, 3),
            }
        indexes = {}
        for (table, name), (scans, size) in sorted(after["indexes"].items()):
            old_scans = before["indexes"].get((table, name), (0, 0))[0]
            indexes[name] = {
                "scans": round((scans - old_scans) / n, 4),
                "size_kb": round(size / 1024),
            }
        return {
            "tables": tables,
            "indexes": indexes,
            "wal_bytes": round((after["wal"] - before["wal"]) / n),
            "sizes_kb": self._sizes(),
            "payloads": self._payloads(),
        }

    def _sql(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            return db.execute(sql).fetchall()

    def _sizes(self) -> dict:
        """Each table's heap and TOAST table, after the run (KB)."""
        names = ", ".join(f"'{name}'" for name in self.TABLES)
        rows = self._sql(
            "SELECT relname, pg_relation_size(oid), "
            "CASE WHEN reltoastrelid = 0 THEN 0 ELSE pg_relation_size(reltoastrelid) END "
            f"FROM pg_class WHERE relname IN ({names})"
        )
        return {
            name: {"heap": round(heap / 1024), "toast": round(toast / 1024)}
            for name, heap, toast in sorted(rows)
        }

    def _payloads(self) -> dict:
        """How Delivery's payloads (DeliveryPayload) are stored: bytes as JSON text, bytes
        stored (in the row or its TOAST table: sizes_kb tells which), the share compressed."""
        text, stored, compressed, count = self._sql(
            "SELECT avg(octet_length(payload::text)), avg(pg_column_size(payload)), "
            "avg((pg_column_compression(payload) IS NOT NULL)::int), count(*) "
            "FROM delivery_payload"
        )[0]
        return {
            "rows": count,
            "json_bytes": round(float(text or 0)),
            "stored_bytes": round(float(stored or 0)),
            "compressed_share": round(float(compressed or 0), 3),
        }


def _table_scans(conn) -> dict[str, tuple[int, int, int]]:
    """Statistics can lag by up to PGSTAT_STAT_INTERVAL: over a push of seconds, close."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(
        "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0) FROM pg_stat_user_tables"
    ).fetchall()
    return {name: (seq, read, index) for name, seq, read, index in rows}


def _words(query: str | None) -> str:
    return " ".join((query or "").split()[:4])


STAGES = ("push_to_row", "row_to_attempt", "attempt_to_arrival")


def _stages(notes: list[tuple]) -> list[tuple[float, float, float, float]]:
    """Per arrived message (first arrival): (pushed at, push -> Delivery row written, row ->
    its first attempt started, attempt started -> arrived), seconds. The row's created_at is
    taken in the engine's transaction just before the insert (its commit follows within the
    group commit); the attempt's started_at when the worker begins the POST, right after
    its claim. One clock: every process runs on this machine."""
    from superimap.delivery.models import Delivery, DeliveryAttempt

    rows = {
        str(event_id): (id_, created_at.timestamp())
        for event_id, id_, created_at in Delivery.objects.filter(kind="new_mail").values_list(
            "event_id", "id", "created_at"
        )
    }
    started = dict(
        DeliveryAttempt.objects.filter(number=1).values_list("delivery_id", "started_at")
    )
    seen = set()
    stages = []
    for number, generated, arrived, _, event_id in sorted(notes, key=lambda note: note[2]):
        row = rows.get(event_id)
        if number in seen or row is None or row[0] not in started:
            continue
        seen.add(number)
        created, attempt = row[1], started[row[0]].timestamp()
        stages.append((generated, created - generated, attempt - created, arrived - attempt))
    return stages


def _stage_summary(stages: list[tuple]) -> dict:
    summary = {"count": len(stages)}
    for index, name in enumerate(STAGES, start=1):
        values = sorted(stage[index] * 1000 for stage in stages)
        summary[name] = {"p50": _percentile(values, 0.50), "p99": _percentile(values, 0.99)}
    return summary


def _stages_by_second(stages: list[tuple]) -> list[dict]:
    if not stages:
        return []
    first = min(stage[0] for stage in stages)
    seconds: dict[int, list[tuple]] = {}
    for stage in stages:
        seconds.setdefault(int(stage[0] - first), []).append(stage)
    return [{"second": second, **_stage_summary(seconds[second])} for second in sorted(seconds)]


def _cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and of its live children (several engine processes per box)."""
    total = 0.0
    for member in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
            if parent == pid:
                found.append(int(entry))
    return found


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


if __name__ == "__main__":
    sys.exit(main())
