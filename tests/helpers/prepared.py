"""What PostgreSQL has prepared on the engine's and the worker's connection after a few
group commits and claims (platform/statements.py). Run on PostgreSQL through ``superimap
manage shell`` by tests/engine/test_postgres_prepared.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db import connection, transaction

from superimap.delivery import queue
from superimap.engine import writer
from tests.helpers.writer import _users, batch

GROUPS = 7  # more than statements.PREPARE_THRESHOLD (5) runs of each statement


def prepared_statements() -> dict:
    """Each group two users, one new message each (a new UID, so every statement runs);
    then as many claims. Returns the prepared texts, those run with a generic plan, and what
    the groups wrote."""
    users = _users("prepared")
    for n in range(1, GROUPS + 1):
        with transaction.atomic():
            outcomes = writer.write_jobs([batch(users["a"], n), batch(users["b"], n)])
        assert all(not isinstance(outcome, Exception) for outcome in outcomes), outcomes
    later = datetime.now(UTC) + timedelta(days=1)  # every delivery is due: claim them
    claimed = 0
    for _ in range(GROUPS):
        claimed += len(queue.claim_due("w1", 1, later, timedelta(minutes=5)))
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans FROM pg_prepared_statements")
        plans = [(" ".join(text.split()), generic) for text, generic in cursor.fetchall()]
        cursor.execute("SELECT count(*) FROM mailboxes_maillog")
        rows = cursor.fetchone()[0]
        cursor.execute("SHOW plan_cache_mode")
        mode = cursor.fetchone()[0]
    return {
        "statements": [text for text, _ in plans],
        # A utility statement (the claim's SET LOCAL) has no plan and counts as generic.
        "generic": [text for text, generic in plans if generic and not text.startswith("SET ")],
        "plan_cache_mode": mode,
        "maillog_rows": rows,
        "claimed": claimed,
    }
