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
   positions are updated.

It runs in the caller's transaction. The group commit (engine/persister.py) runs it for
the whole group in a savepoint and, if a statement fails, once per job, each in a
savepoint of its own, so one bad batch fails alone. ``persist_batch`` runs one job in a
transaction of its own.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from superimap.delivery.content import with_content_options
from superimap.delivery.models import Delivery, attempts_per_round
from superimap.delivery.payloads import new_mail_payload, truncated_mail_payload
from superimap.engine.store import LeaseLost
from superimap.mailboxes.models import FolderCheckpoint, MailboxUser, MailLog
from superimap.partners.models import Connection, ImapProvider, Partner
from superimap.sync import persist
from superimap.sync.backfill import BackfillStep
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
    "payload",
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
    with connection.cursor() as cursor:
        for start in range(0, len(user_ids), IN_BATCH):
            ids = user_ids[start : start + IN_BATCH]
            cursor.execute(
                f"""SELECT u.id, u.tag, u.enable_tracer, u.checkpoint_folder, u.uid_validity,
                    u.last_uid, p.code, pa.id, pa.new_mail_webhook, pa.include_rfc822,
                    pa.include_parsed, u.filters, c.filters
                FROM {USERS} u
                JOIN {Connection._meta.db_table} c ON c.id = u.connection_id
                JOIN {ImapProvider._meta.db_table} p ON p.id = c.provider_id
                JOIN {Partner._meta.db_table} pa ON pa.id = c.partner_id
                WHERE u.id IN ({_in(ids)}) AND u.owner_node = %s
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
                )
    return owners


def _in(values: list) -> str:
    return ", ".join(["%s"] * len(values))


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
    have folder "" and belong to the primary folder: they are found under ""."""
    terms, params = [], []
    for item in prepared:
        job = item.job
        uids = [d.message.uid for d in item.digests]
        for start in range(0, len(uids), IN_BATCH):
            part = uids[start : start + IN_BATCH]
            terms.append(
                "(user_id = %s AND folder IN (%s, '') AND uid_validity = %s"
                f" AND uid IN ({_in(part)}))"
            )
            params.append([job.user_id, job.folder, job.uid_validity, *part])
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
                terms.append(f"(user_id = %s AND {column} IN ({_in(part)}))")
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
    """OR-ed ``terms`` in statements of at most MAX_PARAMETERS parameters each."""
    start = 0
    while start < len(terms):
        end, count = start, 0
        while end < len(terms) and (end == start or count + len(params[end]) <= MAX_PARAMETERS):
            count += len(params[end])
            end += 1
        yield " OR ".join(terms[start:end]), [p for group in params[start:end] for p in group]
        start = end


def _execute(plan: Plan) -> None:
    """The plan's statements, in its order."""
    now = timezone.now()
    db_now = connection.ops.adapt_datetimefield_value(now)
    date = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        if plan.replaced:
            cursor.executemany(
                REPLACE_SQL, [(r.user_id, r.folder, r.uid_validity, r.uid) for r in plan.replaced]
            )
        if plan.log_rows:
            cursor.executemany(
                _insert_sql(MAILLOG, MAILLOG_COLUMNS),
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
            cursor.executemany(
                _insert_sql(Delivery._meta.db_table, DELIVERY_COLUMNS),
                _delivery_rows(plan.deliveries, db_now),
            )
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
            cursor.executemany(
                CHECKPOINT_SQL,
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


def _date(move) -> object:
    if move.last_internal_date is None:
        return None
    return connection.ops.adapt_datetimefield_value(move.last_internal_date)


def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    return _insert_sql_of(connection.vendor, table, columns)


@functools.cache
def _insert_sql_of(vendor: str, table: str, columns: tuple[str, ...]) -> str:
    """The INSERT statement, made once per backend (quoting every column per group showed
    in the profile)."""
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({_in(list(columns))})"


def _delivery_rows(rows: list[DeliveryRow], db_now) -> Iterator[tuple]:
    # What the fields' get_db_prep_save() give for a dict and a UUID, without their layers
    # per row: the backend's JSON adapter, a UUID or its hex where there is no uuid type.
    adapt_json = connection.ops.adapt_json_value
    encoder = Delivery._meta.get_field("payload").encoder
    native_uuid = connection.features.has_native_uuid_field
    max_attempts = attempts_per_round()
    kind = str(Delivery.Kind.NEW_MAIL)
    # uuid.uuid4() is os.urandom(16) per id: one read for the group instead.
    entropy = os.urandom(16 * len(rows))
    for index, row in enumerate(rows):
        event_id = uuid.UUID(bytes=entropy[16 * index : 16 * index + 16], version=4)
        yield (
            event_id if native_uuid else event_id.hex,
            kind,
            row.owner.partner_id,
            row.owner.id,
            row.digest.message_id,
            row.digest.identity,
            adapt_json(_payload(row), encoder),
            row.status,
            0,
            max_attempts,
            0,
            db_now,
            "",
            None,
            None,
            row.last_error,
            db_now,
            None,
            None,
            row.backfill,
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
