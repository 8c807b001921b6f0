"""Resolving an asyncio future that something else may have resolved first."""

from __future__ import annotations

import asyncio


def resolve(future: asyncio.Future, value: object = None) -> None:
    """Set ``future``'s result unless it is done already (a timer and the event it waits for
    may both come, or a thread hands a result to a waiter that was cancelled)."""
    if not future.done():
        future.set_result(value)
