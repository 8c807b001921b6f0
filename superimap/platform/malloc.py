"""glibc's malloc, tuned for the processes that hold many TLS connections (design.md 4.13):
its mmap threshold, and handing free pages back (trim(), after the engine's GC freeze).

uvloop gives every TLS connection a 256 KiB read buffer, of which only the pages a read
touched are resident. glibc raises its mmap threshold the first time a large block is
freed; past that, these buffers come out of the heap, where pages that held something
else are resident already. A fixed threshold of 128 KiB (glibc's starting value) keeps
each in its own mapping: ~2.7 KiB less RSS per idle TLS mailbox
(`devtools.bench.tlsscale --mailboxes 3000`, 48.0 and 48.3 against 50.8 and 50.9 KiB), and
no CPU: a read no longer allocates a buffer (imapclient/connection.py is a
BufferedProtocol), and what remains is a few mallocs per connection.

An operator's own ``MALLOC_MMAP_THRESHOLD_`` in the environment (glibc reads it at start)
wins: then this does nothing. So does a libc that is not glibc.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

log = logging.getLogger("superimap")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 * 1024
ENV = "MALLOC_MMAP_THRESHOLD_"


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The process's own symbols (libc among them on Linux): no library search."""
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def trim() -> bool:
    """malloc_trim(0): hand the free pages of every arena back to the system. True if any
    were (glibc only)."""
    libc = _libc()
    function = getattr(libc, "malloc_trim", None)
    if function is None:
        return False
    function.argtypes = (ctypes.c_size_t,)
    function.restype = ctypes.c_int
    return bool(function(0))


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """mallopt(M_MMAP_THRESHOLD, threshold) unless the environment sets it; True if set."""
    if ENV in os.environ:
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False  # not glibc
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) refused", threshold)
        return False
    return True
