"""A chosen backfill window (design.md 4.12), decided without I/O.

A backfill delivers the mail already in the primary folder since a moment (``since``; None:
all of it, which is what a sweep asks for) as new_mail with ``"backfill": true``, oldest
first, paced per mailbox and per host, between the live catch-ups of the one connection.

The window is fixed when the backfill starts: the UIDs up to the checkpoint then
(``until_uid``; newer mail is live mail) whose INTERNALDATE is at or after ``since``.
IMAP's ``SINCE`` compares dates only, in each message's own time zone, so the session asks
twice: ``SINCE`` the day before ``since`` (every candidate) and ``SINCE`` two days after
(surely in the window, whatever the zones); only the UIDs in between have their
INTERNALDATE fetched and compared exactly.

Progress is a position (the last window UID handled) and a done count, moved in the
transaction of each batch, so a restart continues after the position and nothing is
delivered twice; the total is what the window holds (a restart that finds messages gone
meanwhile counts them out: total = done + what remains).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

DAY = timedelta(days=1)
# Per step at most this many messages, and about a quarter of a second of the mailbox's
# rate: live mail found by the catch-up after each step waits at most one step.
MAX_STEP = 100
STEP_SECONDS = 0.25
# UIDs per SEARCH: an answer of 5,000 UIDs of up to 10 digits stays under the 64 KiB line
# limit of imap/framing.py.
SEARCH_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class WindowSearch:
    """The UID SEARCH criteria that find a window: ``candidates`` (a superset), ``sure``
    (a subset; None: the candidates are exact)."""

    candidates: str
    sure: str | None


def _imap_date(moment: datetime) -> str:
    months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    return f"{moment.day:02d}-{months[moment.month - 1]}-{moment.year:04d}"


def window_searches(
    since: datetime | None, until_uid: int, chunk: int = SEARCH_CHUNK
) -> list[WindowSearch]:
    """The searches of the window up to ``until_uid``, one per ``chunk`` UIDs so that no
    answer line outgrows the framer's limit; [] for an empty folder."""
    searches = []
    for first in range(1, max(0, until_uid) + 1, chunk):
        uids = f"UID {first}:{min(until_uid, first + chunk - 1)}"
        if since is None:
            searches.append(WindowSearch(uids, None))
        else:
            searches.append(
                WindowSearch(
                    f"SINCE {_imap_date(since - DAY)} {uids}",
                    f"SINCE {_imap_date(since + 2 * DAY)} {uids}",
                )
            )
    return searches


def to_check(candidates: Iterable[int], sure: Iterable[int] | None) -> list[int]:
    """The candidates whose INTERNALDATE decides whether they are in the window."""
    if sure is None:
        return []
    return sorted(set(candidates) - set(sure))


def window(
    candidates: Iterable[int],
    sure: Iterable[int] | None,
    dates: Mapping[int, datetime | None],
    since: datetime | None,
) -> list[int]:
    """The window's UIDs, oldest (lowest UID: the folder's arrival order) first. A checked
    UID without a date (expunged meanwhile) is not in it. INTERNALDATE has whole seconds:
    a message of ``since``'s second is in."""
    found = sorted(set(candidates))
    if sure is None or since is None:
        return found
    cutoff = since.replace(microsecond=0)
    inside = set(sure)
    for uid in to_check(found, inside):
        date = dates.get(uid)
        if date is not None and date >= cutoff:
            inside.add(uid)
    return [uid for uid in found if uid in inside]


def remaining(window_uids: Iterable[int], position: int | None) -> list[int]:
    """The window's UIDs after ``position`` (the last one handled), in order."""
    last = position or 0
    return sorted(uid for uid in window_uids if uid > last)


def step_size(rate_per_mailbox: float) -> int:
    """Messages per backfill step: a quarter second of the mailbox's rate, 1 to MAX_STEP."""
    return max(1, min(MAX_STEP, int(rate_per_mailbox * STEP_SECONDS)))


class Pace:
    """A token bucket of messages: ``rate`` a second, at most ``burst`` saved up.
    take() always takes and says how long to wait for what it took (tokens may go
    negative, so callers queue in order)."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, count: int, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= count
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def give_back(self, count: int) -> None:
        """Return ``count`` taken but not used (messages recorded before: nothing fetched)."""
        self.tokens = min(self.burst, self.tokens + count)

    def idle(self, now: float) -> bool:
        """Full again: the same as a new bucket."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


@dataclass(frozen=True, slots=True)
class BackfillStep:
    """What one persisted batch moves: the backfill ``requested_at`` (a newer request
    restarted the session and is not moved by an older one's batch), the last window UID
    handled and how many window UIDs the step handled (fetched or found recorded)."""

    requested_at: datetime
    position: int
    count: int
