"""One log line per minute per process: what it holds and what went through it.

    summary of the last 60 s: mailboxes 120 (idle 118, backing_off 2); mails in 57;
    webhooks out 301 (delivered 290, retrying 11); backlog 12 due, oldest waiting 3.2 s

The engine part (mailboxes by state, mails in) appears in a process that runs the engine,
the webhook part (webhooks out by outcome, backlog of due webhooks) in one that runs a
worker; `superimap up` has both. LOG_SUMMARY_SECONDS sets the interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from django.conf import settings
from django.db.models import Count, Min
from django.utils import timezone

from superimap.delivery.models import Delivery
from superimap.platform import dboutage

log = logging.getLogger("superimap.summary")

# Worker outcomes are counted by the delivery's status after the attempt.
OUTCOMES = {"pending": "retrying"}  # as superimap_webhook_attempts_total names it


def backlog() -> tuple[int, float]:
    """(due webhooks not sent yet, seconds the oldest of them has waited past its time)."""
    now = timezone.now()
    row = Delivery.objects.filter(
        status=Delivery.Status.PENDING, next_attempt_at__lte=now
    ).aggregate(count=Count("id"), oldest=Min("next_attempt_at"))
    oldest = (now - row["oldest"]).total_seconds() if row["oldest"] else 0.0
    return row["count"], max(0.0, oldest)


class Summary:
    def __init__(self, pool, engine=None, worker=None) -> None:
        self.pool = pool
        self.engine = engine
        self.worker = worker
        self._mails = engine.emails_processed if engine else 0
        self._outcomes = Counter(worker.counts) if worker else Counter()
        self._since = time.monotonic()

    async def line(self) -> str:
        now = time.monotonic()
        parts = [f"summary of the last {now - self._since:.0f} s:"]
        self._since = now
        if self.engine is not None:
            states = self.engine.session_states()
            by_state = ", ".join(f"{s} {n}" for s, n in sorted(states.items()))
            mails = self.engine.emails_processed
            parts.append(
                f"mailboxes {sum(states.values())}{f' ({by_state})' if by_state else ''};"
                f" mails in {mails - self._mails};"
            )
            self._mails = mails
        if self.worker is not None:
            outcomes = Counter(self.worker.counts)
            delta = outcomes - self._outcomes
            self._outcomes = outcomes
            by_outcome = ", ".join(f"{OUTCOMES.get(o, o)} {n}" for o, n in sorted(delta.items()))
            parts.append(
                f"webhooks out {sum(delta.values())}{f' ({by_outcome})' if by_outcome else ''};"
            )
            try:
                due, oldest = await self.pool.run(backlog)
            except Exception as exc:  # noqa: BLE001 - the summary must not stop anything
                if not dboutage.lost(exc):
                    log.warning("summary: could not read the backlog: %s", exc)
                parts.append("backlog unknown (database unavailable)")
            else:
                parts.append(f"backlog {due} due, oldest waiting {oldest:.1f} s")
        return " ".join(parts).rstrip(";")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.LOG_SUMMARY_SECONDS)
            if stop.is_set():
                return
            log.info("%s", await self.line())
