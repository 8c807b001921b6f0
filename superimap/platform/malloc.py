"""glibc's mmap threshold for the processes that hold many TLS connections (design.md 4.13).

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
import ctypes.util
import logging
import os

log = logging.getLogger("superimap")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 * 1024
ENV = "MALLOC_MMAP_THRESHOLD_"


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """mallopt(M_MMAP_THRESHOLD, threshold) unless the environment sets it; True if set."""
    if ENV in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) refused", threshold)
        return False
    return True
