"""Endpoint health per partner and webhook kind: the EndpointHealth rows and what follows.

What each answer does to an endpoint (healthy, failing, disabled; paused by a 429) is
decided in policy.py (its table); this module stores it and does the side effects:
- a recovery (the first success of a `failing` endpoint) opens a replay window: its failed
  deliveries of the last WEBHOOK_AUTO_REPLAY_HOURS, plus pending ones waiting in back-off,
  are re-queued oldest first at most WEBHOOK_AUTO_REPLAY_RATE per second (replay_step);
- becoming `failing` shows a dashboard banner and a metric and logs one warning;
- a pause (429) holds the endpoint's pending deliveries until its end;
- 410 Gone switches that kind's URL off (the partner's field is emptied, the old URL kept
  here), the endpoint is `disabled` and the operator is told (banner, log, metric). Later
  deliveries of that kind are `skipped` until a URL is set again.
Successful batches to healthy endpoints cost one SELECT and no writes.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import connection
from django.db.models import Q

from superimap.delivery import policy
from superimap.delivery.failurelog import endpoint_host
from superimap.delivery.models import Delivery, EndpointHealth
from superimap.partners.models import Partner
from superimap.platform.sqltext import marks

log = logging.getLogger("superimap.worker")

# One attempt as the health rows see it: (partner id, kind, verdict, the receiver's answer).
Answered = tuple[int, str, policy.Verdict, policy.Answer]


def record(answers: list[Answered], now: datetime, config: policy.Config) -> None:
    """Fold a batch of attempts into EndpointHealth rows (inside the caller's transaction)."""
    by_endpoint: dict[tuple[int, str], list[tuple[policy.Verdict, policy.Answer]]] = {}
    for partner_id, kind, verdict, answer in answers:
        if policy.RULES[verdict].endpoint:  # no URL: nothing was sent, nothing learnt
            by_endpoint.setdefault((partner_id, kind), []).append((verdict, answer))
    if not by_endpoint:
        return
    partner_ids = sorted({partner_id for partner_id, _ in by_endpoint})
    # The common case (successes to healthy endpoints): one plain SELECT, no model rows.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT partner_id, kind, state, consecutive_failures FROM "
            f"{EndpointHealth._meta.db_table} WHERE partner_id IN "
            f"({marks(partner_ids)})",
            partner_ids,
        )
        states = {
            (pid, kind): policy.Endpoint(policy.State(state), failures)
            for pid, kind, state, failures in cursor
        }
    for key, verdicts in by_endpoint.items():
        if policy.writes_nothing((verdict for verdict, _ in verdicts), states.get(key)):
            continue  # the common case: nothing to write
        row = EndpointHealth.objects.filter(partner_id=key[0], kind=key[1]).first()
        if row is None:
            # get_or_create: another worker may be creating the same row right now.
            row, _ = EndpointHealth.objects.get_or_create(partner_id=key[0], kind=key[1])
        _apply(row, verdicts, now, config)


def _apply(
    row: EndpointHealth,
    verdicts: list[tuple[policy.Verdict, policy.Answer]],
    now: datetime,
    config: policy.Config,
) -> None:
    for verdict, answer in verdicts:
        before = policy.Endpoint(
            policy.State(row.state), row.consecutive_failures, row.paused_until
        )
        step = policy.endpoint_step(before, verdict, answer, now, config)
        row.state = step.after.state.value
        row.consecutive_failures = step.after.consecutive_failures
        row.paused_until = step.after.paused_until
        if step.succeeded:
            row.last_success_at = now
        if step.failure is not None:
            row.last_failure_at = now
            row.last_error = step.failure
        if step.recovered:
            _recovered(row, step, config)
        if step.became_failing:
            row.failing_since = now
            log.warning(
                "%s is failing after %d failures: %s",
                _endpoint(row),
                row.consecutive_failures,
                row.last_error,
            )
        if step.paused:
            _hold_pending(row, step.after.paused_until)
        if step.disabled:
            partner = Partner.objects.filter(id=row.partner_id).first()
            url = partner.disable_webhook(row.kind) if partner else ""
            row.disabled_url = url or row.disabled_url
            log.warning(
                "%s answered 410 Gone: URL disabled; set a new URL in the dashboard",
                _endpoint(row, url),
            )
    row.save()


def _endpoint(row: EndpointHealth, url: str = "") -> str:
    """How log lines name an endpoint: ``My app new_mail webhook (partner 3)``, with the
    URL's host when known (never its path or query: they may hold a token)."""
    name = Partner.objects.filter(id=row.partner_id).values_list("name", flat=True).first()
    label = f"{name or '?'} {row.kind} webhook (partner {row.partner_id})"
    if url:
        label += " at " + (endpoint_host(url))
    return label


def _hold_pending(row: EndpointHealth, until: datetime) -> None:
    """Retry-After applies to the endpoint: its other pending deliveries wait too."""
    Delivery.objects.filter(
        partner_id=row.partner_id,
        kind=row.kind,
        status=Delivery.Status.PENDING,
        next_attempt_at__lt=until,
        lease_until__isnull=True,
    ).update(next_attempt_at=until)


def _recovered(row: EndpointHealth, step: policy.EndpointStep, config: policy.Config) -> None:
    row.failing_since = None
    log.warning(
        "%s recovered; re-queueing its failed deliveries of the last %d hours",
        _endpoint(row),
        config.auto_replay_hours,
    )
    if step.replay is not None:
        row.replay_from, row.replay_until = step.replay
        row.replay_cursor = 0


def replay_step(now: datetime, limit: int) -> int:
    """Re-queue up to `limit` deliveries of recovered endpoints, oldest first. Returns how
    many. Failed ones get a fresh round; pending ones waiting in back-off are made due.

    Every worker calls it every second, and nearly always no window is open: one plain
    SELECT says so (the ORM's took ~0.27 ms of CPU, ~1.1 ms after the second's sleep)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {EndpointHealth._meta.db_table} WHERE replay_until IS NOT NULL LIMIT 1"
        )
        if cursor.fetchone() is None:
            return 0
    done = 0
    for row in EndpointHealth.objects.filter(replay_until__isnull=False):
        if done >= limit:
            break
        candidates = Delivery.objects.filter(
            partner_id=row.partner_id,
            kind=row.kind,
            id__gt=row.replay_cursor,
            created_at__gte=row.replay_from,
            created_at__lte=row.replay_until,
        ).filter(
            Q(status=Delivery.Status.FAILED)
            | Q(status=Delivery.Status.PENDING, next_attempt_at__gt=now)
        )
        ids = list(candidates.order_by("id").values_list("id", flat=True)[: limit - done])
        if ids:
            batch = Delivery.objects.filter(id__in=ids)
            done += Delivery.replay(batch.filter(status=Delivery.Status.FAILED), now)
            done += batch.filter(status=Delivery.Status.PENDING, lease_until__isnull=True).update(
                next_attempt_at=now
            )
            row.replay_cursor = max(ids)
        if not candidates.filter(id__gt=row.replay_cursor).exists():
            row.replay_from = row.replay_until = None
            row.replay_cursor = 0
        EndpointHealth.objects.filter(id=row.id).update(
            replay_from=row.replay_from,
            replay_until=row.replay_until,
            replay_cursor=row.replay_cursor,
        )
    return done


def failing_endpoints():
    """For the dashboard banner: endpoints failing or disabled, with their partner."""
    return (
        EndpointHealth.objects.exclude(state=EndpointHealth.State.HEALTHY)
        .select_related("partner")
        .order_by("state", "partner__name", "kind")
    )
