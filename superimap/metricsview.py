"""/metrics on the web port and the gauges it reads from the database at scrape time.

The process's own counters and histograms are in superimap/platform/metrics.py; these gauges
read the database (mailboxes, deliveries, endpoint health, heartbeats), so they cover every
process. METRICS_PORT of a web process serves them too (port_registry).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Max, Min, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from superimap import healthz
from superimap.delivery.models import Delivery, EndpointHealth, WorkerNode
from superimap.engine.models import EngineNode
from superimap.mailboxes.models import MailboxUser

NODE_ALIVE = timedelta(seconds=30)


def _count_by(name: str, documentation: str, field: str, rows, choices) -> GaugeMetricFamily:
    """One gauge per choice of ``field`` (0 where no row has it), counted in one query."""
    gauge = GaugeMetricFamily(name, documentation, labels=[field])
    counts = dict(
        rows.order_by().values_list(field).annotate(n=Count("id")).values_list(field, "n")
    )
    for value, _label in choices:
        gauge.add_metric([value], counts.get(value, 0))
    return gauge


class DatabaseCollector:
    """Gauges computed from the database at scrape time."""

    def collect(self):

        yield _count_by(
            "superimap_mailboxes",
            "Active mailboxes by engine status",
            "status",
            MailboxUser.objects.filter(archived=False),
            MailboxUser.Status.choices,
        )
        yield _count_by(
            "superimap_deliveries",
            "Webhook deliveries by status",
            "status",
            Delivery.objects.all(),
            Delivery.Status.choices,
        )
        yield _count_by(
            "superimap_webhook_endpoints",
            "Webhook endpoints (partner and kind) with a health record, by state",
            "state",
            EndpointHealth.objects.all(),
            EndpointHealth.State.choices,
        )
        failing = GaugeMetricFamily(
            "superimap_webhook_endpoint_failing",
            "1 for each webhook endpoint that is failing or disabled (410 Gone)",
            labels=["partner_id", "kind"],
        )
        for partner_id, kind in EndpointHealth.objects.exclude(
            state=EndpointHealth.State.HEALTHY
        ).values_list("partner_id", "kind"):
            failing.add_metric([str(partner_id), kind], 1)
        yield failing

        now = timezone.now()
        oldest = Delivery.objects.filter(status=Delivery.Status.PENDING).aggregate(
            oldest=Min("created_at")
        )["oldest"]
        yield GaugeMetricFamily(
            "superimap_oldest_pending_delivery_seconds",
            "Age of the oldest pending webhook delivery",
            value=(now - oldest).total_seconds() if oldest else 0.0,
        )
        alive = EngineNode.objects.filter(last_seen__gte=now - NODE_ALIVE).aggregate(
            nodes=Count("id"), sessions=Sum("mailboxes_held")
        )
        yield GaugeMetricFamily(
            "superimap_engine_nodes_alive",
            "Engine nodes with a heartbeat in the last 30 s",
            value=alive["nodes"],
        )
        yield GaugeMetricFamily(
            "superimap_engine_mailbox_sessions",
            "Mailbox sessions of all live engine nodes (their last heartbeat)",
            value=alive["sessions"] or 0,
        )
        yield from _liveness(now)


def _liveness(now):
    """Heartbeat ages and what a dead part leaves behind (superimap/healthz.py)."""
    engines = GaugeMetricFamily(
        "superimap_engine_node_heartbeat_age_seconds",
        "Seconds since each engine node's last heartbeat (a dead node's row goes when "
        "another node takes its mailboxes over)",
        labels=["node"],
    )
    for node, last_seen in EngineNode.objects.values_list("node_id", "last_seen"):
        engines.add_metric([node], (now - last_seen).total_seconds())
    yield engines
    workers = GaugeMetricFamily(
        "superimap_worker_heartbeat_age_seconds",
        "Seconds since the last heartbeat of the freshest webhook worker of each host",
        labels=["host"],
    )
    for host, last_seen in (
        WorkerNode.objects.order_by().values_list("host").annotate(last=Max("last_seen"))
    ):
        workers.add_metric([host], (now - last_seen).total_seconds())
    yield workers
    yield GaugeMetricFamily(
        "superimap_oldest_due_delivery_seconds",
        "Seconds the oldest due, unsent webhook delivery has waited past its due time",
        value=healthz.oldest_due_age(now),
    )
    yield GaugeMetricFamily(
        "superimap_mailboxes_unwatched",
        "Connected mailboxes no live engine node holds (a dead engine, or none running)",
        value=healthz.unwatched_count(now),
    )


_scrape_registry = CollectorRegistry()
_scrape_registry.register(DatabaseCollector())


class _Registries:
    """Several registries scraped as one."""

    def __init__(self, *registries) -> None:
        self.registries = registries

    def collect(self):
        for registry in self.registries:
            yield from registry.collect()


def port_registry(with_database: bool):
    """What METRICS_PORT serves: this process's counters, and with_database the gauges
    /metrics adds (for a web process)."""
    return _Registries(REGISTRY, _scrape_registry) if with_database else REGISTRY


def metrics_view(request: HttpRequest) -> HttpResponse:
    """/metrics on the web port. In production it needs METRICS_TOKEN: without one set it
    is refused (mailbox counts and queue depths are not for everyone); the engine's and
    worker's own METRICS_PORT (127.0.0.1 only) is the way to scrape without a token."""
    token = settings.METRICS_TOKEN
    if not token and settings.PRODUCTION:
        return HttpResponse(
            "metrics are off on the web port: set METRICS_TOKEN\n",
            status=403,
            content_type="text/plain",
        )
    if token and not constant_time_compare(
        request.headers.get("Authorization", ""), f"Bearer {token}"
    ):
        return HttpResponse(
            "metrics need the bearer token\n", status=401, content_type="text/plain"
        )
    body = generate_latest(REGISTRY) + generate_latest(_scrape_registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
