"""engine/gcfreeze.py: long-lived objects leave the full collections once sessions settle,
and an hourly unfreeze + collect reclaims cyclic garbage that was frozen."""

from __future__ import annotations

import gc
import weakref

from superimap.engine.gcfreeze import GcFreezer, tune_young_collections


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_it_freezes_after_the_sessions_settle_and_reclaims_frozen_cycles_hourly():
    now = [1000.0]
    freezer = GcFreezer(settle=30, refreeze_every=3600, clock=lambda: now[0])
    try:
        gc.unfreeze()
        freezer.tick()
        assert gc.get_freeze_count() == 0  # nothing started: nothing to freeze
        freezer.sessions_started()
        now[0] += 29
        freezer.tick()
        assert gc.get_freeze_count() == 0  # still settling
        cycle = Node()
        gone = weakref.ref(cycle)
        now[0] += 2
        freezer.tick()
        assert freezer.freezes == 1 and gc.get_freeze_count() > 0
        del cycle  # garbage now, but frozen: a full collection does not see it
        gc.collect()
        assert gone() is not None
        now[0] += 3600
        freezer.tick()  # the hourly unfreeze, collect, freeze
        assert freezer.collections == 1
        assert gone() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_it_freezes_as_soon_as_every_session_is_watching():
    now = [1000.0]
    freezer = GcFreezer(settle=30, refreeze_every=3600, clock=lambda: now[0])
    try:
        gc.unfreeze()
        freezer.sessions_started()
        assert freezer.waiting
        now[0] += 1
        freezer.tick(settled=False)
        assert gc.get_freeze_count() == 0  # some still connecting: wait
        freezer.tick(settled=True)
        assert freezer.freezes == 1 and gc.get_freeze_count() > 0
        assert not freezer.waiting
        freezer.tick(settled=True)
        assert freezer.freezes == 1  # once per start-up, not per refresh
    finally:
        gc.unfreeze()


def test_young_collections_are_tuned_and_the_old_thresholds_returned():
    before = gc.get_threshold()
    try:
        previous = tune_young_collections(12345)
        assert previous == before
        assert gc.get_threshold() == (12345, *before[1:])
    finally:
        gc.set_threshold(*before)
