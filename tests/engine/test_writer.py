"""The one writer of persist plans (engine/writer.py) on SQLite and PostgreSQL: a group
writes exactly what its jobs write one by one, a group it cannot write falls back job by
job, and a group costs a fixed number of statements."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.utils import timezone

from superimap.delivery.models import Delivery
from superimap.engine import writer
from superimap.engine.persister import persist_group
from superimap.mailboxes.models import MailboxUser, MailLog
from superimap.sync import persist
from superimap.sync.envelope import envelope, parse_headers
from tests.helpers.engine import loopback_connection
from tests.helpers.processes import run_cli, superimap_env
from tests.helpers.writer import NODE, batch, compare


def test_the_insert_columns_are_every_column_of_the_tables():
    for model, columns in (
        (MailLog, writer.MAILLOG_COLUMNS),
        (Delivery, writer.DELIVERY_COLUMNS),
    ):
        concrete = {f.column for f in model._meta.concrete_fields if not f.primary_key}
        assert set(columns) == concrete, model.__name__
        assert len(columns) == len(set(columns))


def _check(result: dict) -> None:
    group, one_by_one = result["group"], result["one_by_one"]
    for key in group:
        assert group[key] == one_by_one[key], key
    assert result["tracer_detected"]
    results = group["results"]
    # What the group holds, so an equal pair of empty answers cannot pass.
    assert [r if isinstance(r, str) else (r["new"], r["skipped"]) for r in results] == [
        (2, 1),
        (1, 1),
        (1, 3),
        (1, 1),
        (1, 0),
        (1, 0),
        (1, 0),
        (1, 0),
        (1, 0),
        "LeaseLost",
        (1, 0),
        (1, 0),
        (0, 0),
    ]
    assert results[2]["skips"] == {"duplicate": 1, "expunged": 1, "unfetchable": 1}
    assert results[3]["skips"] == {"tracer": 1} and results[3]["truncated"] == 1
    assert len(group["deliveries"]) == 12
    statuses = {row[0]: row[6] for row in group["deliveries"]}
    assert statuses["i"] == "skipped" and statuses["a"] == "pending"
    checkpoints = {row[0]: row[1:3] for row in group["users"]}
    assert checkpoints["a"] == [9, 5] and checkpoints["f"] == [10, 3]
    assert checkpoints["g"] == [9, 0]
    # h's backfill step: its position and count move, its checkpoint does not; its mail is
    # in the backfill lane.
    users = {row[0]: row for row in group["users"]}
    assert users["h"][1:3] == [9, 0] and users["h"][5:] == [3, 1]
    assert [row[-1] for row in group["deliveries"] if row[0] == "h"] == [True]
    assert not any(row[-1] for row in group["deliveries"] if row[0] != "h")
    assert ["e", "Archive", 3, 1, "None"] in group["folders"]
    assert ["e", "Spam", 4, 9, "2026-01-02 03:04:05+00:00"] in group["folders"]


def test_a_group_writes_what_its_jobs_write_one_by_one(seeded_providers):
    assert connection.vendor == "sqlite"
    _check(compare())


def test_a_group_writes_what_its_jobs_write_one_by_one_on_postgresql(postgres_url, tmp_path):
    env = superimap_env(postgres_url, tmp_path / "var")
    run_cli(env, "migrate")
    code = (
        "import json; from tests.helpers.writer import compare; "
        "from django.db import connection; assert connection.vendor == 'postgresql'; "
        "print('RESULT ' + json.dumps(compare()))"
    )
    out = run_cli(env, "manage", "shell", "-c", code)
    _check(json.loads(out.split("RESULT ", 1)[1]))


def test_a_group_that_fails_as_a_whole_is_written_job_by_job(users, caplog):  # noqa: F811
    # A Delivery for users[1]'s message already exists without its MailLog row: the
    # group's one INSERT of every delivery fails; then only users[1]'s batch does.
    job = batch(users[1], 1)
    raw = job.messages[0].raw
    env = envelope(parse_headers(raw))
    Delivery.objects.create(
        kind="new_mail",
        partner=users[1].connection.partner,
        user=users[1],
        dedup_key=persist.identity_of(env["message_id"], len(raw), env["date"]),
        payload={},
        next_attempt_at=users[1].connected_at,
    )
    outcomes = persist_group([batch(users[0], 1, 2), job, batch(users[2], 4)])
    assert "failed as a whole" in caplog.text
    assert (outcomes[0].new, outcomes[2].new) == (2, 1)
    assert type(outcomes[1]).__name__ == "IntegrityError"
    assert not MailLog.objects.filter(user=users[1]).exists()
    assert MailboxUser.objects.get(id=users[1].id).last_uid is None
    assert Delivery.objects.filter(kind="new_mail", user__in=[users[0], users[2]]).count() == 3


def test_a_group_costs_a_fixed_number_of_statements_whatever_its_batches(mail_partner):
    """One fence, one "already recorded" query, one dedup query, the inserts and the
    checkpoint updates: the same few statements for 1 batch or 30 (each a network round
    trip on PostgreSQL)."""
    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    link = loopback_connection(mail_partner, 1)
    group = [
        MailboxUser.objects.create(
            connection=link, tag=f"g{i}", owner_node="n1", connected_at=timezone.now()
        )
        for i in range(30)
    ]

    def statements(owners: list, uid: int) -> int:
        with CaptureQueriesContext(db) as queries:
            outcomes = persist_group([batch(user, uid) for user in owners])
        assert all(outcome.new == 1 for outcome in outcomes)
        return len(queries.captured_queries)

    assert statements(group[:1], 1) == statements(group, 2)
    assert statements(group, 3) < len(group) / 2


def test_the_dedup_query_probes_its_indexes_for_one_user_or_many(users):
    """SQLite's plan of the real dedup statement, with its bound parameters: each term a
    probe of the (user, sha1) or (user, identity) index, for the one-user group of every
    persist at low rates as for a group of many; never all of a user's rows through the
    plain user_id index (the same statement with literal values plans that way)."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's planner rule; PostgreSQL plans by statistics")
    for owners in (users[:1], users):
        prepared = [persist.prepare(batch(user, 1)) for user in owners]
        seen: list[tuple[str, list]] = []

        def plan(execute, sql, params, many, context, seen=seen):
            if "sha1 IN" in sql:
                seen.append((sql, list(params)))
            return execute(sql, params, many, context)

        with connection.execute_wrapper(plan), connection.cursor() as cursor:
            writer._dedup_rows(cursor, prepared, persist.Recorded())
        ((sql, params),) = seen
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            steps = [row[-1] for row in cursor.fetchall() if row[-1].startswith("SEARCH")]
        assert len(steps) == 2 * writer._padded(len(owners)), steps
        assert all(
            "(user_id=? AND sha1=?)" in step or "(user_id=? AND identity=?)" in step
            for step in steps
        ), steps


