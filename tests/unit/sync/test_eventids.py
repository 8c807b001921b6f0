"""Time-ordered event ids (sync/eventids.py): the UUID version 7 layout, table-driven."""

from __future__ import annotations

import pytest

from superimap.sync.eventids import time_ordered

MS = 1_796_640_000_123  # 2026-12-07
STAMP = f"{MS:012x}"[:8] + "-" + f"{MS:012x}"[8:]  # the id's first two groups


@pytest.mark.parametrize(
    ("now_ms", "entropy", "expected"),
    [
        (0, bytes(10), "00000000-0000-7000-8000-000000000000"),
        (0, b"\xff" * 10, "00000000-0000-7fff-bfff-ffffffffffff"),
        (MS, bytes(10), STAMP + "-7000-8000-000000000000"),
        (MS, bytes(range(1, 11)), STAMP + "-7102-8304-05060708090a"),
        # Only 48 bits of time: the clock of year 10889 wraps, it does not spill.
        (2**48 + 5, bytes(10), "00000000-0005-7000-8000-000000000000"),
    ],
)
def test_the_id_is_the_time_then_version_7_then_random_bits(now_ms, entropy, expected):
    (event_id,) = time_ordered(now_ms, entropy)
    assert str(event_id) == expected
    assert event_id.version == 7
    assert event_id.variant == "specified in RFC 4122"


@pytest.mark.parametrize("count", [1, 2, 14, 200])
def test_one_id_per_ten_bytes_all_distinct(count):
    entropy = b"".join(i.to_bytes(10, "big") for i in range(count))
    ids = time_ordered(MS, entropy)
    assert len(ids) == len(set(ids)) == count


@pytest.mark.parametrize(("earlier", "later"), [(MS, MS + 1), (MS, MS + 60_000), (0, MS)])
def test_a_later_millisecond_sorts_after_whatever_the_random_bits(earlier, later):
    (first,) = time_ordered(earlier, b"\xff" * 10)
    (second,) = time_ordered(later, bytes(10))
    assert first < second and first.hex < second.hex


@pytest.mark.parametrize("size", [1, 9, 11, 25])
def test_entropy_not_a_multiple_of_ten_bytes_is_refused(size):
    with pytest.raises(ValueError, match="10 bytes per id"):
        time_ordered(MS, bytes(size))
