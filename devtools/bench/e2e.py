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
import time
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
        return (_message_number(rfc822), _generated_at(rfc822), arrived, ok)

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
    first = min(generated for _, generated, _, _ in notes)
    seconds: dict[int, list[float]] = {}
    for _, generated, arrived, _ in notes:
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

            database_url = stack.enter_context(PostgresServer()).url
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
    superimap = [sys.executable, "-m", "superimap.cli"]
    if mode == "up":
        commands = {"up": [*superimap, "up", "--host", "127.0.0.1", "--port", str(_free_port())]}
    else:
        commands = {"engine": [*superimap, "imap-client"], "worker": [*superimap, "worker"]}
    return {
        name: subprocess.Popen(
            command,
            stdout=open(var_dir / f"{name}.log", "w"),  # noqa: SIM115 - lives as long
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
        for name, command in commands.items()
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
    load_at_push = os.getloadavg()
    cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    print(f"pushing {expected} messages at {args.rate:g}/s", flush=True)
    started = time.monotonic()
    server.send(f"push {expected} {args.rate}")
    if server.read_line() != f"pushed {expected}":
        raise RuntimeError("the chaos server did not push")
    pushed_at = time.monotonic()
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
    rss = {name: _rss_mb(pid) for name, pid in pids.items()}
    notes = receiver.notes()
    numbers = [number for number, _, _, _ in notes]
    distinct = set(numbers)
    latencies = sorted((arrived - generated) * 1000 for _, generated, arrived, _ in notes)
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
        "invalid_signatures": sum(1 for *_, ok in notes if not ok),
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
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "load_average_at_push": [round(x, 2) for x in load_at_push],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m devtools.bench.e2e "
        f"--rate {args.rate:g} --mailboxes {args.mailboxes} --duration {args.duration:g} "
        f"--mode {args.mode} --backend {args.backend}",
    }


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
