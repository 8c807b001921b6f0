import json

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Exists, OuterRef, Subquery
from django.utils import timezone
from django.utils.html import format_html

from superimap import healthz
from superimap.console import CONSOLE_CSS
from superimap.delivery import replaylimit
from superimap.delivery.models import Delivery, DeliveryAttempt, EndpointHealth, WorkerNode
from superimap.mailboxes.models import MailLog
from superimap.partners.models import Partner


def _subject_of():
    """The subject of a new_mail's message, from the mail log (kept after retention purges
    the payload): same user, same dedup key."""
    rows = MailLog.objects.filter(user=OuterRef("user"), identity=OuterRef("dedup_key"))
    return Subquery(rows.order_by("-id").values("subject")[:1])


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    fields = ["number", "started_at", "duration_ms", "status_code", "error", "response_excerpt"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    class Media:
        css = CONSOLE_CSS

    list_display = [
        "short_event_id",
        "kind",
        "partner",
        "user",
        "subject",
        "status",
        "attempts",
        "error_text",
        "latency",
        "created_at",
    ]
    list_display_links = ["short_event_id"]
    list_filter = ["status", "kind", "partner", "created_at"]
    list_select_related = ["partner", "user"]
    # Subject (from the mail log) is searched in get_search_results.
    search_fields = ["event_id", "message_id", "user__tag", "user__email"]
    search_help_text = "Event id (or its start), subject, user tag or email, Message-ID."
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

    # Read-only (design.md 6.3): deliveries are the record of what was sent; retention
    # purges them. Nothing to edit (not even the dedup key), nothing to delete.
    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(subject_text=_subject_of())

    def get_search_results(self, request, queryset, search_term):
        results, duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term:
            by_subject = MailLog.objects.filter(
                user=OuterRef("user"), identity=OuterRef("dedup_key"), subject__icontains=term
            )
            results = results | queryset.filter(Exists(by_subject))
        return results, duplicates

    @admin.display(description="Payload")
    def payload(self, delivery):
        """As stored (DeliveryPayload), JSON as the admin showed the column; {} once purged."""
        return json.dumps(delivery.payload, ensure_ascii=False)

    @admin.display(description="Event", ordering="event_id")
    def short_event_id(self, delivery):
        text = str(delivery.event_id)
        return format_html('<code title="{}">{}</code>', text, text[:8])

    @admin.display(description="Subject")
    def subject(self, delivery):
        text = getattr(delivery, "subject_text", None) or ""
        if not text:
            return "-"
        return text if len(text) <= 80 else text[:79] + "…"

    @admin.display(description="Last error")
    def error_text(self, delivery):
        if not delivery.last_error:
            return "-"
        text = delivery.last_error
        short = text if len(text) <= 160 else text[:159] + "…"
        return format_html('<span class="si-error" title="{}">{}</span>', text, short)

    @admin.display(description="Latency")
    def latency(self, delivery):
        """From the event's creation to its delivery."""
        if delivery.delivered_at is None:
            return "-"
        seconds = (delivery.delivered_at - delivery.created_at).total_seconds()
        return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"

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


@admin.register(EndpointHealth)
class EndpointHealthAdmin(admin.ModelAdmin):
    """Each partner's webhook endpoints, as the worker sees them (read-only)."""

    class Media:
        css = CONSOLE_CSS

    list_display = [
        "partner",
        "kind",
        "state",
        "consecutive_failures",
        "failing_since",
        "last_success_at",
        "last_error",
    ]
    list_filter = ["state", "kind"]
    list_select_related = ["partner"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


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
