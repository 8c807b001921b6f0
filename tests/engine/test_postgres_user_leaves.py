"""On PostgreSQL, a persist racing a disconnect waits for the user row's lock: it either
commits before user_disconnected or finds the user gone. Never a new_mail after it."""

from __future__ import annotations

import json

import pytest

from tests.helpers.processes import run_cli, superimap_env

SCENARIO = """
import json, threading, time
from django.db import connection, transaction
from django.utils import timezone
from superimap.delivery.models import Delivery
from superimap.delivery.outbox import enqueue_user_event
from superimap.engine import store, writer
from superimap.sync.persist import FetchedMessage
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner
from devtools.testing.mail import make_message

partner = Partner.objects.create(
    name="p", new_mail_webhook="http://127.0.0.1:9/m", user_disconnected_webhook="http://127.0.0.1:9/d")
conn = Connection.objects.create(
    partner=partner, provider=ImapProvider.objects.get(code="PLAIN"),
    imap_host="imap.example.com", imap_port=993, imap_tls="implicit")
user = MailboxUser.objects.create(
    connection=conn, tag="t", login_username="t", password="pw", connected_at=timezone.now(),
    owner_node="n1", uid_validity=7, last_uid=0)
raw = make_message("late", "a@example.test", "b@example.test", "x")
message = FetchedMessage(uid=1, size=len(raw), internal_date=timezone.now(), raw=raw)
flipped, outcome = threading.Event(), {}

def persist():
    flipped.wait()
    try:
        outcome["persist"] = writer.persist_batch(user.id, "n1", 7, "INBOX", [message]).new
    except store.LeaseLost:
        outcome["persist"] = "lease_lost"
    finally:
        connection.close()

thread = threading.Thread(target=persist)
thread.start()
# The disconnect page's transaction, held open while the engine persists a batch.
with transaction.atomic():
    locked = MailboxUser.objects.select_for_update().get(id=user.id)
    locked.connected_at = None
    locked.password = ""
    locked.save(update_fields=["connected_at", "password", "updated_at"])
    enqueue_user_event(Delivery.Kind.USER_DISCONNECTED, locked)
    flipped.set()
    time.sleep(1.0)
thread.join(30)
kinds = list(Delivery.objects.filter(user_id=user.id).order_by("id").values_list("kind", flat=True))
print("RESULT " + json.dumps({"persist": outcome.get("persist"), "kinds": kinds}))
"""


@pytest.fixture
def postgres_url(migrated_postgres_url) -> str:
    """Migrated already (a copy of one migrated template), not by each test."""
    return migrated_postgres_url


def test_a_persist_racing_a_disconnect_discards_its_batch(postgres_url, tmp_path):
    env = superimap_env(postgres_url, tmp_path / "var")
    out = run_cli(env, "manage", "shell", "-c", SCENARIO)
    result = json.loads(out.split("RESULT ", 1)[1])
    assert result == {"persist": "lease_lost", "kinds": ["user_disconnected"]}
