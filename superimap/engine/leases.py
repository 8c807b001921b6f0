"""Which mailboxes this node watches: per-user leases and node heartbeats (design.md 9).

A node renews the leases of the mailboxes it holds in one statement per refresh, releases
those that stopped being watchable, and claims unowned or expired ones up to its capacity.
Two nodes never hold the same mailbox: a claim only takes rows whose lease is free.
"""

from __future__ import annotations

import os
import socket
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from superimap import __version__
from superimap.engine.models import EngineNode
from superimap.mailboxes.models import MailboxUser

ID_BATCH = 500  # ids per statement: well under every backend's parameter limit


def alive_nodes(now: datetime, node_id: str, capacity: int, alive: timedelta) -> dict[str, int]:
    """{node id: capacity} of the nodes with a recent heartbeat, this one included."""
    nodes = dict(
        EngineNode.objects.filter(last_seen__gte=now - alive).values_list("node_id", "capacity")
    )
    nodes[node_id] = capacity
    return nodes


def rendezvous_owners(user_ids: list[int], nodes: dict[str, int]) -> dict[int, str]:
    """Bounded-load rendezvous hashing (design.md 9): each user, in id order, goes to the
    highest-ranked node that still has room. Every node computes the same answer from the
    same heartbeats, so no master is needed; a joining node takes ~1/n of the users."""
    load = dict.fromkeys(nodes, 0)
    owners: dict[int, str] = {}
    names = sorted(nodes)
    for user_id in user_ids:
        ranked = sorted(names, key=lambda n: zlib.crc32(f"{n}:{user_id}".encode()), reverse=True)
        for name in ranked:
            if load[name] < nodes[name]:
                owners[user_id] = name
                load[name] += 1
                break
    return owners


def watchable(allow_loopback: bool) -> Q:
    rule = Q(archived=False, connected_at__isnull=False) & (
        ~Q(password="") | ~Q(oauth_refresh_token="")
    )
    if not allow_loopback:
        rule &= Q(connection__provider__loopback_only=False)
    return rule


@dataclass(frozen=True)
class Claim:
    """What claim_mailboxes() changed. ``complete``: ``versions`` is everything this node
    holds ({id: session_version, only ever compared for equality}); otherwise a delta:
    ``versions`` holds the mailboxes newly claimed or whose updated_at moved since
    ``since``, and ``gone`` those no longer held."""

    versions: dict[int, str]
    gone: frozenset[int]
    complete: bool
    as_of: datetime
    # Still ours in the database, but ranked to another live node: stop their sessions,
    # then release_mailboxes() them, so two nodes never watch one mailbox at once.
    handover: frozenset[int] = frozenset()


def claim_mailboxes(
    node_id: str,
    capacity: int,
    lease: timedelta,
    allow_loopback: bool,
    known: int | None = None,
    since: datetime | None = None,
    node_alive: timedelta = timedelta(seconds=30),
) -> Claim:
    """Renew, release and claim, in one transaction.

    ``known``: how many mailboxes the caller believes it holds after the last call, and
    ``since``: report held mailboxes whose updated_at is at least this. Without them (or
    when the renewed count shows the held set changed some other way, e.g. an expired
    lease taken by another node) every held row is read back; otherwise only the delta,
    which spares reading and parsing ~20,000 rows inside the write transaction each refresh.
    """
    now = timezone.now()
    rule = watchable(allow_loopback)
    free_lease = Q(owner_node="") | Q(lease_until__lt=now) | Q(lease_until__isnull=True)
    with transaction.atomic():
        mine = MailboxUser.objects.filter(owner_node=node_id).order_by()
        released = list(mine.exclude(rule).values_list("id", flat=True))
        for start in range(0, len(released), ID_BATCH):
            mine.filter(id__in=released[start : start + ID_BATCH]).update(
                owner_node="", lease_until=None
            )
        renewed = mine.update(lease_until=now + lease)
        nodes = alive_nodes(now, node_id, capacity, node_alive)
        desired: set[int] | None = None
        handover: frozenset[int] = frozenset()
        if len(nodes) > 1:
            ids = list(MailboxUser.objects.filter(rule).order_by("id").values_list("id", flat=True))
            owners = rendezvous_owners(ids, nodes)
            desired = {user_id for user_id, owner in owners.items() if owner == node_id}
            held_now = mine.values_list("id", flat=True)
            handover = frozenset(i for i in held_now if i not in desired and i in owners)
        free = capacity - renewed + len(handover)
        claimed: list[int] = []
        if free > 0:
            candidates = list(
                MailboxUser.objects.filter(rule)
                .filter(free_lease)
                .order_by("id")
                .values_list("id", flat=True)
            )
            if desired is not None:
                candidates = [i for i in candidates if i in desired]
            candidates = candidates[:free]
            for start in range(0, len(candidates), ID_BATCH):
                batch = candidates[start : start + ID_BATCH]
                taken = MailboxUser.objects.filter(free_lease, id__in=batch).update(
                    owner_node=node_id, lease_until=now + lease
                )
                if taken:
                    claimed.extend(batch)
        # The session's version, not updated_at: only changes that matter to the IMAP
        # session (credentials, server, folder, a sweep) restart it. updated_at still finds
        # the rows to look at (every such change moves it too).
        version = "session_version"
        if known is None or since is None or renewed != known - len(released):
            versions = dict(mine.values_list("id", version))
            for user_id in handover:
                versions.pop(user_id, None)
            return Claim(versions, frozenset(), complete=True, as_of=now, handover=handover)
        versions = dict(mine.filter(updated_at__gte=since).values_list("id", version))
        for start in range(0, len(claimed), ID_BATCH):
            # Claimed rows are ours unless another node raced us to them (PostgreSQL).
            versions.update(
                mine.filter(id__in=claimed[start : start + ID_BATCH]).values_list("id", version)
            )
        for user_id in handover:
            versions.pop(user_id, None)
        return Claim(
            versions, frozenset(released) | handover, complete=False, as_of=now, handover=handover
        )


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
