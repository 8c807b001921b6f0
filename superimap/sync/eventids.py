"""Event ids that sort by creation time (the layout of RFC 9562's UUID version 7).

A random (version 4) event id put each new Delivery row's entry in the unique event_id
index on a random page: one more page written per row at the group's COMMIT (SQLite: 5.3 →
4.15 WAL frames per row inserted into a table of 100,000; design.md 5.11). Ids that start
with the time in milliseconds land at the index's right edge, a few pages per group. They
are still unique and unguessable: 74 random bits after the version and variant.
"""

from __future__ import annotations

import uuid

VERSION_7 = 0x7000 << 64
VARIANT = 0x8000 << 48
VERSION_MASK = 0xF000 << 64
VARIANT_MASK = 0xC000 << 48


def time_ordered(now_ms: int, entropy: bytes) -> list[uuid.UUID]:
    """One id per 10 bytes of ``entropy``: the 48-bit Unix time in milliseconds, then the
    version (7), 12 random bits, the variant (RFC 4122) and 62 random bits."""
    if len(entropy) % 10:
        raise ValueError("entropy: 10 bytes per id")
    stamp = (now_ms & 0xFFFF_FFFF_FFFF) << 80
    ids = []
    for start in range(0, len(entropy), 10):
        value = stamp | int.from_bytes(entropy[start : start + 10], "big")
        value = (value & ~VERSION_MASK & ~VARIANT_MASK) | VERSION_7 | VARIANT
        ids.append(uuid.UUID(int=value))
    return ids
