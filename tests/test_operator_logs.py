"""Logs an operator can read, from real processes: a worker against a dead endpoint logs a
bounded number of lines whose counts add up to the attempts made; engine lines name
mailboxes as partner/connection/tag (escaped), and say when a session connects, recovers
and a sweep ends; each process logs a summary line per LOG_SUMMARY_SECONDS."""

from __future__ import annotations

import re
import socket
import time

from devtools.testing import free_port
from tests.helpers.processes import (
    Processes,
    migrated_sqlite,
    query,
    run_cli,
    superimap_env,
    wait_until,
)

SUMMARY_SECONDS = 2
# Partner, connection, a user per tag, and COUNT new_mail deliveries per user, due now.
SETUP = """
import os
from django.utils import timezone
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner

partner = Partner.objects.create(name=os.environ["PARTNER"], new_mail_webhook=os.environ["HOOK"])
connection = Connection.objects.create(
    partner=partner, provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
    imap_host="127.0.0.1", imap_port=int(os.environ["CHAOS_PORT"]), imap_tls="none")
for i in range(int(os.environ["USERS"])):
    user = MailboxUser.objects.create(
        connection=connection, tag=f"user{i}", login_username=f"user{i}", password=f"pass{i}",
        connected_at=timezone.now() if os.environ.get("CONNECTED") else None)
    for n in range(int(os.environ.get("COUNT", "0"))):
        Delivery.objects.create(
            kind="new_mail", partner=partner, user=user, payload={"sha1": f"{i}-{n}"},
            next_attempt_at=timezone.now())
"""


def dead_port() -> int:
    """A port nothing listens on (connections to it are refused)."""
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_a_dead_endpoint_gets_one_line_then_a_summary_per_interval(tmp_path):
    database = migrated_sqlite(tmp_path / "db.sqlite3")
    env = superimap_env(
        database,
        tmp_path,
        LOG_SUMMARY_SECONDS=str(SUMMARY_SECONDS),
        WEBHOOK_RETRY_SCHEDULE=",".join(["1"] * 40),
        WEBHOOK_AUTO_REPLAY_HOURS="0",
    )
    hook = f"http://127.0.0.1:{dead_port()}/hook?token=s3cret"
    setup = dict(env, PARTNER="Dead app", HOOK=hook, CHAOS_PORT="1", USERS="4", COUNT="10")
    run_cli(setup, "manage", "shell", "-c", SETUP)
    run_seconds = 9
    with Processes(tmp_path) as procs:
        worker = procs.start(env, "worker")
        wait_until(lambda: "started: concurrency" in procs.output(worker), 30, "the worker")
        time.sleep(run_seconds)
        output = procs.stop(worker)
    attempts = query(database, "SELECT count(*) FROM delivery_deliveryattempt")[0][0]
    assert attempts >= 60, (attempts, output)  # 40 deliveries, a retry a second
    assert "s3cret" not in output and "/hook" not in output  # tokens in URLs stay out
    assert "WARNING superimap.worker Dead app new_mail webhook (partner 1) is failing" in output
    label = "Dead app new_mail webhook at 127.0.0.1"
    lines = [line for line in output.splitlines() if label in line]
    first = [line for line in lines if "attempt 1 failed" in line]
    summaries = [
        re.search(r": (\d+) failed attempts in the last (\d+) s, last error: (.+)$", line)
        for line in lines
    ]
    summaries = [match for match in summaries if match]
    assert len(first) == 1 and len(lines) == 1 + len(summaries), lines
    # One line a LOG_SUMMARY_SECONDS (and one at the stop), however many attempts failed.
    assert len(summaries) <= run_seconds // SUMMARY_SECONDS + 2, lines
    assert 1 + sum(int(m.group(1)) for m in summaries) == attempts, (attempts, lines)
    assert all("Connect" in m.group(3) or "refused" in m.group(3) for m in summaries), lines
    # The process's own summary: webhooks out by outcome, adding up to the attempts too.
    outs = [
        int(m.group(1))
        for m in re.finditer(r"summary of the last \d+ s: webhooks out (\d+)", output)
    ]
    assert len(outs) >= 2, output
    assert re.search(r"webhooks out \d+ \(retrying \d+\); backlog \d+ due, oldest", output), output
    assert sum(outs) <= attempts
    assert len(output.splitlines()) < 40, output


def test_engine_lines_name_mailboxes_and_tell_connect_recovery_and_summary(tmp_path):
    database = migrated_sqlite(tmp_path / "db.sqlite3")
    env = superimap_env(
        database,
        tmp_path,
        ALLOW_LOOPBACK_IMAP="true",
        ENGINE_NODE_NAME="logs-node",
        LOG_SUMMARY_SECONDS=str(SUMMARY_SECONDS),
    )
    chaos_port = free_port()
    # A partner name with an escape sequence (set outside the API): escaped in the log.
    setup = dict(
        env,
        PARTNER="My app\x1b[31m",
        HOOK="http://127.0.0.1:9/hook",
        CHAOS_PORT=str(chaos_port),
        USERS="2",
        CONNECTED="1",
    )
    run_cli(setup, "manage", "shell", "-c", SETUP)
    with Processes(tmp_path) as procs:
        chaos_args = ("chaos-server", "--port", str(chaos_port), "--users", "2")
        chaos = procs.start(env, *chaos_args, "--emails-per-minute", "120")
        engine = procs.start(env, "imap-client")
        name = "My app\\x1b[31m/LOOPBACK_PLAIN/user0 (id 1)"
        wait_until(
            lambda: (
                f"mailbox {name}: connected to 127.0.0.1:{chaos_port}; watching "
                "INBOX by IDLE" in procs.output(engine)
            ),
            30,
            "the connect line",
        )
        wait_until(lambda: "summary of the last" in procs.output(engine), 10, "a summary")
        # The server goes away and comes back: failures, then one recovery line.
        procs.stop(chaos)
        wait_until(
            lambda: (
                f"mailbox {name}: " in procs.output(engine).split("retry")[0]
                and "; retry 1 in" in procs.output(engine)
            ),
            20,
            "a failed reconnect",
        )
        procs.start(env, *chaos_args, "--emails-per-minute", "120")
        wait_until(
            lambda: f"mailbox {name}: recovered after" in procs.output(engine),
            40,
            "the recovery line",
        )
        # A sweep, asked for as the API's sweep route does: its end is logged.
        sweep = "from superimap.accounts.users import sweep_user\n"
        sweep += "from superimap.mailboxes.models import MailboxUser as U\n"
        sweep += "sweep_user(U.objects.get(tag='user1'))"
        run_cli(env, "manage", "shell", "-c", sweep)
        wait_until(
            lambda: "/LOOPBACK_PLAIN/user1 (id 2): backfill done:" in procs.output(engine),
            40,
            "the sweep line",
        )
        time.sleep(SUMMARY_SECONDS + 0.5)
        output = procs.stop(engine)
    assert "\x1b" not in output
    assert re.search(r"summary of the last \d+ s: mailboxes 2 \(idle 2\); mails in \d+", output)
    mails_in = [int(n) for n in re.findall(r"; mails in (\d+)", output)]
    assert sum(mails_in) > 0, output
