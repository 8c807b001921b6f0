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
        ordering = ["node_id"]

    def __str__(self) -> str:
        return self.node_id
