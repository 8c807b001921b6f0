from django.contrib import admin, messages
from django.db import transaction
from django.utils import timezone

from superimap import healthz
from superimap.delivery import replaylimit
from superimap.delivery.models import Delivery, DeliveryAttempt, WorkerNode
from superimap.partners.models import Partner


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    fields = ["number", "started_at", "duration_ms", "status_code", "error", "response_excerpt"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "event_id",
        "kind",
        "partner",
        "user",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "created_at",
    ]
    list_filter = ["status", "kind", "partner", "created_at"]
    list_select_related = ["partner", "user"]
    search_fields = ["event_id", "message_id", "user__tag"]
    raw_id_fields = ["user"]
    show_full_result_count = False
    inlines = [DeliveryAttemptInline]
    actions = ["retry_now", "retry_all_failed_for_partner", "replay"]
    readonly_fields = [
        "event_id",
        "kind",
        "partner",
        "user",
        "message_id",
        "status",
        "attempts",
        "max_attempts",
        "next_attempt_at",
        "claimed_by",
        "lease_until",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
        "payload_purged_at",
        "payload",
    ]

    def has_add_permission(self, request):
        return False

    def _per_partner(self, request, queryset, requeue, requeueable) -> int:
        """Re-queue each partner's part of `queryset` within its replay limit, as the API
        does (replaylimit.py): charged what `requeueable(rows)` holds, then `requeue(rows)`.
        A partner over its limit gets nothing queued and an error line."""
        total = 0
        for partner_id in sorted(set(queryset.values_list("partner_id", flat=True))):
            rows = queryset.filter(partner_id=partner_id)
            try:
                with transaction.atomic():
                    replaylimit.charge(partner_id, requeueable(rows).count())
                    total += requeue(rows)
            except replaylimit.ReplayLimited as exc:
                partner = Partner.objects.filter(id=partner_id).first()
                self.message_user(request, f"{partner}: nothing queued. {exc}", messages.ERROR)
        return total

    @admin.action(description="Retry now")
    def retry_now(self, request, queryset):
        count = self._per_partner(request, queryset, Delivery.retry_now, _retryable)
        self.message_user(request, f"{count} delivery(ies) queued for a retry.", messages.SUCCESS)

    @admin.action(description="Retry all failed deliveries of the selected deliveries' partners")
    def retry_all_failed_for_partner(self, request, queryset):
        partner_ids = set(queryset.values_list("partner_id", flat=True))
        failed = Delivery.objects.filter(partner_id__in=partner_ids, status=Delivery.Status.FAILED)
        count = self._per_partner(request, failed, Delivery.retry_now, _retryable)
        self.message_user(
            request, f"{count} failed delivery(ies) queued for a retry.", messages.SUCCESS
        )

    @admin.action(description="Replay: send again with the same event_id (delivered ones too)")
    def replay(self, request, queryset):
        purged = queryset.filter(payload_purged_at__isnull=False).count()
        count = self._per_partner(request, queryset, Delivery.replay, _replayable)
        message = f"{count} delivery(ies) queued to be sent again."
        if purged:
            message += f" {purged} had their payload purged by retention and cannot be replayed."
        self.message_user(request, message, messages.SUCCESS)


def _retryable(rows):
    """What Delivery.retry_now re-queues."""
    return rows.exclude(status__in=[Delivery.Status.PENDING, Delivery.Status.DELIVERED])


def _replayable(rows):
    """What Delivery.replay re-queues."""
    return rows.exclude(status=Delivery.Status.PENDING).filter(payload_purged_at__isnull=True)


@admin.register(WorkerNode)
class WorkerNodeAdmin(admin.ModelAdmin):
    """Webhook worker heartbeats (delivery/heartbeat.py)."""

    list_display = ["worker_id", "host", "pid", "version", "started_at", "heartbeat"]
    readonly_fields = [f.name for f in WorkerNode._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.display(description="Heartbeat")
    def heartbeat(self, worker: WorkerNode) -> str:
        age = timezone.now() - worker.last_seen
        if worker.released_at is not None:
            return f"DEAD, claims handed back at {worker.released_at:%Y-%m-%d %H:%M:%S}"
        state = "alive" if age <= healthz.worker_dead_after() else "DEAD"
        return f"{state}, {age.total_seconds():.0f} s ago"
