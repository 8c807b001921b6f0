"""Why a state change was refused, in the API's terms (its HTTP status and error code)."""

from __future__ import annotations

from collections.abc import Iterable


class Refused(Exception):
    """A change refused by a rule: the API answers ``status`` with ``code``; the dashboard
    shows ``message`` (on ``field`` when it is about one)."""

    def __init__(self, status: int, code: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def refuse(problems: Iterable, status: int = 422) -> None:
    """Raise the first of the accounts.checks problems as Refused (the API answers one at
    a time)."""
    for problem in problems:
        raise Refused(status, problem.code, problem.message, problem.field)
