"""The dashboard's overview panel: what an operator checks first."""

from __future__ import annotations

from datetime import timedelta
from statistics import median

from django import template
from django.db.models import Count
from django.utils import timezone

from superimap import healthz
from superimap.delivery.health import failing_endpoints
from superimap.delivery.models import Delivery
from superimap.engine.models import EngineNode
from superimap.mailboxes.models import MailboxUser
from superimap.tracers.models import TracerLog

register = template.Library()

NODE_ALIVE = timedelta(seconds=30)


@register.inclusion_tag("admin/overview.html")
def overview() -> dict:
    now = timezone.now()
    statuses = dict(
        MailboxUser.objects.filter(archived=False)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    deliveries = dict(
        Delivery.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n")
    )
    delivered_last_hour = Delivery.objects.filter(
        status=Delivery.Status.DELIVERED, delivered_at__gte=now - timedelta(hours=1)
    ).count()
    nodes = list(EngineNode.objects.filter(last_seen__gte=now - NODE_ALIVE))
    tracers = list(
        TracerLog.objects.filter(sent_at__gte=now - timedelta(hours=1)).values_list(
            "sent_at", "detected_at"
        )
    )
    latencies = sorted((d - s).total_seconds() for s, d in tracers if d is not None)
    _, health = healthz.report()
    return {
        "health_problems": health["problems"],
        "unwatched": healthz.unwatched_count(now),
        "mailboxes": [
            (label, statuses.get(value, 0)) for value, label in MailboxUser.Status.choices
        ],
        "mailboxes_total": sum(statuses.values()),
        "pending": deliveries.get(Delivery.Status.PENDING, 0),
        "failed": deliveries.get(Delivery.Status.FAILED, 0),
        "delivered_last_hour": delivered_last_hour,
        "nodes": nodes,
        "tracers_sent": len(tracers),
        "tracers_detected": len(latencies),
        "tracer_median": median(latencies) if latencies else None,
        "unhealthy_endpoints": list(failing_endpoints()[:50]),
    }
