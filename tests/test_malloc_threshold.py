"""The engine's fixed glibc mmap threshold (platform/malloc.py, design.md 4.13): where a
256 KiB block lands after a large free, in a fresh interpreter each time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from superimap.platform import malloc
fixed = malloc.fix_mmap_threshold() if sys.argv[1] == "fix" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.free(libc.malloc(1 << 20))  # glibc raises its dynamic threshold here, unless fixed
block = libc.malloc(256 * 1024)  # the size of uvloop's per-connection TLS read buffer
heap = [line.split()[0] for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
low, high = (int(edge, 16) for edge in heap[0].split("-"))
print(fixed, "heap" if low <= block < high else "mapping")
"""


def _probe(mode: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_a_fixed_threshold_keeps_read_buffers_in_their_own_mapping():
    assert _probe("none") == "None heap"  # glibc's default: the threshold rose past it
    assert _probe("fix") == "True mapping"
    # The operator's own setting wins (glibc read it at start): nothing is changed.
    assert _probe("fix", MALLOC_MMAP_THRESHOLD_="131072") == "False mapping"
    assert _probe("fix", MALLOC_MMAP_THRESHOLD_="4194304") == "False heap"


TRIM = """
import ctypes
from superimap.platform import malloc
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def resident_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
blocks = [libc.malloc(1000) for _ in range(40_000)]
for block in blocks:
    ctypes.memset(block, 1, 1000)
for block in blocks[:-1]:  # the last keeps the heap's top: only a trim gives pages back
    libc.free(block)
before = resident_kb()
print(malloc.trim(), before - resident_kb() > 20_000)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_trim_hands_free_heap_pages_back():
    done = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
