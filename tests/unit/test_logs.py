"""One record, one line: request-derived text cannot write a line of its own (logs.py)."""

from __future__ import annotations

import json
import logging
import re

from superimap.platform.logs import JsonFormatter, TextFormatter, escape_controls

FORGED = "/x\r\n2026-12-06 20:00:00,000 CRITICAL superimap forged\x1b[2K\u2028"
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("t", logging.WARNING, "x", 1, message, args, exc_info)


def test_it_escapes_control_characters():
    assert escape_controls("a\r\nb\tc\x00\x1b\x7f\x85\u2028é") == (
        "a\\r\\nb\\tc\\x00\\x1b\\x7f\\x85\\u2028é"
    )


def test_the_text_formatter_writes_a_forged_path_on_its_own_line():
    line = TextFormatter(FORMAT).format(record("refused GET %s", FORGED))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line.endswith(
        "refused GET /x\\r\\n2026-12-06 20:00:00,000 CRITICAL superimap forged\\x1b[2K\\u2028"
    )


def test_a_forged_exception_message_stays_inside_its_indented_traceback():
    try:
        raise ValueError(f"bad host {FORGED}")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    text = TextFormatter(FORMAT).format(record("failed", exc_info=exc_info))
    first, *rest = text.split("\n")
    assert first.endswith("WARNING t failed")
    assert rest and all(line.startswith("  ") for line in rest)
    assert not any(re.match(r"\S+ \S+ CRITICAL", line) for line in text.split("\n"))


def test_the_json_formatter_writes_one_line():
    line = JsonFormatter().format(record("refused GET %s", FORGED))
    assert "\n" not in line and "\r" not in line
    assert json.loads(line)["message"] == f"refused GET {FORGED}"


def test_the_configured_handlers_use_these_formatters():
    from django.conf import settings

    assert settings.LOGGING["formatters"]["text"]["()"] == "superimap.platform.logs.TextFormatter"
    assert settings.LOGGING["formatters"]["json"]["()"] == "superimap.platform.logs.JsonFormatter"


def test_every_handler_a_request_record_reaches_escapes_it():
    import superimap.asgi  # noqa: F401 - logging as the web process configures it

    formatters = []
    for name in ("django.request", "django.security.csrf", "superimap.frontdoor", "uvicorn.error"):
        logger = logging.getLogger(name)
        while logger is not None:
            formatters += [
                handler.formatter
                for handler in logger.handlers
                if not type(handler).__module__.startswith("_pytest")  # pytest's capture
            ]
            logger = logger.parent if logger.propagate else None
    assert formatters
    assert all(isinstance(f, TextFormatter | JsonFormatter) for f in formatters), formatters
