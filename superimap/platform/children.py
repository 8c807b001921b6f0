"""Several engine and worker processes on one box (issue 20 item 1; design.md 8.1).

One engine process runs under one GIL: on a box with several cores, `superimap up` (and
`imap-client`, `worker`) start one engine process per core by default (ENGINE_PROCESSES,
`--engines N`) and WORKER_PROCESSES workers, each a child `superimap imap-client` or
`superimap worker`. The engine children are nodes like any other (design.md 8): they share
the mailboxes through their heartbeats and rendezvous hashing, and each has a name of its
own, the same at every restart (``<ENGINE_NODE_NAME>-1``, ``-2``, ...) so that a restarted
child takes its predecessor's leases back at once (engine/nodelock.py).

The parent (the web server too, for `up`) supervises them: a child that dies is started
again after a pause (1 s, doubling while it keeps dying within STARTED_AFTER seconds of its
start); one that stops at start with a configuration error (status 2, its one line said
why) stops everything with status 2 on the first start, and one that fails at start
MAX_START_FAILURES times in a row stops everything with status 1.

Each child holds the read end of a pipe whose write end only the parent has: the parent
closes it to stop the child cleanly, and the operating system closes it when the parent
dies (kill -9 included), so no child outlives its parent. A pipe, not a signal: systemd's
or a terminal's SIGTERM/SIGINT may reach the children as well, and a second signal makes a
process exit at once (runtime.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

log = logging.getLogger("superimap")

# A child that dies sooner than this after its start failed "at start".
STARTED_AFTER = 10.0
MAX_START_FAILURES = 5
FIRST_PAUSE = 1.0
LONGEST_PAUSE = 30.0
# How long a clean stop of the children may take before they are killed (systemd's
# TimeoutStopSec in docs/deploy.md is 30 s).
STOP_SECONDS = 25.0
POLL_SECONDS = 0.2


def cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def engine_processes(requested: int) -> int:
    """ENGINE_PROCESSES or --engines: 0 means one per core."""
    return requested if requested > 0 else cores()


def engine_names(base: str, count: int) -> list[str]:
    """The node names of ``count`` engine processes of a box named ``base``: the name
    itself for one process (as before issue 20), ``base-1`` ... ``base-N`` for several."""
    if count <= 1:
        return [base]
    return [f"{base}-{i}" for i in range(1, count + 1)]


class ChildFailed(Exception):
    """A child keeps failing: the parent stops with ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Child:
    """One supervised process: ``args`` of `superimap`, ``env`` on top of the parent's."""

    label: str
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    pipe: int | None = None  # the write end of the child's parent pipe
    started: float = 0.0
    starts: int = 0
    failures: int = 0  # consecutive failures at start
    restart_at: float | None = None


class Supervisor:
    """Starts ``children``, restarts the ones that die, stops them all when asked."""

    def __init__(self, children: list[Child], command: list[str] | None = None) -> None:
        self.children = children
        # How a child is started: this Python running superimap's command line.
        self.command = command or [sys.executable, "-m", "superimap.cli"]

    def describe(self) -> str:
        return ", ".join(child.label for child in self.children)

    def _start(self, child: Child) -> None:
        read, write = os.pipe()
        os.set_inheritable(read, True)
        env = {**os.environ, **child.env}
        try:
            child.proc = subprocess.Popen(
                [*self.command, *child.args, "--parent-fd", str(read)],
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(read,),
            )
        finally:
            os.close(read)
        child.pipe = write
        child.started = time.monotonic()
        child.starts += 1
        child.restart_at = None
        log.info("started %s (pid %d)", child.label, child.proc.pid)

    def _close_pipe(self, child: Child) -> None:
        if child.pipe is not None:
            os.close(child.pipe)
            child.pipe = None

    def _ended(self, child: Child, status: int) -> None:
        """``child`` exited by itself with ``status``: schedule its restart, or raise."""
        self._close_pipe(child)
        child.proc = None
        ran = time.monotonic() - child.started
        if ran >= STARTED_AFTER:
            child.failures = 0
        else:
            child.failures += 1
            if status == 2 and child.starts == 1:
                # A configuration error: the child said which in one line; retrying won't fix it.
                raise ChildFailed(f"{child.label} stopped at start", 2)
            if child.failures >= MAX_START_FAILURES:
                raise ChildFailed(
                    f"{child.label} failed {child.failures} times in a row at start "
                    f"(last exit status {status}); stopping",
                    1,
                )
        pause = min(LONGEST_PAUSE, FIRST_PAUSE * 2 ** max(0, child.failures - 1))
        child.restart_at = time.monotonic() + pause
        how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"status {status}"
        log.warning(
            "%s exited (%s) after %.1f s; starting it again in %.0f s", child.label, how, ran, pause
        )

    def _check(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None:
                status = child.proc.poll()
                if status is not None:
                    self._ended(child, status)
            elif child.restart_at is not None and now >= child.restart_at:
                self._start(child)

    async def run(self, stop: asyncio.Event) -> None:
        """Supervise until ``stop``; then stop every child. Raises ChildFailed."""
        try:
            for child in self.children:
                self._start(child)
            while not stop.is_set():
                self._check()
                try:
                    await asyncio.wait_for(stop.wait(), POLL_SECONDS)
                except TimeoutError:
                    pass
        finally:
            await self.stop_all()

    async def stop_all(self) -> None:
        """Close every child's pipe (a clean stop), wait STOP_SECONDS, kill what is left."""
        for child in self.children:
            self._close_pipe(child)
            child.restart_at = None
        deadline = time.monotonic() + STOP_SECONDS
        while any(c.proc is not None and c.proc.poll() is None for c in self.children):
            if time.monotonic() > deadline:
                for child in self.children:
                    if child.proc is not None and child.proc.poll() is None:
                        log.warning(
                            "%s did not stop in %.0f s: killing it", child.label, STOP_SECONDS
                        )
                        child.proc.kill()
                        child.proc.wait()
                break
            await asyncio.sleep(POLL_SECONDS)


def watch_parent(fd: int, stop: asyncio.Event) -> None:
    """In a child: set ``stop`` when the parent closes the pipe ``fd`` or dies."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        if data:
            return
        loop.remove_reader(fd)
        os.close(fd)
        if not stop.is_set():
            log.info("the parent process asked to stop (or is gone): stopping")
            stop.set()

    loop.add_reader(fd, readable)