def test_the_recorded_rows_query_probes_the_uid_index_for_one_user_or_many(users):
    """SQLite's plan of the real "already recorded" statement: two probes per batch, its
    folder and "" (rows from before folders were recorded), each on the whole unique
    (user, folder, uid_validity, uid) index; ``folder IN (%s, '')`` made an OR of 14
    batches 30 times slower on 20,000 rows."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's planner rule; PostgreSQL plans by statistics")
    for owners in (users[:1], users):
        prepared = [persist.prepare(batch(user, 1)) for user in owners]
        seen: list[tuple[str, list]] = []

        def plan(execute, sql, params, many, context, seen=seen):
            if "skipped_reason FROM" in sql and "uid IN" in sql:
                seen.append((sql, list(params)))
            return execute(sql, params, many, context)

        with connection.execute_wrapper(plan), connection.cursor() as cursor:
            writer._recorded_rows(cursor, prepared, persist.Recorded())
        ((sql, params),) = seen
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            steps = [row[-1] for row in cursor.fetchall() if row[-1].startswith("SEARCH")]
        assert len(steps) == 2 * writer._padded(len(owners)), steps
        whole = "(user_id=? AND folder=? AND uid_validity=? AND uid=?)"
        assert all(whole in step for step in steps), steps


def test_groups_of_nearby_sizes_share_their_statement_texts_on_sqlite(mail_partner):
    """The fence, "already recorded" and dedup statements of groups of 13 to 16 batches
    have one text each (the last term repeated up to a multiple of 4): SQLite's compiled
    statements are kept by text (128 per connection), and each text compiled again cost
    0.1-0.3 ms a statement when group sizes varied. The same rows are written."""
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL parses every statement anyway")
    link = loopback_connection(mail_partner, 1)
    group = [
        MailboxUser.objects.create(
            connection=link, tag=f"p{i}", owner_node="n1", connected_at=timezone.now()
        )
        for i in range(16)
    ]
    texts: set[str] = set()

    def record(execute, sql, params, many, context):
        # With parameters: the group's lookups (not SELECT last_insert_rowid(), one text).
        if not many and params and sql.lstrip().startswith("SELECT"):
            texts.add(sql)
        return execute(sql, params, many, context)

    for size in (13, 14, 15, 16):
        with connection.execute_wrapper(record):
            outcomes = persist_group([batch(user, size) for user in group[:size]])
        assert all(outcome.new == 1 for outcome in outcomes)
    assert len(texts) == 3, texts
    assert MailLog.objects.filter(user__in=group).count() == 13 + 14 + 15 + 16
    assert [writer._padded(n) for n in (1, 4, 5, 8, 9, 32, 33, 49)] == [1, 4, 8, 8, 12, 32, 48, 64]


def test_the_fence_looks_its_users_up_by_id_not_through_an_index_of_every_user(mail_partner):
    """SQLite's plan of the real fence statement for a group of 20 users: the users by
    rowid (the IN list), not a walk of the (archived, connected_at) index, i.e. of every
    connected user, for each group (0.36 ms a group at 2,000 users, 1.3 ms at 10,000,
    against 0.18 ms by id). With 3 ids SQLite looked them up anyway; with 15 it did not."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's planner rule; PostgreSQL plans by statistics")
    link = loopback_connection(mail_partner, 1)
    group = [
        MailboxUser.objects.create(
            connection=link, tag=f"f{i}", owner_node=NODE, connected_at=timezone.now()
        )
        for i in range(20)
    ]
    seen: list[tuple[str, list]] = []

    def plan(execute, sql, params, many, context):
        if "owner_node" in sql:
            seen.append((sql, list(params)))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(plan):
        owners = writer._fence([user.id for user in group], NODE)
    assert sorted(owners) == [user.id for user in group]
    ((sql, params),) = seen
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        steps = [row[-1] for row in cursor.fetchall()]
    user_steps = [step for step in steps if step.split()[:2] in (["SEARCH", "u"], ["SCAN", "u"])]
    assert user_steps == ["SEARCH u USING INTEGER PRIMARY KEY (rowid=?)"], steps


def test_the_planners_reasons_are_maillogs():
    assert persist.DUPLICATE == MailLog.Reason.DUPLICATE
    assert persist.TRACER == MailLog.Reason.TRACER
    assert persist.UNFETCHABLE == MailLog.Reason.UNFETCHABLE
    assert persist.BEFORE_BASELINE == MailLog.Reason.BEFORE_BASELINE
    assert persist.DELIVERED == ""
    assert persist.TEXT_MAX == MailLog._meta.get_field("subject").max_length
    assert persist.FOLDER_MAX == MailLog._meta.get_field("folder").max_length
