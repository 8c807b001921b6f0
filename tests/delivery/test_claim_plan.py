"""The claim's query plan on SQLite: its per-user probes use the small partial indexes.

SQLite's planner, among indexes it rates equal, takes the one created last. When the
squashed migrations created the plain user_id index after the partial ones, the probes
"an earlier pending delivery of this user" and "a later user_disconnected of this user"
scanned every delivery of the user through it, and the worker's backlog rate fell from
~2,400 to ~320 deliveries/s (bench.delivery). This reads the plan of the real claim SQL on
a database built by the real migrations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection

from superimap.delivery import queue
from superimap.delivery.models import Delivery


def _plan(sql: str, params: list) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        return [row[-1] for row in cursor.fetchall()]


@pytest.mark.django_db
def test_the_claim_probes_use_the_partial_indexes():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's planner rule; PostgreSQL plans by statistics")
    due, _, _ = queue._claim_sql("sqlite")
    now = datetime(2026, 12, 7, tzinfo=UTC)
    plan = _plan(due, [Delivery.Status.PENDING.value, False, now, now, 100])
    probes = [step for step in plan if step.startswith("SEARCH e ")]
    assert len(probes) == 2, plan
    assert any("delivery_pending_by_user" in step for step in probes), plan
    assert any("delivery_disconnect_by_user" in step for step in probes), plan
    assert any("delivery_due_by_endpoint" in step for step in plan), plan
