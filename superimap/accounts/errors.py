"""Why a state change was refused, in the API's terms (its HTTP status and error code)."""

from __future__ import annotations


class Refused(Exception):
    """A change refused by a rule: the API answers ``status`` with ``code``; the dashboard
    shows ``message`` (on ``field`` when it is about one)."""

    def __init__(self, status: int, code: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
