"""The one SQL writer of persist plans (the rules are in sync/persist.py).

``write_jobs(jobs)`` writes a group of persist jobs in a few set-based statements, in plain
SQL that runs on SQLite and PostgreSQL, because the ORM cost ~4 ms of CPU per message here
(query compilation, model instances), more than everything else the engine does for one:

1. one fence query locks (PostgreSQL: FOR UPDATE, in user id order; SQLite's IMMEDIATE
   transaction holds the write lock already) every user still owned by this node and
   watchable, joined with what the payloads need (provider code, partner options); a job
   whose user is missing gets ``LeaseLost``;
2. one statement for the UIDs that already have a row, one for the dedup candidates (same
   sha1 or same identity, delivered or tracer) and, if a job is for a secondary folder,
   one for those folders' checkpoints: the same few statements for 1 job or 30;
3. the planner (sync/persist.py) decides every row;
4. the rows a backfill replaces are deleted; every MailLog row goes in one executemany,
   every Delivery row in another; tracers are marked detected; the checkpoints and backfill
   positions are updated. On PostgreSQL the rows and checkpoints go in multi-row statements
   instead (_insert_rows, _update_checkpoints): each statement of an executemany is parsed,
   planned and run by the server on its own.

It runs in the caller's transaction. The group commit (engine/persister.py) runs it for
the whole group in a savepoint and, if a statement fails, once per job, each in a
savepoint of its own, so one bad batch fails alone. ``persist_batch`` runs one job in a
transaction of its own.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from superimap.delivery.content import with_content_options
from superimap.delivery.models import Delivery, DeliveryPayload, attempts_per_round
from superimap.delivery.payloads import (
    message_change_payload,
    new_mail_payload,
    truncated_mail_payload,
)
from superimap.engine.store import LeaseLost
from superimap.imap import Vanished
from superimap.mailboxes.models import (
    FolderChanges,
    FolderCheckpoint,
    MailboxUser,
    MailLog,
    MessageState,
)
from superimap.partners.models import Connection, ImapProvider, Partner
from superimap.platform.sqltext import marks
from superimap.sync import changes, eventids, persist
from superimap.sync.backfill import BackfillStep
from superimap.sync.changes import Observed, Tracked
from superimap.sync.filters import effective
from superimap.sync.persist import (
    DEDUP_AGAINST,
    DeliveryRow,
    FetchedMessage,
    Owner,
    PersistJob,
    PersistResult,
    Plan,
    Prepared,
    Recorded,
)
from superimap.tracers.models import TracerLog

IN_BATCH = 400  # values per IN (...): far under every backend's parameter limit
MAX_PARAMETERS = 2000  # per statement of OR-ed terms (SQLite allows 32,766, PostgreSQL 65,535)

# Every concrete column of the two tables, in INSERT order (tests/engine/test_writer.py
# checks these lists against the models, so a new field cannot be silently left out).
MAILLOG_COLUMNS = (
    "user_id",
    "message_id",
    "sha1",
    "identity",
    "uid",
    "uid_validity",
    "folder",
    "subject",
    "internal_date",
    "size",
    "skipped_reason",
    "detail",
    "created_at",
)
DELIVERY_COLUMNS = (
    "event_id",
    "kind",
    "partner_id",
    "user_id",
    "message_id",
    "dedup_key",
    "status",
    "attempts",
    "max_attempts",
    "failures",
    "next_attempt_at",
    "claimed_by",
    "lease_until",
    "last_status_code",
    "last_error",
    "created_at",
    "delivered_at",
    "payload_purged_at",
    "backfill",
)
PAYLOAD_COLUMNS = ("delivery_id", "payload")  # DeliveryPayload's, one row per Delivery
USERS = MailboxUser._meta.db_table
MAILLOG = MailLog._meta.db_table
FOLDERS = FolderCheckpoint._meta.db_table

# A primary folder's checkpoint: a None leaves the column as it is (a secondary folder's
# batch only moves last_email_at here; its checkpoint is a FolderCheckpoint row).
CHECKPOINT_SQL = (
    f"UPDATE {USERS} SET uid_validity = COALESCE(%s, uid_validity), "
    "last_uid = COALESCE(%s, last_uid), last_internal_date = COALESCE(%s, last_internal_date), "
    "last_email_at = COALESCE(%s, last_email_at) WHERE id = %s"
)
CHECKPOINT_ROW = "(%s::bigint, %s::bigint, %s::timestamptz, %s::timestamptz, %s::bigint)"
CHECKPOINT_MANY_SQL = (
    f"UPDATE {USERS} AS u SET uid_validity = COALESCE(v.uid_validity, u.uid_validity), "
    "last_uid = COALESCE(v.last_uid, u.last_uid), "
    "last_internal_date = COALESCE(v.last_internal_date, u.last_internal_date), "
    "last_email_at = COALESCE(v.last_email_at, u.last_email_at) "
    "FROM (VALUES {values}) AS v(uid_validity, last_uid, last_internal_date, last_email_at, id) "
    "WHERE u.id = v.id"
)
FOLDER_INSERT_SQL = (
    f"INSERT INTO {FOLDERS} (user_id, folder, uid_validity, last_uid, last_internal_date, "
    "updated_at) VALUES (%s, %s, %s, %s, %s, %s)"
)
FOLDER_UPDATE_SQL = (
    f"UPDATE {FOLDERS} SET uid_validity = %s, last_uid = %s, updated_at = %s, "
    "last_internal_date = COALESCE(%s, last_internal_date) WHERE user_id = %s AND folder = %s"
)
REPLACE_SQL = (
    f"DELETE FROM {MAILLOG} WHERE user_id = %s AND folder IN (%s, '') AND uid_validity = %s "
    "AND uid = %s"
)
# A backfill step (sync/backfill.py): its position and done count move with its rows, for
# the request it served only.
BACKFILL_SQL = (
    f"UPDATE {USERS} SET backfill_position = %s, backfill_done = backfill_done + %s "
    "WHERE id = %s AND backfill_requested_at = %s"
)
TRACER_SQL = (
    f"UPDATE {TracerLog._meta.db_table} SET detected_at = %s "
    "WHERE tracer_uid = %s AND detected_at IS NULL"
)


def persist_batch(
    user_id: int,
    node_id: str,
    uid_validity: int,
    folder: str,
    messages: list[FetchedMessage],
    backfill: BackfillStep | None = None,
) -> PersistResult:
    """One batch in a transaction of its own; raises LeaseLost if this node may not write
    it (design.md 4.4)."""
    with transaction.atomic():
        job = PersistJob(user_id, node_id, uid_validity, folder, messages, backfill)
        outcome = write_jobs([job])
        if isinstance(outcome[0], Exception):
            raise outcome[0]
    return outcome[0]


def write_jobs(jobs: list[PersistJob]) -> list[PersistResult | Exception]:
    """Each job's PersistResult (or LeaseLost), in job order, written in the caller's
    transaction. Raises if any statement fails."""
    outcomes: dict[int, PersistResult | Exception] = {}
    order = sorted(range(len(jobs)), key=lambda i: jobs[i].user_id)
    owners: dict[int, Owner] = {}
    for node_id in sorted({job.node_id for job in jobs}):
        ids = sorted({job.user_id for job in jobs if job.node_id == node_id})
        owners.update(_fence(ids, node_id))
    live = []
    for i in order:
        if jobs[i].user_id in owners:
            live.append(i)
        else:
            outcomes[i] = LeaseLost(jobs[i].user_id)
    if live:
        prepared = [persist.prepare(jobs[i]) for i in live]
        recorded = _prefetch(prepared, owners)
        plan = persist.plan_group(prepared, owners, recorded)
        _execute(plan)
        outcomes.update(zip(live, plan.results, strict=True))
    return [outcomes[i] for i in range(len(jobs))]


def _fence(user_ids: list[int], node_id: str) -> dict[int, Owner]:
    """Lock and read the users of ``user_ids`` this node still owns and may watch: a
    disconnect or archive either commits first, and the job finds no user, or waits for
    this commit, so its user_disconnected comes after every new_mail (design.md 4.4)."""
    owners: dict[int, Owner] = {}
    lock = " FOR UPDATE OF u" if connection.features.has_select_for_update_of else ""
    # SQLite (no statistics) would rather walk the (archived, connected_at) index, i.e. every
    # connected user, than look the ids up: 0.36 ms a group at 2,000 users, 1.3 ms at
    # 10,000, against 0.18 ms. NOT INDEXED leaves it the rowid lookups of the IN list.
    by_id = " NOT INDEXED" if connection.vendor == "sqlite" else ""
    with connection.cursor() as cursor:
        for start in range(0, len(user_ids), IN_BATCH):
            ids = user_ids[start : start + IN_BATCH]
            if by_id:  # SQLite: a few statement texts (_padded), the last id repeated
                ids = ids + ids[-1:] * (_padded(len(ids)) - len(ids))
            cursor.execute(
                f"""SELECT u.id, u.tag, u.enable_tracer, u.checkpoint_folder, u.uid_validity,
                    u.last_uid, p.code, pa.id, pa.new_mail_webhook, pa.include_rfc822,
                    pa.include_parsed, u.filters, c.filters, pa.message_updated_webhook,
                    pa.message_deleted_webhook
                FROM {USERS} u{by_id}
                JOIN {Connection._meta.db_table} c ON c.id = u.connection_id
                JOIN {ImapProvider._meta.db_table} p ON p.id = c.provider_id
                JOIN {Partner._meta.db_table} pa ON pa.id = c.partner_id
                WHERE u.id IN ({marks(ids)}) AND u.owner_node = %s
                    AND u.archived = %s AND u.connected_at IS NOT NULL
                ORDER BY u.id{lock}""",
                [*ids, node_id, False],
            )
            for row in cursor.fetchall():
                owners[row[0]] = Owner(
                    id=row[0],
                    tag=row[1],
                    enable_tracer=bool(row[2]),
                    checkpoint_folder=row[3],
                    uid_validity=row[4],
                    last_uid=row[5],
                    provider_code=row[6],
                    partner_id=row[7],
                    has_url=bool(row[8]),
                    include_rfc822=bool(row[9]),
                    include_parsed=bool(row[10]),
                    filters=effective(row[11], row[12]),
                    updated_url=bool(row[13]),
                    deleted_url=bool(row[14]),
                )
    return owners


def _prefetch(prepared: list[Prepared], owners: dict[int, Owner]) -> Recorded:
    """What the planner needs to know, with one statement per kind for the whole group
    (each a network round trip on PostgreSQL): the UIDs that already have a row, the
    delivered-or-tracer rows sharing a sha1 or an identity with a message of the group,
    and the checkpoints of the secondary folders the group writes to."""
    recorded = Recorded()
    with connection.cursor() as cursor:
        _recorded_rows(cursor, prepared, recorded)
        _dedup_rows(cursor, prepared, recorded)
        folders = {
            (item.job.user_id, item.job.folder)
            for item in prepared
            if item.digests and item.job.folder != owners[item.job.user_id].checkpoint_folder
        }
        terms = ["(user_id = %s AND folder = %s)"] * len(folders)
        params = [list(key) for key in sorted(folders)]
        for sql_terms, sql_params in _statements(terms, params):
            cursor.execute(
                f"SELECT user_id, folder, uid_validity, last_uid FROM {FOLDERS} WHERE {sql_terms}",
                sql_params,
            )
            for user_id, folder, uid_validity, last_uid in cursor.fetchall():
                recorded.folders[(user_id, folder)] = (uid_validity, last_uid)
    return recorded


def _recorded_rows(cursor, prepared: list[Prepared], recorded: Recorded) -> None:
    """The rows the group's UIDs already have. Rows written before folders were recorded
    have folder "" and belong to the primary folder: they are found under "".

    The folder and "" are two terms, not ``folder IN (%s, '')``: with the IN, SQLite ran an
    OR of 14 jobs' terms in 381 us on 20,000 rows, against 13 us as two plain probes each."""
    terms, params = [], []
    for item in prepared:
        job = item.job
        uids = [d.message.uid for d in item.digests]
        for start in range(0, len(uids), IN_BATCH):
            part = uids[start : start + IN_BATCH]
            uid_in = f" AND uid IN ({marks(part)}))"
            terms.append("(user_id = %s AND folder = %s AND uid_validity = %s" + uid_in)
            params.append([job.user_id, job.folder, job.uid_validity, *part])
            terms.append("(user_id = %s AND folder = '' AND uid_validity = %s" + uid_in)
            params.append([job.user_id, job.uid_validity, *part])
    for sql_terms, sql_params in _statements(terms, params):
        cursor.execute(
            "SELECT user_id, folder, uid_validity, uid, skipped_reason "
            f"FROM {MAILLOG} WHERE {sql_terms}",
            sql_params,
        )
        for user_id, folder, uid_validity, uid, reason in cursor.fetchall():
            recorded.rows[(user_id, folder, uid_validity, uid)] = reason


