"""The dashboard's front page (design.md 9.1): what an operator checks first.

Rates and latencies come from the MinuteRollup rows the engines and workers write
(superimap/platform/rollups.py), at most a day of them; states come from small GROUP BYs over
mailboxes and endpoints and from the heartbeats (superimap/healthz.py). Nothing here reads
the Delivery table beyond two indexed lookups (the due backlog), so the page costs the
same with ten million delivery rows as with ten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Count, F, Value
from django.db.models.functions import Coalesce, NullIf
from django.urls import reverse
from django.utils import timezone

from superimap import healthz
from superimap.charts import Series, line_chart
from superimap.delivery.models import EndpointHealth, WorkerNode
from superimap.engine.models import MinuteRollup
from superimap.mailboxes.models import MailboxUser
from superimap.platform.rollups import BOUNDS

# A host is named in a banner when at least this many of its mailboxes are watched and
# more than half of them fail.
HOST_MIN_MAILBOXES = 3
FAILING_STATUSES = ("backing_off", "auth_failed", "tls_failed")
WORKERS_SHOWN = 20


def percentile(buckets: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of a rollups.BOUNDS histogram, interpolated in its bucket."""
    total = sum(buckets)
    if not total:
        return None
    target = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= target:
            if i >= len(BOUNDS):
                return BOUNDS[-1]
            low = BOUNDS[i - 1] if i else 0.0
            return low + (BOUNDS[i] - low) * (target - seen) / count
        seen += count
    return BOUNDS[-1]


def _add(into: list[int], more: list[int]) -> None:
    for i, count in enumerate(more[: len(into)]):
        into[i] += count


@dataclass
class Window:
    """One chart range: a point per ``step`` minutes from ``start`` to the current minute."""

    name: str
    start: datetime
    end: datetime
    step: int
    points: int
    new_mails: list[float | None] = field(default_factory=list)
    delivered: list[float | None] = field(default_factory=list)
    failed: list[float | None] = field(default_factory=list)
    push_p50: list[float | None] = field(default_factory=list)
    push_p99: list[float | None] = field(default_factory=list)
    commit_p50: list[float | None] = field(default_factory=list)
    commit_p99: list[float | None] = field(default_factory=list)
    backlog: list[float | None] = field(default_factory=list)
    totals: dict = field(default_factory=dict)
    charts: list = field(default_factory=list)
    links: dict = field(default_factory=dict)


