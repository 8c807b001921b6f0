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
