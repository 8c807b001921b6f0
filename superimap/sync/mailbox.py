"""One watched folder's rules (design.md 4.3-4.10) as a cursor without I/O.

A session keeps one FolderCursor per watched folder, the primary one (watched by IDLE) and
each secondary one (NOTIFY or STATUS polling) alike. The cursor holds the folder's
checkpoint (UIDVALIDITY, last UID persisted, date of the last mail) and the UIDs a catch-up
found that are not persisted yet; its methods decide what to do with what the server
answered: SELECT/EXAMINE (resume, new baseline, or a UIDVALIDITY change), which UIDs a
catch-up fetches, when a secondary folder has news. engine/session.py sends the commands
and persists; batch.py decides what each UID of a fetched batch became.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from superimap.imap import Fetch, MailboxStatus, TaggedResponse, UntaggedStatus

BATCH_SIZE = 100
# After a UIDVALIDITY change, search by date from a day before the last mail persisted
# (SINCE has day granularity and ignores time zones).
SINCE_MARGIN = timedelta(days=1)
# A NO with one of these codes means "not now" for the whole command: reconnect and retry.
# Any other NO to a UID FETCH (EXPUNGEISSUED, no code...) is about some of its messages.
RETRY_LATER_CODES = frozenset({"UNAVAILABLE", "INUSE", "LIMIT", "OVERQUOTA"})


class Start(enum.Enum):
    """What a SELECT (or EXAMINE) of a folder leads to."""

    RESUME = "resume"  # same UIDVALIDITY: catch up from the checkpoint
    BASELINE = "baseline"  # no checkpoint here: start at the highest UID, old mail unsent
    REVALIDATE = "revalidate"  # UIDVALIDITY changed: catch up by date (revalidation_window)


class FetchAnswer(enum.Enum):
    OK = "ok"
    SOME_REFUSED = "some_refused"  # NO about some messages: the batch machine re-checks them
    RETRY_LATER = "retry_later"  # the whole command failed: reconnect and retry


class CatchUp(NamedTuple):
    """How a catch-up learns the new UIDs: above ``last``, by a range FETCH of sizes and
    dates (``by_range``) or a UID SEARCH; ``bodies``: the range FETCH brings the bodies
    too (sync/batch.py one_trip_items)."""

    last: int
    by_range: bool
    bodies: bool = False

    @property
    def uid_range(self) -> str:
        return f"{self.last + 1}:*"

    @property
    def search(self) -> str:
        return f"UID {self.last + 1}:*"


# What a cursor holds while no UID waits to be persisted (nearly always): one shared empty
# set, not a set per session (216 bytes even empty; design.md 4.13).
NO_UIDS: frozenset[int] = frozenset()


@dataclass
class FolderCursor:
    """One watched folder while its session runs."""

    folder: str
    uid_validity: int | None = None
    last_uid: int | None = None
    last_internal_date: datetime | None = None
    primary: bool = True
    # UIDs a catch-up found that are not persisted yet, and the UIDVALIDITY they belong
    # to: if the connection drops first and a later catch-up no longer finds one, it was
    # expunged meanwhile and is recorded so (batch.py), not forgotten. Replaced, never
    # changed in place: NO_UIDS when there are none.
    unpersisted_validity: int | None = None
    unpersisted: frozenset[int] = NO_UIDS
    # The folder's EXISTS count at the last catch-up of this selection (None: unknown),
    # and the connection's count of expunges and flag changes then.
    count_at_search: int | None = None
    changes_at_search: int | None = None

    def carry_over(self, previous: FolderCursor | None) -> None:
        """A new connection's cursor keeps what the previous one found but did not persist."""
        if previous is not None:
            self.unpersisted_validity = previous.unpersisted_validity
            self.unpersisted = previous.unpersisted

    # --- SELECT / EXAMINE ----------------------------------------------------------------

    def select(self, uid_validity: int) -> Start:
        """The folder was selected with ``uid_validity``: resume from the checkpoint, take a
        baseline (no checkpoint), or revalidate (UIDVALIDITY changed)."""
        saved_validity, saved_last = self.uid_validity, self.last_uid
        self.uid_validity = uid_validity
        # Counts of another connection or folder mean nothing.
        self.count_at_search = self.changes_at_search = None
        if saved_validity is None or saved_last is None:
            return Start.BASELINE
        if saved_validity != uid_validity:
            return Start.REVALIDATE
        return Start.RESUME

    def baseline(self, highest: int) -> None:
        self.last_uid = highest

    def begin_revalidation(self) -> None:
        """The old UIDs mean nothing now: every UID found by date is above the checkpoint."""
        self.last_uid = 0

    def end_revalidation(self, highest: int) -> int:
        """``highest`` was the last UID at SELECT: mail arriving during the revalidation has
        a higher UID and the next catch-up gets it. Returns the new checkpoint."""
        self.last_uid = max(highest, self.last_uid or 0)
        return self.last_uid

    # --- catching up ---------------------------------------------------------------------

    def current_at_select(
        self, uid_next: int | None, exists_count: int | None, changes_seen: int | None = None
    ) -> bool:
        """Right after SELECT (and its baseline, if any): True if the SELECT's UIDNEXT says
        no UID is past the checkpoint and no UID found before waits to be persisted, so the
        catch-up's UID SEARCH would find nothing and is not sent: a first connection (or a
        reconnect with nothing new) costs LOGIN, SELECT and IDLE. ``exists_count`` (the
        SELECT's EXISTS) and ``changes_seen`` (the connection's count of expunges and flag
        changes) are kept as the catch-up would keep them, so the first new message still
        gets the one-trip range FETCH. Without UIDNEXT: False (the SEARCH tells)."""
        last = self.last_uid
        if uid_next is None or last is None or uid_next - 1 > last:
            return False
        if self.unpersisted_validity == self.uid_validity and any(
            uid > last for uid in self.unpersisted
        ):
            return False
        self.count_at_search, self.changes_at_search = exists_count, changes_seen
        return True

    def plan_catch_up(
        self,
        exists_count: int | None,
        steady: bool,
        batch_size: int = BATCH_SIZE,
        *,
        changes_seen: int | None = None,
        one_trip: int = 0,
    ) -> CatchUp:
        """``steady``: from the watch loop, after IDLE or a poll. If the EXISTS count grew by
        at most ``batch_size`` since the last catch-up of this selection, one ``UID FETCH
        last+1:* (UID RFC822.SIZE INTERNALDATE)`` finds the new UIDs AND their sizes instead
        of a UID SEARCH and then that FETCH: one round trip fewer per new message. After a
        (re)SELECT, or when many arrived, the UID SEARCH runs.

        If it grew by 1 to ``one_trip`` and no expunge or flag change came since
        (``changes_seen``, the connection's count, unchanged: so the growth is the number
        of new messages), that FETCH brings their bodies too (``bodies``): one round trip
        per new message. Grown by 0 (woken by something else), the range would answer the
        last message, already persisted: no bodies."""
        count_before, self.count_at_search = self.count_at_search, exists_count
        changes_before, self.changes_at_search = self.changes_at_search, changes_seen
        grown = (
            exists_count - count_before
            if steady and count_before is not None and exists_count is not None
            else None
        )
        by_range = grown is not None and grown <= batch_size
        bodies = (
            by_range
            and grown is not None
            and 1 <= grown <= one_trip
            and changes_seen is not None
            and changes_seen == changes_before
        )
        return CatchUp(self.last_uid or 0, by_range, bodies)

    def to_fetch(self, plan: CatchUp, found: Iterable[int]) -> list[int]:
        """The UIDs to fetch: those found above the checkpoint, and those an earlier catch-up
        found but did not persist (gone now: batch.py records them as expunged)."""
        last = plan.last
        seen = self.unpersisted if self.unpersisted_validity == self.uid_validity else NO_UIDS
        uids = sorted({uid for uid in found if uid > last} | {uid for uid in seen if uid > last})
        self.unpersisted_validity = self.uid_validity
        self.unpersisted = frozenset(uids) if uids else NO_UIDS
        return uids

    def persisted(self, batch: Sequence[int]) -> None:
        """Every UID of ``batch`` is recorded: the checkpoint moves past them."""
        self.last_uid = max(self.last_uid or 0, max(batch))
        self.unpersisted = self.unpersisted.difference(batch) or NO_UIDS

    # --- a secondary folder --------------------------------------------------------------

    def has_news(self, status: dict[str, int]) -> bool:
        """A STATUS (polled or a NOTIFY report) says there is mail past the checkpoint, or
        the UIDVALIDITY changed."""
        if status.get("UIDVALIDITY", self.uid_validity) != self.uid_validity:
            return True
        last = self.last_uid or 0
        return status.get("UIDNEXT", last + 2) - 1 > last


