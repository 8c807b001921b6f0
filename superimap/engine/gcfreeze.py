"""Keep the engine's long-lived objects out of the garbage collector's full scans.

Ten thousand mailbox sessions are a few million GC-tracked objects that live for days
(sessions, connections, protocol state). CPython's full (generation 2) collection scans
every one of them: at 10,000 mailboxes that was a 350 ms pause, three times in 10 s while
1,000 mails/s arrived (bench.engine, ``gc_full_pause_ms_max``), which stalls every session.

``gc.freeze()`` moves every tracked object into the permanent generation, which
collections skip; objects are still freed by reference counting as usual. The engine
freezes once its sessions have settled: every session it started is watching (IDLE or
polling), or else ``settle`` seconds after the last refresh that started any (a mailbox
that cannot log in never settles). Before that, the sessions of a start-up that were all
watching in seconds met new mail unfrozen: five full collections of the whole engine in 10 s of
1,000 mails/s (bench.engine, a 2,000-mailbox run with --idle-seconds 3). And once every
``refreeze_every`` seconds it unfreezes, collects once (the only full scan, logged with
its pause) and freezes again, so cyclic garbage that was frozen (a stopped session's
reference cycles) is reclaimed within the hour.

After each freeze the free pages of every malloc arena go back to the system
(``malloc_trim``, platform/malloc.py): what the start-up left behind (the configs read in
bulk by the database threads, the sessions' first commands) no longer counts in the RSS
(~1 KiB per idle TLS mailbox, design.md 4.13).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

from superimap.platform import malloc

log = logging.getLogger("superimap.engine")

SETTLE_SECONDS = 30.0
REFREEZE_SECONDS = 3600.0
# Allocations between young collections (CPython's default: 700). A mail allocates a few
# thousand objects that die young; at 700 the collector ran ~660 young and ~60 middle
# collections in 10 s of 1,000 mails/s, 3.2-3.3 s of wall time on a loaded box, and
# promoted enough to start 5 full ones; at 20,000: 12 and 1, 1.0-1.3 s, no full one
# (bench.engine --gc-threshold, 2,000 mailboxes; CPU per mail 0.44-0.47 -> 0.41-0.42 ms).
YOUNG_THRESHOLD = 20_000


def tune_young_collections(threshold: int = YOUNG_THRESHOLD) -> tuple[int, ...]:
    """Collect the youngest generation every ``threshold`` allocations (this process);
    returns the thresholds before."""
    previous = gc.get_threshold()
    gc.set_threshold(threshold, *previous[1:])
    return previous


class GcFreezer:
    def __init__(
        self,
        settle: float = SETTLE_SECONDS,
        refreeze_every: float = REFREEZE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settle = settle
        self.refreeze_every = refreeze_every
        self.clock = clock
        self._due: float | None = None
        self._last_collect = clock()
        self.freezes = 0
        self.collections = 0

    def sessions_started(self) -> None:
        """New sessions: freeze ``settle`` seconds after the last such call."""
        self._due = self.clock() + self.settle

    @property
    def waiting(self) -> bool:
        """Sessions were started and are not frozen yet."""
        return self._due is not None

    def tick(self, settled: bool = False) -> None:
        """Called after each refresh of the supervisor; ``settled``: every session it
        started is watching, so the freeze need not wait for the settle time."""
        now = self.clock()
        if now - self._last_collect >= self.refreeze_every and gc.get_freeze_count():
            started = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            gc.freeze()
            malloc.trim()
            self._last_collect = now
            self.collections += 1
            log.info(
                "engine: full garbage collection found %d unreachable objects in %.0f ms; "
                "%d objects frozen again",
                found,
                (time.perf_counter() - started) * 1000,
                gc.get_freeze_count(),
            )
            return
        if self._due is not None and (settled or now >= self._due):
            self._due = None
            gc.freeze()
            malloc.trim()
            self.freezes += 1
            log.info(
                "engine: %d long-lived objects frozen out of full garbage collections",
                gc.get_freeze_count(),
            )
