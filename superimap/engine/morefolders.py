"""The folders a mailbox session watches besides its primary one (design.md 4.10).

Mixed into MailboxSession: the primary folder is watched by IDLE; these are watched by
NOTIFY (RFC 5465) where the server advertises it, else by STATUS polling folded into the
idle refresh. A folder with news is EXAMINEd and caught up with the primary's own code
(MailboxSession._catch_up and path 4), then the primary is SELECTed again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, replace
from datetime import datetime

from superimap.engine import store
from superimap.imap import MailboxStatus, TaggedResponse
from superimap.imapclient import CommandFailed, ServerBye

log = logging.getLogger("superimap.engine")


@dataclass
class FolderWatch:
    """A secondary folder while its session runs: the checkpoint it has persisted to, and
    the UIDs a SEARCH found there that are not persisted yet."""

    uid_validity: int
    last_uid: int
    last_internal_date: datetime | None = None
    # As MailboxSession._unpersisted: (uid_validity, UIDs found but not persisted yet).
    unpersisted: tuple[int | None, set[int]] = (None, set())


class SecondaryFolders:
    """MailboxSession's secondary folders: state in ``_secondary``, ``_notify``,
    ``_next_poll`` and ``_folder_warning`` (set in MailboxSession.__init__)."""

    async def _start_secondaries(self, config: store.MailboxConfig, names: list[str]) -> None:
        """Checkpoints of the other folders: a folder new to the user gets a baseline at its
        UIDNEXT (no old mail); a known one is caught up if it moved. Then NOTIFY where the
        server has it, else STATUS polling every folder_poll seconds."""
        # What a previous connection of this session found but did not persist stays known.
        previous, self._secondary = self._secondary, {}
        if not names:
            return
        known = await self.engine.pool.run(store.folder_states, self.user_id)
        for name in names:
            status = await self._status(name)
            if status is None:
                continue
            if name in known:
                state = known[name]
                watch = FolderWatch(state.uid_validity, state.last_uid, state.last_internal_date)
            else:
                watch = FolderWatch(status["UIDVALIDITY"], status["UIDNEXT"] - 1)
                await self.engine.pool.run(
                    store.set_folder_baseline,
                    self.user_id,
                    self.engine.node_id,
                    name,
                    watch.uid_validity,
                    watch.last_uid,
                )
                log.info(
                    "mailbox %s: baseline uid %d (uidvalidity %d, %s)",
                    self.label,
                    watch.last_uid,
                    watch.uid_validity,
                    name,
                )
            if name in previous:
                watch.unpersisted = previous[name].unpersisted
            self._secondary[name] = watch
        self._notify = False
        if "NOTIFY" in self.conn.protocol.capabilities and self.cfg.use_notify:
            try:
                await self.conn.command(*self.conn.protocol.notify_set(list(self._secondary)))
                self._notify = True
            except CommandFailed as exc:
                log.info("mailbox %s: NOTIFY refused (%s); polling", self.label, exc)
        # The first poll at a random point of the period: mailboxes that connected together
        # (an engine start) do not all poll in the same second, every period.
        period = self._poll_every()
        self._next_poll = asyncio.get_running_loop().time() + random.uniform(0, period)
        await self._visit_folders_with_news(config)

    def _until_poll(self, period: float) -> float:
        """How long the next IDLE (or NOOP wait) lasts: ``period``, or until the secondary
        folders' next poll if that is sooner. Polling is folded into the idle refresh."""
        if not self._secondary:
            return period
        return max(0.0, min(period, self._next_poll - asyncio.get_running_loop().time()))

    def _poll_every(self) -> float:
        """STATUS polling period: FOLDER_POLL_SECONDS, or with NOTIFY only at each IDLE
        re-issue, a safety net should a server drop a report."""
        return self.cfg.idle_reissue if self._notify else self.cfg.folder_poll

    async def _status(self, name: str) -> dict[str, int] | None:
        """STATUS (UIDNEXT UIDVALIDITY) of ``name``; None (and named in last_error) if the
        server refuses it, e.g. the folder was deleted."""
        try:
            untagged, _ = await self.conn.command(*self.conn.protocol.status(name))
        except CommandFailed as exc:
            log.warning("mailbox %s: STATUS %s refused: %s", self.label, name, exc)
            self._folder_warning = f"folder {name} not readable: {exc}"[:500]
            self._secondary.pop(name, None)
            return None
        for event in untagged:
            if isinstance(event, MailboxStatus) and "UIDNEXT" in event.items:
                if "UIDVALIDITY" in event.items:
                    return event.items
        raise CommandFailed("STATUS", TaggedResponse("", "NO", None, "no UIDNEXT/UIDVALIDITY"))

    async def _check_secondaries(self, config: store.MailboxConfig) -> None:
        """After each wait: poll the other folders when due (without NOTIFY their news comes
        as * STATUS by itself), then catch up those that moved."""
        if not self._secondary:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next_poll:
            for name in list(self._secondary):
                await self._status(name)
            self._next_poll = loop.time() + self._poll_every()
        await self._visit_folders_with_news(config)

    def _has_news(self, name: str) -> bool:
        status = self.conn.statuses.pop(name, None)
        if status is None:
            return False
        watch = self._secondary[name]
        if status.items.get("UIDVALIDITY", watch.uid_validity) != watch.uid_validity:
            return True
        return status.items.get("UIDNEXT", watch.last_uid + 2) - 1 > watch.last_uid

    async def _visit_folders_with_news(self, config: store.MailboxConfig) -> None:
        due = [name for name in list(self._secondary) if self._has_news(name)]
        while due:
            primary = (self.uid_validity, self.last_uid, self._unpersisted)
            try:
                for name in due:
                    await self._visit(config, name)
            finally:
                self.uid_validity, self.last_uid, self._unpersisted = primary
            # Back to the primary folder; mail that arrived there meanwhile is caught up now.
            untagged, tagged = await self.conn.command(*self.conn.protocol.select(config.folder))
            if code_value([*untagged, tagged], "UIDVALIDITY") != self.uid_validity:
                raise ServerBye("UIDVALIDITY changed while another folder was read")
            await self._catch_up(config)
            # Mail that reached a visited folder after its SEARCH came as EXISTS while it
            # was selected, not as a NOTIFY report: ask once more.
            for name in due:
                await self._status(name)
            due = [name for name in list(self._secondary) if self._has_news(name)]

    async def _visit(self, config: store.MailboxConfig, name: str) -> None:
        """EXAMINE a secondary folder and catch it up exactly as the primary one (4.3)."""
        watch = self._secondary[name]
        untagged, tagged = await self.conn.command(*self.conn.protocol.select(name, readonly=True))
        uid_validity = code_value([*untagged, tagged], "UIDVALIDITY")
        uid_next = code_value([*untagged, tagged], "UIDNEXT")
        if uid_validity is None:
            raise CommandFailed("EXAMINE", TaggedResponse("", "NO", None, "no UIDVALIDITY"))
        folder_config = replace(
            config,
            folder=name,
            last_internal_date=watch.last_internal_date,
            sweep_requested_at=None,
        )
        self.uid_validity = uid_validity
        self._unpersisted = watch.unpersisted
        try:
            if uid_validity != watch.uid_validity:
                log.warning(
                    "mailbox %s: UIDVALIDITY of %s changed %s -> %s; catching up by date",
                    self.label,
                    name,
                    watch.uid_validity,
                    uid_validity,
                )
                highest = uid_next - 1 if uid_next else await self._highest_uid()
                await self._catch_up_after_uidvalidity_change(folder_config, highest)
            else:
                self.last_uid = watch.last_uid
                await self._catch_up(folder_config)
            watch.uid_validity, watch.last_uid = uid_validity, self.last_uid or 0
        finally:
            # Found but not persisted (a dropped connection): recorded expunged if gone.
            watch.unpersisted = self._unpersisted

    async def _save_baseline(self, config: store.MailboxConfig, checkpoint: int) -> None:
        if config.folder in self._secondary:
            await self.engine.pool.run(
                store.set_folder_baseline,
                self.user_id,
                self.engine.node_id,
                config.folder,
                self.uid_validity,
                checkpoint,
            )
        else:
            await self.engine.pool.run(
                store.set_baseline, self.user_id, self.engine.node_id, self.uid_validity, checkpoint
            )


def code_value(events, name: str) -> int | None:
    """The number of response code ``name`` (UIDVALIDITY, UIDNEXT) among ``events``."""
    for event in events:
        code = getattr(event, "code", None)
        if code and code[0] == name:
            return int(code[1])
    return None
