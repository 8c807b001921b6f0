"""File descriptors: an engine process holds one IMAP connection (one descriptor) per
mailbox, so its open-files limit bounds how many mailboxes it can watch (issue 20 item 1).

At start every process raises its soft RLIMIT_NOFILE to the hard limit (what systemd's
LimitNOFILE sets; no privilege needed); an engine then takes no more leases than that
leaves room for, after RESERVED descriptors for its database connections, logs, the
metrics port, the wake-up socket and the HTTP clients of OAuth refreshes.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

RESERVED = 256


@dataclass(frozen=True)
class FdLimit:
    soft: int
    hard: int
    raised_from: int | None  # the soft limit before raise_soft_limit(), if it rose

    def room(self) -> int:
        """Mailboxes one engine process may hold under this limit."""
        return max(1, self.soft - RESERVED)

    def capacity(self, max_user_threads: int) -> int:
        return min(max_user_threads, self.room())

    def describe(self, max_user_threads: int) -> str:
        raised = f", raised from {self.raised_from}" if self.raised_from is not None else ""
        bound = (
            "MAX_USER_THREADS"
            if max_user_threads <= self.room()
            else f"the open-files limit less {RESERVED} reserved"
        )
        return (
            f"open-files limit {self.soft} (hard {self.hard}{raised}): holds at most "
            f"{self.capacity(max_user_threads)} mailboxes ({bound})"
        )


def _finite(value: int) -> int:
    return 1 << 20 if value == resource.RLIM_INFINITY else value


def raise_soft_limit() -> FdLimit:
    """Soft RLIMIT_NOFILE up to the hard limit (capped at 2**20 where it is unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _finite(hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return FdLimit(target, _finite(hard), raised_from=soft)
        except (ValueError, OSError):
            pass
    return FdLimit(_finite(soft), _finite(hard), raised_from=None)
