"""The Delivery table as an at-least-once queue (synchronous; run through the DB pool).

A claim takes due rows atomically (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: the
IMMEDIATE transaction holds the write lock), bumps `attempts` and sets a lease. The attempt
number fences the result: a worker whose lease ran out and whose row was claimed again
cannot overwrite the newer attempt's outcome.
"""

from __future__ import annotations

import functools
import json
import random
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils.dateparse import parse_datetime

from superimap.delivery import fairness, health, policy
from superimap.delivery.http import PostResult
from superimap.delivery.models import Delivery, DeliveryAttempt, DeliveryPayload, EndpointHealth
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Partner
from superimap.platform.fields import decrypt
from superimap.platform.sqltext import marks


@dataclass(frozen=True)
class Claimed:
    id: int
    event_id: str
    kind: str
    attempt: int
    url: str
    payload_json: str
    """The stored payload as JSON text: spliced into the body, not decoded and re-encoded."""
    sha1: str | None
    api_key: str
    webhook_secrets: tuple[str, ...]
    """whsec_ secrets to sign with: the current one, plus the previous during its grace."""
    created_at: datetime
    partner_id: int = 0


@dataclass(frozen=True)
class Outcome:
    claimed: Claimed
    result: PostResult
    started_at: datetime


@dataclass(frozen=True)
class _Signing:
    api_key: str
    secrets: tuple[str, ...]
    urls: dict[str, str]


def _db_time(value: datetime):
    return connection.ops.adapt_datetimefield_value(value)


def _event_id(value) -> str:
    """The event id as its UUID text: SQLite stores 32 hex digits (formatted here, not
    through uuid.UUID), PostgreSQL returns a UUID."""
    if isinstance(value, str) and len(value) == 32:
        value = value.lower()
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"
    return str(uuid.UUID(str(value)))


