"""Which mailboxes this node watches: per-user leases and node heartbeats (design.md 9).

A node renews the leases of the mailboxes it holds in one statement per refresh, releases
those that stopped being watchable, and claims unowned or expired ones up to its capacity.
Two nodes never hold the same mailbox: a claim only takes rows whose lease is free.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from superimap import __version__
from superimap.engine.models import EngineNode
from superimap.mailboxes.models import MailboxUser


def watchable(allow_loopback: bool) -> Q:
    rule = Q(archived=False, connected_at__isnull=False) & (
        ~Q(password="") | ~Q(oauth_refresh_token="")
    )
    if not allow_loopback:
        rule &= Q(connection__provider__loopback_only=False)
    return rule


def claim_mailboxes(
    node_id: str, capacity: int, lease: timedelta, allow_loopback: bool
) -> dict[int, datetime]:
    """Renew, release and claim; returns {user id: updated_at} of what this node holds."""
    now = timezone.now()
    rule = watchable(allow_loopback)
    with transaction.atomic():
        mine = MailboxUser.objects.filter(owner_node=node_id)
        mine.exclude(rule).update(owner_node="", lease_until=None)
        mine.update(lease_until=now + lease)
        free = capacity - mine.count()
        if free > 0:
            candidates = list(
                MailboxUser.objects.filter(rule)
                .filter(Q(owner_node="") | Q(lease_until__lt=now) | Q(lease_until__isnull=True))
                .order_by("id")
                .values_list("id", flat=True)[:free]
            )
            if candidates:
                MailboxUser.objects.filter(id__in=candidates).filter(
                    Q(owner_node="") | Q(lease_until__lt=now) | Q(lease_until__isnull=True)
                ).update(owner_node=node_id, lease_until=now + lease)
        return dict(MailboxUser.objects.filter(owner_node=node_id).values_list("id", "updated_at"))


def release_mailboxes(node_id: str, user_ids: list[int] | None = None) -> int:
    rows = MailboxUser.objects.filter(owner_node=node_id)
    if user_ids is not None:
        rows = rows.filter(id__in=user_ids)
    return rows.update(owner_node="", lease_until=None)


def heartbeat(node_id: str, started_at: datetime, held: int, capacity: int) -> None:
    EngineNode.objects.update_or_create(
        node_id=node_id,
        defaults={
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "started_at": started_at,
            "last_seen": timezone.now(),
            "mailboxes_held": held,
            "capacity": capacity,
        },
    )


def remove_node(node_id: str) -> None:
    release_mailboxes(node_id)
    EngineNode.objects.filter(node_id=node_id).delete()
