"""On PostgreSQL a new_mail payload whose row is above the TOAST threshold is stored out of
the row (migration delivery 0006: toast_tuple_target 128, lz4), so the claim's and the
outcome's UPDATEs keep its TOAST value instead of writing it again (design.md 5.11); the
worker still reads the whole body, and the retention purge still frees it."""

from __future__ import annotations

import json

import pytest

from tests.helpers.processes import run_cli, superimap_env

SCENARIO = """
import json, random
from datetime import timedelta
from django.db import connection
from django.utils import timezone
from superimap.delivery import outbox, queue
from superimap.delivery.http import PostResult
from superimap.delivery.models import Delivery
from superimap.delivery.retention import Purger
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner

partner = Partner.objects.create(name="p", new_mail_webhook="http://127.0.0.1:9/m")
conn = Connection.objects.create(
    partner=partner, provider=ImapProvider.objects.get(code="PLAIN"),
    imap_host="imap.example.com", imap_port=993, imap_tls="implicit")
user = MailboxUser.objects.create(
    connection=conn, tag="t", login_username="t", password="pw", connected_at=timezone.now())
# A ~3 KB mail of a few words: the row is above the threshold, and it compresses below it
# (bench.e2e's mails do the same), so before 0006 it was kept in the row, compressed.
words = random.Random(7).choices("lorem ipsum dolor sit amet consectetur".split(), k=500)
big = {"sha1": "a" * 40, "user_tag": "t", "rfc822": "Subject: x\\r\\n\\r\\n" + " ".join(words)}
small = {"sha1": "b" * 40, "user_tag": "t", "rfc822": "Subject: y\\r\\n\\r\\nhello"}
rows = {
    "big": outbox.enqueue("new_mail", user, big, message_id="<1@x.test>").id,
    "small": outbox.enqueue("new_mail", user, small, message_id="<2@x.test>").id,
}

def toast_values():
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltoastrelid::regclass::text FROM pg_class "
                       "WHERE relname = 'delivery_delivery'")
        toast = cursor.fetchone()[0]
        cursor.execute(f"SELECT chunk_id, count(*) FROM {toast} GROUP BY chunk_id ORDER BY 1")
        return [list(row) for row in cursor.fetchall()]

def compression():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_column_compression(payload) FROM delivery_delivery WHERE id = %s",
                       [rows["big"]])
        return cursor.fetchone()[0]

result = {"inserted": toast_values(), "compression": compression()}
now = timezone.now() + timedelta(seconds=1)
claimed = queue.claim_due("w1", 10, now, timedelta(seconds=60))
result["bodies"] = {
    name: json.loads(c.payload_json) == (big if name == "big" else small)
    for c in claimed for name, id_ in rows.items() if c.id == id_}
result["claimed"] = toast_values()
ok = PostResult(200, "OK", "", 3)
queue.record_outcomes("w1", [queue.Outcome(c, ok, now) for c in claimed], now)
ours = Delivery.objects.filter(id__in=rows.values())
result["statuses"] = sorted(ours.values_list("status", flat=True))
result["delivered"] = toast_values()
result["stored_intact"] = Delivery.objects.get(id=rows["big"]).payload == big
result["purged"] = Purger(retention=timedelta(seconds=1)).purge(now + timedelta(hours=1))
result["after_purge"] = toast_values()
result["payloads"] = list(ours.values_list("payload", flat=True))
print("RESULT " + json.dumps(result))
"""


@pytest.fixture
def postgres_url(migrated_postgres_url) -> str:
    """Migrated already (a copy of one migrated template), not by each test."""
    return migrated_postgres_url


def test_claim_and_outcome_keep_the_payloads_toast_value_and_the_purge_frees_it(
    postgres_url, tmp_path
):
    env = superimap_env(postgres_url, tmp_path / "var")
    out = run_cli(env, "manage", "shell", "-c", SCENARIO)
    result = json.loads(out.split("RESULT ", 1)[1])
    # One value out of the row (the big payload's; the small one stays in its row).
    assert len(result["inserted"]) == 1, result
    assert result["compression"] in ("lz4", "pglz")
    # The worker read both whole bodies; neither UPDATE wrote the value again.
    assert result["bodies"] == {"big": True, "small": True}
    assert result["claimed"] == result["inserted"]
    assert result["statuses"] == ["delivered", "delivered"]
    assert result["delivered"] == result["inserted"]
    assert result["stored_intact"] is True
    # Retention drops both payloads, and the TOAST value with the big one.
    assert result["purged"] == 2
    assert result["after_purge"] == []
    assert result["payloads"] == [{}, {}]
