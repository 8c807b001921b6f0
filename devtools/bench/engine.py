"""IMAP engine benchmark: memory per mailbox, idle CPU, time to online, push latency.

    python -m devtools.bench.engine --out bench-results/engine.json \\
        [--mailboxes 1000,5000,20000] [--tls | --plain] [--pushes 2000] [--push-rate 200]

Without --tls/--plain every mailbox count runs twice, plain and implicit TLS; the default is
N=1,000. Each configuration runs in a fresh child process (so memory from a previous run
cannot hide in the allocator): the child starts the chaos IMAP server in a process of its
own (so the RSS measured is only the engine's), makes a fresh SQLite database in a temp
VAR_DIR with N users, and runs the real Engine on uvloop as production does. It measures

- rss_per_mailbox_kb: (VmRSS once all N mailboxes sit in IDLE - VmRSS before the engine
  started) / N, in KiB;
- idle_cpu_percent: CPU of the whole engine process (all threads) over --idle-seconds with
  no mail arriving, the engine's 5 s lease refresh included;
- online_seconds: engine start until every mailbox has sent IDLE;
- latency_ms: the server generates --pushes messages at --push-rate/s across random users;
  each carries X-Chaos-Generated (time.time() at generation); latency is
  Delivery.created_at (set inside the persisting transaction) minus that, same clock.

--folders 1,3 watches that many folders per mailbox (INBOX, then Lists and Spam; design.md
4.10), pushes going to a random one of them: --folder-mode notify has the server advertise
NOTIFY, poll has it not, so the other folders are polled every --folder-poll seconds.
--changes on has the partner ask for message_updated / message_deleted (design.md 4.14;
"off,on" runs both): then --flags changes (a keyword added to a random message, pushed
as an unsolicited FETCH) at --flag-rate/s follow the pushes, and the result has
flag_cpu_ms_per_change (engine CPU while they come, per change; measured with changes off
too: the cost of ignoring them) and change_events. --resync-seconds sets
CHANGES_RESYNC_SECONDS (the chaos server has no CONDSTORE: the bounded resync runs).
Each result notes the load average when it started (the machine may be shared).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

OPEN_FILES = 65536
FOLDER_NAMES = ("INBOX", "Lists", "Spam")


# --- the parent: one child process per configuration ------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the IMAP engine.")
    parser.add_argument("--out", default="bench-results/engine.json")
    parser.add_argument(
        "--mailboxes",
        action="append",
        help="mailbox count(s): repeat or comma-separate (default 1000)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tls", action="store_true", help="implicit TLS only")
    mode.add_argument("--plain", action="store_true", help="plain IMAP only")
    parser.add_argument("--pushes", type=int, default=2000)
    parser.add_argument("--push-rate", type=float, default=200.0, help="messages per second")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--handshake-concurrency", type=int, default=50)
    parser.add_argument(
        "--idle-refresh",
        type=int,
        default=0,
        help="the connection's idle_refresh_seconds (0: off): the cost of re-issuing IDLE",
    )
    parser.add_argument(
        "--folders", default="1", help="folders per mailbox: 1 or 3, or both comma-separated"
    )
    parser.add_argument("--folder-mode", choices=["notify", "poll"], default="notify")
    parser.add_argument("--folder-poll", type=int, default=60, help="FOLDER_POLL_SECONDS")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print the event loop thread's busiest functions during the pushes (cProfile)",
    )
    parser.add_argument(
        "--postgres", action="store_true", help="a throwaway PostgreSQL instead of SQLite"
    )
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave every session object in the collector's full scans (engine/gcfreeze.py)",
    )
    parser.add_argument("--changes", default="off", help="change events: off, on, or off,on")
    parser.add_argument("--flags", type=int, default=0, help="flag changes after the pushes")
    parser.add_argument("--flag-rate", type=float, default=100.0, help="flag changes per second")
    parser.add_argument("--resync-seconds", type=int, default=900, help="CHANGES_RESYNC_SECONDS")
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=0,
        help="the engine process's generation-0 GC threshold (0: the engine's own)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    counts = [int(n) for item in args.mailboxes or ["1000"] for n in item.split(",") if n]
    if args.child:
        result = run_one(counts[0], args.tls, args)
        Path(args.result).write_text(json.dumps(result))
        return
    modes = [True] if args.tls else [False] if args.plain else [False, True]
    folder_counts = [int(n) for n in args.folders.split(",") if n]
    if args.child:
        folder_counts = folder_counts[:1]
    results = []
    change_modes = [m for m in args.changes.split(",") if m]
    for count, folders, changes in (
        (c, f, m) for c in counts for f in folder_counts for m in change_modes
    ):
        for tls in modes:
            child_args = argparse.Namespace(**{**vars(args), "changes": changes})
            result = _run_child(count, tls, replace_folders(child_args, folders))
            if result is not None:
                results.append(result)
                out = Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {len(results)} result(s) to {args.out}")
    for r in results:
        print(
            f"  N={r['mailboxes']:>6} {'TLS  ' if r['tls'] else 'plain'} "
            f"rss/mailbox={r['rss_per_mailbox_kb']} KiB total={r['rss_total_mb']} MB "
            f"idle cpu={r['idle_cpu_percent']}% online={r['online_seconds']}s "
            f"pushes={r['pushes_delivered']}/{r['pushes']} latency ms={r['latency_ms']} "
            f"folders={r['folders']} ({r['folder_mode']}) changes={r['changes']} "
            f"flag cpu ms/change={r['flag_cpu_ms_per_change']} events={r['change_events']}"
        )
    if len(results) < len(counts) * len(modes) * len(folder_counts) * len(change_modes):
        sys.exit(1)


def replace_folders(args: argparse.Namespace, folders: int) -> argparse.Namespace:
    if folders not in (1, 3):
        raise SystemExit("--folders takes 1 or 3")
    return argparse.Namespace(**{**vars(args), "folders": str(folders)})


def _run_child(count: int, tls: bool, args: argparse.Namespace) -> dict | None:
    with tempfile.NamedTemporaryFile(suffix=".json") as result_file:
        command = [
            sys.executable,
            "-m",
            "devtools.bench.engine",
            "--child",
            "--result",
            result_file.name,
            "--mailboxes",
            str(count),
            "--pushes",
            str(args.pushes),
            "--push-rate",
            str(args.push_rate),
            "--idle-seconds",
            str(args.idle_seconds),
            "--handshake-concurrency",
            str(args.handshake_concurrency),
            "--idle-refresh",
            str(args.idle_refresh),
            "--folders",
            args.folders,
            "--folder-mode",
            args.folder_mode,
            "--folder-poll",
            str(args.folder_poll),
            "--changes",
            args.changes,
            "--flags",
            str(args.flags),
            "--flag-rate",
            str(args.flag_rate),
            "--resync-seconds",
            str(args.resync_seconds),
        ]
        if tls:
            command.append("--tls")
        if args.profile:
            command.append("--profile")
        if args.no_gc_freeze:
            command.append("--no-gc-freeze")
        if args.postgres:
            command.append("--postgres")
        if args.gc_threshold:
            command.append(f"--gc-threshold={args.gc_threshold}")
        print(f"=== N={count} {'TLS' if tls else 'plain'} changes {args.changes} ===", flush=True)
        code = subprocess.call(command)
        if code != 0:
            print(f"run N={count} tls={tls} failed with exit code {code}", file=sys.stderr)
            return None
        return json.loads(Path(result_file.name).read_text())


# --- the child: one configuration ---------------------------------------------------------


def run_one(count: int, tls: bool, args: argparse.Namespace) -> dict:
    limit = raise_open_files(OPEN_FILES)
    if count + 100 > limit:
        raise SystemExit(f"{count} mailboxes need more than the {limit} open files allowed")
    with ExitStack() as stack:
        var_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="superimap-bench-")))
        database_url = f"sqlite:///{var_dir / 'bench.sqlite3'}"
        if args.postgres:
            from devtools.testing.postgres import PostgresServer

            database_url = stack.enter_context(PostgresServer()).url
        folders = FOLDER_NAMES[: int(args.folders)]
        server = ChaosServerProcess(
            var_dir, count, tls, folders=folders, notify=args.folder_mode == "notify"
        )
        try:
            os.environ["FOLDER_POLL_SECONDS"] = str(args.folder_poll)
            os.environ["CHANGES_RESYNC_SECONDS"] = str(args.resync_seconds)
            _setup_django(var_dir, database_url)
            _make_mailboxes(
                count, server.port, tls, args.idle_refresh, folders, args.changes == "on"
            )
            import uvloop

            return uvloop.run(_measure(count, tls, args, server))
        finally:
            server.stop()


def raise_open_files(wanted: int) -> int:
    """RLIMIT_NOFILE up to ``wanted`` if allowed (needs CAP_SYS_RESOURCE), else to the hard
    limit; returns the new soft limit."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class ChaosServerProcess:
    """devtools.testing.chaos_server in its own process, driven through stdin."""

    def __init__(
        self,
        var_dir: Path,
        users: int,
        tls: bool,
        folders: tuple[str, ...] = ("INBOX",),
        notify: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "devtools.testing.chaos_server",
            "--port=0",
            f"--users={users}",
            "--emails-per-minute=0",
            "--control",
            "--uvloop",
            f"--max-open-files={OPEN_FILES}",
            f"--folders={','.join(folders)}",
        ]
        if notify:
            command.append("--notify")
        command += extra
        if tls:
            from devtools.testing.dovecot import write_test_certificates

            certs = write_test_certificates(var_dir / "tls")
            command += [f"--tls-cert={certs.server_cert}", f"--tls-key={certs.server_key}"]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(var_dir / "chaos-server.log", "w"),  # noqa: SIM115 - lives as long
            text=True,
            bufsize=1,
        )
        line = self.process.stdout.readline().split()
        if line[:1] != ["listening"]:
            raise RuntimeError(f"chaos server did not start: {line}")
        self.port = int(line[2])

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def read_line(self) -> str:
        return self.process.stdout.readline().strip()

    def stats(self) -> dict:
        self.send("stats")
        return json.loads(self.read_line())

    def stop(self) -> None:
        try:
            self.send("quit")
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


