"""Endpoint health per partner and webhook kind, and what follows from it.

Rules (per partner and kind, from each recorded attempt):
- a 2xx (or 403, a deliberate answer) is a success: the failure count goes back to 0; if
  the endpoint was `failing` it has recovered, and its failed deliveries of the last
  WEBHOOK_AUTO_REPLAY_HOURS, plus pending ones waiting in back-off, are re-queued oldest
  first at most WEBHOOK_AUTO_REPLAY_RATE per second (replay_step);
- a timeout, connection error or other status is a failure; WEBHOOK_FAILING_AFTER in a
  row mark the endpoint `failing` (dashboard banner, metric, one warning in the log);
- 429 is not a failure: the endpoint is paused until Retry-After (capped at
  WEBHOOK_RETRY_AFTER_MAX) and its pending deliveries wait until then;
- 410 Gone switches that kind's URL off (the partner's field is emptied, the old URL kept
  here), the endpoint is `disabled` and the operator is told (banner, log, metric). Later
  deliveries of that kind are `skipped` until a URL is set again.
Successful batches to healthy endpoints cost one SELECT and no writes.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Q

from superimap.delivery.failurelog import endpoint_host
from superimap.delivery.models import Delivery, EndpointHealth
from superimap.partners.models import Partner

log = logging.getLogger("superimap.worker")

SUCCESS, FAILURE, RATE_LIMITED, GONE = "success", "failure", "rate_limited", "gone"


def classify(outcome) -> str | None:
    result = outcome.result
    if not outcome.claimed.url:
        return None
    if result.succeeded or result.status_code == 403:
        return SUCCESS
    if result.status_code == 410:
        return GONE
    if result.status_code == 429:
        return RATE_LIMITED
    return FAILURE


def retry_after_delay(result, failures: int, rng: random.Random | None = None) -> timedelta:
    """How long to wait after a 429/503: Retry-After if given (capped), else the step the
    delivery's next failure would wait (`failures` so far in its round; not used up)."""
    if result.retry_after is not None:
        return timedelta(seconds=min(result.retry_after, settings.WEBHOOK_RETRY_AFTER_MAX))
    from superimap.delivery.queue import retry_delay

    return retry_delay(failures + 1, rng)


def record(outcomes, now: datetime) -> None:
    """Fold a batch of attempt outcomes into EndpointHealth rows (inside the caller's
    transaction)."""
    by_endpoint: dict[tuple[int, str], list] = {}
    for outcome in outcomes:
        verdict = classify(outcome)
        if verdict is not None:
            key = (outcome.claimed.partner_id, outcome.claimed.kind)
            by_endpoint.setdefault(key, []).append((verdict, outcome))
    if not by_endpoint:
        return
    partner_ids = sorted({partner_id for partner_id, _ in by_endpoint})
    # The common case (successes to healthy endpoints): one plain SELECT, no model rows.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT partner_id, kind, state, consecutive_failures FROM "
            f"{EndpointHealth._meta.db_table} WHERE partner_id IN "
            f"({', '.join(['%s'] * len(partner_ids))})",
            partner_ids,
        )
        states = {(pid, kind): (state, failures) for pid, kind, state, failures in cursor}
    for key, verdicts in by_endpoint.items():
        kinds = {verdict for verdict, _ in verdicts}
        state = states.get(key)
        if kinds == {SUCCESS} and (state is None or state == (EndpointHealth.State.HEALTHY, 0)):
            continue  # the common case: nothing to write
        row = EndpointHealth.objects.filter(partner_id=key[0], kind=key[1]).first()
        if row is None:
            # get_or_create: another worker may be creating the same row right now.
            row, _ = EndpointHealth.objects.get_or_create(partner_id=key[0], kind=key[1])
        _apply(row, verdicts, now)


def _apply(row: EndpointHealth, verdicts, now: datetime) -> None:
    for verdict, outcome in verdicts:
        result = outcome.result
        if verdict == SUCCESS:
            if row.state == EndpointHealth.State.FAILING:
                _recovered(row, now)
            elif row.state == EndpointHealth.State.DISABLED:
                row.state = EndpointHealth.State.HEALTHY  # a new URL was set and works
            row.consecutive_failures = 0
            row.last_success_at = now
        elif verdict == FAILURE:
            row.consecutive_failures += 1
            row.last_failure_at = now
            row.last_error = (
                result.error or (f"HTTP {result.status_code}" if result.status_code else "")
            )[:1024]
            if (
                row.state == EndpointHealth.State.HEALTHY
                and row.consecutive_failures >= settings.WEBHOOK_FAILING_AFTER
            ):
                row.state = EndpointHealth.State.FAILING
                row.failing_since = now
                log.warning(
                    "%s is failing after %d failures: %s",
                    _endpoint(row),
                    row.consecutive_failures,
                    row.last_error,
                )
        elif verdict == RATE_LIMITED:
            until = now + retry_after_delay(result, 0)  # the endpoint's pause: no step used
            if row.paused_until is None or until > row.paused_until:
                row.paused_until = until
                _hold_pending(row, until)
        elif verdict == GONE and row.state != EndpointHealth.State.DISABLED:
            partner = Partner.objects.filter(id=row.partner_id).first()
            url = partner.disable_webhook(row.kind) if partner else ""
            row.state = EndpointHealth.State.DISABLED
            row.disabled_url = url or row.disabled_url
            row.last_error = "410 Gone: URL disabled"
            row.last_failure_at = now
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


def _recovered(row: EndpointHealth, now: datetime) -> None:
    row.state = EndpointHealth.State.HEALTHY
    row.failing_since = None
    hours = settings.WEBHOOK_AUTO_REPLAY_HOURS
    log.warning(
        "%s recovered; re-queueing its failed deliveries of the last %d hours",
        _endpoint(row),
        hours,
    )
    if hours:
        row.replay_from = now - timedelta(hours=hours)
        row.replay_until = now
        row.replay_cursor = 0


def replay_step(now: datetime, limit: int) -> int:
    """Re-queue up to `limit` deliveries of recovered endpoints, oldest first. Returns how
    many. Failed ones get a fresh round; pending ones waiting in back-off are made due."""
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