def _aware(value) -> datetime:
    """A stored datetime (SQLite: text in UTC; PostgreSQL: aware) as an aware one. Parsed
    with fromisoformat first (what parse_datetime tries first too), then parse_datetime."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            value = parse_datetime(value)
    if value.utcoffset() is None:
        value = value.replace(tzinfo=UTC)
    return value


# A stored payload (json.dumps of a dict whose first key is sha1, as payloads.py builds
# them) starts with its sha1: a key right after the opening brace is a top-level one.
_LEADING_SHA1 = re.compile(r'\{\s*"sha1"\s*:\s*"([0-9a-f]{40})"')


def _sha1(payload: str):
    """The payload's top-level "sha1" as json_extract(payload, '$.sha1') gives it: the
    string (None when absent: such a row is signed from its decoded payload). Other JSON
    values as json_extract gives them too, though no payload of ours holds one."""
    match = _LEADING_SHA1.match(payload)
    if match is not None:
        return match.group(1)
    if '"sha1"' not in payload:
        return None  # JSON text holds a key as written: no "sha1", no such key
    data = json.loads(payload)
    value = data.get("sha1") if isinstance(data, dict) else None
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return int(value) if isinstance(value, bool) else value


@functools.lru_cache(maxsize=4096)
def _decrypted(token: str) -> str:
    """Secrets are decrypted once per stored ciphertext, not once per claim: a rotation
    stores a new ciphertext, so it is seen at the next claim."""
    return decrypt(token) if token else token


# --- Per-user order (docs/design.md 5.1) ----------------------------------------------------
# A lifecycle event (user_connected, user_error, user_recovered, user_disconnected) is
# claimable only when no earlier delivery of its user is pending (in flight or waiting for a
# retry): it goes out after every earlier event of that user is final. new_mail does not
# wait, so mail stays parallel. Both probes use small partial indexes (models.py) and
# literal values, which SQLite needs to match a partial index.
def _order_gate(table: str) -> str:
    return (
        f"(kind = 'new_mail' OR NOT EXISTS (SELECT 1 FROM {table} e "
        f"WHERE e.user_id = {table}.user_id AND e.status = 'pending' AND e.id < {table}.id))"
    )


# Nothing of a user is sent after its user_disconnected: a delivery (re-queued by a replay,
# "Retry now" or auto-replay) with a later user_disconnected of its user that went out or
# is going out now is cancelled at claim instead of sent. A skipped user_disconnected (no
# URL) never went out and cancels nothing.
def _superseded(table: str) -> str:
    return (
        f"(kind <> 'user_disconnected' AND EXISTS (SELECT 1 FROM {table} e "
        f"WHERE e.user_id = {table}.user_id AND e.kind = 'user_disconnected' "
        f"AND e.id > {table}.id "
        "AND (e.status NOT IN ('pending', 'skipped') OR e.lease_until IS NOT NULL)))"
    )


SUPERSEDED_ERROR = "not sent: the user's user_disconnected went out before it"


def _cancel_superseded(cursor, rows: list) -> list:
    """Cancel the rows whose last column (_superseded) is true; the others, without it."""
    cancelled = [row[0] for row in rows if row[-1]]
    if cancelled:
        cursor.execute(
            f"UPDATE {Delivery._meta.db_table} SET status = %s, last_error = %s, "
            f"claimed_by = '', lease_until = NULL WHERE id IN ({marks(cancelled)})",
            [Delivery.Status.CANCELLED.value, SUPERSEDED_ERROR, *cancelled],
        )
    return [row[:-1] for row in rows if not row[-1]]


# --- end of per-user order -------------------------------------------------------------------


# The lane's status and backfill values are literals, not parameters: SQLite compares a
# bound parameter with the partial indexes' conditions (status = 'pending') while planning,
# and then prepares the statement again at each new binding. With parameters, every due
# SELECT was parsed and planned anew (~40 us of CPU for an empty lane, several per claim);
# with literals the connection's statement cache serves it. Parameters: now, now, limit.
@functools.lru_cache(maxsize=2)
def _claim_sql(vendor: str) -> tuple[dict[bool, str], str, str, tuple[str, str | None]]:
    d = Delivery._meta.db_table
    p = Partner._meta.db_table
    # SQLite: the IMMEDIATE transaction holds the write lock.
    lock = " FOR UPDATE SKIP LOCKED" if vendor == "postgresql" else ""
    pending = Delivery.Status.PENDING.value
    due = {
        backfill: (
            "SELECT id, event_id, kind, attempts, partner_id, created_at, "
            f"{_superseded(d)} FROM {d} "
            f"WHERE status = '{pending}' AND backfill = {str(backfill).upper()} "
            "AND next_attempt_at <= %s AND (lease_until IS NULL OR lease_until < %s) "
            f"AND {_order_gate(d)} "
            f"ORDER BY next_attempt_at, id LIMIT %s{lock}"
        )
        for backfill in (False, True)
    }
    urls = ", ".join(f"{kind}_webhook" for kind in Partner.WEBHOOK_KINDS)
    partners = (
        "SELECT id, api_key, webhook_secret, previous_webhook_secret, "
        f"previous_webhook_secret_until, {urls} FROM {p} WHERE id IN (%s)"
    )
    paused = (
        f"SELECT partner_id, kind, paused_until FROM {EndpointHealth._meta.db_table} "
        "WHERE paused_until > %s"
    )
    # The UPDATE that takes the rows (node, lease, then the ids) and gives the payloads
    # of the rows kept, by id (DeliveryPayload: the due SELECT reads ~200-byte rows, not
    # the rows it skips with their payloads). PostgreSQL: one statement, the UPDATE in a
    # WITH joined to the payloads (a round trip fewer per claim), and the sha1 from the
    # jsonb (its text is not as stored: keys reordered). SQLite: the UPDATE, then a SELECT
    # (in-process: no round trip); the sha1 is read from the text in Python, for the rows
    # kept (_sha1): json_extract parsed the whole payload.
    update = (
        f"UPDATE {d} SET attempts = attempts + 1, claimed_by = %%s, lease_until = %%s "
        "WHERE id IN (%s)"
    )
    payloads = DeliveryPayload._meta.db_table
    if vendor == "postgresql":
        take = (
            f"WITH taken AS ({update} RETURNING id) SELECT taken.id, p.payload::text, "
            f"p.payload->>'sha1' FROM taken LEFT JOIN {payloads} p ON p.delivery_id = taken.id",
            None,
        )
    else:
        take = (
            update,
            f"SELECT delivery_id, payload, NULL FROM {payloads} WHERE delivery_id IN (%s)",
        )
    return due, partners, paused, take


# PostgreSQL: the due rows are read in the due index's order (next_attempt_at, id), never
# all read and sorted. Without statistics that show a backlog (a table filled since its
# last ANALYZE; a burst on a table of mostly delivered rows), the planner expected a few
# pending rows and chose a bitmap scan and a sort: every claim read and sorted the whole
# backlog with its payloads, a claim of 20 rows took ~50-100 ms once thousands were
# pending, and the worker fell further behind the bigger the backlog grew (bench.e2e at
# 1,000/s: ~200 deliveries/s). For this transaction only.
WALK_THE_INDEX = "SET LOCAL enable_sort = off"


# The fenced outcome UPDATE finds its rows by id (the primary key), never through an index
# of pending rows. Its fence said `status = 'pending'`, and both databases used that term:
# - SQLite (no statistics) searched the due index for status = 'pending' and filtered the
#   ids: each UPDATE read the backlog's whole index range;
# - PostgreSQL scanned the partial delivery_pending_by_user (whose condition the term
#   matches) for the ids, as a bitmap or a whole-index scan. Its statistics count the live
#   entries, but every row delivered since the last VACUUM left a dead entry there (a
#   non-HOT UPDATE): 14.6 ms for 20 rows after 100,000 deliveries, 0.76 ms by id.
# COALESCE(status, '') (status is NOT NULL: the same test) is a term no index of ours can
# serve and that implies no partial index's condition. tests/delivery/test_claim_plan.py.
@functools.lru_cache(maxsize=256)
def _delivered_sql(count: int) -> str:
    """The fenced UPDATE of ``count`` delivered rows (ids, attempt number, node)."""
    return (
        f"UPDATE {Delivery._meta.db_table} SET status = %s, delivered_at = %s, "
        "claimed_by = '', lease_until = NULL, last_status_code = %s, last_error = '' "
        f"WHERE id IN ({marks(range(count))}) AND attempts = %s AND claimed_by = %s "
        f"AND COALESCE(status, '') = '{Delivery.Status.PENDING.value}'"  # literal: _claim_sql
    )


def _signing(cursor, partner_ids: set[int], now: datetime) -> dict[int, _Signing]:
    _, sql, _, _ = _claim_sql(connection.vendor)
    ids = sorted(partner_ids)
    cursor.execute(sql % marks(ids), ids)
    result = {}
    for partner_id, api_key, secret, previous, until, *urls in cursor.fetchall():
        secrets = (_decrypted(secret),)
        if previous and until and _aware(until) > now:
            secrets += (_decrypted(previous),)
        result[partner_id] = _Signing(
            _decrypted(api_key), secrets, dict(zip(Partner.WEBHOOK_KINDS, urls, strict=True))
        )
    return result


def claim_due(
    node_id: str,
    limit: int,
    now: datetime,
    lease: timedelta,
    room: fairness.Room | None = None,
) -> list[Claimed]:
    """Claim due rows, in a transaction of their own (_claim_due)."""
    with transaction.atomic():
        return _claim_due(node_id, limit, now, lease, room)


def record_and_claim(
    node_id: str,
    outcomes: list[Outcome],
    now: datetime,
    limit: int,
    lease: timedelta,
    room: fairness.Room | None = None,
) -> tuple[dict[str, int], list[Claimed]]:
    """record_outcomes and claim_due in ONE transaction: a busy worker's outcomes go with its
    next claim, one turn at SQLite's write gate (and one COMMIT) instead of two. Each turn
    may wait for a whole group commit of an engine process (design.md 8.1)."""
    with transaction.atomic():
        counts = _record_outcomes(node_id, outcomes, now) if outcomes else {}
        return counts, _claim_due(node_id, limit, now, lease, room)


def _claim_due(
    node_id: str,
    limit: int,
    now: datetime,
    lease: timedelta,
    room: fairness.Room | None = None,
) -> list[Claimed]:
    """Plain SQL (the ORM cost more than the queries): one SELECT of due rows per lane (live;
    then backfill, if the live rows did not fill the claim), one of their partners' signing
    settings, one of paused endpoints, one UPDATE that takes the rows, and their payloads
    (DeliveryPayload, by id; PostgreSQL: in the UPDATE's statement).

    With a `room` (the worker's fair shares), full partners and endpoints are skipped and
    at most each one's room is taken (fairness.fair_rows: up to three SELECTs)."""
    due, _, paused_sql, take_sql = _claim_sql(connection.vendor)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(WALK_THE_INDEX)
        db_time = connection.ops.adapt_datetimefield_value  # once, not through the proxy
        db_now = db_time(now)
        rows = []
        # Live rows first; backfilled new_mail (design.md 4.12) only for the slots left, so
        # live mail never waits behind a backfill's backlog.
        for backfill in (False, True):
            rows += fairness.fair_rows(
                cursor, due[backfill], [db_now, db_now], limit - len(rows), room
            )
            if len(rows) >= limit:
                break
        rows = _cancel_superseded(cursor, rows)
        if not rows:
            return []
        cursor.execute(paused_sql, [db_now])
        paused = {(pid, kind): _aware(until) for pid, kind, until in cursor.fetchall()}
        if paused:
            rows = _hold_paused(cursor, rows, paused)
            if not rows:
                return []
        signing = _signing(cursor, {row[4] for row in rows}, now)
        ids = [row[0] for row in rows]
        # One UPDATE for the batch: the rows are ours until commit (row locks on
        # PostgreSQL, the write lock on SQLite), so attempts + 1 is what we read + 1.
        update, select = take_sql
        in_ids = marks(ids)
        cursor.execute(update % in_ids, [node_id, db_time(now + lease), *ids])
        if select is not None:
            cursor.execute(select % in_ids, ids)
        # A purged payload has no row: {} as retention left it (design.md 5.5).
        stored = {id_: (text, sha1) for id_, text, sha1 in cursor.fetchall() if text is not None}
    claimed = []
    for id_, event_id, kind, attempts, partner_id, created_at in rows:
        payload, sha1 = stored.get(id_, ("{}", None))
        if sha1 is None:
            sha1 = _sha1(payload)
        partner = signing[partner_id]
        claimed.append(
            Claimed(
                id=id_,
                event_id=_event_id(event_id),
                kind=kind,
                attempt=attempts + 1,
                url=partner.urls.get(kind, ""),
                payload_json=payload,
                sha1=sha1,
                api_key=partner.api_key,
                webhook_secrets=partner.secrets,
                created_at=_aware(created_at),
                partner_id=partner_id,
            )
        )
    return claimed


def _hold_paused(cursor, rows: list, paused: dict) -> list:
    """Rows for endpoints paused by a 429's Retry-After wait until then, unclaimed."""
    held: dict[datetime, list[int]] = {}
    ready = []
    for row in rows:
        until = paused.get((row[4], row[2]))
        if until is None:
            ready.append(row)
        else:
            held.setdefault(until, []).append(row[0])
    for until, ids in held.items():
        cursor.execute(
            f"UPDATE {Delivery._meta.db_table} SET next_attempt_at = %s WHERE id IN ({marks(ids)})",
            [_db_time(until), *ids],
        )
    return ready


def record_outcomes(
    node_id: str, outcomes: list[Outcome], now: datetime, rng: random.Random | None = None
) -> dict[str, int]:
    """Record outcomes, in a transaction of their own (_record_outcomes)."""
    with transaction.atomic():
        return _record_outcomes(node_id, outcomes, now, rng)


def _record_outcomes(
    node_id: str, outcomes: list[Outcome], now: datetime, rng: random.Random | None = None
) -> dict[str, int]:
    """Store each attempt and move its delivery on. Returns counts by resulting status.

    The common case (2xx) is plain SQL: one SELECT, one fenced UPDATE per (attempt number,
    status code), one multi-row INSERT of the attempts; other outcomes go one by one."""
    counts: dict[str, int] = {}
    table = Delivery._meta.db_table
    # Looked up once: each `connection.` goes through Django's per-thread connection proxy.
    db_time = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        ids = [o.claimed.id for o in outcomes]
        cursor.execute(
            f"SELECT id, max_attempts, failures FROM {table} WHERE id IN ({marks(ids)})", ids
        )
        maxima = {id_: (most, failures) for id_, most, failures in cursor.fetchall()}
        attempts = []
        delivered: dict[tuple[int, int | None], list[int]] = {}
        config = policy.Config.from_settings(settings)
        answers: list[health.Answered] = []
        for outcome in outcomes:
            claimed, result = outcome.claimed, outcome.result
            verdict = policy.classify(
                result.status_code,
                has_url=bool(claimed.url),
                age=now - claimed.created_at,
                config=config,
            )
            answers.append((claimed.partner_id, claimed.kind, verdict, result))
            if claimed.id not in maxima:
                continue  # deleted meanwhile (its partner was removed): nothing to record
            if verdict is policy.Verdict.DELIVERED:
                key = (claimed.attempt, result.status_code)
                delivered.setdefault(key, []).append(claimed.id)
            else:
                step = policy.delivery_step(
                    verdict,
                    result,
                    kind=claimed.kind,
                    attempt=claimed.attempt,
                    max_attempts=maxima[claimed.id][0],
                    failures=maxima[claimed.id][1],
                    config=config,
                    rng=rng,
                )
                status = _record_one(node_id, outcome, step, now)
                counts[status] = counts.get(status, 0) + 1
            attempts.append(
                (
                    outcome.claimed.id,
                    outcome.claimed.attempt,
                    db_time(outcome.started_at),
                    result.duration_ms,
                    outcome.claimed.url,
                    result.status_code,
                    result.excerpt,
                    result.error,
                )
            )
        # The common case in one UPDATE per (attempt number, status code), still fenced.
        for (attempt, status_code), ids in delivered.items():
            cursor.execute(
                _delivered_sql(len(ids)),
                [
                    Delivery.Status.DELIVERED.value,
                    db_time(now),
                    status_code,
                    *ids,
                    attempt,
                    node_id,
                ],
            )
            updated = cursor.rowcount
            counts[Delivery.Status.DELIVERED] = counts.get(Delivery.Status.DELIVERED, 0) + updated
            if updated < len(ids):
                counts["stale"] = counts.get("stale", 0) + len(ids) - updated
        if attempts:
            row = "(%s, %s, %s, %s, %s, %s, %s, %s)"
            cursor.execute(
                f"INSERT INTO {DeliveryAttempt._meta.db_table} (delivery_id, number, "
                "started_at, duration_ms, url, status_code, response_excerpt, error) "
                f"VALUES {', '.join([row] * len(attempts))} ON CONFLICT DO NOTHING",
                [value for attempt in attempts for value in attempt],
            )
        health.record(answers, now, config)
    return counts


def _fenced(node_id: str, ids: list[int], attempt: int):
    """Rows still claimed by this node for this attempt: a newer claim wins. The status
    term as in _delivered_sql (COALESCE): found by id, not through an index of pending rows."""
    return (
        Delivery.objects.alias(fence_status=Coalesce("status", Value("")))
        .filter(id__in=ids, attempts=attempt, claimed_by=node_id)
        .filter(fence_status=Delivery.Status.PENDING)
    )


def _record_one(node_id: str, outcome: Outcome, step: policy.DeliveryStep, now: datetime) -> str:
    """Write what the policy decided for one attempt, fenced: returns the delivery's new
    status, or "stale" when a newer claim owns the row."""
    claimed, result = outcome.claimed, outcome.result
    changes: dict = {
        "status": step.status,
        "claimed_by": "",
        "lease_until": None,
        "last_status_code": result.status_code,
        "last_error": step.last_error,
    }
    if step.status == Delivery.Status.DELIVERED:
        changes["delivered_at"] = now
    if step.delay is not None:
        changes["next_attempt_at"] = now + step.delay
    if step.uses_step:
        changes["failures"] = F("failures") + 1
    if step.grants_attempt:
        changes["max_attempts"] = F("max_attempts") + 1
    updated = _fenced(node_id, [claimed.id], claimed.attempt).update(**changes)
    if updated and step.archive_user:
        _archive_user_of(claimed.id)
    return Delivery.Status(step.status) if updated else "stale"


def _archive_user_of(delivery_id: int) -> None:
    user_id = Delivery.objects.filter(id=delivery_id).values_list("user_id", flat=True).first()
    if user_id is None:
        return
    user = MailboxUser.objects.filter(id=user_id, archived=False).first()
    # Tracer users are our own monitoring mailboxes: a 403 must not switch them off.
    if user is not None and not user.enable_tracer:
        user.archive()


def release_claims(node_id: str, ids: list[int] | None = None) -> int:
    """On clean shutdown (or for ``ids`` a worker chose not to send, delivery/heartbeat.py):
    hand back what this node claimed but did not send."""
    rows = Delivery.objects.filter(claimed_by=node_id, status=Delivery.Status.PENDING)
    if ids is not None:
        rows = rows.filter(id__in=ids)
    return rows.update(claimed_by="", lease_until=None, attempts=F("attempts") - 1)
