"""Log formatting. Secrets never reach the logs: callers log ids and tags, not credentials.

One record is one line: request paths, headers, tags, host names and server answers end up
in messages, and a CR or LF among them would write a line of the attacker's choosing
(a fake ``CRITICAL`` record). So the text formatter escapes control characters in the
message, and indents every line of a traceback, so no line of it can pass for a record.
The JSON formatter's output is one JSON document per line by construction.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from datetime import UTC, datetime

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\r``, ``\\x1b``...)."""
    return _CONTROLS.sub(_escape, text)


class TextFormatter(logging.Formatter):
    """``logging.Formatter`` whose records are one line each (tracebacks aside, indented)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("  " + escape_controls(line) for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


LOG_LINES_PER_MINUTE = 20


class RateLimitedLog:
    """At most ``per_minute`` lines a minute; the next line after a pause says how many
    were left out."""

    def __init__(self, logger: logging.Logger, per_minute: int = LOG_LINES_PER_MINUTE) -> None:
        self.logger = logger
        self.per_minute = per_minute
        self.window_start = 0.0
        self.lines = 0
        self.suppressed = 0
        self.lock = threading.Lock()

    def allow(self) -> tuple[bool, int]:
        """(may log now, lines suppressed since the last logged one)."""
        now = time.monotonic()
        with self.lock:
            if now - self.window_start >= 60:
                self.window_start = now
                self.lines = 0
            if self.lines >= self.per_minute:
                self.suppressed += 1
                return False, 0
            self.lines += 1
            suppressed, self.suppressed = self.suppressed, 0
            return True, suppressed

    def warning(self, message: str, *args) -> None:
        allowed, suppressed = self.allow()
        if allowed:
            if suppressed:
                message += f" ({suppressed} similar lines suppressed)"
            self.logger.warning(message, *args)


class ShortClientErrors(logging.Filter):
    """A logging filter for Django's request loggers: a 4xx is a client's mistake, worth
    one line (no traceback), and at most LOG_LINES_PER_MINUTE of them a minute."""

    _limit = RateLimitedLog(logging.getLogger("django.request"))

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if not (record.name.startswith("django.") and isinstance(status, int)):
            return True
        if not 400 <= status < 500:
            return True
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        allowed, suppressed = self._limit.allow()
        if allowed and suppressed:
            record.msg = f"{record.msg} ({suppressed} similar lines suppressed)"
        return allowed