def _dedup_rows(cursor, prepared: list[Prepared], recorded: Recorded) -> None:
    """The sha1s and identities of delivered or tracer rows the group's messages share.
    Kept only if delivered or tracer (DEDUP_AGAINST), filtered here so that each OR term of
    the query stays a plain probe of its (user, sha1) or (user, identity) index."""
    wanted: dict[int, tuple[set[str], set[str]]] = {}
    for item in prepared:
        sha1s, identities = wanted.setdefault(item.job.user_id, (set(), set()))
        for d in item.digests:
            if d.sha1:
                sha1s.add(d.sha1)
                identities.add(d.identity)
    terms, params = [], []
    for user_id, (sha1s, identities) in wanted.items():
        for column, values in (("sha1", sorted(sha1s)), ("identity", sorted(identities))):
            for start in range(0, len(values), IN_BATCH):
                part = values[start : start + IN_BATCH]
                terms.append(f"(user_id = %s AND {column} IN ({marks(part)}))")
                params.append([user_id, *part])
    for sql_terms, sql_params in _statements(terms, params):
        cursor.execute(
            f"SELECT user_id, sha1, identity, skipped_reason FROM {MAILLOG} WHERE {sql_terms}",
            sql_params,
        )
        for user_id, sha1, identity, reason in cursor.fetchall():
            if reason in DEDUP_AGAINST:
                recorded.sha1s.setdefault(user_id, set()).add(sha1)
                recorded.identities.setdefault(user_id, set()).add(identity)
    for known in (*recorded.sha1s.values(), *recorded.identities.values()):
        known.discard("")


