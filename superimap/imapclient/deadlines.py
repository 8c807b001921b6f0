"""One timer per whole second of the loop's clock, shared by the connections waiting until it.

An IDLE's wait ends on a whole second (engine/session.py idle_wait): the sessions whose
period ends in one step re-issue in one wake-up. Each connection kept a timer handle of its
own for that deadline (~550 bytes per idle mailbox with uvloop: the handle, its libuv timer,
the bound method, a copy of the context; design.md 4.13). Here the connections whose wait
ends on the same second share one ``call_at``, and each holds one slot of that second's list
instead. The list holds weak references (CPython reuses a connection's one reference without
callback): a closed connection is not kept alive until the second comes, and nothing has to
be taken out of a list when a connection closes or waits for something else (the second's
callback skips a connection whose wait is no longer for it).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Protocol


class Waiting(Protocol):
    # The second this connection waits for (0: none), and what to call when it comes.
    shared_deadline: int

    def deadline_due(self) -> None: ...


# A deadline within this of a whole second is that second (loop.time() plus a wait computed
# as a whole second minus loop.time() is off by a rounding error at most).
ON_SECOND = 1e-6


def whole_second(deadline: float) -> int:
    """``deadline`` as a whole second of the loop's clock, or 0 if it is not one."""
    second = round(deadline)
    return second if second > 0 and abs(deadline - second) < ON_SECOND else 0


class SharedDeadlines:
    """The seconds some connection of one loop waits for: a list each, one timer each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._seconds: dict[int, list[Callable[[], Waiting | None]]] = {}

    def add(self, second: int, waiting: Waiting) -> None:
        """``waiting`` waits until ``second``: deadline_due() is called then, unless its
        shared_deadline is another one by that time."""
        waiting.shared_deadline = second
        refs = self._seconds.get(second)
        if refs is None:
            refs = self._seconds[second] = []
            self.loop.call_at(second, self._due, second)
        refs.append(weakref.ref(waiting))

    def _due(self, second: int) -> None:
        for ref in self._seconds.pop(second, ()):
            waiting = ref()
            if waiting is not None and waiting.shared_deadline == second:
                waiting.shared_deadline = 0
                waiting.deadline_due()

    def __len__(self) -> int:
        """The seconds with a timer armed."""
        return len(self._seconds)


_local = threading.local()


def shared_deadlines(loop: asyncio.AbstractEventLoop) -> SharedDeadlines:
    """The SharedDeadlines of ``loop`` (a loop runs in one thread: one per thread, replaced
    when the thread runs another loop)."""
    deadlines: SharedDeadlines | None = getattr(_local, "deadlines", None)
    if deadlines is None or deadlines.loop is not loop:
        deadlines = _local.deadlines = SharedDeadlines(loop)
    return deadlines
