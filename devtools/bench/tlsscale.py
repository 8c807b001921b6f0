"""Many TLS mailboxes on one box: several engine processes and chaos servers (issue 20.4).

    python -m devtools.bench.tlsscale --mailboxes 100000 --out docs/bench/tls-100000.json \\
        [--engines 6] [--servers 6] [--sqlite] [--idle-seconds 60] \\
        [--pushes 6000] [--push-rate 200] [--handshake-concurrency 50]

One process may hold RLIMIT_NOFILE files (20,000 on the box this was written on), so N
mailboxes take ceil(N / 17,000) engine processes (distinct node names sharing one
database: the node leases and rendezvous hashing split the mailboxes, design.md 8) and as
many chaos IMAP servers (implicit TLS 1.3, an ECDSA P-256 test certificate, Python's
default of two session tickets per connection), each serving its share of the users. The
connections verify the server's certificate against its CA (imap_tls_ca), as production
connections verify theirs; --no-verify uses the loopback test provider, which does not. The
database is a throwaway PostgreSQL (devtools/testing/postgres.py) unless --sqlite.

The engines run as `superimap up` runs them (uvloop, gc freeze, the login limits of the
settings: loopback's built-in 20,000 at once then 2,000/s per process, imapclient/
ratelimit.py). Each node's heartbeat row is written before the engines start, as for nodes
that are up when the mailboxes are connected (a cold start of every node at once first
claims up to one node's capacity and hands the rest over: not what is measured here).

It writes one JSON result:

- rss_per_mailbox_kb: the engine processes' VmRSS once every mailbox is in IDLE, minus
  their VmRSS before the engines started (Django loaded, database connected), summed over
  the processes and divided by N, in KiB;
- idle_cpu_percent: the engine processes' CPU (all threads) over --idle-seconds with no
  mail, in % of one core, summed (the chaos servers' own in chaos_idle_cpu_percent); the
  engine children stop writing their status file (the bench's own wake-up each second)
  for the window. Per engine in idle_engines: its CPU, and each thread's CPU (ms/s) and
  voluntary context switches (wake-ups/s) from /proc/PID/task/TID/schedstat and status,
  named by the child (main = the event loop, heartbeat-*, the database threads); and the
  sessions' status reports in the window (idle: re-connects' first IDLEs, a re-issue
  reports nothing; connecting: re-connects), and the IDLEs waited in (counted: idles);
- IDLE re-issues: a session ends its IDLE and issues it again every IDLE_REISSUE_SECONDS
  (28 min), so a steady engine of N mailboxes re-issues N / 1,680 a second (60/s at
  100,000; the IDLEs of the window less its IDLE reports). Left alone, every session's
  first IDLE starts during the ramp and the first
  re-issue comes a period later: a window shortly after the ramp would see none and hide
  that cost. So each session's FIRST IDLE period is drawn uniformly from (0, period]
  (--no-reissue-spread: the real period, as before): from the ramp on, re-issues come at
  the steady rate, and the window counts them at the rate a real cycle produces (the
  measured rate is reissues_per_second, against the expected N / period);
- idle_ramp_seconds: first mailbox in IDLE to last (time.time() in each engine at the
  session's first IDLE report); online_seconds: engines started to last IDLE;
- latency_ms: the chaos servers push --pushes messages at --push-rate/s in all (each an
  equal share) to random users while all N are held; latency is Delivery.created_at
  minus the message's X-Chaos-Generated, as in devtools/bench/engine.py;
  push_cpu_ms_per_mail: the engines' CPU from the first push until all landed (checked
  every 2 s, so ~2 s of idle CPU is in it too), per mail delivered.

Every figure depends on what else runs on the box: the result notes the load average
at the start, after the ramp and after the pushes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.utils import timezone

from devtools.bench.engine import (
    ChaosServerProcess,
    _generated_at,
    _percentile,
    _uvloop_version,
    raise_open_files,
)

PER_PROCESS = 17_000  # mailboxes per engine or chaos server: room under 20,000 files
STATUS_EVERY = 1.0


# --- the parent ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Many TLS mailboxes on one box.")
    parser.add_argument("--out", default="bench-results/tlsscale.json")
    parser.add_argument("--mailboxes", type=int, default=5000)
    parser.add_argument("--engines", type=int, help=f"default: ceil(N / {PER_PROCESS})")
    parser.add_argument("--servers", type=int, help=f"default: ceil(N / {PER_PROCESS})")
    parser.add_argument("--sqlite", action="store_true", help="SQLite (WAL) not PostgreSQL")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="the loopback test provider (no certificate check) instead of a custom server "
        "whose certificate is verified against its CA (imap_tls_ca)",
    )
    parser.add_argument(
        "--tls-tickets",
        type=int,
        default=2,
        help="TLS 1.3 session tickets the servers send (Python's and OpenSSL's default: 2)",
    )
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--settle-seconds", type=float, default=15.0)
    parser.add_argument("--pushes", type=int, default=6000)
    parser.add_argument("--push-rate", type=float, default=200.0)
    parser.add_argument("--handshake-concurrency", type=int, default=50)
    parser.add_argument(
        "--no-reissue-spread",
        dest="reissue_spread",
        action="store_false",
        help="each session's first IDLE lasts the full period (the window sees no re-issue)",
    )
    parser.add_argument("--ramp-timeout", type=float, default=900.0)
    parser.add_argument("--engine-child", help=argparse.SUPPRESS)  # status file
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--capacity", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine_child:
        run_engine_child(args)
        return
    # SIGTERM (and SIGINT, ignored in background jobs) unwind run(): the engines, the chaos
    # servers and PostgreSQL are stopped on the way out.
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, _interrupted)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1))


def _interrupted(number: int, frame: object) -> None:
    raise SystemExit(f"interrupted by signal {number}")


def run(args: argparse.Namespace) -> dict:
    count = args.mailboxes
    engines = args.engines or math.ceil(count / PER_PROCESS)
    servers = args.servers or math.ceil(count / PER_PROCESS)
    capacity = min(math.ceil(count / engines * 1.15), raise_open_files(65536) - 500)
    load_at_start = os.getloadavg()
    with ExitStack() as stack:
        var_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tlsscale-")))
        if args.sqlite:
            database_url = f"sqlite:///{var_dir / 'bench.sqlite3'}"
        else:
            from devtools.testing.postgres import PostgresServer

            database_url = stack.enter_context(PostgresServer()).url
        shares = [count // servers + (i < count % servers) for i in range(servers)]
        chaos = []
        for i, share in enumerate(shares):
            (var_dir / f"chaos-{i}").mkdir()
            server = ChaosServerProcess(
                var_dir / f"chaos-{i}", share, True, extra=(f"--tls-tickets={args.tls_tickets}",)
            )
            stack.callback(server.stop)
            chaos.append(server)
        env = _setup_django(var_dir, database_url)
        _make_mailboxes(chaos, shares, var_dir, not args.no_verify)
        print(f"{count} mailboxes on {servers} chaos server(s); {engines} engine(s)", flush=True)
        children: list[EngineChild] = []
        # All at once: an engine stopped before the others would hand its mailboxes to them.
        stack.callback(_stop_all, children)
        for i in range(engines):
            children.append(EngineChild(var_dir, f"bench-node-{i}", capacity, args, env))
        before = [child.wait_ready() for child in children]
        _register_nodes(children, capacity)
        pids = [child.process.pid for child in children], [s.process.pid for s in chaos]
        cpu_before_ramp = [sum(map(_cpu_seconds, group)) for group in pids]
        started = time.time()
        for child in children:
            child.go()
        ramp = _wait_all_idle(children, count, started, args.ramp_timeout)
        ramp_cpu = [
            sum(map(_cpu_seconds, g)) - b for g, b in zip(pids, cpu_before_ramp, strict=True)
        ]
        load_after_ramp = os.getloadavg()
        time.sleep(args.settle_seconds)  # status flush, gc freeze (30 s after the last start)
        idle_rss = [child.rss_kb() for child in children]
        chaos_rss = [_rss_kb(server.process.pid) for server in chaos]
        idle_cpu, chaos_cpu, idle_engines = _idle_cpu(children, chaos, args.idle_seconds)
        print(f"idle CPU {idle_cpu:.2f}% (engines), {chaos_cpu:.2f}% (chaos servers)", flush=True)
        cpu_before_pushes = sum(map(_cpu_seconds, pids[0]))
        latencies = _push(chaos, args.pushes, args.push_rate)
        push_cpu = sum(map(_cpu_seconds, pids[0])) - cpu_before_pushes
        load_after_pushes = os.getloadavg()
        after_rss = [child.rss_kb() for child in children]
        held = [child.status().get("sessions", 0) for child in children]
    latencies.sort()
    growth = sum(idle_rss) - sum(before)
    return {
        "mailboxes": count,
        "tls": True,
        "tls_verified": not args.no_verify,
        "tls_session_tickets": args.tls_tickets,
        "engines": engines,
        "chaos_servers": servers,
        "mailboxes_per_engine": held,
        "rss_per_mailbox_kb": round(growth / count, 1),
        "rss_engines_before_mb": [round(kb / 1024, 1) for kb in before],
        "rss_engines_idle_mb": [round(kb / 1024, 1) for kb in idle_rss],
        "rss_engines_after_pushes_mb": [round(kb / 1024, 1) for kb in after_rss],
        "rss_chaos_servers_idle_mb": [round(kb / 1024, 1) for kb in chaos_rss],
        "idle_cpu_percent": round(idle_cpu, 2),
        "chaos_idle_cpu_percent": round(chaos_cpu, 2),
        "idle_seconds": args.idle_seconds,
        "idle_engines": idle_engines,
        "idle_reissue_spread": args.reissue_spread,
        "idle_reissue_seconds": _reissue_seconds(),
        "reissues_per_second": round(sum(e["reissues_per_second"] for e in idle_engines), 2),
        "reissues_per_second_expected": round(count / _reissue_seconds(), 2),
        "idle_ramp_seconds": round(ramp["last"] - ramp["first"], 1),
        "online_seconds": round(ramp["last"] - started, 1),
        # CPU from the engines' start to the last IDLE, per mailbox: the TLS handshake
        # and login of each side (is the ramp CPU-bound on this box?).
        "ramp_cpu_ms_per_mailbox": {
            "engines": round(ramp_cpu[0] * 1000 / count, 2),
            "chaos_servers": round(ramp_cpu[1] * 1000 / count, 2),
        },
        "pushes": args.pushes,
        "push_rate": args.push_rate,
        "pushes_delivered": len(latencies),
        "push_cpu_ms_per_mail": round(push_cpu * 1000 / max(1, len(latencies)), 3),
        "latency_ms": {
            "p50": round(_percentile(latencies, 50), 1),
            "p99": round(_percentile(latencies, 99), 1),
            "max": round(latencies[-1], 1) if latencies else None,
        },
        "handshake_concurrency": args.handshake_concurrency,
        "capacity_per_engine": capacity,
        "open_files_limit": raise_open_files(65536),
        "load_average_at_start": [round(v, 2) for v in load_at_start],
        "load_average_after_ramp": [round(v, 2) for v in load_after_ramp],
        "load_average_after_pushes": [round(v, 2) for v in load_after_pushes],
        "db": "sqlite" if args.sqlite else "postgresql",
        "python": platform.python_version(),
        "uvloop": _uvloop_version(),
        "openssl": __import__("ssl").OPENSSL_VERSION,
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _setup_django(var_dir: Path, database_url: str) -> dict[str, str]:
    env = {
        "SUPERIMAP_ENV": "test",
        "VAR_DIR": str(var_dir),
        "DATABASE_URL": database_url,
        "ALLOW_LOOPBACK_IMAP": "true",
        "DJANGO_SETTINGS_MODULE": "superimap.settings",
    }
    os.environ.update(env)
    from superimap.platform import prepare

    prepare.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return {**os.environ, **env}


def _make_mailboxes(
    chaos: list[ChaosServerProcess], shares: list[int], var_dir: Path, verify: bool
) -> None:
    from devtools.testing.users import chaos_users
    from superimap.mailboxes.models import MailboxUser
    from superimap.partners.models import Connection, ImapProvider, Partner

    for i, (server, share) in enumerate(zip(chaos, shares, strict=True)):
        # One partner per server: a partner has one connection per provider.
        partner = Partner.objects.create(
            name=f"Bench {i}", new_mail_webhook="http://127.0.0.1:9/hook"
        )
        # Connected an hour ago (the engine re-reads rows changed in its last 30 s).
        an_hour_ago = timezone.now() - timedelta(hours=1)
        if not verify:  # the loopback test provider: no certificate check
            chaos_users(
                partner, server.port, share, idle_for=timedelta(hours=1), imap_tls="implicit"
            )
            continue
        # A custom server whose certificate is checked against its own CA, as a
        # connection with imap_tls_ca is (the chain and the name 127.0.0.1 verified).
        connection = Connection.objects.create(
            partner=partner,
            provider=ImapProvider.objects.get(code="PLAIN"),
            imap_host="127.0.0.1",
            imap_port=server.port,
            imap_tls="implicit",
            imap_tls_ca=(var_dir / f"chaos-{i}" / "tls" / "ca.pem").read_text(),
            imap_tls_verify=True,
        )
        MailboxUser.objects.bulk_create(
            (
                MailboxUser(
                    connection=connection,
                    tag=f"user{n}",
                    login_username=f"user{n}",
                    password=f"pass{n}",
                    connected_at=an_hour_ago,
                )
                for n in range(share)
            ),
            batch_size=2000,
        )
        MailboxUser.objects.filter(connection=connection).update(updated_at=an_hour_ago)


def _register_nodes(children: list[EngineChild], capacity: int) -> None:
    from superimap.engine.models import EngineNode

    now = timezone.now()
    for child in children:
        EngineNode.objects.update_or_create(
            node_id=child.node,
            defaults={
                "host": platform.node(),
                "pid": child.process.pid,
                "version": "bench",
                "started_at": now,
                "last_seen": now,
                "capacity": capacity,
            },
        )


def _stop_all(children: list[EngineChild]) -> None:
    for child in children:
        child.close_stdin()
    for child in children:
        child.stop()


def _wait_all_idle(children, count: int, started: float, timeout: float) -> dict:
    while True:
        time.sleep(2.0)
        statuses = [child.status() for child in children]
        idle = sum(s.get("idle", 0) for s in statuses)
        rss = sum(child.rss_kb() for child in children) // 1024
        print(
            f"  {time.time() - started:6.1f}s idle {idle}/{count} "
            f"sessions {[s.get('sessions', 0) for s in statuses]} engines' RSS {rss} MiB "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        if idle >= count:
            return {
                "first": min(s["first_idle"] for s in statuses if s.get("first_idle")),
                "last": max(s["last_idle"] for s in statuses if s.get("last_idle")),
            }
        for child in children:
            if child.process.poll() is not None:
                raise RuntimeError(f"engine {child.node} exited: {child.process.returncode}")
        if time.time() - started > timeout:
            raise RuntimeError(f"only {idle}/{count} mailboxes idle after {timeout:.0f}s")


def _idle_cpu(children, chaos, seconds: float) -> tuple[float, float, list[dict]]:
    engines = [child.process.pid for child in children]
    servers = [server.process.pid for server in chaos]
    for child in children:
        child.send("quiet")  # no status file writes (the bench's own) during the window
    time.sleep(1.0)  # each child's last write is over
    names = [child.status().get("threads", {}) for child in children]
    threads_before = [_thread_stats(pid) for pid in engines]
    cpu_before = [_cpu_seconds(pid) for pid in engines + servers]
    wall = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - wall
    spent = [_cpu_seconds(pid) - b for pid, b in zip(engines + servers, cpu_before, strict=True)]
    threads_after = [_thread_stats(pid) for pid in engines]
    for child in children:
        child.send("status")
    time.sleep(1.5)  # each child writes its window's reports
    per_engine = []
    for i, child in enumerate(children):
        window = child.status().get("window", {})
        reports = window.get("reports", {})
        per_engine.append(
            {
                "node": child.node,
                "cpu_percent": round(spent[i] / wall * 100, 3),
                "threads": _thread_rates(names[i], threads_before[i], threads_after[i], wall),
                "reports": reports,
                "reissues_per_second": round(
                    (window.get("idles", 0) - reports.get("idle", 0)) / wall, 2
                ),
                "counted": {k: v for k, v in window.items() if k != "reports"},
            }
        )
    return (
        sum(spent[: len(engines)]) / wall * 100,
        sum(spent[len(engines) :]) / wall * 100,
        per_engine,
    )


def _thread_stats(pid: int) -> dict[str, tuple[int, int]]:
    """{tid: (nanoseconds on CPU, voluntary context switches)} of every thread of ``pid``."""
    stats = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as schedstat:
                ran = int(schedstat.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as status:
                text = status.read()
        except OSError:  # the thread ended meanwhile
            continue
        switches = int(text.split("\nvoluntary_ctxt_switches:")[1].split()[0])
        stats[tid] = (ran, switches)
    return stats


def _thread_rates(names: dict, before: dict, after: dict, wall: float) -> list[dict]:
    """Each thread that ran in the window: CPU in ms/s and wake-ups (voluntary switches)/s."""
    rows = []
    for tid, (ran, switches) in after.items():
        ran0, switches0 = before.get(tid, (0, 0))
        if ran == ran0 and switches == switches0:
            continue
        rows.append(
            {
                "thread": names.get(tid, tid),
                "cpu_ms_per_s": round((ran - ran0) / wall / 1e6, 3),
                "wakeups_per_s": round((switches - switches0) / wall, 2),
            }
        )
    return sorted(rows, key=lambda row: -row["cpu_ms_per_s"])


def _reissue_seconds() -> float:
    from django.conf import settings

    return float(settings.IDLE_REISSUE_SECONDS)


def _push(chaos: list[ChaosServerProcess], pushes: int, rate: float) -> list[float]:
    from superimap.delivery.models import Delivery

    shares = [pushes // len(chaos) + (i < pushes % len(chaos)) for i in range(len(chaos))]
    print(f"pushing {pushes} messages at {rate:.0f}/s", flush=True)
    for server, share in zip(chaos, shares, strict=True):
        server.send(f"push {share} {rate * share / pushes}")
    deadline = time.monotonic() + pushes / rate + 120
    landed = 0
    while landed < pushes and time.monotonic() < deadline:
        time.sleep(2.0)
        landed = Delivery.objects.filter(kind="new_mail").count()
        print(f"  landed {landed}/{pushes}", flush=True)
    for server, share in zip(chaos, shares, strict=True):
        answer = server.read_line()
        if answer != f"pushed {share}":
            raise RuntimeError(f"chaos server answered {answer!r}")
    rows = Delivery.objects.filter(kind="new_mail").values_list(
        "created_at", "stored_payload__payload"
    )
    return [
        (created_at.timestamp() - _generated_at(payload["rfc822"])) * 1000
        for created_at, payload in rows.iterator(chunk_size=1000)
    ]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class EngineChild:
    """One engine process (run_engine_child), started on "go" on its stdin; it keeps its
    state in a JSON file the parent reads."""

    def __init__(self, var_dir: Path, node: str, capacity: int, args, env) -> None:
        self.node = node
        self.status_file = var_dir / f"{node}.json"
        command = [
            sys.executable,
            "-m",
            "devtools.bench.tlsscale",
            f"--engine-child={self.status_file}",
            f"--node={node}",
            f"--capacity={capacity}",
            f"--handshake-concurrency={args.handshake_concurrency}",
            *([] if args.reissue_spread else ["--no-reissue-spread"]),
        ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stderr=open(var_dir / f"{node}.log", "w"),  # noqa: SIM115 - lives as long
            env={**env, "ENGINE_NODE_NAME": node},
            text=True,
        )

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}

    def wait_ready(self) -> int:
        deadline = time.monotonic() + 120
        while "rss_before_kb" not in (status := self.status()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"engine {self.node} did not get ready")
            time.sleep(0.2)
        return status["rss_before_kb"]

    def go(self) -> None:
        self.send("go")

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def rss_kb(self) -> int:
        return _rss_kb(self.process.pid)

    def close_stdin(self) -> None:
        try:
            self.process.stdin.close()  # EOF: the engine stops
        except OSError:
            pass

    def stop(self) -> None:
        try:
            self.close_stdin()
            self.process.wait(90)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


# --- an engine process ----------------------------------------------------------------------


def run_engine_child(args: argparse.Namespace) -> None:
    raise_open_files(65536)
    from superimap.platform import malloc, prepare

    prepare.setup()
    malloc.fix_mmap_threshold()  # as runtime.run() does for an engine (design.md 4.13)
    import logging

    logging.getLogger("superimap").setLevel(logging.WARNING)
    import uvloop

    uvloop.run(_engine_main(args))


async def _engine_main(args: argparse.Namespace) -> None:
    from superimap.engine.nodelock import NodeLock
    from superimap.engine.supervisor import Engine
    from superimap.mailboxes.models import MailboxUser
    from superimap.platform.dbpool import DbPool

    status_file = Path(args.engine_child)
    idle = MailboxUser.Status.IDLE
    pool = DbPool()
    # As `superimap up` runs an engine: its name held by a lock, so it beats every second
    # between refreshes (a refresh of 100,000 mailboxes on a busy box can take longer than
    # the 30 s after which a node without a fresh heartbeat no longer counts).
    node_lock = await pool.run(NodeLock(args.node).acquire)
    engine = Engine(
        pool,
        args.node,
        capacity=args.capacity,
        handshake_concurrency=args.handshake_concurrency,
        node_lock=node_lock,
        gc_freeze=True,
    )
    seen_idle: set[int] = set()
    state: dict = {"node": args.node, "idle": 0, "first_idle": None, "last_idle": None}
    report = engine.report
    reports: dict[str, int] = {}  # status reports by status, counted in the idle window
    # Sessions whose first IDLE period was shortened (the module docstring: re-issues at
    # the steady rate from the ramp on), the period to give back once that IDLE began.
    spread: dict[int, float] = {}
    if args.reissue_spread:
        _give_back_periods(spread)
    counting = False

    def watched_report(user_id: int, status: str, error: str, failures: int) -> None:
        if counting:
            reports[status] = reports.get(status, 0) + 1
        if status == idle and user_id not in seen_idle:
            seen_idle.add(user_id)
            now = time.time()
            state["first_idle"] = state["first_idle"] or now
            state["last_idle"] = now
            state["idle"] = len(seen_idle)
            running = engine.sessions.get(user_id)
            if args.reissue_spread and running is not None:
                session = running[0]
                spread[user_id] = session._idle_period
                session._idle_period *= 1.0 - random.random()  # (0, period]
        report(user_id, status, error, failures)

    engine.report = watched_report  # type: ignore[method-assign]
    await pool.run(lambda: None)  # the database threads and connection, before the baseline
    gc.collect()
    state["rss_before_kb"] = _rss_kb()
    _write_state(status_file, state, engine)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    if (await stdin.readline()).strip() != b"go":
        return
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    # Lines from the parent: "quiet" (the idle window: no status writes, so the bench's own
    # wake-up each second is not counted as the engine's idle CPU), "status" (write them
    # again); EOF: stop.
    quiet = False
    line = asyncio.create_task(stdin.readline())
    while not task.done():
        # FIRST_COMPLETED: asyncio.wait's default waits for both, so with no timeout (quiet)
        # the next line, EOF included, was never read and the child had to be killed.
        await asyncio.wait(
            [line, task],
            timeout=None if quiet else STATUS_EVERY,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if line.done():
            command = line.result().strip()
            if not command:  # EOF
                break
            quiet = command == b"quiet"
            if quiet:  # the window starts: count its reports, name the threads
                reports.clear()
                counting = True
                counters = _engine_counters(engine)
                state["threads"] = {str(t.native_id): t.name for t in threading.enumerate()}
                _write_state(status_file, state, engine)
            elif counting:
                counting = False
                state["window"] = {
                    "reports": dict(reports),
                    **{
                        name: value - counters[name]
                        for name, value in _engine_counters(engine).items()
                    },
                }
            line = asyncio.create_task(stdin.readline())
        if not quiet:
            _write_state(status_file, state, engine)
    line.cancel()
    stop.set()
    await asyncio.wait_for(task, 60)
    pool.shutdown()


def _give_back_periods(spread: dict[int, float]) -> None:
    """Give a session in ``spread`` its period back as soon as its shortened first IDLE
    has read it: MailboxSession._until_wake runs once per IDLE, right after. A session
    reports no status at a re-issue (the hook of the report is gone), and a wrapper of its
    own per session (a closure) held ~0.5 KiB more per mailbox when RSS is read."""
    from superimap.engine.session import MailboxSession

    until_wake = MailboxSession._until_wake

    def give_back(session, period: float) -> float:
        seconds = until_wake(session, period)
        full = spread.pop(session.user_id, None)
        if full is not None:
            session._idle_period = full
        return seconds

    MailboxSession._until_wake = give_back  # type: ignore[method-assign]


def _engine_counters(engine) -> dict[str, int]:
    """What the engine did, counted: database pool calls, refreshes (claims and quiet ones),
    beats and change probes of its heartbeat, IDLEs waited in (first ones and re-issues)."""
    heartbeat = engine.heartbeat
    return {
        "idles": engine.idles,
        "pool_calls": engine.pool.calls,
        "refreshes": engine._refreshes,
        "quiet_refreshes": engine.quiet_refreshes,
        "beats": heartbeat.beats if heartbeat is not None else 0,
        "probes": heartbeat.probes if heartbeat is not None else 0,
    }


def _write_state(path: Path, state: dict, engine) -> None:
    state["sessions"] = len(engine.sessions)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state))
    temporary.replace(path)


if __name__ == "__main__":
    main()
