"""The engine's hot write path: a group of persist jobs in a few set-based statements.

``persist_jobs(jobs)`` does what ``store.persist_batch`` does for each job (same rows, same
results, same rules: design.md 4.3), but for the whole group at once and in plain SQL that
runs on SQLite and PostgreSQL, because the ORM cost ~4 ms of CPU per message here (query
compilation, model instances), more than everything else the engine does for a message:

1. one fence query locks (PostgreSQL: FOR UPDATE, in user id order; SQLite's IMMEDIATE
   transaction holds the write lock already) every user still owned by this node and
   watchable, joined with what the payload needs (provider code, partner options); a job
   whose user is missing gets ``LeaseLost``, exactly as persist_batch raises it;
2. per job, one query for the UIDs that already have a row (a re-fetch after a crash) and
   one for the dedup candidates (same sha1 or same identity, delivered or tracer); rows of
   earlier jobs of the group are looked up in memory;
3. every MailLog row in one executemany, every Delivery row in another;
4. one checkpoint UPDATE per job.

Jobs that sweep go through ``store.persist_batch`` (in a savepoint each, before the
others: a sweep replaces before_baseline rows, which is rare and not worth a second
implementation). The caller (engine/persister.py) runs this inside a savepoint and, if it
raises, runs every job through ``store.persist_batch`` one by one instead, so one bad
batch still fails alone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from superimap.delivery.content import with_content_options
from superimap.delivery.models import Delivery, attempts_per_round
from superimap.delivery.payloads import new_mail_payload, truncated_mail_payload
from superimap.engine import store
from superimap.engine.envelope import envelope, message_id_or_digest, parse_headers, sha1_of
from superimap.mailboxes.models import FolderCheckpoint, MailboxUser, MailLog
from superimap.partners.models import Connection, ImapProvider, Partner
from superimap.tracers.models import TracerLog

Reason = MailLog.Reason
DEDUP_AGAINST = tuple(str(reason) for reason in store.DEDUP_AGAINST)
IN_BATCH = 400  # values per IN (...): far under every backend's parameter limit
MAX_PARAMETERS = 2000  # per statement of OR-ed terms (SQLite allows 32,766, PostgreSQL 65,535)

# Every concrete column of the two tables, in INSERT order (tests/engine/test_groupwrite.py
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
)


# One job's checkpoint: a None leaves the column as it is (a secondary folder's batch only
# moves last_email_at here; its checkpoint is a FolderCheckpoint row).
CHECKPOINT_SQL = (
    f"UPDATE {MailboxUser._meta.db_table} SET uid_validity = COALESCE(%s, uid_validity), "
    "last_uid = COALESCE(%s, last_uid), last_internal_date = COALESCE(%s, last_internal_date), "
    "last_email_at = COALESCE(%s, last_email_at) WHERE id = %s"
)


def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"


@dataclass
class _User:
    """The fenced user row and what its payloads need."""

    id: int
    tag: str
    enable_tracer: bool
    checkpoint_folder: str
    uid_validity: int | None
    last_uid: int | None
    provider_code: str
    partner_id: int
    has_url: bool
    include_rfc822: bool
    include_parsed: bool


class _Plan:
    """The rows the group writes, and what earlier jobs of the group already decided."""

    def __init__(self) -> None:
        self.now = timezone.now()
        self.maillog: list[tuple] = []
        self.deliveries: list[tuple] = []
        self.recorded: set[tuple[int, str, int, int]] = set()  # (user, folder, uidv, uid)
        self.sha1s: dict[int, set[str]] = {}  # user -> delivered or tracer sha1s
        self.identities: dict[int, set[str]] = {}
        self.checkpoints: list[tuple] = []  # CHECKPOINT_SQL parameters, in job order
        self.digests: dict[tuple[int, str, int, int], _Digest] = {}  # by (user, folder, ...)
        self.db_now = connection.ops.adapt_datetimefield_value(self.now)
        json_field = Delivery._meta.get_field("payload")
        self.prep_payload = lambda payload: json_field.get_db_prep_save(payload, connection)
        uuid_field = Delivery._meta.get_field("event_id")
        self.prep_uuid = lambda value: uuid_field.get_db_prep_save(value, connection)
        self.max_attempts = attempts_per_round()


def persist_jobs(jobs: list[tuple]) -> list[store.PersistResult | Exception]:
    """Each job's PersistResult (or LeaseLost, or the sweep's exception), in job order.
    Raises if any statement fails: the caller then runs the jobs one by one."""
    outcomes: dict[int, store.PersistResult | Exception] = {}
    order = sorted(range(len(jobs)), key=lambda i: jobs[i][0])
    for i in order:  # sweeps first, each in its own savepoint, as persist_batch alone
        if jobs[i][5]:
            try:
                with transaction.atomic():
                    outcomes[i] = store.persist_batch(*jobs[i])
            except Exception as exc:  # noqa: BLE001 - handed to the session it belongs to
                outcomes[i] = exc
    rest = [i for i in order if i not in outcomes]
    if rest:
        users: dict[int, _User] = {}
        for node_id in sorted({jobs[i][1] for i in rest}):
            ids = sorted({jobs[i][0] for i in rest if jobs[i][1] == node_id})
            users.update(_fence(ids, node_id))
        plan = _Plan()
        live = []
        for i in rest:
            if jobs[i][0] in users:
                live.append(i)
            else:
                outcomes[i] = store.LeaseLost(jobs[i][0])
        _prefetch(plan, [jobs[i] for i in live])
        for i in live:
            user_id, _, uid_validity, folder, messages, _ = jobs[i]
            outcomes[i] = _plan_job(plan, users[user_id], uid_validity, folder, messages)
        with connection.cursor() as cursor:
            if plan.maillog:
                cursor.executemany(
                    _insert_sql(MailLog._meta.db_table, MAILLOG_COLUMNS), plan.maillog
                )
            if plan.deliveries:
                cursor.executemany(
                    _insert_sql(Delivery._meta.db_table, DELIVERY_COLUMNS), plan.deliveries
                )
            if plan.checkpoints:
                cursor.executemany(CHECKPOINT_SQL, plan.checkpoints)
    return [outcomes[i] for i in range(len(jobs))]


def _fence(user_ids: list[int], node_id: str) -> dict[int, _User]:
    """Lock and read the users of ``user_ids`` this node still owns and may watch."""
    users: dict[int, _User] = {}
    lock = " FOR UPDATE OF u" if connection.features.has_select_for_update_of else ""
    with connection.cursor() as cursor:
        for start in range(0, len(user_ids), IN_BATCH):
            ids = user_ids[start : start + IN_BATCH]
            cursor.execute(
                f"""SELECT u.id, u.tag, u.enable_tracer, u.checkpoint_folder, u.uid_validity,
                    u.last_uid, p.code, pa.id, pa.new_mail_webhook, pa.include_rfc822,
                    pa.include_parsed
                FROM {MailboxUser._meta.db_table} u
                JOIN {Connection._meta.db_table} c ON c.id = u.connection_id
                JOIN {ImapProvider._meta.db_table} p ON p.id = c.provider_id
                JOIN {Partner._meta.db_table} pa ON pa.id = c.partner_id
                WHERE u.id IN ({", ".join(["%s"] * len(ids))}) AND u.owner_node = %s
                    AND u.archived = %s AND u.connected_at IS NOT NULL
                ORDER BY u.id{lock}""",
                [*ids, node_id, False],
            )
            for row in cursor.fetchall():
                users[row[0]] = _User(
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
                )
    return users


@dataclass
class _Digest:
    """One fetched message as the rows need it."""

    message: store.FetchedMessage
    content: bytes | None
    env: dict
    sha1: str = ""
    identity: str = ""
    message_id: str = ""
    size: int = 0


def _digest(message: store.FetchedMessage) -> _Digest:
    content = message.raw if message.raw is not None else message.header
    if message.skip or content is None:
        env = envelope(parse_headers(content)) if content is not None else {}
        return _Digest(message, None, env)
    sha1 = sha1_of(content)
    env = envelope(parse_headers(content))
    message_id = message_id_or_digest(env, sha1)
    size = message.size or len(content)
    identity = store.identity_of(message_id, size, env.get("date"))
    return _Digest(message, content, env, sha1, identity, message_id, size)


def _plan_job(
    plan: _Plan, user: _User, uid_validity: int, folder: str, messages: list
) -> store.PersistResult:
    result = store.PersistResult()
    if not messages:
        return result
    sha1s = plan.sha1s.setdefault(user.id, set())
    identities = plan.identities.setdefault(user.id, set())
    for message in sorted(messages, key=lambda m: m.uid):
        key = (user.id, folder, uid_validity, message.uid)
        if key in plan.recorded or (user.id, "", uid_validity, message.uid) in plan.recorded:
            continue  # a row exists (a re-fetch after a crash): left alone
        digest = plan.digests[key]  # every message was digested by _prefetch
        plan.recorded.add(key)
        if digest.content is None:
            reason = message.skip or Reason.UNFETCHABLE
            _skip(plan, user, uid_validity, folder, digest, reason, result)
            continue
        if digest.sha1 in sha1s or digest.identity in identities:
            result.duplicates += 1
            _skip(plan, user, uid_validity, folder, digest, Reason.DUPLICATE, result)
            continue
        sha1s.add(digest.sha1)
        identities.add(digest.identity)
        tracer = store.TRACER_SUBJECT.match(digest.env.get("subject") or "")
        if tracer and user.enable_tracer:
            TracerLog.objects.filter(tracer_uid=tracer.group(1), detected_at__isnull=True).update(
                detected_at=plan.now
            )
            result.tracers += 1
            _skip(plan, user, uid_validity, folder, digest, Reason.TRACER, result)
            continue
        _log_row(plan, user, uid_validity, folder, digest, "")
        _delivery_row(plan, user, uid_validity, folder, digest, result)
        result.new += 1
        if (pushed := digest.message.pushed_at()) is not None:
            result.pushed_at.append(pushed)
    _move_checkpoint(plan, user, uid_validity, folder, messages, bool(result.new))
    return result


def _in(values: list) -> str:
    return ", ".join(["%s"] * len(values))


def _prefetch(plan: _Plan, jobs: list[tuple]) -> None:
    """Before any job is planned, with one statement per kind for the whole group (each
    a network round trip on PostgreSQL): the UIDs that already have a row, and the
    delivered-or-tracer rows sharing a sha1 or an identity with a message of the group.

    Rows written before folders were recorded have folder "" and belong to the primary
    folder; they are found under "" and matched by _plan_job. Dedup rows are kept only if
    delivered or tracer (DEDUP_AGAINST), filtered here so that each OR term of the query
    stays a plain probe of its (user, sha1) or (user, identity) index."""
    table = MailLog._meta.db_table
    terms, params = [], []
    wanted: dict[int, tuple[set[str], set[str]]] = {}
    for user_id, _, uid_validity, folder, messages, _ in jobs:
        uids = [m.uid for m in messages]
        for start in range(0, len(uids), IN_BATCH):
            part = uids[start : start + IN_BATCH]
            terms.append(
                "(user_id = %s AND folder IN (%s, '') AND uid_validity = %s"
                f" AND uid IN ({_in(part)}))"
            )
            params.append([user_id, folder, uid_validity, *part])
        sha1s, identities = wanted.setdefault(user_id, (set(), set()))
        for message in messages:
            digest = _digest(message)
            plan.digests[(user_id, folder, uid_validity, message.uid)] = digest
            if digest.sha1:
                sha1s.add(digest.sha1)
                identities.add(digest.identity)
    with connection.cursor() as cursor:
        for sql_terms, sql_params in _statements(terms, params):
            cursor.execute(
                f"SELECT user_id, folder, uid_validity, uid FROM {table} WHERE {sql_terms}",
                sql_params,
            )
            plan.recorded.update(tuple(row) for row in cursor.fetchall())
        terms, params = [], []
        for user_id, (sha1s, identities) in wanted.items():
            for column, values in (("sha1", sorted(sha1s)), ("identity", sorted(identities))):
                for start in range(0, len(values), IN_BATCH):
                    part = values[start : start + IN_BATCH]
                    terms.append(f"(user_id = %s AND {column} IN ({_in(part)}))")
                    params.append([user_id, *part])
        for sql_terms, sql_params in _statements(terms, params):
            cursor.execute(
                f"SELECT user_id, sha1, identity, skipped_reason FROM {table} WHERE {sql_terms}",
                sql_params,
            )
            for user_id, sha1, identity, reason in cursor.fetchall():
                if reason in DEDUP_AGAINST:
                    plan.sha1s.setdefault(user_id, set()).add(sha1)
                    plan.identities.setdefault(user_id, set()).add(identity)
    for known in (*plan.sha1s.values(), *plan.identities.values()):
        known.discard("")


def _statements(terms: list[str], params: list[list]):
    """OR-ed ``terms`` in statements of at most MAX_PARAMETERS parameters each."""
    start = 0
    while start < len(terms):
        end, count = start, 0
        while end < len(terms) and (end == start or count + len(params[end]) <= MAX_PARAMETERS):
            count += len(params[end])
            end += 1
        yield " OR ".join(terms[start:end]), [p for group in params[start:end] for p in group]
        start = end


def _log_row(plan: _Plan, user: _User, uid_validity, folder, digest: _Digest, reason: str):
    message = digest.message
    message_id = (digest.env.get("message_id") or "").replace("\x00", "\ufffd").strip()[:998]
    subject = (digest.env.get("subject") or "").replace("\x00", "\ufffd")[:998]
    size = message.size or len(message.raw or b"")
    internal_date = (
        connection.ops.adapt_datetimefield_value(message.internal_date)
        if message.internal_date
        else None
    )
    plan.maillog.append(
        (
            user.id,
            message_id,
            digest.sha1,
            digest.identity,
            message.uid,
            uid_validity,
            folder[:255],
            subject,
            internal_date,
            size,
            str(reason),
            plan.db_now,
        )
    )
    return message_id, size


def _skip(plan, user, uid_validity, folder, digest, reason, result) -> None:
    message_id, size = _log_row(plan, user, uid_validity, folder, digest, reason)
    result.skipped += 1
    result.skips[reason] += 1
    result.skipped_rows.append((digest.message.uid, reason, message_id, size))


def _delivery_row(plan, user: _User, uid_validity, folder, digest: _Digest, result) -> None:
    message = digest.message
    common = {
        "provider_code": user.provider_code,
        "user_tag": user.tag,
        "envelope": digest.env,
        "uid": message.uid,
        "uid_validity": uid_validity,
        "folder": folder,
        "internal_date": message.internal_date.isoformat() if message.internal_date else None,
    }
    if message.raw is None:
        payload = truncated_mail_payload(header=digest.content, size=digest.size, **common)
        result.truncated += 1
    else:
        payload = with_content_options(
            new_mail_payload(raw=message.raw, size=digest.size, **common),
            message.raw,
            include_rfc822=user.include_rfc822,
            include_parsed=user.include_parsed,
            max_chars=settings.WEBHOOK_PARSED_MAX_CHARS,
        )
    status = Delivery.Status.PENDING if user.has_url else Delivery.Status.SKIPPED
    plan.deliveries.append(
        (
            plan.prep_uuid(uuid.uuid4()),
            str(Delivery.Kind.NEW_MAIL),
            user.partner_id,
            user.id,
            digest.message_id,
            digest.identity,
            plan.prep_payload(payload),
            str(status),
            0,
            plan.max_attempts,
            0,
            plan.db_now,
            "",
            None,
            None,
            "" if user.has_url else "partner has no new_mail webhook URL",
            plan.db_now,
            None,
            None,
        )
    )


def _move_checkpoint(plan, user: _User, uid_validity, folder, messages, any_new: bool) -> None:
    """The primary folder's checkpoint in the user row (never backwards within one UID
    space), or the secondary folder's FolderCheckpoint; last_email_at when mail was new.
    The user row's UPDATEs of the whole group go out in one executemany."""
    last = max(messages, key=lambda m: m.uid)
    checkpoint: list = [None, None, None]  # uid_validity, last_uid, last_internal_date
    if folder == user.checkpoint_folder:
        previous = (user.last_uid or 0) if user.uid_validity == uid_validity else 0
        user.uid_validity, user.last_uid = uid_validity, max(last.uid, previous)
        checkpoint = [user.uid_validity, user.last_uid, None]
        if last.internal_date:
            checkpoint[2] = connection.ops.adapt_datetimefield_value(last.internal_date)
    else:
        with connection.cursor() as cursor:
            _move_folder_checkpoint(cursor, user.id, folder, uid_validity, last, plan)
        if not any_new:
            return
    plan.checkpoints.append((*checkpoint, plan.db_now if any_new else None, user.id))


def _move_folder_checkpoint(cursor, user_id: int, folder: str, uid_validity, last, plan) -> None:
    table = FolderCheckpoint._meta.db_table
    cursor.execute(
        f"SELECT uid_validity, last_uid FROM {table} WHERE user_id = %s AND folder = %s",
        [user_id, folder],
    )
    row = cursor.fetchone()
    previous = row[1] if row is not None and row[0] == uid_validity else 0
    last_uid = max(last.uid, previous)
    date = (
        connection.ops.adapt_datetimefield_value(last.internal_date) if last.internal_date else None
    )
    if row is None:
        cursor.execute(
            f"INSERT INTO {table} (user_id, folder, uid_validity, last_uid, last_internal_date, "
            "updated_at) VALUES (%s, %s, %s, %s, %s, %s)",
            [user_id, folder, uid_validity, last_uid, date, plan.db_now],
        )
        return
    cursor.execute(
        f"UPDATE {table} SET uid_validity = %s, last_uid = %s, updated_at = %s, "
        "last_internal_date = COALESCE(%s, last_internal_date) WHERE user_id = %s AND folder = %s",
        [uid_validity, last_uid, plan.db_now, date, user_id, folder],
    )
