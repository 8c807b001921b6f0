"""The webhook outbox: one Delivery per event, one DeliveryAttempt per POST."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models, transaction
from django.db.models import F
from django.utils import timezone

from superimap.delivery import policy
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Partner


def attempts_per_round() -> int:
    """The first send plus one retry per WEBHOOK_RETRY_SCHEDULE entry."""
    return policy.attempts_per_round(settings.WEBHOOK_RETRY_SCHEDULE)


class DeliveryQuerySet(models.QuerySet):
    def bulk_create(self, objs, *args, **kwargs):
        """Rows and their payloads (each a DeliveryPayload row), in the caller's transaction."""
        objs = list(objs)
        with transaction.atomic(using=self.db, savepoint=False):
            created = super().bulk_create(objs, *args, **kwargs)
            DeliveryPayload.objects.using(self.db).bulk_create(
                [
                    DeliveryPayload(delivery_id=d.pk, payload=d._new_payload)
                    for d in created
                    if d._new_payload is not _UNSET
                ],
                batch_size=kwargs.get("batch_size"),
            )
        for d in created:
            d._new_payload = _UNSET
        return created


_UNSET = object()


class Delivery(models.Model):
    class Kind(models.TextChoices):
        NEW_MAIL = "new_mail", "New mail"
        USER_CONNECTED = "user_connected", "User connected"
        USER_DISCONNECTED = "user_disconnected", "User disconnected"
        USER_ERROR = "user_error", "User error"
        USER_RECOVERED = "user_recovered", "User recovered"
        MESSAGE_UPDATED = "message_updated", "Message updated"
        MESSAGE_DELETED = "message_deleted", "Message deleted"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped (no webhook URL)"
        CANCELLED = "cancelled", "Cancelled"

    event_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    partner = models.ForeignKey(Partner, on_delete=models.CASCADE, related_name="deliveries")
    user = models.ForeignKey(
        MailboxUser, on_delete=models.SET_NULL, null=True, blank=True, related_name="deliveries"
    )
    # The Message-ID of a new_mail (for search); not unique: lists and forwards reuse them.
    message_id = models.CharField(max_length=998, blank=True)
    # Dedup key of a new_mail: MailLog.identity (Message-ID, size, Date). One per user.
    dedup_key = models.CharField(max_length=40, blank=True)
    # The webhook body lives in DeliveryPayload (one row per delivery, written once): the
    # claim's and the outcome's UPDATEs rewrite a ~200-byte row, not the ~2.3 KB payload
    # with it (design.md 5.11). `payload` below reads and writes it.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # The first send plus one per retry (spec: 6); a manual retry or replay grants a round.
    max_attempts = models.PositiveIntegerField(default=attempts_per_round)
    # Real failures in this round (429s are not failures): the retry schedule's step.
    failures = models.PositiveIntegerField(default=0)
    # Not indexed alone: every query of it also says status = 'pending' and goes through
    # delivery_due_by_endpoint (design.md 5.11).
    next_attempt_at = models.DateTimeField()
    claimed_by = models.CharField(max_length=100, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.IntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=1024, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # Retention: when the payload body was dropped (WEBHOOK_RETENTION_DAYS); not replayable.
    payload_purged_at = models.DateTimeField(null=True, blank=True)
    # A backfilled new_mail (design.md 4.12): claimed only when no live delivery is due
    # (queue.py), so live mail never waits behind a backfill.
    backfill = models.BooleanField(default=False)

    class Meta:
        db_table = "delivery_delivery"
        ordering = ["-id"]
        verbose_name_plural = "deliveries"
        indexes = [
            # The claim walks due rows in this order, one lane (live, then backfill) at a
            # time; partner and kind let it skip a full partner's backlog on the index
            # alone (fairness.py, design.md 5.1).
            models.Index(
                fields=["status", "backfill", "next_attempt_at", "id", "partner", "kind"],
                name="delivery_due_by_endpoint",
            ),
            # Per-user order (queue.ORDER_GATE): is an earlier delivery of this user still
            # pending; has a later user_disconnected of this user gone out. Partial, so
            # small: pending rows, user_disconnected rows.
            models.Index(
                fields=["user", "id"],
                condition=models.Q(status="pending"),
                name="delivery_pending_by_user",
            ),
            models.Index(
                fields=["user", "id"],
                condition=models.Q(kind="user_disconnected"),
                name="delivery_disconnect_by_user",
            ),
            # Retention (retention.py): exactly the rows still holding a payload, in the
            # order they become purgeable; a purged row leaves the index.
            models.Index(
                fields=["delivered_at"],
                condition=models.Q(
                    kind="new_mail", status="delivered", payload_purged_at__isnull=True
                ),
                name="delivery_delivered_payloads",
            ),
            models.Index(
                fields=["created_at"],
                condition=models.Q(
                    kind="new_mail", status="failed", payload_purged_at__isnull=True
                ),
                name="delivery_failed_payloads",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "dedup_key"],
                condition=models.Q(kind="new_mail") & ~models.Q(dedup_key=""),
                name="delivery_unique_new_mail_per_dedup_key",
            )
        ]

    objects = DeliveryQuerySet.as_manager()

    # A payload set on an unsaved or changed instance, written by save() (or bulk_create).
    _new_payload = _UNSET

    def __str__(self) -> str:
        return f"{self.kind} {self.event_id}"

    @property
    def payload(self) -> dict:
        """The webhook body as stored; {} once retention purged it (payload_purged_at)."""
        if self._new_payload is not _UNSET:
            return self._new_payload
        try:
            return self.stored_payload.payload
        except DeliveryPayload.DoesNotExist:
            return {}

    @payload.setter
    def payload(self, value: dict) -> None:
        self._new_payload = value

    def save(self, *args, **kwargs) -> None:
        adding = self._state.adding
        with transaction.atomic(using=kwargs.get("using"), savepoint=False):
            super().save(*args, **kwargs)
            if self._new_payload is _UNSET:
                return
            if adding:
                DeliveryPayload.objects.create(delivery_id=self.pk, payload=self._new_payload)
            else:
                DeliveryPayload.objects.update_or_create(
                    delivery_id=self.pk, defaults={"payload": self._new_payload}
                )
        self._new_payload = _UNSET
        self._state.fields_cache.pop("stored_payload", None)

    @classmethod
    def retry_now(cls, queryset) -> int:
        """Make failed/skipped deliveries due now with a fresh round of attempts."""
        count = 0
        for delivery in queryset.exclude(status=cls.Status.PENDING).exclude(
            status=cls.Status.DELIVERED
        ):
            delivery.status = cls.Status.PENDING
            delivery.next_attempt_at = timezone.now()
            delivery.max_attempts = delivery.attempts + attempts_per_round()
            delivery.failures = 0
            delivery.claimed_by = ""
            delivery.lease_until = None
            delivery.save(
                update_fields=[
                    "status",
                    "next_attempt_at",
                    "max_attempts",
                    "failures",
                    "claimed_by",
                    "lease_until",
                ]
            )
            count += 1
        return count

    @classmethod
    def replay(cls, queryset, now=None) -> int:
        """Send finished deliveries again (delivered ones too) with the same event_id.

        Pending ones are queued already and purged ones have no body left: both are left
        alone. One UPDATE; returns how many were queued."""
        return (
            queryset.exclude(status=cls.Status.PENDING)
            .filter(payload_purged_at__isnull=True)
            .update(
                status=cls.Status.PENDING,
                next_attempt_at=now or timezone.now(),
                max_attempts=F("attempts") + attempts_per_round(),
                failures=0,
                claimed_by="",
                lease_until=None,
            )
        )


