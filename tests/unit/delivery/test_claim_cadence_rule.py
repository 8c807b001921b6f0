"""policy.claim_now: when the worker claims, one situation a row (design.md 5.1)."""

from __future__ import annotations

import pytest

from superimap.delivery.policy import ClaimState, claim_now

# free, inflight, work_arrived, idle_poll, drained, finished_since_claim -> claims?
# (claim_at_least = 12: a quarter of 50 slots)
CASES = [
    # No free slot: never, whatever woke us.
    ((0, 50, True, True, False, 50), False),
    # Nothing in flight, the queue not known to be drained: claim (a backlog, a first look).
    ((50, 0, False, False, False, 0), True),
    # A wake-up or the poll: always (new rows, retries come due), drained or not.
    ((50, 0, True, False, True, 0), True),
    ((50, 0, False, True, True, 0), True),
    ((40, 10, True, False, True, 0), True),
    # The last claim drained the queue and nothing woke us: a finished send makes no row
    # due, so no claim (low rates: one claim per delivery, not a second finding nothing).
    ((50, 0, False, False, True, 1), False),
    ((45, 5, False, False, True, 30), False),
    # Busy, not drained: claim once a batch of sends finished, not per finished send.
    ((40, 10, False, False, False, 11), False),
    ((40, 10, False, False, False, 12), True),
]


@pytest.mark.parametrize(("state", "claims"), CASES)
def test_claim_now(state, claims):
    free, inflight, work_arrived, idle_poll, drained, finished = state
    assert (
        claim_now(
            ClaimState(
                free=free,
                inflight=inflight,
                work_arrived=work_arrived,
                idle_poll=idle_poll,
                drained=drained,
                finished_since_claim=finished,
                claim_at_least=12,
            )
        )
        is claims
    )
