"""Fairness benchmark: partner B's push -> webhook latency while partner A's endpoint hangs.

    python -m devtools.bench.fairness --out docs/bench/fairness.json \\
        [--scenario with_a|without_a] [--runs 3] [--label NAME] \\
        [--rate 50] [--duration 20] [--mailboxes 100] [--a-deliveries 1000]

The real pipeline, every part in a process of its own on 127.0.0.1 (as devtools.bench.e2e):
the chaos IMAP server holding partner B's mailboxes, ``superimap imap-client`` and
``superimap worker`` with their default settings (50 slots, 30 s timeout), B's receiver
(e2e's, which checks both signatures and notes arrival times), and for partner A a
receiver that accepts connections, reads what is sent and never answers (``--hang``).

``with_a``: before the services start, --a-deliveries of A's deliveries are queued (half
user_connected, half new_mail, all due now: what 1,000 users connecting, or a replay,
leaves in the queue), so the worker takes them on as it starts; once B's mailboxes are in
IDLE, the chaos server pushes --rate mails a second for --duration seconds to B's users.
``without_a``: the same without A's deliveries. B's latency is the receiver's
``time.time()`` minus the message's ``X-Chaos-Generated``; a message that has not arrived
--drain seconds after the push counts as not arrived, and percentiles over all pushed
messages are null when they fall on one ("at least the drain").

Each run is appended to --out (``runs``) and the ``summary`` is recomputed: per label and
scenario, the median of the runs' p50 and p99 and every run's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from devtools.bench.e2e import (
    ListeningProcess,
    Receiver,
    _by_second,
    _cpu_seconds,
    _environment,
    _setup_django,
    _start_services,
    _stop_services,
    _wait_online,
)
from devtools.bench.engine import ChaosServerProcess, raise_open_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.fairness")
    parser.add_argument("--out", type=Path, default=Path("bench-results/fairness.json"))
    parser.add_argument("--scenario", choices=["with_a", "without_a"], default="with_a")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--label", default="", help="names the code under test in the JSON")
    parser.add_argument("--rate", type=float, default=50.0, help="B's mails per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of pushing")
    parser.add_argument("--mailboxes", type=int, default=100, help="B's mailboxes")
    parser.add_argument("--a-deliveries", type=int, default=1000)
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait after")
    parser.add_argument("--hang", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hang:
        return _hang_main()
    if args.runs > 1:
        # One process per run: Django is set up once per process, on that run's database.
        rest = _without_option(sys.argv[1:] if argv is None else argv, "--runs")
        codes = [
            subprocess.call([sys.executable, "-m", "devtools.bench.fairness", *rest])
            for _ in range(args.runs)
        ]
        return max(codes)
    print(f"run: {args.scenario} {args.label}", flush=True)
    result = run(args)
    _append(args.out, result)
    print(json.dumps({k: result[k] for k in ("scenario", "label", "b")}, indent=2))
    print(f"appended to {args.out}")
    return 0 if result["b"]["duplicated"] == 0 and result["b"]["invalid_signatures"] == 0 else 1


def _without_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE` or `name=VALUE`."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            rest.append(arg)
    return rest


# --- partner A's endpoint: accepts, reads, never answers ------------------------------------


def _hang_main() -> int:
    """Serve on a free port; count connections and bytes; answer nothing, ever.

    Driven on stdin: ``count`` prints "connections bytes", ``quit`` stops."""
    import asyncio

    async def serve() -> None:
        seen = {"connections": 0, "bytes": 0}
        writers = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen["connections"] += 1
            writers.append(writer)  # kept open: the client waits for an answer that never comes
            while data := await reader.read(65536):
                seen["bytes"] += len(data)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            words = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not words or words[0] == "quit":
                break
            if words[0] == "count":
                print(f"{seen['connections']} {seen['bytes']}", flush=True)
        server.close()
        for writer in writers:
            writer.close()

    asyncio.run(serve())
    return 0


class HangingReceiver(ListeningProcess):
    def __init__(self, var_dir: Path) -> None:
        super().__init__(var_dir, "devtools.bench.fairness", "--hang", "hang.log")

    def connections(self) -> int:
        return int(self.ask("count").split()[0])


# --- one run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    load_at_start = os.getloadavg()
    raise_open_files(65536)
    with ExitStack() as stack:
        var_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="superimap-fair-")))
        env = _environment(var_dir, f"sqlite:///{var_dir / 'bench.sqlite3'}", args.mailboxes)
        os.environ.update(env)
        _setup_django()
        from superimap.partners.models import new_api_key, new_webhook_secret

        api_key, whsec = new_api_key(), new_webhook_secret()
        server = ChaosServerProcess(var_dir, args.mailboxes, tls=False)
        stack.callback(server.stop)
        receiver = Receiver(var_dir, api_key, whsec)
        stack.callback(receiver.stop)
        hanging = HangingReceiver(var_dir)
        stack.callback(hanging.stop)
        a_count = args.a_deliveries if args.scenario == "with_a" else 0
        _make_partners(args.mailboxes, server.port, receiver.port, hanging.port, api_key, whsec)
        _queue_a(a_count)
        services_started = time.monotonic()
        services = _start_services("separate", var_dir, env)
        stack.callback(_stop_services, services)
        online = _wait_online(args.mailboxes, services, 300)
        return _push_and_measure(
            args,
            server,
            receiver,
            hanging,
            services,
            a_count,
            online,
            load_at_start,
            services_started,
        )
    raise AssertionError("unreachable")


def _make_partners(mailboxes: int, imap_port: int, b_port: int, a_port: int, key, whsec):
    from django.db import connections

    from devtools.testing.users import chaos_users
    from superimap.partners.models import Partner

    b = Partner.objects.create(
        name="B",
        new_mail_webhook=f"http://127.0.0.1:{b_port}/new-mail",
        api_key=key,
        webhook_secret=whsec,
    )
    chaos_users(b, imap_port, mailboxes)
    hang = f"http://127.0.0.1:{a_port}"
    Partner.objects.create(
        name="A",
        **{f"{kind}_webhook": f"{hang}/{kind}" for kind in Partner.WEBHOOK_KINDS},
    )
    connections.close_all()


def _queue_a(count: int) -> None:
    """A's deliveries, due now: half user_connected, half new_mail (no user: A's mailboxes
    are not part of the run; the worker needs only the partner, kind and payload)."""
    from django.db import connections, transaction
    from django.utils import timezone

    from superimap.delivery.models import Delivery
    from superimap.delivery.payloads import user_event_payload
    from superimap.partners.models import Partner

    a = Partner.objects.get(name="A")
    now = timezone.now()
    kinds = [Delivery.Kind.USER_CONNECTED, Delivery.Kind.NEW_MAIL]
    rows = [
        Delivery(
            kind=kinds[i % 2],
            partner=a,
            payload=user_event_payload(
                provider_code="PLAIN", user_tag=f"a-{i}", email=f"a-{i}@example.test"
            ),
            next_attempt_at=now,
        )
        for i in range(count)
    ]
    with transaction.atomic():
        Delivery.objects.bulk_create(rows, batch_size=500)
    connections.close_all()


def _push_and_measure(
    args, server, receiver, hanging, services, a_count, online, load, services_started
) -> dict:
    expected = int(args.rate * args.duration)
    time.sleep(3.0)  # as e2e: let the last status flushes settle
    push_offset = time.monotonic() - services_started
    a_connections_at_push = hanging.connections()
    worker_pid = services["worker"].pid
    cpu_before = _cpu_seconds(worker_pid)
    load_at_push = os.getloadavg()
    print(f"pushing {expected} mails to B at {args.rate:g}/s (A queued: {a_count})", flush=True)
    started = time.monotonic()
    server.send(f"push {expected} {args.rate}")
    if server.read_line() != f"pushed {expected}":
        raise RuntimeError("the chaos server did not push")
    pushed_at = time.monotonic()
    received = receiver.count()
    while received < expected and time.monotonic() < pushed_at + args.drain:
        time.sleep(0.5)
        received = receiver.count()
    time.sleep(1.0)
    ended = time.time()
    waited_after_push = time.monotonic() - pushed_at
    worker_cpu = _cpu_seconds(worker_pid) - cpu_before
    notes = receiver.notes()
    numbers = [number for number, _, _, _ in notes]
    distinct = set(numbers)
    first_arrival = {}
    for number, generated, arrived, _ in notes:
        first_arrival.setdefault(number, arrived - generated)
    latencies = sorted(value * 1000 for value in first_arrival.values())
    missing = expected - len(distinct & set(range(1, expected + 1)))
    # Over every pushed mail: a missing one is later than anything that arrived.
    everything = latencies + [float("inf")] * missing
    return {
        "benchmark": "fairness",
        "label": args.label,
        "scenario": args.scenario,
        "a": {
            "deliveries_queued": a_count,
            "endpoint": "accepts, reads, never answers",
            "connections_open_at_push": a_connections_at_push,
            "connections_total": hanging.connections(),
        },
        "b": {
            "mailboxes": args.mailboxes,
            "rate": args.rate,
            "pushed": expected,
            "received": len(distinct),
            "not_arrived_after_drain": missing,
            # Those had waited at least this long when the run ended.
            "not_arrived_waited_at_least_s": round(waited_after_push, 1) if missing else None,
            "duplicated": len(numbers) - len(distinct),
            "invalid_signatures": sum(1 for *_, ok in notes if not ok),
            "latency_ms": {
                "p50": _finite(_percentile(everything, 0.50)),
                "p99": _finite(_percentile(everything, 0.99)),
                "max": _finite(_percentile(everything, 1.0)),
            },
            "latency_ms_of_arrived": {
                "p50": _percentile(latencies, 0.50),
                "p99": _percentile(latencies, 0.99),
            },
        },
        # Where the slow ones were (A's 30 s timeouts fall inside a 20 s push or not).
        "b_latency_ms_by_push_second": _by_second(notes),
        "seconds_from_worker_start_to_push": round(push_offset, 1),
        "drain_seconds": args.drain,
        "seconds": round(time.monotonic() - started, 1),
        "worker_cpu_seconds": round(worker_cpu, 2),
        "online_seconds": round(online, 1),
        "load_average_at_start": [round(x, 2) for x in load],
        "load_average_at_push": [round(x, 2) for x in load_at_push],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": datetime.fromtimestamp(ended, UTC).isoformat(timespec="seconds"),
        "command": "python -m devtools.bench.fairness "
        f"--scenario {args.scenario} --rate {args.rate:g} --duration {args.duration:g} "
        f"--mailboxes {args.mailboxes} --a-deliveries {args.a_deliveries} "
        f"--drain {args.drain:g}" + (f" --label {args.label}" if args.label else ""),
    }


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    value = ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
    return value if value == float("inf") else round(value, 1)


def _finite(value: float | None) -> float | None:
    """None for a percentile that falls on a mail that never arrived (JSON has no inf)."""
    return None if value is None or value == float("inf") else value


# --- the file -------------------------------------------------------------------------------


def _append(path: Path, result: dict) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    runs = [*data.get("runs", []), result]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"summary": summarize(runs), "runs": runs}, indent=2) + "\n")


def summarize(runs: list[dict]) -> list[dict]:
    """Per label, scenario and A's queue: every run's B p50/p99 (null: not arrived by the
    end) and their median (null sorts last: a run where B's p99 never arrived is slowest)."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for result in runs:
        key = (result["label"], result["scenario"], result["a"]["deliveries_queued"])
        groups.setdefault(key, []).append(result)
    summary = []
    for (label, scenario, a_count), results in sorted(groups.items()):
        p50s = [r["b"]["latency_ms"]["p50"] for r in results]
        p99s = [r["b"]["latency_ms"]["p99"] for r in results]
        summary.append(
            {
                "label": label,
                "scenario": scenario,
                "a_deliveries_queued": a_count,
                "runs": len(results),
                "b_p50_ms_median": _median(p50s),
                "b_p99_ms_median": _median(p99s),
                "b_p50_ms_runs": p50s,
                "b_p99_ms_runs": p99s,
                "b_not_arrived_runs": [r["b"]["not_arrived_after_drain"] for r in results],
            }
        )
    return summary


def _median(values: list[float | None]) -> float | None:
    ordered = sorted(values, key=lambda v: float("inf") if v is None else v)
    if not ordered:
        return None
    if len(ordered) % 2:
        return ordered[len(ordered) // 2]
    low, high = ordered[len(ordered) // 2 - 1], ordered[len(ordered) // 2]
    return None if low is None or high is None else round(statistics.fmean([low, high]), 1)


if __name__ == "__main__":
    sys.exit(main())
