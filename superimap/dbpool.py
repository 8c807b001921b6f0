"""A bounded pool of database threads for the asyncio engine and worker.

Only these NUM_WORKER_THREADS threads touch the database from async code, so thousands of
mailbox tasks share a handful of connections and the event loop never blocks on a query.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.conf import settings
from django.db import close_old_connections, connections

T = TypeVar("T")


class DbPool:
    def __init__(self, size: int | None = None) -> None:
        self.size = size or settings.NUM_WORKER_THREADS
        self._executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="db")
        self.queued = 0
        self.latency_total = 0.0
        self.calls = 0

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        loop = asyncio.get_running_loop()
        queued_at = time.monotonic()
        self.queued += 1

        def call() -> T:
            self.queued -= 1
            self.latency_total += time.monotonic() - queued_at
            self.calls += 1
            close_old_connections()
            return fn(*args, **kwargs)

        return await loop.run_in_executor(self._executor, functools.partial(call))

    def shutdown(self) -> None:
        def close() -> None:
            connections.close_all()

        for _ in range(self.size):
            self._executor.submit(close)
        self._executor.shutdown(wait=True)
