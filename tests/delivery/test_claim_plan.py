"""The claim's query plan. SQLite: its per-user probes use the small partial indexes.
PostgreSQL: it walks the due index in order, whatever the statistics say.

SQLite's planner, among indexes it rates equal, takes the one created last. When the
squashed migrations created the plain user_id index after the partial ones, the probes
"an earlier pending delivery of this user" and "a later user_disconnected of this user"
scanned every delivery of the user through it, and the worker's backlog rate fell from
~2,400 to ~320 deliveries/s (bench.delivery). This reads the plan of the real claim SQL on
a database built by the real migrations."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from superimap.delivery import queue


def _plan(sql: str, params: list) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        return [row[-1] for row in cursor.fetchall()]


@pytest.mark.django_db
def test_the_claim_probes_use_the_partial_indexes():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's planner rule; PostgreSQL plans by statistics")
    dues, _, _, _ = queue._claim_sql("sqlite")
    now = datetime(2026, 12, 7, tzinfo=UTC)
    plan = _plan(dues[False], [now, now, 100])
    probes = [step for step in plan if step.startswith("SEARCH e ")]
    assert len(probes) == 2, plan
    assert any("delivery_pending_by_user" in step for step in probes), plan
    assert any("delivery_disconnect_by_user" in step for step in probes), plan
    assert any("delivery_due_by_endpoint" in step for step in plan), plan


# A ~1 KB payload, as a new_mail carries (more, in fact), in its own table (delivery 0007).
PAYLOAD = '{"sha1": "x", "text": "' + "lorem ipsum " * 90 + '"}'
# 30,000: with the payloads in their own table (delivery 0007) the Delivery table of 6,000
# rows was small enough that the planner walked the index without statistics too.
ROWS = 30000


def _fill_without_statistics(db) -> None:
    """ROWS pending deliveries in a table never analyzed, half of them delivered since: a
    new database's first burst (bench.e2e's every run) before autovacuum's ANALYZE."""
    db.execute("SET session_replication_role = replica")  # no partner rows needed (FKs)
    db.execute(
        "INSERT INTO delivery_delivery (event_id, kind, partner_id, message_id, dedup_key, "
        "status, attempts, max_attempts, failures, next_attempt_at, claimed_by, "
        "last_error, created_at, backfill) "
        "SELECT gen_random_uuid(), 'new_mail', 1, '', '', 'pending', 0, 6, 0, "
        "now() - interval '1 minute', '', '', now(), false FROM generate_series(1, %s)",
        [ROWS],
    )
    db.execute(
        "INSERT INTO delivery_payload (delivery_id, payload) "
        "SELECT id, %s::jsonb FROM delivery_delivery",
        [PAYLOAD],
    )
    db.execute("UPDATE delivery_delivery SET status = 'delivered' WHERE id <= %s", [ROWS // 2])


def _explain(db, due: str) -> str:
    now = datetime.now(UTC)
    rows = db.execute(f"EXPLAIN ANALYZE {due}", [now, now, 20]).fetchall()
    return "\n".join(row[0] for row in rows)


def test_the_postgresql_claim_walks_the_due_index_instead_of_sorting_the_backlog(
    migrated_postgres_url,
):
    """Without statistics that show the backlog, PostgreSQL read and sorted the whole
    backlog (with its payloads, before delivery 0007) for each claim of 20: claims of
    ~30-50 ms with 6,000 pending (2-4 ms walking the index), and the worker of bench.e2e
    at 1,000/s trickled at ~200/s. The claim's transaction (queue.WALK_THE_INDEX) rules
    the sort out."""
    due = queue._claim_sql("postgresql")[0][False]
    with psycopg.connect(migrated_postgres_url, autocommit=True) as db:
        _fill_without_statistics(db)
        # The hazard is real: planned without statistics, the claim sorts the backlog.
        assert "Sort" in _explain(db, due)
        with db.transaction():
            db.execute(queue.WALK_THE_INDEX)
            plan = _explain(db, due)
    assert "Sort" not in plan, plan
    assert "Index Scan using delivery_due_by_endpoint" in plan, plan


def _explain_delivered(db, ids: list[int]) -> str:
    sql = queue._delivered_sql(len(ids))
    params = ["delivered", datetime.now(UTC), 200, *ids, 1, "node"]
    return "\n".join(row[0] for row in db.execute(f"EXPLAIN ANALYZE {sql}", params).fetchall())


def test_the_postgresql_outcome_update_finds_its_rows_by_id(migrated_postgres_url):
    """With `status = 'pending'` in its fence (the condition of the partial
    delivery_pending_by_user), the outcome UPDATE scanned that whole index for its ids, and
    the index holds a dead entry for every row delivered since the last VACUUM (14.6 ms for
    20 rows after 100,000 deliveries instead of 0.76 ms). With COALESCE(status, '') no
    index but the primary key can serve it."""
    with psycopg.connect(migrated_postgres_url, autocommit=True) as db:
        _fill_without_statistics(db)  # half of the rows delivered since: dead entries
        ids = [
            row[0]
            for row in db.execute(
                "SELECT id FROM delivery_delivery WHERE status = 'pending' ORDER BY id LIMIT 20"
            ).fetchall()
        ]
        db.execute(
            "UPDATE delivery_delivery SET attempts = 1, claimed_by = 'node' WHERE id = ANY(%s)",
            [ids],
        )
        with db.transaction():
            plan = _explain_delivered(db, ids)
            raise psycopg.Rollback
    indexes = [line for line in plan.splitlines() if "Index Scan" in line]
    assert indexes and all("delivery_delivery_pkey" in line for line in indexes), plan
    # The hazard is real: the same UPDATE with the plain term reads the partial index.
    plain = queue._delivered_sql(len(ids)).replace("COALESCE(status, '')", "status")
    with psycopg.connect(migrated_postgres_url, autocommit=True) as db, db.transaction():
        params = ["delivered", datetime.now(UTC), 200, *ids, 1, "node"]
        rows = db.execute(f"EXPLAIN {plain}", params).fetchall()
        raise psycopg.Rollback
    assert "delivery_pending_by_user" in "\n".join(row[0] for row in rows)


@pytest.mark.django_db
def test_the_sqlite_outcome_update_finds_its_rows_by_id():
    """With `status = 'pending'`, SQLite searched the due index for the pending rows and
    filtered the ids: each outcome UPDATE read the backlog's whole range."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's plan")
    sql = queue._delivered_sql(20)
    plan = _plan(sql, ["delivered", datetime(2026, 12, 7, tzinfo=UTC), 200, *range(20), 1, "n"])
    assert plan == ["SEARCH delivery_delivery USING INTEGER PRIMARY KEY (rowid=?)"], plan
    plain = sql.replace("COALESCE(status, '')", "status")
    hazard = _plan(plain, ["delivered", datetime(2026, 12, 7, tzinfo=UTC), 200, *range(20), 1, "n"])
    assert any("delivery_due_by_endpoint" in step for step in hazard), hazard


@pytest.mark.django_db
def test_the_other_outcomes_update_finds_its_rows_by_id_too():
    """Retries and failures go one by one through the ORM (queue._fenced), with the same
    COALESCE term as the delivered ones. SQLite took the rowid here before too (the status is
    a bound parameter there); the term is for PostgreSQL, whose custom plans see the value."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's plan")
    with CaptureQueriesContext(connection) as captured:
        queue._fenced("n", [1, 2, 3], 1).update(status="failed", claimed_by="")
    (update,) = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("UPDATE")]
    assert "COALESCE" in update, update
    assert _plan(update, []) == ["SEARCH delivery_delivery USING INTEGER PRIMARY KEY (rowid=?)"]
