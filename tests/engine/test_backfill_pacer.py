"""The backfill pacer (engine/backfill.py): a bucket per mailbox and one per host, so N
mailboxes of one provider together stay under BACKFILL_RATE_PER_HOST."""

from __future__ import annotations

import pytest

from superimap.engine.backfill import BackfillPacer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_each_mailbox_is_paced_at_its_rate():
    clock = Clock()
    pacer = BackfillPacer(per_mailbox=20, per_host=1000, clock=clock)
    assert pacer.step == 5
    assert pacer.take(1, "imap.example", 5) == 0.0
    assert pacer.take(1, "imap.example", 5) == pytest.approx(0.25)
    assert pacer.take(2, "imap.example", 5) == 0.0  # another mailbox: its own bucket


def test_mailboxes_of_one_host_share_its_rate():
    clock = Clock()
    pacer = BackfillPacer(per_mailbox=20, per_host=20, clock=clock)
    waits = [pacer.take(user, "IMAP.example", 5) for user in range(4)]
    # 20 messages at 20 a second: the host's bucket spreads them over a second.
    assert waits == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert pacer.take(9, "other.example", 5) == 0.0  # another host is not held


def test_the_defaults_come_from_the_settings(settings):
    settings.BACKFILL_RATE_PER_MAILBOX = 400
    settings.BACKFILL_RATE_PER_HOST = 900
    pacer = BackfillPacer()
    assert (pacer.per_mailbox, pacer.per_host, pacer.step) == (400, 900, 100)
