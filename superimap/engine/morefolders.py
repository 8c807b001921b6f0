"""The folders a mailbox session watches besides its primary one (design.md 4.10): I/O.

One FolderCursor (sync/mailbox.py) per folder, owned by OtherFolders for one connection:
the primary folder is watched by IDLE; these by NOTIFY (RFC 5465) where the server
advertises it, else by STATUS polling folded into the idle refresh. A folder with news is
EXAMINEd and caught up by the session with its own cursor, then the primary is SELECTed
again (MailboxSession._visit_folders_with_news).
"""

from __future__ import annotations

import asyncio
import logging
import random

from superimap.engine import store
from superimap.imap import TaggedResponse
from superimap.imapclient import CommandFailed, ImapConnection
from superimap.sync.mailbox import (
    FolderCursor,
    poll_every,
    secondary_baseline,
    status_items,
    until_poll,
)

log = logging.getLogger("superimap.engine")


class OtherFolders:
    """The secondary folders of one connection: their cursors, NOTIFY or polling, and
    what is wrong with them (``warning``, shown as the mailbox's last error)."""

    def __init__(self, engine, user_id: int, label: str, warning: str = "") -> None:
        self.engine = engine
        self.user_id = user_id
        self.label = label
        self.cursors: dict[str, FolderCursor] = {}
        self.notify = False
        self.next_poll: float | None = None
        self.warning = warning

    async def start(
        self,
        conn: ImapConnection,
        names: list[str],
        previous: OtherFolders | None,
        flag_changes: bool = False,
    ) -> None:
        """Checkpoints of the other folders: a folder new to the user gets a baseline at its
        UIDNEXT (no old mail); a known one is caught up if it moved. Then NOTIFY where the
        server has it, else STATUS polling every folder_poll seconds."""
        if not names:
            return
        known = await self.engine.pool.run(store.folder_states, self.user_id)
        for name in names:
            status = await self.status(conn, name)
            if status is None:
                continue
            state = known.get(name)
            if state is not None:
                cursor = FolderCursor(
                    name, state.uid_validity, state.last_uid, state.last_internal_date, False
                )
            else:
                cursor = secondary_baseline(name, status)
                await self.engine.pool.run(
                    store.set_folder_baseline,
                    self.user_id,
                    self.engine.node_id,
                    name,
                    cursor.uid_validity,
                    cursor.last_uid,
                )
                log.info(
                    "mailbox %s: baseline uid %d (uidvalidity %d, %s)",
                    self.label,
                    cursor.last_uid,
                    cursor.uid_validity,
                    name,
                )
            # What a previous connection found but did not persist stays known.
            cursor.carry_over(previous.cursors.get(name) if previous else None)
            self.cursors[name] = cursor
        await self._notify_or_poll(conn, flag_changes)

    async def _notify_or_poll(self, conn: ImapConnection, flag_changes: bool) -> None:
        settings = self.engine.session_settings
        self.notify = False
        if "NOTIFY" in conn.protocol.capabilities and settings.use_notify:
            try:
                await conn.command(*conn.protocol.notify_set(list(self.cursors), flag_changes))
                self.notify = True
            except CommandFailed as exc:
                log.info("mailbox %s: NOTIFY refused (%s); polling", self.label, exc)
        # The first poll at a random point of the period: mailboxes that connected together
        # (an engine start) do not all poll in the same second, every period.
        period = self._poll_every()
        self.next_poll = asyncio.get_running_loop().time() + random.uniform(0, period)

    def _poll_every(self) -> float:
        settings = self.engine.session_settings
        return poll_every(self.notify, settings.idle_reissue, settings.folder_poll)

    def until_poll(self, period: float) -> float:
        """How long the next IDLE (or NOOP wait) lasts: polling is folded into it."""
        if not self.cursors:
            return period
        return until_poll(period, self.next_poll, asyncio.get_running_loop().time())

    async def status(self, conn: ImapConnection, name: str) -> dict[str, int] | None:
        """STATUS (UIDNEXT UIDVALIDITY) of ``name``; None (and named in ``warning``) if the
        server refuses it, e.g. the folder was deleted."""
        try:
            untagged, _ = await conn.command(*conn.protocol.status(name))
        except CommandFailed as exc:
            log.warning("mailbox %s: STATUS %s refused: %s", self.label, name, exc)
            self.warning = f"folder {name} not readable: {exc}"[:500]
            self.cursors.pop(name, None)
            return None
        items = status_items(untagged)
        if items is None:
            raise CommandFailed("STATUS", TaggedResponse("", "NO", None, "no UIDNEXT/UIDVALIDITY"))
        return items

    async def poll_if_due(self, conn: ImapConnection) -> None:
        """Without NOTIFY, news of the other folders comes only from polling STATUS."""
        loop = asyncio.get_running_loop()
        if self.next_poll is not None and loop.time() >= self.next_poll:
            for name in list(self.cursors):
                await self.status(conn, name)
            self.next_poll = loop.time() + self._poll_every()

    def reported(self, conn: ImapConnection) -> bool:
        """A STATUS (a NOTIFY report, or polled) of one of these folders is waiting."""
        return bool(self.cursors) and not conn.statuses.keys().isdisjoint(self.cursors)

    def with_news(self, conn: ImapConnection) -> list[FolderCursor]:
        """The folders whose waiting STATUS says they moved (the reports are used up)."""
        due = []
        for name, cursor in list(self.cursors.items()):
            status = conn.statuses.pop(name, None)
            if status is not None and cursor.has_news(status.items):
                due.append(cursor)
        return due
