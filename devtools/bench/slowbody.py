"""Slow-body benchmark: outsiders pinning memory in the web front while mail flows.

    python -m devtools.bench.slowbody --out docs/bench/slowbody.json \\
        [--connections 1000] [--duration 30] [--body-seconds 20] [--framing chunked|length] \\
        [--mailboxes 20] [--rate 10]

A real ``superimap up`` (SUPERIMAP_ENV=production, SQLite) watches --mailboxes mailboxes of
the chaos IMAP server (its own process); a receiver (devtools.bench.e2e's, its own process)
checks both signatures of every webhook. Once the mailboxes are in IDLE and the web front
has answered a few ordinary requests (so lazy imports are not counted), the attack starts:
--connections connections at once, half to ``/admin/login/`` and half to ``/nonexistent``,
each POSTing a 1 MiB body without credentials, slowly (the whole body over --body-seconds).
A connection that is answered or closed is replaced by a new one until --duration ends, so
--connections are open all along. Meanwhile the chaos server pushes --rate messages a
second to random mailboxes.

It reports the RSS of the ``superimap up`` process tree before the attack, its peak and
last value during the attack, and after (--settle seconds after the last attacking
connection closed); how the attacking requests were answered and how many body bytes each
had sent by then; and the mail pushed during the attack: received, lost, latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from devtools.bench.e2e import (
    Receiver,
    _free_port,
    _make_mailboxes,
    _percentile,
    _rss_mb,
    _setup_django,
    _stop_services,
    _wait_online,
)
from devtools.bench.engine import ChaosServerProcess, raise_open_files

BODY = 1024 * 1024
TARGETS = ("/admin/login/", "/nonexistent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.slowbody")
    parser.add_argument("--out", type=Path, default=Path("bench-results/slowbody.json"))
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of attack")
    parser.add_argument(
        "--body-seconds", type=float, default=20.0, help="seconds to send one 1 MiB body"
    )
    parser.add_argument("--framing", choices=["chunked", "length"], default="chunked")
    parser.add_argument("--mailboxes", type=int, default=20)
    parser.add_argument("--rate", type=float, default=10.0, help="mail pushed per second")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before 'after'")
    parser.add_argument("--drain", type=float, default=30.0)
    parser.add_argument("--label", default="", help="a note stored with the result")
    args = parser.parse_args(argv)
    result = run(args)
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    results.append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"appended to {args.out}")
    return 0


def environment(var_dir: Path, mailboxes: int) -> dict[str, str]:
    """Production settings, with the loopback IMAP server and receiver allowed."""
    from cryptography.fernet import Fernet

    return {
        "SUPERIMAP_ENV": "production",
        "ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "SECRET_KEY_BASE": os.urandom(32).hex(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "VAR_DIR": str(var_dir),
        "DATABASE_URL": f"sqlite:///{var_dir / 'bench.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "superimap.settings",
        "ALLOW_LOOPBACK_IMAP": "true",
        "IMAP_ALLOW_PRIVATE_HOSTS": "true",
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "LOG_LEVEL": "WARNING",
        "NUM_TRACERS": "0",
        "ENGINE_NODE_NAME": "bench-node",
        "ENGINE_PROCESSES": "1",
        "IMAP_LOGIN_BURST_PER_HOST": str(max(500, mailboxes)),
        "IMAP_LOGINS_PER_SECOND_PER_HOST": str(max(50, mailboxes)),
    }


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its descendants (``superimap up`` may run children)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += _rss_mb(current)
            with open(f"/proc/{current}/task/{current}/children") as children:
                pending.extend(int(child) for child in children.read().split())
        except OSError:
            continue
    return round(total, 1)


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append(tree_rss_mb(self.pid))
            self.stopped.wait(self.every)

    def stop(self) -> list[float]:
        self.stopped.set()
        self.join()
        return self.samples


class AttackStats:
    def __init__(self) -> None:
        self.opened = 0
        self.connect_errors = 0
        self.answers: dict[str, int] = {}
        self.sent_before_answer: list[int] = []


async def slow_body(
    port: int, path: str, deadline: float, args: argparse.Namespace, stats: AttackStats
) -> None:
    """One attacking slot: a slow 1 MiB POST without credentials, again and again."""
    chunk = 8192
    pause = args.body_seconds / (BODY / chunk)
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats.connect_errors += 1
            await asyncio.sleep(0.2)
            continue
        stats.opened += 1
        framing = (
            "Transfer-Encoding: chunked" if args.framing == "chunked" else f"Content-Length: {BODY}"
        )
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n{framing}\r\n\r\n".encode()
        )
        answer = asyncio.ensure_future(reader.read(12))
        sent = 0
        try:
            while sent < BODY and time.monotonic() < deadline and not answer.done():
                data = b"a" * chunk
                writer.write(b"%x\r\n%s\r\n" % (chunk, data) if args.framing == "chunked" else data)
                await asyncio.wait_for(writer.drain(), max(0.1, deadline - time.monotonic()))
                sent += chunk
                await asyncio.wait([answer], timeout=pause)
            if sent >= BODY and args.framing == "chunked":
                writer.write(b"0\r\n\r\n")
            await asyncio.wait([answer], timeout=max(0.0, deadline - time.monotonic()))
        except (TimeoutError, OSError):
            pass
        if answer.done() and not answer.cancelled() and answer.exception() is None:
            head = answer.result()
            status = head[9:12].decode(errors="replace") if head else "closed"
            stats.answers[f"{path} {status}"] = stats.answers.get(f"{path} {status}", 0) + 1
            stats.sent_before_answer.append(sent)
        else:
            answer.cancel()
            stats.answers[f"{path} open"] = stats.answers.get(f"{path} open", 0) + 1
        writer.close()


async def attack(port: int, args: argparse.Namespace) -> AttackStats:
    stats = AttackStats()
    deadline = time.monotonic() + args.duration
    await asyncio.gather(
        *(
            slow_body(port, TARGETS[i % len(TARGETS)], deadline, args, stats)
            for i in range(args.connections)
        )
    )
    return stats


def warm_up(port: int) -> None:
    """A few ordinary requests, so imports made on first use are not counted."""
    import http.client

    for _ in range(3):
        for path in TARGETS:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(
                "POST",
                path,
                body=b"username=a&password=b",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            conn.getresponse().read()
            conn.close()


def run(args: argparse.Namespace) -> dict:
    load_at_start = os.getloadavg()
    raise_open_files(args.connections * 2 + args.mailboxes + 500)
    with ExitStack() as stack:
        var_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="superimap-sb-")))
        env = environment(var_dir, args.mailboxes)
        os.environ.update(env)
        _setup_django()
        from superimap.partners.models import new_api_key, new_webhook_secret

        api_key, whsec = new_api_key(), new_webhook_secret()
        server = ChaosServerProcess(var_dir, args.mailboxes, tls=False)
        stack.callback(server.stop)
        receiver = Receiver(var_dir, api_key, whsec)
        stack.callback(receiver.stop)
        _make_mailboxes(args.mailboxes, server.port, receiver.port, api_key, whsec)
        port = _free_port()
        command = ["up", "--host", "127.0.0.1", "--port", str(port)]
        up = subprocess.Popen(
            [sys.executable, "-m", "superimap.cli", *command],
            stdout=open(var_dir / "up.log", "w"),  # noqa: SIM115 - lives as long
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
        stack.callback(_stop_services, {"up": up})
        _wait_online(args.mailboxes, {"up": up}, 300)
        warm_up(port)
        time.sleep(3.0)
        rss_before = tree_rss_mb(up.pid)
        expected = int(args.rate * args.duration)
        sampler = RssSampler(up.pid)
        sampler.start()
        started = time.monotonic()
        server.send(f"push {expected} {args.rate}")
        try:
            import uvloop

            stats = uvloop.run(attack(port, args))
        except ImportError:  # pragma: no cover - uvloop is a dependency
            stats = asyncio.run(attack(port, args))
        attack_seconds = time.monotonic() - started
        during = sampler.stop()
        rss_at_end = tree_rss_mb(up.pid)
        if server.read_line() != f"pushed {expected}":
            raise RuntimeError("the chaos server did not push")
        received = receiver.count()
        drain_until = time.monotonic() + args.drain
        while received < expected and time.monotonic() < drain_until:
            time.sleep(0.5)
            received = receiver.count()
        time.sleep(max(0.0, args.settle - (time.monotonic() - started - attack_seconds)))
        rss_after = tree_rss_mb(up.pid)
        notes = receiver.notes()
        alive = up.poll() is None
        log_tail = (var_dir / "up.log").read_text(errors="replace")[-2000:]
    numbers = [number for number, _, _, _ in notes]
    latencies = sorted((arrived - generated) * 1000 for _, generated, arrived, _ in notes)
    sent = sorted(stats.sent_before_answer)
    return {
        "benchmark": "slowbody",
        "label": args.label,
        "connections": args.connections,
        "framing": args.framing,
        "targets": list(TARGETS),
        "body_bytes": BODY,
        "body_seconds": args.body_seconds,
        "attack_seconds": round(attack_seconds, 1),
        "requests_opened": stats.opened,
        "connect_errors": stats.connect_errors,
        "answers": dict(sorted(stats.answers.items())),
        "body_bytes_sent_before_answer": {
            "p50": _percentile(sent, 0.5),
            "max": sent[-1] if sent else None,
        },
        "rss_mb": {
            "before": rss_before,
            "peak_during": max(during) if during else None,
            "at_end_of_attack": rss_at_end,
            "after": rss_after,
        },
        "rss_growth_mb": {
            "during": round(max(during) - rss_before, 1) if during else None,
            "after": round(rss_after - rss_before, 1),
        },
        "up_alive_after": alive,
        "mail": {
            "mailboxes": args.mailboxes,
            "rate": args.rate,
            "pushed_during_attack": expected,
            "received": len(notes),
            "lost": len(set(range(1, expected + 1)) - set(numbers)),
            "invalid_signatures": sum(1 for *_, ok in notes if not ok),
            "latency_ms": {
                "p50": _percentile(latencies, 0.50),
                "p99": _percentile(latencies, 0.99),
                "max": round(latencies[-1], 1) if latencies else None,
            },
        },
        "up_log_tail": log_tail if not alive else "",
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m devtools.bench.slowbody "
        f"--connections {args.connections} --duration {args.duration:g} "
        f"--body-seconds {args.body_seconds:g} --framing {args.framing} "
        f"--mailboxes {args.mailboxes} --rate {args.rate:g}",
    }


if __name__ == "__main__":
    sys.exit(main())
