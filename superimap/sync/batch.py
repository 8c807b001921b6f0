"""What each UID of a batch became (design.md 4.3), as a machine without I/O.

``BatchFetch(uids, ...).requests()`` yields the IMAP commands to send, one at a time; the
driver (engine/session.py) sends each, hands the answer back (``meta_answered``,
``bodies_answered``, ``present``) and then asks for the next. When the requests run out,
``outcomes()`` holds one Outcome per UID, in the order of ``uids``, whatever the server did:

- a message expunged meanwhile comes back with a NIL body, or is left out (with OK, NO
  [EXPUNGEISSUED] or no code), in any order; a UID without an answer is checked again
  (NOOP, then UID SEARCH): gone, it is skipped as expunged; present, fetched again, up to
  FETCH_ROUNDS times in all, then skipped as unfetchable;
- mail older than ``before`` is skipped as before_baseline after fetching its header only;
- mail over ``max_size`` gets its header fetched and is sent truncated;
- a UID may also get an unsolicited FLAGS update of its own: the answer with a size wins;
- bodies that came with the sizes (``known``: a one-trip catch-up's ``ONE_TRIP`` answer,
  ``BODY[]<0>``, at most ``max_size + 1`` bytes each) are taken as they are when the message
  is within the limit and arrived whole; any other is fetched as if none had come.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import NamedTuple

from superimap.imap import Fetch

# A UID the server does not return is re-checked (NOOP, UID SEARCH) and fetched again up
# to this many times in all; still present but never returned: skipped as unfetchable.
FETCH_ROUNDS = 3
BODY_BYTES_PER_FETCH = 8 * 1024 * 1024
META_ITEMS = "(UID RFC822.SIZE INTERNALDATE)"
WHOLE = "BODY.PEEK[]"
HEADER = "BODY.PEEK[HEADER]"
# The key each section's answer is reported under (imap/ upper-cases, drops .PEEK).
ANSWER_KEYS = {WHOLE: "BODY[]", HEADER: "BODY[HEADER]"}
# The answer to a partial body ``BODY.PEEK[]<0.n>``: the first n octets, or all if fewer.
PARTIAL_KEY = "BODY[]<0>"
# A one-trip catch-up fetches sizes, dates and bodies of at most this many new messages
# at once (fewer where max_size is big: one_trip_count()).
ONE_TRIP_MOST = 8

# MailLog.Reason values the machine decides (mailboxes/models.py; sync/ imports no Django).
EXPUNGED = "expunged"
BEFORE_BASELINE = "before_baseline"
UNFETCHABLE = "unfetchable"


class Outcome(NamedTuple):
    """What one UID became. Exactly one of: ``raw`` (the whole message), ``header`` alone
    (over the size limit: sent truncated), or ``skip`` (a reason: expunged,
    before_baseline, unfetchable)."""

    uid: int
    size: int
    internal_date: datetime | None
    raw: bytes | None
    header: bytes | None = None
    skip: str = ""
    # When the driver last saw EXISTS (time.time()) as the answer came in.
    seen_at: float | None = None
    # FLAGS (and MODSEQ) with the body, when asked for (change events, design.md 4.14).
    flags: tuple[str, ...] | None = None
    modseq: int | None = None


class FetchMeta(NamedTuple):
    """UID FETCH ``uids`` META_ITEMS: sizes and dates."""

    uids: tuple[int, ...]


class FetchBodies(NamedTuple):
    """UID FETCH ``uids`` (UID ``section``), at most BODY_BYTES_PER_FETCH of mail."""

    uids: tuple[int, ...]
    section: str
    extra: str = ""  # more items, e.g. "FLAGS MODSEQ" (change events)

    @property
    def items(self) -> str:
        extra = f" {self.extra}" if self.extra else ""
        return f"(UID{extra} {self.section})"


class CheckPresent(NamedTuple):
    """NOOP (the server reports expunges), then UID SEARCH UID ``uids``."""

    uids: tuple[int, ...]

    @property
    def criteria(self) -> str:
        return "UID " + ",".join(map(str, self.uids))


Request = FetchMeta | FetchBodies | CheckPresent


def one_trip_items(max_size: int, extra: str = "") -> str:
    """Sizes, dates and the first ``max_size + 1`` octets of each message in one FETCH: a
    message within the limit arrives whole (fewer octets than asked for), a bigger one is
    cut there and fetched as today (header only), so no answer exceeds the limit by more
    than one octet."""
    extra = f" {extra}" if extra else ""
    return f"(UID RFC822.SIZE INTERNALDATE{extra} BODY.PEEK[]<0.{max_size + 1}>)"


def one_trip_count(max_size: int, chunk_bytes: int = BODY_BYTES_PER_FETCH) -> int:
    """How many new messages a one-trip catch-up may fetch: ONE_TRIP_MOST, fewer when
    their bodies could exceed ``chunk_bytes`` together, at least one."""
    return max(1, min(ONE_TRIP_MOST, chunk_bytes // (max_size + 1)))


def chunks_by_size(sizes: Sequence[tuple[int, int | None]], limit: int) -> Iterator[list[int]]:
    """The UIDs of ``sizes`` ((uid, size) pairs) in order, cut into runs of at most
    ``limit`` bytes (a message bigger than ``limit`` is a run of its own; no size: 0)."""
    chunk: list[int] = []
    total = 0
    for uid, size in sizes:
        size = size or 0
        if chunk and total + size > limit:
            yield chunk
            chunk, total = [], 0
        chunk.append(uid)
        total += size
    if chunk:
        yield chunk


class BatchFetch:
    def __init__(
        self,
        uids: Sequence[int],
        *,
        max_size: int,
        before: datetime | None = None,
        known: dict[int, Fetch] | None = None,
        rounds: int = FETCH_ROUNDS,
        chunk_bytes: int = BODY_BYTES_PER_FETCH,
        extra: str = "",
        known_at: float | None = None,
    ) -> None:
        self.uids = list(uids)
        self.extra = extra
        # FLAGS and MODSEQ that came with the bodies (only when ``extra`` asks for them).
        self._flags: dict[int, tuple[tuple[str, ...], int | None]] = {}
        self.max_size = max_size
        self.before = before
        self.rounds = rounds
        self.chunk_bytes = chunk_bytes
        # Sizes and dates: given (a range FETCH of the catch-up) or fetched.
        self.meta: dict[int, Fetch] = {uid: known[uid] for uid in uids if known and uid in known}
        self.done: dict[int, Outcome] = {}
        self.pending = list(self.uids)
        self._parts: dict[int, bytes] = {}
        self._seen_at: float | None = None
        # Whole bodies that came with ``known`` (a one-trip catch-up), and when.
        self._early = self._early_bodies()
        self._early_at = known_at

    def _early_bodies(self) -> dict[int, bytes]:
        """The partial bodies of ``known`` that are whole messages within the limit: fewer
        octets than the max_size + 1 asked for, of a message whose size is within it."""
        early: dict[int, bytes] = {}
        max_size = self.max_size
        for uid, m in self.meta.items():
            value = m.attributes.get(PARTIAL_KEY)
            if isinstance(value, str):
                value = value.encode("utf-8")
            if isinstance(value, bytes) and len(value) <= max_size and (m.size or 0) <= max_size:
                early[uid] = value
                if self.extra and m.flags is not None:
                    self._flags[uid] = (m.flags, m.modseq)
        return early

    # --- what to send --------------------------------------------------------------------

    def requests(self) -> Iterator[Request]:
        """The commands to send, each after the answer to the one before was handed back."""
        for attempt in range(self.rounds):
            if attempt:
                yield CheckPresent(tuple(self.pending))
                if not self.pending:
                    break
            missing = tuple(uid for uid in self.pending if uid not in self.meta)
            if missing:
                yield FetchMeta(missing)
            yield from self._body_requests()
            self.pending = [uid for uid in self.pending if uid not in self.done]
            if not self.pending:
                break
        for uid in self.pending:
            self.done[uid] = self._skipped(uid, UNFETCHABLE)

    def _body_requests(self) -> Iterator[FetchBodies]:
        """This round's body FETCHes: whole messages first, then headers (over the size
        limit, or older than ``before``); then what came back is recorded."""
        meta, before, max_size = self.meta, self.before, self.max_size
        whole: list[tuple[int, int | None]] = []
        heads: list[tuple[int, int | None]] = []
        olds: list[tuple[int, int | None]] = []
        for uid in self.pending:
            m = meta.get(uid)
            if m is None:
                continue
            date = m.internal_date
            if before and date and date < before:
                olds.append((uid, m.size))
            elif (m.size or 0) <= max_size:
                whole.append((uid, m.size))
            else:
                heads.append((uid, m.size))
        self._parts = {}
        early, self._early = self._early, {}
        if early:
            for uid, _ in whole:
                if uid in early:
                    self.done[uid] = self._with_flags(
                        uid, self._outcome(meta[uid], uid, WHOLE, early[uid], self._early_at)
                    )
            whole = [(uid, size) for uid, size in whole if uid not in early]
        for chunk in chunks_by_size(whole, self.chunk_bytes):
            yield FetchBodies(tuple(chunk), WHOLE, self.extra)
        for chunk in chunks_by_size(heads + olds, self.chunk_bytes):
            yield FetchBodies(tuple(chunk), HEADER, self.extra)
        parts, seen_at = self._parts, self._seen_at
        for kind, listed in ((WHOLE, whole), (HEADER, heads), (BEFORE_BASELINE, olds)):
            for uid, _ in listed:
                part = parts.get(uid)
                if part is not None:
                    self.done[uid] = self._with_flags(
                        uid, self._outcome(meta[uid], uid, kind, part, seen_at)
                    )

    def _with_flags(self, uid: int, outcome: Outcome) -> Outcome:
        if uid in self._flags:
            flags, modseq = self._flags[uid]
            return outcome._replace(flags=flags, modseq=modseq)
        return outcome

    @staticmethod
    def _outcome(m: Fetch, uid: int, kind: str, part: bytes, seen_at: float | None) -> Outcome:
        if kind == WHOLE:
            return Outcome(uid, m.size or 0, m.internal_date, part, None, "", seen_at)
        skip = BEFORE_BASELINE if kind == BEFORE_BASELINE else ""
        return Outcome(uid, m.size or 0, m.internal_date, None, part, skip, seen_at)

    # --- what came back --------------------------------------------------------------------

    def meta_answered(self, request: FetchMeta, events: Iterable[object]) -> None:
        """The answers to ``request`` among ``events`` (the untagged responses)."""
        wanted = set(request.uids)
        for event in events:
            # Not an unsolicited FLAGS update for the same UID, if there is better.
            if not isinstance(event, Fetch):
                continue
            uid = event.uid
            if uid is None or uid not in wanted:
                continue
            if uid not in self.meta or self.meta[uid].size is None:
                self.meta[uid] = event

    def bodies_answered(
        self, request: FetchBodies, events: Iterable[object], seen_at: float | None
    ) -> None:
        """The sections that came back among ``events`` (the untagged responses); a NIL or
        missing one is left out (and retried)."""
        wanted = set(request.uids)
        key = ANSWER_KEYS[request.section]
        for event in events:
            if not isinstance(event, Fetch):
                continue
            uid = event.uid
            if uid is None or uid not in wanted:
                continue
            value = event.body if key == "BODY[]" else event.attributes.get(key)
            if isinstance(value, str):
                value = value.encode("utf-8")
            if isinstance(value, bytes):
                self._parts[uid] = value
            if self.extra and event.flags is not None:
                self._flags[uid] = (event.flags, event.modseq)
        self._seen_at = seen_at

    def present(self, request: CheckPresent, found: Iterable[int]) -> None:
        """The UIDs the SEARCH found; the others of ``request`` were expunged."""
        found = set(found)
        for uid in request.uids:
            if uid not in found:
                self.done[uid] = self._skipped(uid, EXPUNGED)
        self.pending = [uid for uid in self.pending if uid in found]

    # --- the result ----------------------------------------------------------------------

    def outcomes(self) -> list[Outcome]:
        """One Outcome per UID, in the order given; call after requests() ran out."""
        return [self.done[uid] for uid in self.uids]

    def _skipped(self, uid: int, reason: str) -> Outcome:
        m = self.meta.get(uid)
        return Outcome(
            uid=uid,
            size=(m.size or 0) if m else 0,
            internal_date=m.internal_date if m else None,
            raw=None,
            skip=reason,
        )