def secondary_baseline(folder: str, status: dict[str, int]) -> FolderCursor:
    """A folder new to the user starts at its UIDNEXT: its old mail is not sent."""
    return FolderCursor(folder, status["UIDVALIDITY"], status["UIDNEXT"] - 1, primary=False)


def batches(uids: Sequence[int], size: int = BATCH_SIZE) -> Iterator[list[int]]:
    for start in range(0, len(uids), size):
        yield list(uids[start : start + size])


def highest_uid(uid_next: int | None) -> int | None:
    """The last UID of a folder from its UIDNEXT; None: unknown, a UID SEARCH must tell."""
    return uid_next - 1 if uid_next else None


def revalidation_window(
    last_internal_date: datetime | None, baseline: datetime | None, now: datetime
) -> tuple[str, datetime, datetime | None]:
    """After a UIDVALIDITY change: (the SEARCH criteria, their first day, the cutoff).

    The mail since a day before the last one persisted is looked at; what predates the
    user's baseline (the cutoff) is skipped as before_baseline, what was delivered already
    is a duplicate, the rest is new. INTERNALDATE has whole seconds: a message of the
    baseline's second is new."""
    start = min(last_internal_date or baseline or now, now) - SINCE_MARGIN
    cutoff = baseline.replace(microsecond=0) if baseline else None
    return f"SINCE {start.strftime('%d-%b-%Y')}", start, cutoff