def _statements(terms: list[str], params: list[list]) -> Iterator[tuple[str, list]]:
    """OR-ed ``terms`` in statements of at most MAX_PARAMETERS parameters each; on SQLite
    with few texts (_padded_terms)."""
    start = 0
    pad = connection.vendor == "sqlite"
    while start < len(terms):
        end, count = start, 0
        while end < len(terms) and (end == start or count + len(params[end]) <= MAX_PARAMETERS):
            count += len(params[end])
            end += 1
        part_terms, part_params = terms[start:end], params[start:end]
        if pad:
            part_terms, part_params = _padded_terms(part_terms, part_params)
        yield " OR ".join(part_terms), [p for group in part_params for p in group]
        start = end


def _padded_terms(terms: list[str], params: list[list]) -> tuple[list[str], list[list]]:
    """The same OR (the same rows) with few texts: the terms ordered by their text, each
    text's count padded (_padded) by repeating its last term; as given if that would pass
    MAX_PARAMETERS."""
    by_text: dict[str, list[list]] = {}
    for term, values in zip(terms, params, strict=True):
        by_text.setdefault(term, []).append(values)
    out_terms: list[str] = []
    out_params: list[list] = []
    for term in sorted(by_text):
        values = by_text[term]
        values = values + values[-1:] * (_padded(len(values)) - len(values))
        out_terms += [term] * len(values)
        out_params += values
    if sum(map(len, out_params)) > MAX_PARAMETERS:
        return terms, params
    return out_terms, out_params


