"""When the engine's group commit writes the batches that wait (engine/persister.py).

A group commit costs a fixed part per transaction (the fence and prefetch statements, the
COMMIT, the hand-off to the database thread) and a part per message. Waiting lets more
batches share the fixed part, but only pays when more are coming: the rule waits only if
at least MIN_EXPECTED more batches are expected within the window at the recent arrival
rate, and never past the window counted from the OLDEST waiting batch's arrival (so the
time it spent waiting while the previous group committed counts too). Hence:

- a lone mail, or mail at a low rate, is committed at once (no window at all);
- under load, a group collects for up to the window, and a commit that took longer than
  the window is followed at once by the next group (which filled meanwhile);
- a full group (max_messages) never waits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_EXPECTED = 2.0  # more batches expected within the window than this, or commit at once
SMOOTHING = 0.2  # weight of the newest gap in the moving average
GAP_CAP_WINDOWS = 10.0  # a gap counts at most this many windows (a quiet spell ends fast)


@dataclass
class ArrivalRate:
    """The moving average of the gaps between batch arrivals (seconds; inf until two)."""

    gap: float = math.inf
    last: float | None = None

    def arrived(self, now: float, window: float) -> None:
        """A batch arrived at ``now`` (monotonic seconds)."""
        if self.last is not None:
            elapsed = min(max(now - self.last, 0.0), GAP_CAP_WINDOWS * window)
            if math.isinf(self.gap):
                self.gap = elapsed
            else:
                self.gap += (elapsed - self.gap) * SMOOTHING
        self.last = now


def commit_wait(
    now: float,
    oldest: float,
    waiting_messages: int,
    gap: float,
    window: float,
    max_messages: int,
) -> float:
    """Seconds to wait before committing the waiting batches (0: at once). ``oldest`` is
    the arrival time of the oldest waiting batch, ``gap`` ArrivalRate.gap."""
    if window <= 0 or waiting_messages >= max_messages:
        return 0.0
    if window < MIN_EXPECTED * gap:  # fewer than MIN_EXPECTED more batches to wait for
        return 0.0
    return max(0.0, oldest + window - now)
