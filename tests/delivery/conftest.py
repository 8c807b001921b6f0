"""Fixtures for delivery tests: a real webhook receiver, a controllable clock, and a helper
that runs the real Worker once."""

from __future__ import annotations

import asyncio

import pytest

from superimap.delivery.worker import Worker
from superimap.platform.dbpool import DbPool
from tests.helpers.delivery import Clock, ThreadedReceiver


@pytest.fixture
def make_receiver():
    made: list[ThreadedReceiver] = []

    def make(**kwargs) -> ThreadedReceiver:
        receiver = ThreadedReceiver(**kwargs)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def process(clock):
    """process(**worker_kwargs) -> deliveries attempted; one process_once() of a real Worker."""
    pool = DbPool(size=2)

    def run(**kwargs) -> int:
        async def once() -> int:
            kwargs.setdefault("timeout_seconds", 5)
            worker = Worker(pool, "test-node", clock=clock, **kwargs)
            return await worker.process_once()

        return asyncio.run(once())

    yield run
    pool.shutdown()
