"""On PostgreSQL, write_changes (design.md 4.14) records a first look without an event, a
change once with its stable id, and nothing for the same look again (a replay after a
crash); a deletion once."""

from __future__ import annotations

import json

import pytest

from tests.helpers.processes import run_cli, superimap_env

SCENARIO = """
import json
from django.utils import timezone
from superimap.delivery.models import Delivery
from superimap.engine import writer
from superimap.imap import Vanished
from superimap.mailboxes.models import MailboxUser, MessageState
from superimap.partners.models import Connection, ImapProvider, Partner
from superimap.sync import changes
from superimap.sync.changes import Observed
from superimap.sync.persist import FetchedMessage
from devtools.testing.mail import make_message

partner = Partner.objects.create(
    name="p", new_mail_webhook="http://127.0.0.1:9/m",
    message_updated_webhook="http://127.0.0.1:9/u", message_deleted_webhook="http://127.0.0.1:9/d")
conn = Connection.objects.create(
    partner=partner, provider=ImapProvider.objects.get(code="PLAIN"),
    imap_host="imap.example.com", imap_port=993, imap_tls="implicit")
user = MailboxUser.objects.create(
    connection=conn, tag="t", login_username="t", password="pw", connected_at=timezone.now(),
    owner_node="n1", uid_validity=7, last_uid=0)
raw = make_message("hi", "a@example.test", "b@example.test", "x")
writer.persist_batch(user.id, "n1", 7, "INBOX", [
    FetchedMessage(uid=1, size=len(raw), internal_date=timezone.now(), raw=raw)])

def look(seen, vanished=(), modseq=None):
    job = writer.ChangeJob(user.id, "n1", "INBOX", 7, list(seen), [], list(vanished), modseq)
    return writer.write_changes(job)

made = [
    look([Observed(1, "", None, 5)], modseq=5),          # first seen: no event
    look([Observed(1, "\\\\Seen", None, 6)], modseq=6),   # a change
    look([Observed(1, "\\\\Seen", None, 6)], modseq=6),   # the same look again
    look([], [Vanished(((1, 3),), True)], modseq=6),      # gone
    look([], [Vanished(((1, 3),), True)], modseq=6),      # reported again
]
rows = list(
    Delivery.objects.filter(user_id=user.id).order_by("id")
    .values_list("kind", "event_id", "stored_payload__payload"))
new_mail = str(rows[0][1])
expected_id = str(changes.event_id(user.id, "INBOX", 7, 1, "message_updated", 1))
state = MessageState.objects.get(user=user)
print("RESULT " + json.dumps({
    "made": made,
    "kinds": [r[0] for r in rows],
    "updated_id_ok": str(rows[1][1]) == expected_id,
    "original": [r[2].get("new_mail_event_id") == new_mail for r in rows[1:]],
    "state": [state.flags, state.changes, state.gone, state.modseq],
}))
"""


@pytest.fixture
def postgres_url(migrated_postgres_url) -> str:
    return migrated_postgres_url


def test_change_events_are_written_once_on_postgres(postgres_url, tmp_path):
    env = superimap_env(postgres_url, tmp_path / "var")
    out = run_cli(env, "manage", "shell", "-c", SCENARIO)
    result = json.loads(out.split("RESULT ", 1)[1])
    assert result == {
        "made": [0, 1, 0, 1, 0],
        "kinds": ["new_mail", "message_updated", "message_deleted"],
        "updated_id_ok": True,
        "original": [True, True],
        "state": ["\\Seen", 1, True, 6],
    }
