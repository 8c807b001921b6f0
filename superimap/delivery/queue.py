"""The Delivery table as an at-least-once queue (synchronous; run through the DB pool).

A claim takes due rows atomically (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: the
IMMEDIATE transaction holds the write lock), bumps `attempts` and sets a lease. The attempt
number fences the result: a worker whose lease ran out and whose row was claimed again
cannot overwrite the newer attempt's outcome.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q

from superimap.delivery import health
from superimap.delivery.http import PostResult
from superimap.delivery.models import Delivery, DeliveryAttempt, EndpointHealth
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Partner

RETRY_JITTER = 0.2


def retry_delay(attempt: int, rng: random.Random | None = None) -> timedelta:
    """Delay after failed attempt number `attempt` (1-based), from WEBHOOK_RETRY_SCHEDULE
    (default 10 s, 1 min, 6 min, 36 min, 3.6 h, 21.6 h), ±20 %. A later round (manual
    retry, replay) starts over at the first step."""
    rng = rng or random
    schedule = settings.WEBHOOK_RETRY_SCHEDULE
    seconds = schedule[(attempt - 1) % len(schedule)]
    return timedelta(seconds=seconds * rng.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER))


def free_429_window() -> timedelta:
    """A 429 does not use up a retry while the delivery is younger than this (twice the
    schedule's span, at least a day), so a receiver answering 429 forever cannot keep a
    delivery pending forever."""
    return timedelta(seconds=max(2 * sum(settings.WEBHOOK_RETRY_SCHEDULE), 86400))


@dataclass(frozen=True)
class Claimed:
    id: int
    event_id: str
    kind: str
    attempt: int
    url: str
    payload: dict
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


def _due(now: datetime):
    return (
        Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .order_by("next_attempt_at", "id")
    )


def claim_due(node_id: str, limit: int, now: datetime, lease: timedelta) -> list[Claimed]:
    with transaction.atomic():
        rows = _due(now)
        if connection.vendor == "postgresql":
            rows = rows.select_for_update(skip_locked=True)
        rows = list(
            rows.only("id", "event_id", "kind", "attempts", "payload", "partner_id", "created_at")[
                :limit
            ]
        )
        rows = _hold_paused(rows, now)
        if not rows:
            return []
        partners = Partner.objects.in_bulk({r.partner_id for r in rows})
        # One UPDATE for the batch: the rows are ours until commit (row locks on
        # PostgreSQL, the write lock on SQLite), so attempts + 1 is what we read + 1.
        Delivery.objects.filter(id__in=[r.id for r in rows]).update(
            attempts=F("attempts") + 1, claimed_by=node_id, lease_until=now + lease
        )
        for row in rows:
            row.attempts += 1
    return [
        Claimed(
            id=row.id,
            event_id=str(row.event_id),
            kind=row.kind,
            attempt=row.attempts,
            url=partners[row.partner_id].webhook_url(row.kind),
            payload=row.payload,
            api_key=partners[row.partner_id].api_key,
            webhook_secrets=partners[row.partner_id].signing_secrets(),
            created_at=row.created_at,
            partner_id=row.partner_id,
        )
        for row in rows
    ]


def _hold_paused(rows: list[Delivery], now: datetime) -> list[Delivery]:
    """Rows for endpoints paused by a 429's Retry-After wait until then, unclaimed."""
    if not rows:
        return rows
    paused = {
        (partner_id, kind): until
        for partner_id, kind, until in EndpointHealth.objects.filter(
            paused_until__gt=now
        ).values_list("partner_id", "kind", "paused_until")
    }
    if not paused:
        return rows
    held: dict[datetime, list[int]] = {}
    ready = []
    for row in rows:
        until = paused.get((row.partner_id, row.kind))
        if until is None:
            ready.append(row)
        else:
            held.setdefault(until, []).append(row.id)
    for until, ids in held.items():
        Delivery.objects.filter(id__in=ids).update(next_attempt_at=until)
    return ready


def record_outcomes(
    node_id: str, outcomes: list[Outcome], now: datetime, rng: random.Random | None = None
) -> dict[str, int]:
    """Store each attempt and move its delivery on. Returns counts by resulting status."""
    counts: dict[str, int] = {}
    with transaction.atomic():
        maxima = dict(
            Delivery.objects.filter(id__in=[o.claimed.id for o in outcomes]).values_list(
                "id", "max_attempts"
            )
        )
        attempts = []
        delivered: dict[tuple[int, int | None], list[int]] = {}
        for outcome in outcomes:
            if outcome.claimed.id not in maxima:
                continue  # deleted meanwhile (its partner was removed): nothing to record
            result = outcome.result
            if outcome.claimed.url and result.succeeded:
                key = (outcome.claimed.attempt, result.status_code)
                delivered.setdefault(key, []).append(outcome.claimed.id)
            else:
                status = _record_one(node_id, outcome, maxima[outcome.claimed.id], now, rng)
                counts[status] = counts.get(status, 0) + 1
            attempts.append(
                DeliveryAttempt(
                    delivery_id=outcome.claimed.id,
                    number=outcome.claimed.attempt,
                    started_at=outcome.started_at,
                    duration_ms=result.duration_ms,
                    url=outcome.claimed.url,
                    status_code=result.status_code,
                    response_excerpt=result.excerpt,
                    error=result.error,
                )
            )
        # The common case in one UPDATE per (attempt number, status code), still fenced.
        for (attempt, status_code), ids in delivered.items():
            updated = _fenced(node_id, ids, attempt).update(
                status=Delivery.Status.DELIVERED,
                delivered_at=now,
                claimed_by="",
                lease_until=None,
                last_status_code=status_code,
                last_error="",
            )
            counts[Delivery.Status.DELIVERED] = counts.get(Delivery.Status.DELIVERED, 0) + updated
            if updated < len(ids):
                counts["stale"] = counts.get("stale", 0) + len(ids) - updated
        DeliveryAttempt.objects.bulk_create(attempts, ignore_conflicts=True)
        health.record(outcomes, now)
    return counts


def _fenced(node_id: str, ids: list[int], attempt: int):
    """Rows still claimed by this node for this attempt: a newer claim wins."""
    return Delivery.objects.filter(
        id__in=ids, attempts=attempt, claimed_by=node_id, status=Delivery.Status.PENDING
    )


def _record_one(
    node_id: str, outcome: Outcome, max_attempts: int, now: datetime, rng: random.Random | None
) -> str:
    claimed, result = outcome.claimed, outcome.result
    fenced = _fenced(node_id, [claimed.id], claimed.attempt)
    common = {
        "claimed_by": "",
        "lease_until": None,
        "last_status_code": result.status_code,
        "last_error": (
            result.error or (f"HTTP {result.status_code}" if result.status_code else "")
        )[:1024],
    }
    if not claimed.url:
        status = Delivery.Status.SKIPPED
        common["last_error"] = f"partner has no {claimed.kind} webhook URL"
        updated = fenced.update(status=status, **common)
    elif result.succeeded:
        status = Delivery.Status.DELIVERED
        common["last_error"] = ""
        updated = fenced.update(status=status, delivered_at=now, **common)
    elif result.status_code == 410:
        status = Delivery.Status.CANCELLED
        common["last_error"] = f"receiver answered 410 Gone: {claimed.kind} webhook URL disabled"
        updated = fenced.update(status=status, **common)
    elif result.status_code == 429 and now - claimed.created_at < free_429_window():
        # Rate limited: wait as asked (or the usual delay) without using up a retry.
        status = Delivery.Status.PENDING
        updated = fenced.update(
            status=status,
            next_attempt_at=now + health.retry_after_delay(result, claimed.attempt, rng),
            max_attempts=F("max_attempts") + 1,
            **common,
        )
    elif result.status_code == 403:
        status = Delivery.Status.CANCELLED
        common["last_error"] = "receiver answered 403 Forbidden: user archived"
        updated = fenced.update(status=status, **common)
        if updated:
            _archive_user_of(claimed.id)
    elif claimed.attempt >= max_attempts:
        status = Delivery.Status.FAILED
        updated = fenced.update(status=status, **common)
    else:
        status = Delivery.Status.PENDING
        delay = retry_delay(claimed.attempt, rng)
        if result.retry_after is not None:  # 503 + Retry-After: not sooner than asked
            delay = max(delay, health.retry_after_delay(result, claimed.attempt, rng))
        updated = fenced.update(status=status, next_attempt_at=now + delay, **common)
    return status if updated else "stale"


def _archive_user_of(delivery_id: int) -> None:
    user_id = Delivery.objects.filter(id=delivery_id).values_list("user_id", flat=True).first()
    if user_id is None:
        return
    user = MailboxUser.objects.filter(id=user_id, archived=False).first()
    # Tracer users are our own monitoring mailboxes: a 403 must not switch them off.
    if user is not None and not user.enable_tracer:
        user.archive()


def release_claims(node_id: str) -> int:
    """On clean shutdown: hand back what this node claimed but did not send."""
    return Delivery.objects.filter(claimed_by=node_id, status=Delivery.Status.PENDING).update(
        claimed_by="", lease_until=None, attempts=F("attempts") - 1
    )