def window(name: str, now: datetime, minutes: int, step: int) -> Window:
    current = now.replace(second=0, microsecond=0)
    points = minutes // step
    start = current - timedelta(minutes=points * step - 1)
    w = Window(name, start, now, step, points)
    sums = [[0, 0, 0] for _ in range(points)]
    seen = [False] * points
    push = [[0] * (len(BOUNDS) + 1) for _ in range(points)]
    commit = [[0] * (len(BOUNDS) + 1) for _ in range(points)]
    backlog: list[float | None] = [None] * points
    rows = MinuteRollup.objects.filter(minute__gte=start).values_list(
        "minute",
        "new_mails",
        "delivered",
        "failed_attempts",
        "push_to_commit",
        "commit_to_delivered",
        "backlog",
    )
    for minute, new, delivered, failed, push_b, commit_b, due in rows:
        i = int((minute - start).total_seconds() // 60) // step
        if not 0 <= i < points:
            continue
        seen[i] = True
        sums[i][0] += new
        sums[i][1] += delivered
        sums[i][2] += failed
        _add(push[i], push_b)
        _add(commit[i], commit_b)
        if due is not None:
            backlog[i] = max(backlog[i] or 0, due)
    all_push = [0] * (len(BOUNDS) + 1)
    all_commit = [0] * (len(BOUNDS) + 1)
    for i in range(points):
        rate = (lambda n: n / step) if seen[i] else (lambda n: None)  # noqa: E731
        w.new_mails.append(rate(sums[i][0]))
        w.delivered.append(rate(sums[i][1]))
        w.failed.append(rate(sums[i][2]))
        w.push_p50.append(percentile(push[i], 0.5))
        w.push_p99.append(percentile(push[i], 0.99))
        w.commit_p50.append(percentile(commit[i], 0.5))
        w.commit_p99.append(percentile(commit[i], 0.99))
        w.backlog.append(backlog[i])
        _add(all_push, push[i])
        _add(all_commit, commit[i])
    w.totals = {
        "new_mails": sum(s[0] for s in sums),
        "delivered": sum(s[1] for s in sums),
        "failed": sum(s[2] for s in sums),
        "push_p50": percentile(all_push, 0.5),
        "push_p99": percentile(all_push, 0.99),
        "commit_p50": percentile(all_commit, 0.5),
        "commit_p99": percentile(all_commit, 0.99),
        "backlog": next((b for b in reversed(backlog) if b is not None), None),
    }
    unit = "per minute" if step == 1 else f"per minute, {step}-minute averages"
    slug = name.replace(" ", "-")
    w.charts = [
        (
            _link("delivery_delivery", status__exact="delivered", delivered_at__gte=start),
            line_chart(
                f"New mails and webhooks ({unit}), last {name}",
                [
                    Series("delivered", w.delivered, "#2ca02c"),
                    Series("failed attempts", w.failed, "#d62728"),
                    # Drawn last and dashed: it runs on top of "delivered" when all is well.
                    Series("new mails", w.new_mails, "#1f77b4", dashed=True),
                ],
                start,
                now,
                chart_id=f"chart-throughput-{slug}",
            ),
        ),
        (
            _link("delivery_delivery", status__exact="delivered", delivered_at__gte=start),
            line_chart(
                f"Latency p50/p99, last {name}",
                [
                    Series("push→commit p50", w.push_p50, "#9ecae1"),
                    Series("push→commit p99", w.push_p99, "#1f77b4"),
                    Series("commit→2xx p50", w.commit_p50, "#a1d99b"),
                    Series("commit→2xx p99", w.commit_p99, "#2ca02c"),
                ],
                start,
                now,
                unit="s",
                chart_id=f"chart-latency-{slug}",
            ),
        ),
        (
            _link("delivery_delivery", status__exact="pending"),
            line_chart(
                f"Delivery backlog (due, not sent), last {name}",
                [Series("due webhooks", w.backlog, "#ff7f0e")],
                start,
                now,
                chart_id=f"chart-backlog-{slug}",
            ),
        ),
    ]
    w.links = {
        "new_mails": _link("mailboxes_maillog", status="delivered", created_at__gte=start),
        "delivered": _link("delivery_delivery", status__exact="delivered", delivered_at__gte=start),
        "failed": _link("delivery_delivery", failures__gte=1, created_at__gte=start),
    }
    return w


def _link(admin_model: str, **filters) -> str:
    query = {
        key: value.isoformat(timespec="seconds") if isinstance(value, datetime) else value
        for key, value in filters.items()
    }
    url = reverse(f"admin:{admin_model}_changelist")
    return f"{url}?{urlencode(query)}" if query else url


def mailbox_states() -> list[dict]:
    """Active mailboxes by status, with the commonest errors of the failing ones."""
    active = MailboxUser.objects.filter(archived=False)
    counts = dict(active.order_by().values_list("status").annotate(n=Count("id")))
    reasons: dict[str, list] = {}
    errors = (
        active.filter(status__in=FAILING_STATUSES)
        .exclude(last_error="")
        .order_by()
        .values_list("status", "last_error")
        .annotate(n=Count("id"))
        .order_by("-n")
    )
    for status, error, n in errors[:50]:
        if len(reasons.setdefault(status, [])) < 3:
            reasons[status].append((error, n))
    return [
        {
            "status": value,
            "label": label,
            "count": counts.get(value, 0),
            "reasons": reasons.get(value, []),
            "link": _link("mailboxes_mailboxuser", status__exact=value),
        }
        for value, label in MailboxUser.Status.choices
        if counts.get(value)
    ]


def failing_hosts() -> list[dict]:
    """IMAP hosts where most watched mailboxes fail, with the commonest error."""
    rows = (
        MailboxUser.objects.filter(archived=False, connected_at__isnull=False)
        .annotate(
            host=Coalesce(
                NullIf(F("connection__imap_host"), Value("")), F("connection__provider__imap_host")
            )
        )
        .order_by()
        .values_list("host", "status")
        .annotate(n=Count("id"))
    )
    totals: dict[str, list[int]] = {}
    for host, status, n in rows:
        counts = totals.setdefault(host or "", [0, 0])
        counts[0] += n
        if status in FAILING_STATUSES:
            counts[1] += n
    hosts = []
    for host, (total, failing) in sorted(totals.items()):
        if total >= HOST_MIN_MAILBOXES and failing * 2 > total:
            common = (
                MailboxUser.objects.filter(
                    archived=False, connected_at__isnull=False, status__in=FAILING_STATUSES
                )
                .annotate(
                    host=Coalesce(
                        NullIf(F("connection__imap_host"), Value("")),
                        F("connection__provider__imap_host"),
                    )
                )
                .filter(host=host)
                .order_by()
                .values_list("last_error")
                .annotate(n=Count("id"))
                .order_by("-n")
                .first()
            )
            hosts.append(
                {
                    "host": host,
                    "failing": failing,
                    "total": total,
                    "error": common[0] if common else "",
                    "link": _link("mailboxes_mailboxuser", imap_host=host),
                }
            )
    return hosts


def endpoints() -> list[dict]:
    counts = dict(EndpointHealth.objects.order_by().values_list("state").annotate(n=Count("id")))
    return [
        {"state": value, "label": label, "count": counts.get(value, 0)}
        for value, label in EndpointHealth.State.choices
    ]


def dead_workers(now: datetime) -> list[dict]:
    """Workers that stopped sending heartbeats without leaving (crashed or stuck) in the
    last day; a worker that stopped cleanly released its row."""
    cutoff = now - healthz.worker_dead_after()
    rows = WorkerNode.objects.filter(
        released_at__isnull=True, last_seen__lt=cutoff, last_seen__gte=now - timedelta(days=1)
    ).order_by("-last_seen")
    return [
        {"worker": w.worker_id, "host": w.host, "age": (now - w.last_seen).total_seconds()}
        for w in rows[:WORKERS_SHOWN]
    ]


def build(now: datetime | None = None) -> dict:
    now = now or timezone.now()
    _, health = healthz.report()
    engines = health.get("engines", [])
    workers = [
        w for w in health.get("workers", []) if w["alive"] or w["heartbeat_age_seconds"] < 86400
    ][:WORKERS_SHOWN]
    backlog = health.get("deliveries", {})
    limit = settings.HEALTHZ_BACKLOG_SECONDS
    return {
        "now": now,
        "health_problems": health["problems"],
        "windows": [window("hour", now, 60, 1), window("day", now, 24 * 60, 10)],
        "mailbox_states": mailbox_states(),
        "failing_hosts": failing_hosts(),
        "endpoints": endpoints(),
        "engines": engines,
        "dead_engines": [e for e in engines if not e["alive"]],
        "workers": workers,
        "dead_workers": dead_workers(now),
        "backlog_oldest": backlog.get("oldest_due_seconds", 0.0),
        "backlog_limit": limit,
        "backlog_late": backlog.get("oldest_due_seconds", 0.0) > limit,
        "links": {
            "pending": _link("delivery_delivery", status__exact="pending"),
            "engines": _link("engine_enginenode"),
            "workers": _link("delivery_workernode"),
            "endpoints_failing": _link("delivery_delivery", status__exact="failed"),
        },
    }
