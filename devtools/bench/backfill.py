"""Live new_mail latency while a backfill runs (issue 21 item 3, design.md 4.12).

    python -m devtools.bench.backfill --out bench-results/backfill.json \\
        [--messages 10000] [--mailboxes 4] [--rate 5] [--backfill-rate 500] \\
        [--host-rate 1000] [--live-seconds 20]

Every part runs in a process of its own on 127.0.0.1: a private Dovecot (real IMAP, IDLE,
SEARCH SINCE), a receiver (this module with --receiver) that checks both signatures and
notes each webhook's arrival, ``superimap imap-client`` and ``superimap worker`` on SQLite.

Mailbox 0 holds --messages old messages (APPENDed with INTERNALDATEs over the last 30 days,
before the user connects, so they predate its baseline). Once every mailbox is IDLE:

1. **without**: live messages are APPENDed at --rate/s, round-robin over the mailboxes, for
   --live-seconds; each carries ``X-Bench-Sent`` (time.time() just before its APPEND); the
   receiver takes time.time() on arrival: push -> verified webhook, one clock;
2. **with**: a backfill of all mail of mailbox 0 is asked for (accounts.request_backfill, as
   the API's route does) at --backfill-rate per mailbox and --host-rate per host; once it
   runs, the same live pushes go on until it is done (at least --live-seconds).

It reports live latency p50/p99/max per phase (and, in the second, for mailbox 0 itself and
for the others), the backfill's duration, messages per second and whether every backfilled
message arrived once, and the load average (the machine may be shared: compare phases of
one run).
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devtools.bench.e2e import (
    ListeningProcess,
    _environment,
    _percentile,
    _setup_django,
    _start_services,
    _stop_services,
    _wait_online,
    serve_receiver,
)
from devtools.testing.dovecot import DovecotServer
from devtools.testing.mail import make_message

PASSWORD = "bench-pw"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.backfill")
    parser.add_argument("--out", type=Path, default=Path("bench-results/backfill.json"))
    parser.add_argument("--messages", type=int, default=10000, help="old mail to backfill")
    parser.add_argument("--mailboxes", type=int, default=4, help="live mail goes to all")
    parser.add_argument("--rate", type=float, default=5.0, help="live messages per second")
    parser.add_argument("--backfill-rate", type=int, default=500, help="per mailbox, /s")
    parser.add_argument("--host-rate", type=int, default=1000, help="backfill per host, /s")
    parser.add_argument("--live-seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="for the backfill")
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
    return 0 if result["ok"] else 1


# --- the receiver process -------------------------------------------------------------------


def _receiver_main() -> int:
    """Serve 200s, verify both signatures, note (Message-ID, backfill, sent, arrived, ok)."""

    def note(event, arrived: float) -> tuple:
        body = event.json
        ok = bool(event.valid_spec_signature and event.valid_standard_signature)
        message_id = body["envelope"].get("message_id") or ""
        return (message_id, bool(body.get("backfill")), _sent(body), arrived, ok)

    return serve_receiver(note)


def _sent(body: dict) -> float | None:
    rfc822 = body.get("rfc822") or ""
    marker = "X-Bench-Sent: "
    if marker not in rfc822:
        return None
    start = rfc822.index(marker) + len(marker)
    return float(rfc822[start : rfc822.index("\r\n", start)])


class Receiver(ListeningProcess):
    def __init__(self, var_dir: Path, api_key: str, whsec: str) -> None:
        env = {**os.environ, "BENCH_API_KEY": api_key, "BENCH_WHSEC": whsec}
        super().__init__(var_dir, "devtools.bench.backfill", "--receiver", "receiver.log", env)

    def notes(self) -> list[tuple]:
        path = self.var_dir / "arrivals.json"
        if self.ask(f"dump {path}") != "dumped":
            raise RuntimeError("receiver did not dump its notes")
        return [tuple(note) for note in json.loads(path.read_text())]


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    load_at_start = os.getloadavg()
    with ExitStack() as stack:
        var_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="superimap-bf-")))
        dovecot = stack.enter_context(DovecotServer())
        names = [f"bench{i}" for i in range(args.mailboxes)]
        for name in names:
            dovecot.add_user(name, PASSWORD)
        print(f"appending {args.messages} old messages", flush=True)
        appended = _append_old(dovecot, names[0], args.messages)
        env = _environment(var_dir, f"sqlite:///{var_dir / 'bench.sqlite3'}", args.mailboxes)
        env["BACKFILL_RATE_PER_MAILBOX"] = str(args.backfill_rate)
        env["BACKFILL_RATE_PER_HOST"] = str(args.host_rate)
        os.environ.update(env)
        _setup_django()
        from superimap.partners.models import new_api_key, new_webhook_secret

        api_key, whsec = new_api_key(), new_webhook_secret()
        receiver = Receiver(var_dir, api_key, whsec)
        stack.callback(receiver.stop)
        user_ids = _make_mailboxes(dovecot, names, receiver.port, api_key, whsec)
        services = _start_services("separate", var_dir, env)
        stack.callback(_stop_services, services)
        _wait_online(args.mailboxes, services, 120)
        time.sleep(2.0)
        pusher = _Pusher(dovecot, names)
        stack.callback(pusher.close)
        load_without = os.getloadavg()
        print("phase without: live mail only", flush=True)
        without = pusher.push_for(args.rate, args.live_seconds, lambda: False)
        time.sleep(2.0)
        load_with = os.getloadavg()
        print("phase with: live mail while the backfill runs", flush=True)
        started = _request_backfill(user_ids[0])
        _wait_running(user_ids[0], 60)
        running_at = time.monotonic()
        during = pusher.push_for(
            args.rate,
            args.timeout,
            lambda: time.monotonic() - running_at >= args.live_seconds
            and _finished(user_ids[0]),
        )
        backfill_seconds = _wait_finished(user_ids[0], args.timeout) - started
        _wait_arrived(receiver, appended + len(without) + len(during), 120)
        time.sleep(1.0)  # duplicates that would follow
        notes = receiver.notes()
    return _report(args, notes, without, during, appended, backfill_seconds, names, {
        "start": load_at_start,
        "without": load_without,
        "with": load_with,
    })


def _append_old(dovecot: DovecotServer, name: str, count: int) -> int:
    """``count`` old messages, one IMAP connection, dated over the last 30 days."""
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    client.login(name, PASSWORD)
    start = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=29) / max(1, count)
    for i in range(count):
        raw = make_message(f"old {i}", "a@bench.test", f"{name}@bench.test", "old mail " * 20,
                           f"<old{i}@bench.test>")
        when = imaplib.Time2Internaldate(start + step * i)
        client.append("INBOX", "", when, raw)
    client.logout()
    return count


class _Pusher:
    """Live mail by IMAP APPEND, one open connection per mailbox."""

    def __init__(self, dovecot: DovecotServer, names: list[str]) -> None:
        self.names = names
        self.clients = []
        for name in names:
            client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
            client.login(name, PASSWORD)
            self.clients.append(client)
        self.sent = 0

    def push_for(self, rate: float, seconds: float, done) -> list[tuple[str, int]]:
        """Push at ``rate`` until ``seconds`` passed or ``done()``: (Message-ID, mailbox)."""
        pushed = []
        started = time.monotonic()
        while time.monotonic() - started < seconds and not done():
            due = started + len(pushed) / rate
            time.sleep(max(0.0, due - time.monotonic()))
            index = self.sent % len(self.names)
            message_id = f"<live{self.sent}@bench.test>"
            raw = make_message(
                f"live {self.sent}",
                "b@bench.test",
                f"{self.names[index]}@bench.test",
                "live mail",
                message_id,
                extra_headers={"X-Bench-Sent": repr(time.time())},
            )
            self.clients[index].append("INBOX", "", imaplib.Time2Internaldate(time.time()), raw)
            pushed.append((message_id, index))
            self.sent += 1
        return pushed

    def close(self) -> None:
        for client in self.clients:
            try:
                client.logout()
            except (OSError, imaplib.IMAP4.error):
                pass


def _make_mailboxes(dovecot, names, hook_port: int, api_key: str, whsec: str) -> list[int]:
    from django.db import connections
    from django.utils import timezone

    from superimap.mailboxes.models import MailboxUser
    from superimap.partners.models import Connection, ImapProvider, Partner

    partner = Partner.objects.create(
        name="Bench",
        new_mail_webhook=f"http://127.0.0.1:{hook_port}/new-mail",
        api_key=api_key,
        webhook_secret=whsec,
    )
    connection = Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
        imap_host=dovecot.host,
        imap_port=dovecot.imap_port,
        imap_tls="none",
    )
    ids = [
        MailboxUser.objects.create(
            connection=connection,
            tag=name,
            login_username=name,
            password=PASSWORD,
            connected_at=timezone.now(),
        ).id
        for name in names
    ]
    connections.close_all()
    return ids


def _user(user_id: int):
    from django.db import connection

    from superimap.mailboxes.models import MailboxUser

    user = MailboxUser.objects.get(id=user_id)
    connection.close()
    return user


def _request_backfill(user_id: int) -> float:
    from superimap.accounts import users as accounts_users

    accounts_users.request_backfill(_user(user_id), None)
    return time.monotonic()


def _finished(user_id: int) -> bool:
    return _user(user_id).backfill_finished_at is not None


def _wait_running(user_id: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _user(user_id).backfill_until_uid is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the backfill did not start")
        time.sleep(0.1)


def _wait_finished(user_id: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not _finished(user_id):
        if time.monotonic() > deadline:
            raise RuntimeError("the backfill did not finish")
        time.sleep(0.2)
    return time.monotonic()


def _wait_arrived(receiver: Receiver, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while int(receiver.ask("count")) < expected and time.monotonic() < deadline:
        time.sleep(0.5)


def _latency(notes: list[tuple], pushed: list[tuple[str, int]], mailbox=None) -> dict:
    wanted = {mid for mid, index in pushed if mailbox is None or mailbox(index)}
    values = sorted(
        (arrived - sent) * 1000 for mid, _, sent, arrived, _ in notes if mid in wanted and sent
    )
    return {
        "count": len(values),
        "pushed": len(wanted),
        "p50": _percentile(values, 0.50),
        "p99": _percentile(values, 0.99),
        "max": round(values[-1], 1) if values else None,
    }


def _report(args, notes, without, during, appended, backfill_seconds, names, loads) -> dict:
    ids = [note[0] for note in notes]
    backfilled = [note[0] for note in notes if note[1]]
    old = {f"<old{i}@bench.test>" for i in range(appended)}
    live = {mid for mid, _ in [*without, *during]}
    result = {
        "benchmark": "backfill",
        "messages": appended,
        "mailboxes": len(names),
        "live_rate": args.rate,
        "backfill_rate_per_mailbox": args.backfill_rate,
        "backfill_rate_per_host": args.host_rate,
        "live_latency_ms_without_backfill": _latency(notes, without),
        "live_latency_ms_with_backfill": _latency(notes, during),
        "live_latency_ms_with_backfill_same_mailbox": _latency(notes, during, lambda i: i == 0),
        "live_latency_ms_with_backfill_other_mailboxes": _latency(
            notes, during, lambda i: i != 0
        ),
        "backfill_seconds": round(backfill_seconds, 1),
        "backfill_messages_per_second": round(appended / backfill_seconds, 1),
        "backfilled_arrived": len(set(backfilled) & old),
        "duplicated": len(ids) - len(set(ids)),
        "lost_live": len(live - set(ids)),
        "invalid_signatures": sum(1 for note in notes if not note[4]),
        "load_average": {k: [round(x, 2) for x in v] for k, v in loads.items()},
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m devtools.bench.backfill "
        f"--messages {args.messages} --mailboxes {args.mailboxes} --rate {args.rate:g} "
        f"--backfill-rate {args.backfill_rate} --host-rate {args.host_rate} "
        f"--live-seconds {args.live_seconds:g}",
    }
    result["ok"] = (
        result["backfilled_arrived"] == appended
        and result["duplicated"] == 0
        and result["lost_live"] == 0
        and result["invalid_signatures"] == 0
    )
    return result


if __name__ == "__main__":
    sys.exit(main())