class DeliveryPayload(models.Model):
    """A delivery's webhook body (JSON; the worker splices its text into the POST), in a
    table of its own: written once with the delivery, read once per attempt by id, deleted
    by retention (Delivery.payload_purged_at) or with its delivery. On SQLite a Delivery row
    with its ~2.3 KB payload filled a 4 KB page, and the claim's and the outcome's UPDATEs
    each wrote that page to the WAL again (design.md 5.11)."""

    delivery = models.OneToOneField(
        Delivery, on_delete=models.CASCADE, primary_key=True, related_name="stored_payload"
    )
    payload = models.JSONField()

    class Meta:
        db_table = "delivery_payload"

    def __str__(self) -> str:
        return f"payload of {self.delivery_id}"


class EndpointHealth(models.Model):
    """How one partner's webhook URL for one kind is doing, from the worker's attempts."""

    class State(models.TextChoices):
        HEALTHY = "healthy", "Healthy"
        FAILING = "failing", "Failing"
        DISABLED = "disabled", "Disabled (410 Gone)"

    partner = models.ForeignKey(Partner, on_delete=models.CASCADE, related_name="endpoints")
    kind = models.CharField(max_length=32)
    state = models.CharField(max_length=16, choices=State.choices, default=State.HEALTHY)
    consecutive_failures = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=1024, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    # 429 Retry-After: nothing is sent to this endpoint before then.
    paused_until = models.DateTimeField(null=True, blank=True)
    # After a recovery: failed deliveries created in [replay_from, replay_until] are being
    # re-queued, oldest first, a few per second; replay_cursor is the last id re-queued.
    replay_from = models.DateTimeField(null=True, blank=True)
    replay_until = models.DateTimeField(null=True, blank=True)
    replay_cursor = models.BigIntegerField(default=0)
    # 410 Gone: the URL that was switched off, for the operator.
    disabled_url = models.URLField(max_length=1000, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "delivery_endpointhealth"
        ordering = ["partner_id", "kind"]
        verbose_name = "webhook endpoint"
        constraints = [
            models.UniqueConstraint(fields=["partner", "kind"], name="one_health_per_endpoint")
        ]

    def __str__(self) -> str:
        return f"{self.partner} / {self.kind}: {self.state}"


class DeliveryAttempt(models.Model):
    # No index of its own: the unique (delivery, number) leads with it (design.md 5.11).
    delivery = models.ForeignKey(
        Delivery, on_delete=models.CASCADE, related_name="attempt_log", db_index=False
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    url = models.URLField(max_length=1000)
    status_code = models.IntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True)
    error = models.CharField(max_length=1024, blank=True)

    class Meta:
        db_table = "delivery_deliveryattempt"
        ordering = ["delivery_id", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="one_row_per_attempt")
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"


class ReplayAllowance(models.Model):
    """A partner's token bucket for re-queueing finished deliveries (replay, retry): up to
    WEBHOOK_REPLAY_BURST at once, refilled at WEBHOOK_REPLAY_PER_SECOND (replaylimit.py).
    One row per partner, created at its first replay."""

    partner = models.OneToOneField(
        Partner, on_delete=models.CASCADE, related_name="replay_allowance"
    )
    tokens = models.FloatField()
    refilled_at = models.DateTimeField()

    class Meta:
        db_table = "delivery_replayallowance"

    def __str__(self) -> str:
        return f"{self.partner}: {self.tokens:.0f} replays left"


class WorkerNode(models.Model):
    """A webhook worker process's heartbeat (delivery/heartbeat.py): renewed every second,
    so a worker whose row is stale is dead and its claimed deliveries are sent by another
    worker in seconds, not after WEBHOOK_LEASE_SECONDS. ``released_at``: when a live
    worker released the claims of this dead one (the row stays, for /healthz)."""

    worker_id = models.CharField(max_length=100, unique=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    version = models.CharField(max_length=50)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "delivery_workernode"
        ordering = ["worker_id"]

    def __str__(self) -> str:
        return self.worker_id