def _setup_django(var_dir: Path, database_url: str) -> None:
    os.environ.update(
        SUPERIMAP_ENV="test",
        VAR_DIR=str(var_dir),
        DATABASE_URL=database_url,
        ALLOW_LOOPBACK_IMAP="true",
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "superimap.settings")
    from superimap.platform import prepare

    prepare.setup()
    import logging

    # Session chatter (one line per reconnect) would drown the progress lines.
    logging.getLogger("superimap").setLevel(logging.WARNING)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _make_mailboxes(
    count: int,
    port: int,
    tls: bool,
    idle_refresh: int = 0,
    folders: tuple[str, ...] = (),
    changes: bool = False,
) -> None:
    from devtools.testing.users import chaos_users
    from superimap.partners.models import Partner

    partner = Partner.objects.create(name="Bench", new_mail_webhook="http://127.0.0.1:9/hook")
    if changes:
        partner.message_updated_webhook = "http://127.0.0.1:9/updated"
        partner.message_deleted_webhook = "http://127.0.0.1:9/deleted"
        partner.save()
    # Connected an hour ago, as idle mailboxes are: the engine looks again at rows changed
    # in the last CHANGE_SLACK (30 s), which would be all of them right after the insert.
    chaos_users(
        partner,
        port,
        count,
        idle_for=timedelta(hours=1),
        imap_tls="implicit" if tls else "none",
        idle_refresh_seconds=idle_refresh,
        folders=list(folders) if len(folders) > 1 else [],
    )


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _cpu_seconds(stat_path: str = "/proc/self/stat") -> float:
    with open(stat_path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds per thread of this process: the event loop ("loop", the main thread),
    the database pool's threads ("db") and any other ("other")."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    main = threading.main_thread().native_id
    totals = {"loop": 0.0, "db": 0.0, "other": 0.0}
    for tid in os.listdir("/proc/self/task"):
        try:
            seconds = _cpu_seconds(f"/proc/self/task/{tid}/stat")
        except OSError:
            continue  # ended meanwhile
        name = names.get(int(tid), "")
        kind = "loop" if int(tid) == main else "db" if name.startswith("db") else "other"
        totals[kind] += seconds
    return totals


async def _measure(count: int, tls: bool, args: argparse.Namespace, server) -> dict:
    from superimap.engine.supervisor import Engine
    from superimap.imapclient import LoginLimiter
    from superimap.mailboxes.models import MailboxUser
    from superimap.platform.dbpool import DbPool

    Status = MailboxUser.Status
    loop = asyncio.get_running_loop()
    pool = DbPool()
    engine = Engine(
        pool,
        "bench-node",
        capacity=count,
        handshake_concurrency=args.handshake_concurrency,
        # Measures the engine, not the per-host login limit (50/s by default): all at once.
        login_limiter=LoginLimiter(host_burst=count, host_rate=count),
        gc_freeze=not args.no_gc_freeze,
    )
    if args.gc_threshold:  # after the engine set its own
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    statuses: dict[int, str] = {}
    report = engine.report

    def watched_report(user_id: int, status: str, error: str, failures: int) -> None:
        statuses[user_id] = status
        report(user_id, status, error, failures)

    engine.report = watched_report  # type: ignore[method-assign]
    await pool.run(lambda: None)  # start a DB thread before the baseline
    gc.collect()
    rss_before = _rss_kb()
    load_at_start = os.getloadavg()
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(engine.run(stop))
    try:
        await _wait_online(count, statuses, Status.IDLE, started, task)
        # Online: the engine's own report() again, so the pushes' CPU is not the wrapper's
        # (two calls per mail: ~2 % of the event loop's samples).
        del engine.report
        online_seconds = time.monotonic() - started
        await asyncio.sleep(max(2.0, engine.refresh_interval + 1))  # flush; settle
        idle_in_db = await pool.run(lambda: MailboxUser.objects.filter(status=Status.IDLE).count())
        gc.collect()
        rss_idle = _rss_kb()
        print(
            f"all {count} idle after {online_seconds:.1f}s ({idle_in_db} idle in the DB); "
            f"RSS {rss_before // 1024} -> {rss_idle // 1024} MiB",
            flush=True,
        )
        cpu_before, wall_before = _cpu_seconds(), time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        idle_cpu = (_cpu_seconds() - cpu_before) / (time.monotonic() - wall_before) * 100
        print(f"idle CPU {idle_cpu:.2f}% over {args.idle_seconds:.0f}s", flush=True)

        gc_pauses: list[float] = []
        gc_started = [0.0]
        gc_ms = [0.0, 0.0, 0.0]  # time in collections of each generation during the pushes
        gc_runs = [0, 0, 0]

        def on_gc(phase: str, info: dict) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter()
                return
            elapsed = (time.perf_counter() - gc_started[0]) * 1000
            gc_ms[info["generation"]] += elapsed
            gc_runs[info["generation"]] += 1
            if info["generation"] == 2:
                gc_pauses.append(elapsed)

        gc.callbacks.append(on_gc)
        frozen_at_push = gc.get_freeze_count()
        profiler = cProfile.Profile() if args.profile else None
        commits = _measure_group_commits(args.profile)
        cpu_before_pushes = _cpu_seconds()
        threads_before = _thread_cpu_seconds()
        server_stat = f"/proc/{server.process.pid}/stat"
        server_cpu_before = _cpu_seconds(server_stat)
        groups_before = (engine.persister.groups, engine.persister.batches)
        try:
            commits.on = True
            if profiler:
                profiler.enable()
            await _push(args, server, pool, loop)
        finally:
            commits.on = False
            if profiler:
                profiler.disable()
            gc.callbacks.remove(on_gc)
        # Measured before the rows are read back: the benchmark's own work is not the engine's.
        push_cpu = _cpu_seconds() - cpu_before_pushes
        threads_after = _thread_cpu_seconds()
        server_cpu = _cpu_seconds(server_stat) - server_cpu_before
        groups = engine.persister.groups - groups_before[0]
        batches = engine.persister.batches - groups_before[1]
        latencies, delivered = await _latencies(pool)
        if profiler:
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
            print("--- the group commits (database thread) ---", file=sys.stderr)
            pstats.Stats(commits.profile, stream=sys.stderr).sort_stats("tottime").print_stats(30)
            if dump := os.environ.get("SUPERIMAP_BENCH_PROFILE_DUMP"):  # for pstats digging
                profiler.dump_stats(dump + ".loop")
                commits.profile.dump_stats(dump + ".db")
        rss_after_pushes = _rss_kb()
        flag_cpu, flagged, change_events = await _flag(args, server, pool, loop)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        pool.shutdown()
    latencies.sort()
    return {
        "mailboxes": count,
        "tls": tls,
        "rss_per_mailbox_kb": round((rss_idle - rss_before) / count, 1),
        "rss_total_mb": round(rss_idle / 1024, 1),
        "rss_before_mb": round(rss_before / 1024, 1),
        "rss_after_pushes_mb": round(rss_after_pushes / 1024, 1),
        "idle_cpu_percent": round(idle_cpu, 2),
        "idle_seconds": args.idle_seconds,
        "online_seconds": round(online_seconds, 1),
        "idle_in_db": idle_in_db,
        "pushes": args.pushes,
        "push_rate": args.push_rate,
        "pushes_delivered": delivered,
        # Engine process CPU (all threads: event loop and DbPool) while pushing, per mail.
        "push_cpu_ms_per_mail": round(push_cpu * 1000 / max(delivered, 1), 2),
        # The same by thread: the event loop (IMAP, sessions) and the database pool.
        "push_cpu_ms_per_mail_by_thread": {
            kind: round((threads_after[kind] - threads_before[kind]) * 1000 / max(delivered, 1), 3)
            for kind in threads_before
        },
        # The database thread's CPU inside the group commits (persister.persist_group), per
        # mail: the rest of "db" is the thread's hand-offs and wake-ups, and other calls.
        "group_commit_cpu_ms_per_mail": round(commits.cpu * 1000 / max(delivered, 1), 3),
        # The chaos server process's CPU in the same window, per mail (it shares the box).
        "server_cpu_ms_per_mail": round(server_cpu * 1000 / max(delivered, 1), 3),
        # Group commits during the pushes (engine/persister.py) and batches per group.
        "group_commits": groups,
        "batches_per_group": round(batches / max(groups, 1), 2),
        "group_commit_ms": round(engine.persister.window * 1000, 1),
        "group_commit_adaptive": getattr(engine.persister, "adaptive", False),
        "latency_ms": {
            "p50": round(_percentile(latencies, 50), 1),
            "p99": round(_percentile(latencies, 99), 1),
            "max": round(latencies[-1], 1) if latencies else None,
        },
        "gc_full_collections_during_pushes": len(gc_pauses),
        "gc_full_pause_ms_max": round(max(gc_pauses, default=0.0), 1),
        # Wall time in collections by generation (0, 1, 2) during the pushes, and their count.
        "gc_ms_by_generation": [round(ms, 1) for ms in gc_ms],
        "gc_collections_by_generation": gc_runs,
        "gc_threshold": list(gc.get_threshold()),
        "handshake_concurrency": args.handshake_concurrency,
        "gc_freeze": not args.no_gc_freeze,
        "gc_frozen_objects_at_push": frozen_at_push,
        "idle_refresh_seconds": args.idle_refresh,
        "folders": int(args.folders),
        "folder_mode": args.folder_mode if int(args.folders) > 1 else "-",
        "folder_poll_seconds": args.folder_poll,
        "changes": args.changes,
        "flags": flagged,
        "flag_rate": args.flag_rate,
        "change_events": change_events,
        # Engine CPU while the flag changes came (pushed as unsolicited FETCH), per change.
        "flag_cpu_ms_per_change": round(flag_cpu * 1000 / max(flagged, 1), 3) if flagged else None,
        "resync_seconds": args.resync_seconds,
        "load_average_at_start": [round(value, 2) for value in load_at_start],
        "db": "postgresql" if args.postgres else "sqlite",
        "python": platform.python_version(),
        "uvloop": _uvloop_version(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class _GroupCommits:
    """Wraps engine/persister.persist_group (run on the database thread): the thread CPU
    spent inside the group commits while on, and their cProfile with --profile (a profiler
    is per thread, so the loop's one does not see them)."""

    def __init__(self, profile: bool) -> None:
        self.profile = cProfile.Profile() if profile else None
        self.on = False
        self.cpu = 0.0

    def wrap(self, persist_group):
        def measured(jobs):
            if not self.on:
                return persist_group(jobs)
            started = time.thread_time()
            if self.profile:
                self.profile.enable()
            try:
                return persist_group(jobs)
            finally:
                if self.profile:
                    self.profile.disable()
                self.cpu += time.thread_time() - started

        return measured


def _measure_group_commits(profile: bool) -> _GroupCommits:
    from superimap.engine import persister

    commits = _GroupCommits(profile)
    persister.persist_group = commits.wrap(persister.persist_group)
    return commits


async def _wait_online(count, statuses, idle, started, task) -> None:
    deadline = started + max(120.0, count * 0.05)
    while True:
        await asyncio.sleep(1.0)
        if task.done():
            task.result()
            raise RuntimeError("engine stopped early")
        tally: dict[str, int] = {}
        for status in statuses.values():
            tally[status] = tally.get(status, 0) + 1
        print(
            f"  {time.monotonic() - started:6.1f}s idle {tally.get(idle, 0)}/{count} "
            + " ".join(f"{k}={v}" for k, v in sorted(tally.items()) if k != idle)
            + f" RSS {_rss_kb() // 1024} MiB",
            flush=True,
        )
        if tally.get(idle, 0) >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {tally.get(idle, 0)}/{count} mailboxes idle in time")


async def _push(args, server, pool, loop) -> None:
    """Has the server push --pushes messages; returns once every one has its Delivery row."""
    from superimap.delivery.models import Delivery

    expected = args.pushes
    print(f"pushing {expected} messages at {args.push_rate:.0f}/s", flush=True)
    server.send(f"push {expected} {args.push_rate}")
    deadline = time.monotonic() + expected / args.push_rate + 120
    landed = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        landed = await pool.run(lambda: Delivery.objects.filter(kind="new_mail").count())
        print(f"  landed {landed}/{expected}", flush=True)
        if landed >= expected:
            break
    answer = await loop.run_in_executor(None, server.read_line)
    if answer != f"pushed {expected}":
        raise RuntimeError(f"chaos server answered {answer!r}")


async def _latencies(pool) -> tuple[list[float], int]:
    """Push -> Delivery row latencies (ms) of every new_mail row, and their count."""
    from superimap.delivery.models import Delivery

    def rows():
        return list(
            Delivery.objects.filter(kind="new_mail").values_list(
                "created_at", "stored_payload__payload"
            )
        )

    samples = []
    for created_at, payload in await pool.run(rows):
        generated = _generated_at(payload["rfc822"])
        samples.append((generated, (created_at.timestamp() - generated) * 1000))
    if dump := os.environ.get("SUPERIMAP_BENCH_LATENCY_DUMP"):  # (generated, ms) for digging
        Path(dump).write_text(json.dumps(sorted(samples)))
    return [latency for _, latency in samples], len(samples)


async def _flag(args, server, pool, loop) -> tuple[float, int, int]:
    """--flags flag changes at --flag-rate/s; (engine CPU seconds, changes made, events)."""
    from superimap.delivery.models import Delivery

    if not args.flags:
        return 0.0, 0, 0

    def events() -> int:
        return Delivery.objects.filter(kind="message_updated").count()

    cpu_before = _cpu_seconds()
    server.send(f"flag {args.flags} {args.flag_rate}")
    answer = await loop.run_in_executor(None, server.read_line)
    if not answer.startswith("flagged "):
        raise RuntimeError(f"chaos server answered {answer!r}")
    flagged = int(answer.split()[1])
    await asyncio.sleep(2.0)  # the same settling time in both modes: the last looks commit
    cpu = _cpu_seconds() - cpu_before
    made = await pool.run(events)  # two changes of one message before a look: one event
    print(f"{flagged} flag changes: {made} message_updated, {cpu:.2f}s CPU", flush=True)
    return cpu, flagged, made


def _generated_at(rfc822: str) -> float:
    head = rfc822.split("\r\n\r\n", 1)[0]
    for line in head.split("\r\n"):
        if line.lower().startswith("x-chaos-generated:"):
            return float(line.split(":", 1)[1])
    raise ValueError("message without X-Chaos-Generated")


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def _uvloop_version() -> str | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.__version__


if __name__ == "__main__":
    main()
