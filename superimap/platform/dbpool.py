"""A bounded pool of database threads for the asyncio engine and worker.

Only these NUM_WORKER_THREADS threads touch the database from async code, so thousands of
mailbox tasks share a handful of connections and the event loop never blocks on a query.

On SQLite the threads take turns through a lock (functions marked @read_only skip it).
SQLite has one writer at a time and a connection that finds the database locked does not
queue: it sleeps (1, 2, 5 ... 100 ms) and retries. Threads asleep in that back-off while the
lock was free made persists queued behind a 50 ms lease refresh wait up to ~0.9 s (N=10,000);
a Python lock hands over the moment the previous call returns (max ~0.08 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from queue import SimpleQueue
from typing import TypeVar

from django.conf import settings
from django.db import close_old_connections, connections

from superimap.platform import dboutage
from superimap.platform.futures import resolve
from superimap.platform.metrics import DB_QUEUE, SQLITE_GATE_METRICS, expose

T = TypeVar("T")


def read_only(fn: Callable[..., T]) -> Callable[..., T]:
    """Mark a function that never writes: on SQLite it runs beside the writer (WAL)."""
    fn.db_read_only = True  # type: ignore[attr-defined]
    return fn


_pools: weakref.WeakSet[DbPool | DbThread] = weakref.WeakSet()


def queued_total() -> int:
    """Calls waiting for a database thread, over every pool of this process (a metric)."""
    return sum(pool.queued for pool in list(_pools))


DB_QUEUE.set_function(queued_total)


class DbPool:
    def __init__(self, size: int | None = None) -> None:
        _pools.add(self)
        expose([DB_QUEUE])
        self.size = size or settings.NUM_WORKER_THREADS
        self._executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="db")
        self.queued = 0
        self.latency_total = 0.0
        self.calls = 0
        self._writer = threading.Lock() if connections["default"].vendor == "sqlite" else None
        self._pinned: DbThread | None = None  # run_pinned's thread, made on first use
        if self._writer is not None:
            expose(SQLITE_GATE_METRICS)

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        return await self._run(self._executor, fn, *args, **kwargs)

    async def run_pinned(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """``run``, always on the same extra thread of this pool (a DbThread: so always on
        the same database connection), for a caller that runs one call at a time: its
        connection's page cache stays warm from one call to the next (the engine's group
        commit). On SQLite it takes turns with the pool's writers like ``run``."""
        if self._pinned is None:
            self._pinned = DbThread("db-pinned")
        return await self._pinned.run(self._started, time.monotonic(), fn, args, kwargs)

    def _started(self, queued_at: float, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        self.latency_total += time.monotonic() - queued_at
        self.calls += 1
        return self._locked(fn, args, kwargs)

    def _locked(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        if self._writer is None or getattr(fn, "db_read_only", False):
            return fn(*args, **kwargs)
        with self._writer:
            return fn(*args, **kwargs)

    async def _run(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args, **kwargs) -> T:
        loop = asyncio.get_running_loop()
        queued_at = time.monotonic()
        self.queued += 1

        def call() -> T:
            self.queued -= 1
            try:
                close_old_connections()
                return self._started(queued_at, fn, args, kwargs)
            except Exception as exc:
                dboutage.lost(exc)  # one WARNING per outage; the caller still sees exc
                raise

        return await loop.run_in_executor(executor, functools.partial(call))

    def shutdown(self) -> None:
        def close() -> None:
            connections.close_all()

        for _ in range(self.size):
            self._executor.submit(close)
        self._executor.shutdown(wait=True)
        if self._pinned is not None:
            self._pinned.shutdown()


class DbThread:
    """One database thread with one connection, for a caller whose calls go one at a time
    anyway (the webhook worker's claims and outcomes). The same contract as DbPool.run,
    with a lighter hand-off: a SimpleQueue to the thread and one call_soon_threadsafe back,
    not ThreadPoolExecutor.submit and a concurrent Future chained to an asyncio one. Its
    connection serves only these calls, so SQLite's page cache is not emptied by the
    pool's other writers between two of them."""

    def __init__(self, name: str = "db-queue") -> None:
        _pools.add(self)
        expose([DB_QUEUE])
        self.queued = 0
        self._calls: SimpleQueue = SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queued += 1
        self._calls.put((loop, future, fn, args, kwargs))
        return await future

    def _serve(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                connections.close_all()
                return
            loop, future, fn, args, kwargs = item
            self.queued -= 1
            try:
                close_old_connections()
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
                if isinstance(exc, Exception):
                    dboutage.lost(exc)  # one WARNING per outage; the caller still sees exc
                _hand_over(loop, future, _set_exception, exc)
            else:
                _hand_over(loop, future, resolve, result)

    def shutdown(self) -> None:
        self._calls.put(None)
        self._thread.join()


def _hand_over(loop, future, setter, value) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
        loop.call_soon_threadsafe(setter, future, value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
