"""Handing watched mailboxes over to a joining node a few at a time (issue 20 item 5): the
joiner logs in no faster than the per-host limit, so a mailbox handed over sooner waits
unwatched (up to a minute for 3,359 of them at 50 logins/s, devtools/bench/nodes.py)."""

from __future__ import annotations

import pytest

from superimap.engine.leases import Pacing, paced

HANDOVER = frozenset(range(1, 101))
TO_JOINER = dict.fromkeys(HANDOVER, "joiner")


def test_without_pacing_everything_goes_at_once():
    assert paced(HANDOVER, None, 4, TO_JOINER) == HANDOVER


@pytest.mark.parametrize(
    ("per_refresh", "senders", "watched_sent"), [(250, 5, 50), (250, 1, 100), (10, 4, 3), (1, 9, 1)]
)
def test_each_sender_hands_over_its_part_of_the_pace_lowest_ids_first(
    per_refresh, senders, watched_sent
):
    now = paced(HANDOVER, Pacing(watching=HANDOVER, per_refresh=per_refresh), senders, TO_JOINER)
    assert now == frozenset(range(1, watched_sent + 1))


def test_sessions_not_watching_yet_go_at_once():
    """After a cold start most sessions still wait for a login token: nothing to lose."""
    watching = frozenset(range(1, 11))
    now = paced(HANDOVER, Pacing(watching=watching, per_refresh=4), 2, TO_JOINER)
    assert now == frozenset({1, 2}) | frozenset(range(11, 101))


def test_what_is_kept_is_still_handed_over_later():
    pacing = Pacing(watching=HANDOVER, per_refresh=30)
    left, rounds = HANDOVER, 0
    while left:
        left -= paced(left, pacing, 3, TO_JOINER)
        rounds += 1
    assert rounds == 10


def test_after_a_cold_start_each_receiver_gets_its_pace():
    """One node holding everything hands each of the others its part of the pace."""
    owners = {i: f"node-{i % 4}" for i in HANDOVER}
    now = paced(HANDOVER, Pacing(watching=HANDOVER, per_refresh=9), 3, owners)
    per_receiver = {name: sum(1 for i in now if owners[i] == name) for name in set(owners.values())}
    assert per_receiver == dict.fromkeys(per_receiver, 3)
