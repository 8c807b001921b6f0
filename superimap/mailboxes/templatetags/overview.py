"""The dashboard's overview panel: what an operator checks first (superimap/overview.py
gathers it; this tag adds the tracer line and the pending/failed counts)."""

from __future__ import annotations

from datetime import timedelta
from statistics import median

from django import template
from django.utils import timezone

from superimap import healthz
from superimap import overview as console
from superimap.delivery.health import failing_endpoints
from superimap.delivery.models import Delivery
from superimap.tracers.models import TracerLog

register = template.Library()


@register.inclusion_tag("admin/overview.html")
def overview() -> dict:
    now = timezone.now()
    # Two range scans of the (status, next_attempt_at) index: as cheap with ten million
    # delivered rows as with none (a GROUP BY over every status would read them all).
    pending = Delivery.objects.filter(status=Delivery.Status.PENDING).count()
    failed = Delivery.objects.filter(status=Delivery.Status.FAILED).count()
    tracers = list(
        TracerLog.objects.filter(sent_at__gte=now - timedelta(hours=1)).values_list(
            "sent_at", "detected_at"
        )
    )
    latencies = sorted((d - s).total_seconds() for s, d in tracers if d is not None)
    context = console.build(now)
    context.update(
        {
            "unwatched": healthz.unwatched_count(now),
            "mailboxes_total": sum(s["count"] for s in context["mailbox_states"]),
            "pending": pending,
            "failed": failed,
            "tracers_sent": len(tracers),
            "tracers_detected": len(latencies),
            "tracer_median": median(latencies) if latencies else None,
            "unhealthy_endpoints": list(failing_endpoints()[:50]),
        }
    )
    return context
