"""On PostgreSQL, the engine's status flush (store.save_statuses) and its group commit
(writer._fence, which locks users in id order) take user rows in the same order, so they
never deadlock: a deadlock costs the loser its transaction after deadlock_timeout (1 s), and
in bench.e2e at 1,000 mails/s it stalled every arrival for seconds."""

from __future__ import annotations

import json

import pytest

from tests.helpers.processes import run_cli, superimap_env

# Two users a < b. The status flush writes b (syncing) before a (idle): one UPDATE per status.
# A group commit holds a's lock and then needs b's. Taken row by row in the statements'
# order, the flush would hold b and wait for a while the commit holds a and waits for b.
SCENARIO = """
import json, threading, time
from django.db import connection, transaction
from django.utils import timezone
from superimap.engine import store, writer
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner

partner = Partner.objects.create(name="p", new_mail_webhook="http://127.0.0.1:9/m")
conn = Connection.objects.create(
    partner=partner, provider=ImapProvider.objects.get(code="PLAIN"),
    imap_host="imap.example.com", imap_port=993, imap_tls="implicit")
a, b = (
    MailboxUser.objects.create(
        connection=conn, tag=tag, login_username=tag, password="pw",
        connected_at=timezone.now(), owner_node="n1", status="idle")
    for tag in ("a", "b")
)
assert a.id < b.id
outcome, holding_a, flush_waits = {}, threading.Event(), threading.Event()

def group_commit():
    try:
        with transaction.atomic():
            first = sorted(writer._fence([a.id], "n1"))
            holding_a.set()
            flush_waits.wait(10)
            second = sorted(writer._fence([b.id], "n1"))
            outcome["commit"] = first + second
    except Exception as exc:
        outcome["commit"] = type(exc).__name__ + ": " + str(exc).splitlines()[0]
    finally:
        connection.close()

def flush():
    try:
        store.save_statuses({b.id: ("syncing", "", 0), a.id: ("idle", "", 0)})
        outcome["flush"] = "ok"
    except Exception as exc:
        outcome["flush"] = type(exc).__name__ + ": " + str(exc).splitlines()[0]
    finally:
        connection.close()

commit = threading.Thread(target=group_commit)
commit.start()
holding_a.wait(10)
flusher = threading.Thread(target=flush)
flusher.start()
deadline = time.monotonic() + 10
with connection.cursor() as cursor:
    while time.monotonic() < deadline:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND pid <> pg_backend_pid() AND datname = current_database()")
        if cursor.fetchone()[0]:
            break
        time.sleep(0.02)
flush_waits.set()
started = time.monotonic()
commit.join(30)
flusher.join(30)
statuses = dict(MailboxUser.objects.filter(id__in=[a.id, b.id]).values_list("tag", "status"))
print("RESULT " + json.dumps({
    "commit": outcome.get("commit"), "flush": outcome.get("flush"), "statuses": statuses,
    "seconds": time.monotonic() - started}))
"""


@pytest.fixture
def postgres_url(migrated_postgres_url) -> str:
    """Migrated already (a copy of one migrated template), not by each test."""
    return migrated_postgres_url


def test_a_status_flush_and_a_group_commit_lock_users_in_the_same_order(postgres_url, tmp_path):
    env = superimap_env(postgres_url, tmp_path / "var")
    out = run_cli(env, "manage", "shell", "-c", SCENARIO)
    result = json.loads(out.split("RESULT ", 1)[1])
    seconds = result.pop("seconds")
    commit_ids = result.pop("commit")
    assert isinstance(commit_ids, list) and len(commit_ids) == 2, commit_ids
    assert result == {"flush": "ok", "statuses": {"a": "idle", "b": "syncing"}}
    # No deadlock was detected and broken (that takes deadlock_timeout, 1 s).
    assert seconds < 0.9
