"""Tracer emails: round-trip measurements (spec: "Tracer Emails")."""

from django.db import models

from superimap.mailboxes.models import MailboxUser


class TracerLog(models.Model):
    tracer_uid = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(MailboxUser, on_delete=models.CASCADE, related_name="tracer_logs")
    sent_at = models.DateTimeField()
    detected_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "tracers_tracerlog"
        ordering = ["-sent_at"]

    def __str__(self) -> str:
        return self.tracer_uid

    @property
    def latency_seconds(self) -> float | None:
        if self.detected_at is None:
            return None
        return (self.detected_at - self.sent_at).total_seconds()