def _padded(count: int) -> int:
    """How many terms (or ids) a statement of ``count`` gets on SQLite: up to 4 as they
    are, then up to the next multiple of 4 (of 16 past 32), the last one repeated (an OR
    term or an IN value twice finds the same rows). The statement's text then depends on
    few lengths, not on every group's size: the sqlite3 module keeps 128 compiled
    statements per connection, and one compiled again costs 0.1-0.3 ms for a group of 15
    (12 us to run), which the group commit paid for ~20-40 % of its prefetch statements
    in runs whose group sizes varied (bench.engine at load 7)."""
    if count <= 4:
        return count
    step = 4 if count <= 32 else 16
    return -(-count // step) * step


def _execute(plan: Plan) -> None:
    """The plan's statements, in its order."""
    now = timezone.now()
    db_now = connection.ops.adapt_datetimefield_value(now)
    date = _adapter_of_group()
    with connection.cursor() as cursor:
        if plan.replaced:
            cursor.executemany(
                REPLACE_SQL, [(r.user_id, r.folder, r.uid_validity, r.uid) for r in plan.replaced]
            )
        if plan.log_rows:
            _insert_rows(
                cursor,
                MAILLOG,
                MAILLOG_COLUMNS,
                [
                    (
                        r.user_id,
                        r.message_id,
                        r.sha1,
                        r.identity,
                        r.uid,
                        r.uid_validity,
                        r.folder,
                        r.subject,
                        date(r.internal_date) if r.internal_date else None,
                        r.size,
                        r.skipped_reason,
                        r.detail,
                        db_now,
                    )
                    for r in plan.log_rows
                ],
            )
        if plan.deliveries:
            event_ids = _new_event_ids(len(plan.deliveries))
            _insert_deliveries(cursor, *_delivery_rows(plan.deliveries, db_now, event_ids))
            _track_delivered(cursor, plan.deliveries, event_ids, db_now)
        if plan.tracers:
            cursor.executemany(TRACER_SQL, [(db_now, tracer) for tracer in plan.tracers])
        inserts = [m for m in plan.folder_moves if m.insert]
        if inserts:
            cursor.executemany(
                FOLDER_INSERT_SQL,
                [
                    (m.user_id, m.folder, m.uid_validity, m.last_uid, _date(m), db_now)
                    for m in inserts
                ],
            )
        updates = [m for m in plan.folder_moves if not m.insert]
        if updates:
            cursor.executemany(
                FOLDER_UPDATE_SQL,
                [
                    (m.uid_validity, m.last_uid, db_now, _date(m), m.user_id, m.folder)
                    for m in updates
                ],
            )
        if plan.checkpoints:
            _update_checkpoints(
                cursor,
                [
                    (
                        c.uid_validity,
                        c.last_uid,
                        date(c.last_internal_date) if c.last_internal_date else None,
                        db_now if c.mail_arrived else None,
                        c.user_id,
                    )
                    for c in plan.checkpoints
                ],
            )
        if plan.backfills:
            cursor.executemany(
                BACKFILL_SQL,
                [
                    (step.position, step.count, user_id, date(step.requested_at))
                    for user_id, step in plan.backfills
                ],
            )


def _adapter_of_group():
    """The backend's datetime adapter, each value adapted once per group: the mail of a
    group arrived within milliseconds and shares its INTERNALDATE's second (the parsed
    datetime is one object, imap/responses.py), and each MailLog row and checkpoint adapted
    it again (~3 us a value on SQLite: Django's settings lookups, make_naive, str)."""
    adapt = connection.ops.adapt_datetimefield_value
    adapted: dict = {}

    def date(value):
        # Equal aware datetimes (one instant, whatever the offset) adapt to the same value.
        try:
            return adapted[value]
        except KeyError:
            result = adapted[value] = adapt(value)
            return result

    return date


def _date(move) -> object:
    if move.last_internal_date is None:
        return None
    return connection.ops.adapt_datetimefield_value(move.last_internal_date)


def _update_checkpoints(cursor, rows: list[tuple]) -> None:
    """The users' checkpoints (CHECKPOINT_SQL's parameters, the user id last). PostgreSQL:
    one UPDATE ... FROM (VALUES ...) per MAX_PARAMETERS when every user is there once (an
    UPDATE joined twice to a row would apply only one of them), not one statement each."""
    ids = [row[-1] for row in rows]
    if connection.vendor != "postgresql" or len(set(ids)) != len(ids):
        cursor.executemany(CHECKPOINT_SQL, rows)
        return
    per_statement = MAX_PARAMETERS // 5
    for start in range(0, len(rows), per_statement):
        part = rows[start : start + per_statement]
        values = ", ".join([CHECKPOINT_ROW] * len(part))
        cursor.execute(CHECKPOINT_MANY_SQL.format(values=values), [v for row in part for v in row])


def _insert_rows(
    cursor, table: str, columns: tuple[str, ...], rows: list, suffix: str = ""
) -> None:
    """INSERT ``rows``. PostgreSQL: multi-row VALUES, up to MAX_PARAMETERS per statement,
    since each statement of an executemany is parsed, planned and run by the server on its
    own (Django's client-side binding): one per row cost the server more than the rows'
    own work (pgcpu notes). SQLite: executemany, one prepared statement for every row."""
    sql = _insert_sql(table, columns)
    if connection.vendor != "postgresql":
        cursor.executemany(sql + suffix, rows)
        return
    row_sql = "(" + marks(list(columns)) + ")"
    per_statement = max(1, MAX_PARAMETERS // len(columns))
    for start in range(0, len(rows), per_statement):
        part = rows[start : start + per_statement]
        values = ", ".join([row_sql] * len(part))
        cursor.execute(
            f"{sql.rsplit(' VALUES ', 1)[0]} VALUES {values}{suffix}",
            [value for row in part for value in row],
        )


def _insert_deliveries(cursor, rows: list[tuple], payloads: list) -> None:
    """Delivery ``rows`` (DELIVERY_COLUMNS), then ``payloads[i]`` as the DeliveryPayload of
    ``rows[i]``, keyed by the ids the INSERT gave. PostgreSQL: one statement per
    MAX_PARAMETERS, the Delivery INSERT in a WITH whose RETURNING gives each id with its
    event id, joined to the payloads by event id (RETURNING's order is not promised; one
    statement, nothing fetched). SQLite: one executemany; the transaction holds the write
    lock and the primary key is AUTOINCREMENT, so the rows got the ids up to
    last_insert_rowid(), in order, and a second executemany inserts the payloads."""
    if connection.vendor == "postgresql":
        per_statement = MAX_PARAMETERS // (len(DELIVERY_COLUMNS) + 2)
        for start in range(0, len(rows), per_statement):
            part = rows[start : start + per_statement]
            cursor.execute(
                _payload_cte_sql(len(part)),
                [value for row in part for value in row]
                + [
                    value
                    for row, payload in zip(
                        part, payloads[start : start + per_statement], strict=True
                    )
                    for value in (row[0], payload)
                ],
            )
        return
    cursor.executemany(_insert_sql(Delivery._meta.db_table, DELIVERY_COLUMNS), rows)
    cursor.execute("SELECT last_insert_rowid()")
    (last,) = cursor.fetchone()
    ids = range(last - len(rows) + 1, last + 1)
    cursor.executemany(
        _insert_sql(DeliveryPayload._meta.db_table, PAYLOAD_COLUMNS),
        list(zip(ids, payloads, strict=True)),
    )


@functools.cache
def _payload_cte_sql(count: int) -> str:
    """PostgreSQL: ``count`` Delivery rows and their payloads in one statement."""
    insert = _insert_sql_of("postgresql", Delivery._meta.db_table, DELIVERY_COLUMNS)
    head = insert.rsplit(" VALUES ", 1)[0]
    row = "(" + marks(list(DELIVERY_COLUMNS)) + ")"
    pairs = ", ".join(["(%s::uuid, %s::jsonb)"] * count)
    return (
        f"WITH d AS ({head} VALUES {', '.join([row] * count)} RETURNING id, event_id) "
        f"INSERT INTO {DeliveryPayload._meta.db_table} (delivery_id, payload) "
        f"SELECT d.id, v.payload FROM d JOIN (VALUES {pairs}) AS v(event_id, payload) "
        "USING (event_id)"
    )


def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    return _insert_sql_of(connection.vendor, table, columns)


@functools.cache
def _insert_sql_of(vendor: str, table: str, columns: tuple[str, ...]) -> str:
    """The INSERT statement, made once per backend (quoting every column per group showed
    in the profile)."""
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({marks(list(columns))})"


def _new_event_ids(count: int) -> list[uuid.UUID]:
    """``count`` event ids that sort by time (eventids.time_ordered: the unique event_id
    index is written at its right edge, not on a random page per row); one urandom read
    for the group."""
    return eventids.time_ordered(time.time_ns() // 1_000_000, os.urandom(10 * count))


def _uuid_value(value: uuid.UUID) -> object:
    """What a UUIDField's get_db_prep_save() gives: the UUID, or its hex where the backend
    has no uuid type."""
    return value if connection.features.has_native_uuid_field else value.hex


def _delivery_rows(
    rows: list[DeliveryRow], db_now, event_ids: list[uuid.UUID]
) -> tuple[list[tuple], list]:
    """The Delivery rows and their payloads, in the same order."""
    # What the fields' get_db_prep_save() give for a dict and a UUID, without their layers
    # per row: the backend's JSON adapter, a UUID or its hex where there is no uuid type.
    adapt_json = connection.ops.adapt_json_value
    encoder = DeliveryPayload._meta.get_field("payload").encoder
    native_uuid = connection.features.has_native_uuid_field
    max_attempts = attempts_per_round()
    kind = str(Delivery.Kind.NEW_MAIL)
    deliveries = []
    payloads = []
    for row, event_id in zip(rows, event_ids, strict=True):
        payloads.append(adapt_json(_payload(row), encoder))
        deliveries.append(
            _delivery_row(
                event_id if native_uuid else event_id.hex,
                kind,
                row.owner.partner_id,
                row.owner.id,
                row.digest.message_id,
                row.digest.identity,
                row.status,
                row.last_error,
                row.backfill,
                db_now,
                max_attempts,
            )
        )
    return deliveries, payloads


def _delivery_row(
    event_id,
    kind,
    partner_id,
    user_id,
    message_id,
    dedup_key,
    status,
    last_error,
    backfill,
    db_now,
    max_attempts,
) -> tuple:
    """One Delivery row in DELIVERY_COLUMNS order, values as the database takes them: new
    and never tried (attempts 0, no lease, no answer yet)."""
    return (
        event_id,
        kind,
        partner_id,
        user_id,
        message_id,
        dedup_key,
        status,
        0,
        max_attempts,
        0,
        db_now,
        "",
        None,
        None,
        last_error,
        db_now,
        None,
        None,
        backfill,
    )


def _payload(row: DeliveryRow) -> dict:
    """The new_mail webhook body (delivery/payloads.py): the message, or its header alone
    when it was too big to fetch; with the partner's content options."""
    d, owner = row.digest, row.owner
    message = d.message
    common = {
        "provider_code": owner.provider_code,
        "user_tag": owner.tag,
        "envelope": d.env,
        "uid": message.uid,
        "uid_validity": row.uid_validity,
        "folder": row.folder,
        "internal_date": message.internal_date.isoformat() if message.internal_date else None,
    }
    if row.truncated:
        payload = truncated_mail_payload(header=d.content, size=d.size, **common)
    else:
        payload = with_content_options(
            new_mail_payload(raw=message.raw, size=d.size, **common),
            message.raw,
            include_rfc822=owner.include_rfc822,
            include_parsed=owner.include_parsed,
            max_chars=settings.WEBHOOK_PARSED_MAX_CHARS,
        )
    if row.backfill:
        payload["backfill"] = True  # existing mail of a chosen window (design.md 4.12)
    return payload


# --- change events (design.md 4.14) ----------------------------------------------------
# Plain SQL like the persist path above (the ORM cost ~3 ms of CPU per look here).


@dataclass
class ChangeJob:
    """One look at a folder's changes: flags seen (``seen``), UIDs confirmed gone
    (``gone``) or reported by VANISHED (``vanished``), and where the folder stands now."""

    user_id: int
    node_id: str
    folder: str
    uid_validity: int
    seen: list[Observed]
    gone: list[int] = field(default_factory=list)
    vanished: list[Vanished] = field(default_factory=list)
    modseq: int | None = None  # the next CHANGEDSINCE (None: leave it)
    resynced: bool = False  # a bounded resync ran


@dataclass
class _State:
    """A MessageState row as read and as it will be written."""

    id: int
    uid: int
    message_id: str
    new_mail_event_id: object
    flags: str
    labels: str | None
    modseq: int | None
    changes: int
    gone: bool
    dirty: bool = False


VANISHED_EXPAND = 5000  # UIDs of a VANISHED report looked up one by one; more: the folder
STATES = MessageState._meta.db_table
CHANGES = FolderChanges._meta.db_table
STATE_COLUMNS = (
    "user_id",
    "folder",
    "uid_validity",
    "uid",
    "message_id",
    "new_mail_event_id",
    "flags",
    "labels",
    "modseq",
    "changes",
    "gone",
    "updated_at",
)
STATE_SELECT = (
    "SELECT id, uid, message_id, new_mail_event_id, flags, labels, modseq, changes, gone "
    f"FROM {STATES} WHERE user_id = %s AND folder = %s AND uid_validity = %s"
)
STATE_UPDATE_SQL = (
    f"UPDATE {STATES} SET flags = %s, labels = %s, modseq = %s, changes = %s, gone = %s, "
    "updated_at = %s WHERE id = %s"
)
# Delivered rows (a MailLog row without a skip reason) and the new_mail event that delivered
# each, through the unique (user, dedup_key) of new_mail deliveries.
DELIVERED_SQL = (
    f"SELECT m.uid, m.message_id, d.event_id FROM {MAILLOG} m "
    f"LEFT JOIN {Delivery._meta.db_table} d ON d.user_id = m.user_id "
    "AND d.kind = 'new_mail' AND d.dedup_key = m.identity AND m.identity <> '' "
    "WHERE m.user_id = %s AND m.folder IN (%s, '') AND m.uid_validity = %s "
    "AND m.skipped_reason = '' AND m.uid IN ({uids})"
)


def write_changes(job: ChangeJob) -> int:
    """Record ``job`` in one transaction: first-seen states, the changed states and their
    message_updated / message_deleted deliveries, the folder's modseq. Returns how many
    deliveries were created; raises LeaseLost if this node may not write."""
    with transaction.atomic():
        owner = _fence([job.user_id], job.node_id).get(job.user_id)
        if owner is None:
            raise LeaseLost(job.user_id)
        db_now = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            states = _states(cursor, job)
            tracked = {
                uid: Tracked(uid, s.flags, s.labels, s.changes, s.gone) for uid, s in states.items()
            }
            gone = set(job.gone) | set(changes.in_ranges(tracked, job.vanished))
            found = changes.decide(tracked, job.seen, gone)
            _first_seen(cursor, job, tracked, db_now)
            created = _change_deliveries(cursor, job, owner, states, found, db_now)
            _apply(cursor, job, states, found, db_now)
            if job.modseq is not None or job.resynced:
                _folder_changes(cursor, job, db_now)
    return created


def _states(cursor, job: ChangeJob) -> dict[int, _State]:
    params = [job.user_id, job.folder, job.uid_validity]
    rows = []
    uids = {o.uid for o in job.seen} | set(job.gone)
    if sum(v.size() for v in job.vanished) > VANISHED_EXPAND:
        cursor.execute(STATE_SELECT + " AND gone = %s", [*params, False])
        rows = [r for r in cursor.fetchall() if any(r[1] in v for v in job.vanished)]
    else:
        uids |= {u for v in job.vanished for low, high in v.ranges for u in range(low, high + 1)}
    ordered = sorted(uids)
    for start in range(0, len(ordered), IN_BATCH):
        part = ordered[start : start + IN_BATCH]
        cursor.execute(STATE_SELECT + f" AND uid IN ({marks(part)})", [*params, *part])
        rows.extend(cursor.fetchall())
    return {r[1]: _State(*r[:8], gone=bool(r[8])) for r in rows}


def _track_delivered(cursor, rows: list[DeliveryRow], event_ids: list, db_now) -> None:
    """In the persist transaction: a MessageState per new_mail of a partner with a change
    URL, with the flags (and modseq) fetched with its body and its event id (4.14)."""
    states = [
        (
            row.owner.id,
            row.folder,
            row.uid_validity,
            row.digest.message.uid,
            row.digest.message_id,
            _uuid_value(event_id),
            changes.canonical(row.digest.message.flags),
            None,
            row.digest.message.modseq,
            0,
            False,
            db_now,
        )
        for row, event_id in zip(rows, event_ids, strict=True)
        if row.owner.track_changes and row.digest.message.flags is not None
    ]
    if states:
        _insert_rows(cursor, STATES, STATE_COLUMNS, states, " ON CONFLICT DO NOTHING")


def _first_seen(cursor, job: ChangeJob, tracked: dict[int, Tracked], db_now) -> None:
    """States for delivered messages seen for the first time (no event), with the
    new_mail event id that delivered them."""
    untracked = sorted({o.uid for o in job.seen if o.uid not in tracked})
    delivered: dict[int, tuple[str, object]] = {}
    for start in range(0, len(untracked), IN_BATCH):
        part = untracked[start : start + IN_BATCH]
        cursor.execute(
            DELIVERED_SQL.format(uids=marks(part)),
            [job.user_id, job.folder, job.uid_validity, *part],
        )
        for uid, message_id, event_id in cursor.fetchall():
            delivered[uid] = (message_id, event_id)
    fresh = changes.first_seen(tracked, job.seen, delivered)
    if fresh:
        cursor.executemany(
            _insert_sql(STATES, STATE_COLUMNS),
            [
                (
                    job.user_id,
                    job.folder,
                    job.uid_validity,
                    o.uid,
                    delivered[o.uid][0],
                    delivered[o.uid][1],  # as stored in Delivery: the same column type
                    o.flags,
                    o.labels,
                    o.modseq,
                    0,
                    False,
                    db_now,
                )
                for o in fresh
            ],
        )


def _event_text(value) -> str | None:
    return None if value is None else str(uuid.UUID(str(value)))


CHANGE_PAYLOAD_SQL = (
    f"INSERT INTO {DeliveryPayload._meta.db_table} (delivery_id, payload) "
    f"SELECT id, %s FROM {Delivery._meta.db_table} WHERE event_id = %s ON CONFLICT DO NOTHING"
)


def _change_deliveries(cursor, job: ChangeJob, owner: Owner, states, found, db_now) -> int:
    """A Delivery per change whose kind has a URL; the event id is the change's own
    (sync/changes.py event_id), so a replay cannot add a second one."""
    if not found:
        return 0
    # The fence read the partner's change URLs (Owner.updated_url / deleted_url).
    wanted = {changes.UPDATED: owner.updated_url, changes.DELETED: owner.deleted_url}
    adapt_json = connection.ops.adapt_json_value
    encoder = DeliveryPayload._meta.get_field("payload").encoder
    max_attempts = attempts_per_round()
    rows = []
    payloads = []
    for change in found:
        if not wanted[change.kind]:
            continue
        state = states[change.uid]
        payload = message_change_payload(
            kind=change.kind,
            provider_code=owner.provider_code,
            user_tag=owner.tag,
            folder=job.folder,
            uid=change.uid,
            uid_validity=job.uid_validity,
            message_id=state.message_id,
            new_mail_event_id=_event_text(state.new_mail_event_id),
            old_flags=changes.split(change.old_flags),
            new_flags=changes.split(change.new_flags),
            old_labels=None if change.old_labels is None else changes.split(change.old_labels),
            new_labels=None if change.new_labels is None else changes.split(change.new_labels),
        )
        event_id = changes.event_id(
            job.user_id, job.folder, job.uid_validity, change.uid, change.kind, change.number
        )
        rows.append(
            _delivery_row(
                _uuid_value(event_id),
                change.kind,
                owner.partner_id,
                job.user_id,
                state.message_id,
                "",
                str(Delivery.Status.PENDING),
                "",
                False,
                db_now,
                max_attempts,
            )
        )
        payloads.append((adapt_json(payload, encoder), rows[-1][0]))
    if rows:
        sql = _insert_sql(Delivery._meta.db_table, DELIVERY_COLUMNS) + " ON CONFLICT DO NOTHING"
        cursor.executemany(sql, rows)
        # By event id: a change delivered before (a replayed batch) keeps its row and payload.
        cursor.executemany(CHANGE_PAYLOAD_SQL, payloads)
    return len(rows)


def _apply(cursor, job: ChangeJob, states: dict[int, _State], found, db_now) -> None:
    """The states' new flags, labels, update counts, gone marks and modseqs."""
    for change in found:
        state = states[change.uid]
        if change.kind == changes.DELETED:
            state.gone = True
        else:
            state.flags, state.labels, state.changes = (
                change.new_flags,
                change.new_labels,
                change.number,
            )
        state.dirty = True
    for o in job.seen:
        state = states.get(o.uid)
        if state is None:
            continue
        if o.modseq is not None and o.modseq != state.modseq:
            state.modseq, state.dirty = o.modseq, True
        if o.labels is not None and state.labels is None and not state.gone:
            state.labels, state.dirty = o.labels, True  # recorded, not a change
    dirty = [s for s in states.values() if s.dirty]
    if dirty:
        cursor.executemany(
            STATE_UPDATE_SQL,
            [(s.flags, s.labels, s.modseq, s.changes, s.gone, db_now, s.id) for s in dirty],
        )


def _folder_changes(cursor, job: ChangeJob, db_now) -> None:
    """The folder's modseq (None: as it was) and, after a resync, its time."""
    resync_at = db_now if job.resynced else None
    cursor.execute(
        f"UPDATE {CHANGES} SET uid_validity = %s, modseq = COALESCE(%s, modseq), "
        "resync_at = COALESCE(%s, resync_at) WHERE user_id = %s AND folder = %s",
        [job.uid_validity, job.modseq, resync_at, job.user_id, job.folder],
    )
    if cursor.rowcount == 0:
        cursor.execute(
            f"INSERT INTO {CHANGES} (user_id, folder, uid_validity, modseq, resync_at) "
            "VALUES (%s, %s, %s, %s, %s)",
            [job.user_id, job.folder, job.uid_validity, job.modseq, resync_at],
        )
