"""A delivery's payload lives in delivery_payload (migration delivery 0007, design.md 5.11):
written once with its delivery, read by id when claimed, never rewritten by the worker's
claim and outcome UPDATEs, deleted by retention's purge and with its delivery.

On SQLite a Delivery row with its ~2.3 KB payload filled a 4 KB page, and each claim and
outcome wrote that page to the WAL again; on PostgreSQL (delivery 0006) the payload was a
TOAST value of the Delivery row. Each check runs the real claim, outcome and purge in a
`superimap manage shell` on a database the migrations built."""

from __future__ import annotations

import json

from tests.helpers.processes import run_cli, superimap_env

SCENARIO = """
import json, random, struct
from datetime import timedelta
from pathlib import Path
from django.db import connection
from django.utils import timezone
from superimap.delivery import outbox, queue
from superimap.delivery.http import PostResult
from superimap.delivery.models import Delivery, DeliveryPayload
from superimap.delivery.retention import Purger
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner

def make_user(name):
    partner = Partner.objects.create(name=name, new_mail_webhook="http://127.0.0.1:9/m")
    conn = Connection.objects.create(
        partner=partner, provider=ImapProvider.objects.get(code="PLAIN"),
        imap_host="imap.example.com", imap_port=993, imap_tls="implicit")
    return MailboxUser.objects.create(
        connection=conn, tag=name, login_username=name, password="pw",
        connected_at=timezone.now())

user = make_user("t")
words = random.Random(7).choices("lorem ipsum dolor sit amet consectetur".split(), k=400)
def mail(n):  # ~2.3 KB of JSON, sha1 first as payloads.py puts it
    return {"sha1": "%040x" % n, "user_tag": "t",
            "rfc822": "Subject: %d\\r\\n\\r\\n" % n + " ".join(words)}
mails = {outbox.enqueue("new_mail", user, mail(n), message_id=f"<{n}@x.test>").id: mail(n)
         for n in range(40)}

def payload_rows():
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT delivery_id, ctid::text, xmin::text FROM delivery_payload "
                           "ORDER BY 1")
        else:
            cursor.execute("SELECT delivery_id, payload FROM delivery_payload ORDER BY 1")
        return [list(row) for row in cursor.fetchall()]

def wal_pages():
    # SQLite: the pages written to the WAL since the last checkpoint (frame headers).
    wal = Path(connection.settings_dict["NAME"] + "-wal").read_bytes()
    size = struct.unpack(">I", wal[8:12])[0]
    return [struct.unpack(">I", wal[o:o + 4])[0] for o in range(32, len(wal), size + 24)]

def checkpoint():
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")

def payload_pages():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pageno FROM dbstat WHERE name = 'delivery_payload'")
        return {pageno for (pageno,) in cursor.fetchall()}

result = {"vendor": connection.vendor, "inserted": payload_rows()}
now = timezone.now() + timedelta(seconds=1)
checkpoint()
claimed = queue.claim_due("w1", 40, now, timedelta(seconds=60))
if connection.vendor == "sqlite":
    result["claim_frames"] = len(wal_pages())
    result["claim_payload_frames"] = len(set(wal_pages()) & payload_pages())
result["claimed_rows"] = len(claimed)
result["bodies"] = all(json.loads(c.payload_json) == mails[c.id] for c in claimed)
result["texts"] = all(c.payload_json == json.dumps(mails[c.id]) for c in claimed)
result["sha1s"] = all(c.sha1 == mails[c.id]["sha1"] for c in claimed)
result["claimed"] = payload_rows()
checkpoint()
ok = PostResult(200, "OK", "", 3)
queue.record_outcomes("w1", [queue.Outcome(c, ok, now) for c in claimed], now)
if connection.vendor == "sqlite":
    result["outcome_payload_frames"] = len(set(wal_pages()) & payload_pages())
result["statuses"] = set(Delivery.objects.values_list("status", flat=True)) == {"delivered"}
result["delivered"] = payload_rows()
result["purged"] = Purger(retention=timedelta(seconds=1)).purge(now + timedelta(hours=1))
result["after_purge"] = payload_rows()
result["purged_reads"] = [d.payload for d in Delivery.objects.all()[:2]]
result["purged_marked"] = Delivery.objects.filter(payload_purged_at__isnull=True).count()

# A delivery deleted with its partner takes its payload row with it.
other = make_user("o")
kept = outbox.enqueue("new_mail", other, mail(99), message_id="<99@x.test>")
result["other_payload"] = DeliveryPayload.objects.filter(delivery_id=kept.id).count()
other.connection.partner.delete()
result["orphans"] = DeliveryPayload.objects.count()
print("RESULT " + json.dumps(result))
"""


def test_the_worker_never_rewrites_a_payload_and_retention_and_deletes_leave_no_row(
    migrated_database_url, tmp_path
):
    env = superimap_env(migrated_database_url, tmp_path / "var")
    result = json.loads(run_cli(env, "manage", "shell", "-c", SCENARIO).split("RESULT ", 1)[1])
    assert len(result["inserted"]) == 40
    # The worker got each whole body, as stored, and its sha1 for the signature.
    assert result["claimed_rows"] == 40
    assert result["bodies"] is True and result["sha1s"] is True
    if result["vendor"] == "sqlite":
        assert result["texts"] is True  # the exact text the writer stored
    # Neither the claim nor the outcome wrote a payload row again.
    assert result["claimed"] == result["inserted"]
    assert result["statuses"] is True
    assert result["delivered"] == result["inserted"]
    if result["vendor"] == "sqlite":
        # 40 rows claimed: a few pages of ~200-byte rows, no page of payloads (a payload in
        # its Delivery row made it one 4 KB frame per row: 40 or more).
        assert result["claim_frames"] < 10, result["claim_frames"]
        assert result["claim_payload_frames"] == 0
        assert result["outcome_payload_frames"] == 0
    # Retention deletes the payload rows; a purged delivery reads {} as before.
    assert result["purged"] == 40
    assert result["after_purge"] == []
    assert result["purged_reads"] == [{}, {}]
    assert result["purged_marked"] == 0
    # Deleting a delivery (with its partner) leaves no payload row behind.
    assert result["other_payload"] == 1
    assert result["orphans"] == 0
