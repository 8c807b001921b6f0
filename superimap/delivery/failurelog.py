"""Failed webhook attempts in the log, without a line per attempt.

A dead endpoint fails every attempt of every delivery queued for it: hundreds a minute.
The first failure of an endpoint is logged at once (with its delivery and error); the ones
after it are counted, and once a minute (LOG_SUMMARY_SECONDS) one line per endpoint says how
many failed since and the last error. An endpoint that had no failure for a whole minute
starts over: its next failure is logged at once again.

An endpoint is a partner's URL for one webhook kind. Lines name it by the partner's name,
the kind and the URL's host only: paths and query strings of webhook URLs often carry
tokens.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger("superimap.worker")

SUMMARY_EVERY = 60.0


def endpoint_host(url: str) -> str:
    """The host of a webhook URL, for log lines (no path, query or credentials)."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def endpoint_label(partner: str, kind: str, url: str) -> str:
    """``My app new_mail webhook at hooks.example.com``: no path, query or credentials."""
    return f"{partner} {kind} webhook at {endpoint_host(url)}"


@dataclass
class _Endpoint:
    label: str
    since: float  # start of the current counting window
    count: int = 0  # failures since the line logged last
    last_error: str = ""


class FailureLog:
    def __init__(self, every: float = SUMMARY_EVERY, clock=time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._endpoints: dict[tuple[int, str], _Endpoint] = {}

    def failed(self, key: tuple[int, str], label: str, event_id: str, attempt: int, error: str):
        """One failed attempt: logged now if it is the endpoint's first, else counted."""
        now = self.clock()
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            self._endpoints[key] = _Endpoint(label, now)
            log.info(
                "%s: delivery %s attempt %d failed: %s (further failures of this endpoint "
                "are summed up every %g s)",
                label,
                event_id,
                attempt,
                error,
                self.every,
            )
            return
        endpoint.count += 1
        endpoint.last_error = error

    def flush(self, *, force: bool = False) -> None:
        """A summary line for each endpoint whose minute is over (every one: ``force``)."""
        now = self.clock()
        for key, endpoint in list(self._endpoints.items()):
            elapsed = now - endpoint.since
            if elapsed < self.every and not force:
                continue
            if not endpoint.count:
                del self._endpoints[key]  # a quiet minute: the next failure is news again
                continue
            log.info(
                "%s: %d failed attempts in the last %.0f s, last error: %s",
                endpoint.label,
                endpoint.count,
                elapsed,
                endpoint.last_error,
            )
            endpoint.since, endpoint.count = now, 0
