"""Pieces of plain SQL shared by the hot paths that bypass the ORM (engine/writer.py,
delivery/queue.py, retention, fairness, health)."""

from __future__ import annotations

from collections.abc import Sized


def marks(values: Sized) -> str:
    """One ``%s`` per value, comma-separated: the inside of ``IN (...)`` or ``VALUES (...)``."""
    return ", ".join(["%s"] * len(values))
