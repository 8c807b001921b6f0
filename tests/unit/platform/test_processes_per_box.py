"""Engine node names and capacity of several engine processes per box (issue 20 item 1):
pure parts of platform/children.py and platform/fdlimit.py."""

from __future__ import annotations

import time

import pytest

from superimap.platform import children
from superimap.platform.fdlimit import RESERVED, FdLimit


@pytest.mark.parametrize(
    ("base", "count", "names"),
    [
        ("box", 1, ["box"]),
        ("box", 2, ["box-1", "box-2"]),
        ("node.example.com", 3, ["node.example.com-1", "node.example.com-2", "node.example.com-3"]),
    ],
)
def test_it_names_the_engine_processes_of_a_box(base, count, names):
    assert children.engine_names(base, count) == names


def test_the_same_slot_gets_the_same_name_at_every_start():
    assert children.engine_names("box", 4) == children.engine_names("box", 4)


def test_zero_engine_processes_means_one_per_core():
    assert children.engine_processes(0) == children.cores() >= 1
    assert children.engine_processes(3) == 3


@pytest.mark.parametrize(
    ("soft", "max_user_threads", "capacity", "bound"),
    [
        (65536, 20000, 20000, "MAX_USER_THREADS"),
        (20000, 20000, 20000 - RESERVED, "the open-files limit less 256 reserved"),
        (1024, 20000, 1024 - RESERVED, "the open-files limit less 256 reserved"),
        (100, 20000, 1, "the open-files limit less 256 reserved"),
    ],
)
def test_an_engine_takes_no_more_mailboxes_than_its_descriptors_allow(
    soft, max_user_threads, capacity, bound
):
    limit = FdLimit(soft=soft, hard=soft, raised_from=None)
    assert limit.capacity(max_user_threads) == capacity
    assert f"holds at most {capacity} mailboxes ({bound})" in limit.describe(max_user_threads)


def test_it_says_when_it_raised_the_limit():
    limit = FdLimit(soft=65536, hard=65536, raised_from=1024)
    assert limit.describe(20000).startswith("open-files limit 65536 (hard 65536, raised from 1024)")


def _exited(child: children.Child, status: int, ran: float) -> None:
    child.started = time.monotonic() - ran
    children.Supervisor([child])._ended(child, status)


def test_a_child_that_dies_after_running_a_while_starts_again_after_a_second():
    child = children.Child("engine box-1", ["imap-client"], {}, starts=3, failures=2)
    _exited(child, -9, ran=600)
    assert child.failures == 0
    assert child.restart_at - time.monotonic() == pytest.approx(children.FIRST_PAUSE, abs=0.1)


def test_a_configuration_error_at_the_first_start_stops_everything_with_status_2():
    child = children.Child("engine box-2", ["imap-client"], {}, starts=1)
    with pytest.raises(children.ChildFailed) as failed:
        _exited(child, 2, ran=1)
    assert failed.value.status == 2


def test_a_child_failing_at_start_waits_longer_each_time_then_stops_everything():
    child = children.Child("worker", ["worker"], {}, starts=2)
    pauses = []
    for _ in range(children.MAX_START_FAILURES - 1):
        _exited(child, 1, ran=0.5)
        pauses.append(round(child.restart_at - time.monotonic()))
    assert pauses == [1, 2, 4, 8]
    with pytest.raises(children.ChildFailed, match="failed 5 times in a row") as failed:
        _exited(child, 1, ran=0.5)
    assert failed.value.status == 1
