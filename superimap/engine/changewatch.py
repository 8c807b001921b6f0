"""Change events of one mailbox session (design.md 4.14): the I/O of sync/changes.py.

Only a session whose partner has a message_updated or message_deleted URL has one; it
holds a few numbers (the mode, each folder's HIGHESTMODSEQ at SELECT, when the next
resync is due). What the engine knows of delivered
messages lives in the database (mailboxes.MessageState), not here.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

from superimap.engine import store, writer
from superimap.imap import Expunge, Fetch, Vanished
from superimap.sync import changes
from superimap.sync.mailbox import FolderCursor, code_value

log = logging.getLogger("superimap.engine")


class ChangeWatch:
    __slots__ = (
        "mode",
        "gmail",
        "highest",
        "due",
        "expunged",
        "resync_at",
        "counted",
    )

    def __init__(self, capabilities: frozenset[str]) -> None:
        self.mode = changes.change_mode(capabilities)
        self.gmail = "X-GM-EXT-1" in capabilities
        # HIGHESTMODSEQ of each folder at its last SELECT/EXAMINE (absent: NOMODSEQ); None
        # until a folder has one (the servers without CONDSTORE never do).
        self.highest: dict[str, int] | None = None
        self.due = False  # an unsolicited FETCH or EXPUNGE came: look now
        self.expunged = False  # an EXPUNGE without QRESYNC: resync for deletions
        self.resync_at = 0.0  # monotonic; 0: at the first look
        # conn.changes_seen as of the last look, less the answers to its own FETCH.
        self.counted = 0

    @classmethod
    async def start(cls, conn) -> ChangeWatch:
        """ENABLE QRESYNC (or CONDSTORE) when the server has it, before any SELECT."""
        watch = cls(conn.protocol.capabilities)
        if watch.mode != changes.RESYNC:
            await conn.command(*conn.protocol.enable(watch.mode.upper()))
        return watch

    def selected(self, folder: str, events) -> None:
        modseq = code_value(events, "HIGHESTMODSEQ")
        if modseq is not None:
            if self.highest is None:
                self.highest = {}
            self.highest[folder] = modseq
        elif self.highest is not None:
            self.highest.pop(folder, None)

    def signal(self, event) -> bool:
        """Does ``event`` (while waiting) say a flag changed or a message left?"""
        if isinstance(event, Fetch) and event.flags is not None:
            self.due = True
        elif isinstance(event, Expunge | Vanished):
            self.due = True
            self.expunged = self.expunged or isinstance(event, Expunge)
        return self.due

    @property
    def items(self) -> str:
        """What the body FETCH asks for besides the body: a delivered message's flags
        (and modseq, labels) are recorded in the persist transaction (writer.py)."""
        items = "FLAGS"
        if self.mode != changes.RESYNC:
            items += " MODSEQ"
        if self.gmail:
            items += " X-GM-LABELS"
        return items

    def until_resync(self) -> float:
        if self.mode == changes.QRESYNC:
            return float("inf")
        return max(0.0, self.resync_at - time.monotonic())

    def wanted(self, conn) -> bool:
        """Anything to look at after a catch-up: news (in IDLE, or amid other responses),
        or a resync due."""
        if conn.changes_seen > self.counted:
            self.due = True
        return self.due or self.until_resync() <= 0

    async def check(self, session, cursor: FolderCursor) -> int:
        """Look at the changes of ``cursor``'s folder (selected) and persist their events;
        how many deliveries were made."""
        folder, uid_validity = cursor.folder, cursor.uid_validity
        counted = session.conn.changes_seen
        own = [0]  # FETCH answers with FLAGS to this look's own commands
        job = writer.ChangeJob(session.user_id, session.engine.node_id, folder, uid_validity, [])
        highest = self.highest.get(folder) if self.highest is not None else None
        primary = cursor is session.primary
        if self.mode != changes.RESYNC and highest is not None:
            await self._changed_since(session, cursor, highest, job, own)
        no_modseq = self.mode == changes.RESYNC or highest is None
        if primary and (no_modseq or self.mode == changes.CONDSTORE):
            # Without MODSEQ every signal means a look at the last N; with CONDSTORE alone
            # only an EXPUNGE does (flags came with CHANGEDSINCE).
            if self.until_resync() <= 0 or self.expunged or (no_modseq and self.due):
                await self._resync(session, cursor, job, settings.CHANGES_RESYNC_MESSAGES, own)
        if primary:
            self.due = self.expunged = False
            self.counted = counted + own[0]
        if not (job.seen or job.gone or job.vanished or job.modseq is not None):
            return 0  # a resync that found nothing to read writes nothing
        made = await session.engine.pool.run(writer.write_changes, job)
        if made:
            log.info("mailbox %s: %d change event(s) in %s", session.label, made, folder)
            if session.engine.on_new_deliveries:
                session.engine.on_new_deliveries()
        return made

    async def _changed_since(
        self, session, cursor: FolderCursor, highest: int, job, own: list[int]
    ) -> None:
        """CONDSTORE/QRESYNC: what changed since the stored modseq (the folder's
        HIGHESTMODSEQ at SELECT the first time: nothing is tracked before)."""
        engine = session.engine
        since = await engine.pool.run(
            store.changes_modseq, session.user_id, cursor.folder, cursor.uid_validity
        )
        if since is None:
            job.modseq = highest
            return
        items = "(UID FLAGS X-GM-LABELS)" if self.gmail else "(UID FLAGS)"
        vanished = " VANISHED" if self.mode == changes.QRESYNC else ""
        events = await session._uid_fetch("1:*", f"{items} (CHANGEDSINCE {since}{vanished})")
        own[0] += _with_flags(events)
        job.seen.extend(changes.observed(events))
        job.vanished.extend(changes.vanished(events))
        job.modseq = changes.next_modseq(since, job.seen, cursor.last_uid or 0)

    async def _resync(self, session, cursor: FolderCursor, job, last: int, own: list[int]) -> None:
        """The flags of the last ``last`` tracked messages; a UID left out is gone once UID
        SEARCH does not find it."""
        uids = await session.engine.pool.run(
            store.tracked_uids, session.user_id, cursor.folder, cursor.uid_validity, last
        )
        self.resync_at = time.monotonic() + settings.CHANGES_RESYNC_SECONDS
        job.resynced = True
        if not uids:
            return
        items = "(UID FLAGS X-GM-LABELS)" if self.gmail else "(UID FLAGS)"
        events = await session._uid_fetch(changes.uid_set(uids), items)
        own[0] += _with_flags(events)
        seen = changes.observed(events)
        known = {o.uid for o in job.seen}
        job.seen.extend(o for o in seen if o.uid not in known)
        missing = changes.confirm_gone(uids, [o.uid for o in seen])
        if missing:
            found = set(await session._search("UID " + changes.uid_set(missing)))
            job.gone.extend(uid for uid in missing if uid not in found)


def _with_flags(events) -> int:
    """The answers conn.changes_seen counted among this look's own (flags only)."""
    return sum(1 for e in events if isinstance(e, Fetch) and e.flags is not None)