def range_meta(plan: CatchUp, events: Iterable[Any]) -> dict[int, Fetch]:
    """The sizes and dates a range FETCH found above the checkpoint; an answer with a size
    wins over an unsolicited FLAGS update of the same UID."""
    meta: dict[int, Fetch] = {}
    last = plan.last
    for event in events:
        if isinstance(event, Fetch) and event.uid is not None and event.uid > last:
            if event.uid not in meta or meta[event.uid].size is None:
                meta[event.uid] = event
    return meta


def fetch_answer(tagged: TaggedResponse) -> FetchAnswer:
    if tagged.status == "OK":
        return FetchAnswer.OK
    code = str(tagged.code[0]).upper() if tagged.code else ""
    if tagged.status != "NO" or code in RETRY_LATER_CODES:
        return FetchAnswer.RETRY_LATER
    return FetchAnswer.SOME_REFUSED


def fetches(events: Iterable[Any]) -> list[Fetch]:
    return [e for e in events if isinstance(e, Fetch) and e.uid is not None]


def validity_changed(events: Iterable[Any], uid_validity: int | None) -> bool:
    """An untagged OK [UIDVALIDITY n] that differs from the selected folder's."""
    for event in events:
        if isinstance(event, UntaggedStatus) and event.code and event.code[0] == "UIDVALIDITY":
            if int(event.code[1]) != uid_validity:
                return True
    return False


def code_value(events: Iterable[Any], name: str) -> int | None:
    """The number of response code ``name`` (UIDVALIDITY, UIDNEXT) among ``events``."""
    value = None
    for event in events:
        code = getattr(event, "code", None)
        if code and code[0] == name:
            value = int(code[1])
    return value


def status_items(events: Iterable[Any]) -> dict[str, int] | None:
    """The STATUS answer with both UIDNEXT and UIDVALIDITY, or None."""
    for event in events:
        if isinstance(event, MailboxStatus) and "UIDNEXT" in event.items:
            if "UIDVALIDITY" in event.items:
                return event.items
    return None


def poll_every(notify: bool, idle_reissue: float, folder_poll: float) -> float:
    """STATUS polling period of secondary folders: FOLDER_POLL_SECONDS, or with NOTIFY only
    at each IDLE re-issue, a safety net should a server drop a report."""
    return idle_reissue if notify else folder_poll


def until_poll(period: float, next_poll: float | None, now: float) -> float:
    """How long the next IDLE (or NOOP wait) lasts: ``period``, or until the secondary
    folders' next poll (None: no secondary folder) if that is sooner."""
    if next_poll is None:
        return period
    return max(0.0, min(period, next_poll - now))
