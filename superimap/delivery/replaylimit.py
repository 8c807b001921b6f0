"""How many finished deliveries a partner may re-queue (replay, retry), per partner.

A replay re-queues any number of deliveries with one call. The worker's fair shares
(fairness.py) keep them from taking everyone's slots, but the queue itself, the UPDATE and
the receiver's load still grow with them, so each partner has a token bucket: up to
WEBHOOK_REPLAY_BURST deliveries at once, refilled at WEBHOOK_REPLAY_PER_SECOND. The API's
replay and retry routes and the dashboard's Replay and Retry actions all charge it; a
request that does not fit is refused whole (nothing is queued) with the seconds until it
would fit. Auto-replay after a recovery has its own rate (WEBHOOK_AUTO_REPLAY_RATE) and
does not charge it.

The bucket is a row per partner (ReplayAllowance), read and written under a row lock
(PostgreSQL) or the IMMEDIATE transaction (SQLite), so it holds across web processes.
"""

from __future__ import annotations

import math
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from superimap.delivery.models import ReplayAllowance


class ReplayLimited(Exception):
    """The partner may not re-queue `wanted` deliveries now. `retry_after` is the number of
    seconds until it may, or None when the request is larger than the bucket itself."""

    def __init__(self, wanted: int, available: int, retry_after: int | None) -> None:
        self.wanted = wanted
        self.available = available
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def message(self) -> str:
        burst, rate = settings.WEBHOOK_REPLAY_BURST, settings.WEBHOOK_REPLAY_PER_SECOND
        if self.retry_after is None:
            return (
                f"This would re-queue {self.wanted} deliveries; at most {burst} can be "
                "re-queued at once. Split the time range."
            )
        return (
            f"This would re-queue {self.wanted} deliveries; {self.available} may be "
            f"re-queued now (up to {burst} at once, {rate} more each second). "
            f"Retry in {self.retry_after} s or narrow the request."
        )


def charge(partner_id: int, wanted: int, now: datetime | None = None) -> None:
    """Take `wanted` (at least 1: every request costs one) from the partner's bucket, or
    raise ReplayLimited and take nothing. Call inside the transaction that re-queues."""
    now = now or timezone.now()
    burst, rate = settings.WEBHOOK_REPLAY_BURST, settings.WEBHOOK_REPLAY_PER_SECOND
    cost = max(1, wanted)
    with transaction.atomic():
        allowance, _ = ReplayAllowance.objects.select_for_update().get_or_create(
            partner_id=partner_id, defaults={"tokens": float(burst), "refilled_at": now}
        )
        elapsed = max(0.0, (now - allowance.refilled_at).total_seconds())
        tokens = min(float(burst), allowance.tokens + elapsed * rate)
        if cost > burst:
            raise ReplayLimited(wanted, int(tokens), None)
        if cost > tokens:
            raise ReplayLimited(wanted, int(tokens), max(1, math.ceil((cost - tokens) / rate)))
        ReplayAllowance.objects.filter(id=allowance.id).update(
            tokens=tokens - cost, refilled_at=now
        )
