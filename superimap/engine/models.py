"""Engine nodes: heartbeats that let several engine processes share mailboxes."""

from django.db import models


class EngineNode(models.Model):
    node_id = models.CharField(max_length=100, unique=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    version = models.CharField(max_length=50)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)
    mailboxes_held = models.PositiveIntegerField(default=0)
    capacity = models.PositiveIntegerField(default=0)
    # How the node's process holds its name (engine/nodelock.py): "flock" or "advisory";
    # "" for none (engines run inside tests). A held name lock that is free proves the
    # process dead, so its mailboxes move in seconds rather than after the lease.
    name_lock = models.CharField(max_length=20, blank=True, default="")

    class Meta:
        db_table = "engine_enginenode"
        ordering = ["node_id"]

    def __str__(self) -> str:
        return self.node_id


class MinuteRollup(models.Model):
    """What one process (an engine, a worker, or both in one ``superimap up``) did in one
    minute: written by the process from its in-memory counters (superimap/platform/rollups.py), read
    by the dashboard's overview, so its charts never scan the Delivery table.

    Latencies are histograms over rollups.BOUNDS (a list of counts per bucket, the last one
    for anything slower): buckets of several rows add up, and p50/p99 come from the sum."""

    minute = models.DateTimeField()
    source = models.CharField(max_length=120)
    new_mails = models.PositiveIntegerField(default=0)
    delivered = models.PositiveIntegerField(default=0)
    failed_attempts = models.PositiveIntegerField(default=0)
    push_to_commit = models.JSONField(default=list)
    commit_to_delivered = models.JSONField(default=list)
    # The delivery backlog as this process's worker saw it once in the minute (None: no
    # worker here): due webhooks not sent, and how long the oldest has waited.
    backlog = models.PositiveIntegerField(null=True)
    backlog_oldest_seconds = models.FloatField(null=True)

    class Meta:
        db_table = "engine_minuterollup"
        constraints = [
            models.UniqueConstraint(fields=["minute", "source"], name="rollup_minute_source")
        ]
        indexes = [models.Index(fields=["minute"], name="rollup_minute")]

    def __str__(self) -> str:
        return f"{self.source} {self.minute:%Y-%m-%d %H:%M}"
