"""One mailbox, watched by one asyncio task (design.md section 4, step by step).

Crash-only: any unexpected condition tears the session down; it starts again after a
back-off. Mail is persisted (MailLog + Delivery + checkpoint in one transaction) before the
checkpoint moves, so a crash anywhere re-fetches at worst and never loses mail.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from django.utils import timezone

from superimap.engine import folders, store
from superimap.engine.backfill import BackfillRun
from superimap.engine.changewatch import ChangeWatch
from superimap.engine.morefolders import OtherFolders
from superimap.engine.oauth import access_tokens
from superimap.imap import (
    Bye,
    Event,
    Exists,
    Fetch,
    ImapError,
    MailboxStatus,
    SearchResult,
    TaggedResponse,
)
from superimap.imapclient import (
    AuthFailed,
    CommandFailed,
    ImapConnection,
    ServerBye,
    TlsCertificateFailed,
    authenticate,
    open_connection,
)
from superimap.mailboxes.models import MailboxUser
from superimap.platform import dboutage
from superimap.platform.futures import resolve
from superimap.sync.batch import (
    META_ITEMS,
    UNFETCHABLE,
    BatchFetch,
    CheckPresent,
    FetchMeta,
    one_trip_count,
    one_trip_items,
)
from superimap.sync.mailbox import (
    BATCH_SIZE,
    FetchAnswer,
    FolderCursor,
    Start,
    batches,
    code_value,
    fetch_answer,
    highest_uid,
    range_meta,
    revalidation_window,
    validity_changed,
)
from superimap.sync.persist import FetchedMessage

log = logging.getLogger("superimap.engine")
Status = MailboxUser.Status


@dataclass(frozen=True)
class SessionSettings:
    command_timeout: float = 30.0
    fetch_timeout: float = 120.0
    idle_reissue: float = 28 * 60
    # IMAP_IDLE_SECONDS: the IDLE period of named hosts (lower-cased), instead of idle_reissue.
    idle_by_host: Mapping[str, float] = field(default_factory=dict)
    poll_interval: float = 60.0
    max_email_size: int = 1024 * 1024
    max_backoff: float = 300.0
    max_auth_backoff: float = 3600.0
    # Secondary folders (design.md 4.10): STATUS this often where NOTIFY is not used.
    folder_poll: float = 60.0
    use_notify: bool = True


# Servers known to look for new mail only when IDLE starts (or every 60 s): stock Cyrus
# without idled, Courier without enhanced IDLE. Told apart by their greeting.
SLOW_IDLE_GREETINGS = ("cyrus imap", "courier-imap")
SLOW_IDLE_REFRESH = 15.0
# An IDLE's period ends on a multiple of this many seconds of the loop's clock, at most this
# much before its full length (idle_wait): the re-issues of the sessions whose periods end
# in one step then run in one wake-up of the event loop, and their answers come back
# together, where each was a wake-up of its own for a timer and then for each answer (11
# re-issues a second in an engine of 17,000 mailboxes; design.md 8, "Idle cost").
IDLE_GRID = 1.0


def idle_period(config: store.MailboxConfig, cfg: SessionSettings, greeting: str = "") -> float:
    """How long one IDLE lasts: the host's period (IMAP_IDLE_SECONDS, by imap_host as
    written, lower-cased), else IDLE_REISSUE_SECONDS; or idle_refresh_seconds when shorter.

    The connection's setting wins, then the provider's; neither set (None) means automatic:
    SLOW_IDLE_REFRESH for servers whose greeting names Cyrus or Courier, which only check
    the mailbox when IDLE is issued again, so a short period bounds their push latency
    (the catch-up SEARCH after each DONE finds what the IDLE did not tell); 0 is off."""
    reissue = float(cfg.idle_by_host.get(config.host.lower(), cfg.idle_reissue))
    refresh = config.idle_refresh
    if refresh is None:
        slow = any(name in greeting.lower() for name in SLOW_IDLE_GREETINGS)
        refresh = SLOW_IDLE_REFRESH if slow else 0
    if refresh > 0:
        return min(float(refresh), reissue)
    return reissue


def idle_wait(now: float, seconds: float, grid: float = IDLE_GRID) -> float:
    """``seconds`` from ``now`` cut back to the last multiple of ``grid`` before then (never
    longer); waits shorter than two grid steps are left as they are."""
    if seconds < 2 * grid:
        return seconds
    return math.floor((now + seconds) / grid) * grid - now


def backoff_delay(failures: int, auth: bool, cfg: SessionSettings) -> float:
    """min(300, failures**3 - 1) s with ±20 % jitter; auth failures wait much longer."""
    if auth:
        base = min(cfg.max_auth_backoff, 300.0 * failures)
    else:
        base = min(cfg.max_backoff, float(failures**3 - 1))
    return max(0.0, base * random.uniform(0.8, 1.2))


class MailboxSession:
    """The I/O driver of one mailbox: it sends the IMAP commands, persists, and asks the
    folder cursors (sync/mailbox.py) and the batch machine (sync/batch.py) what to do."""

    def __init__(self, engine, user_id: int, config: store.MailboxConfig | None = None) -> None:
        self.engine = engine
        self.user_id = user_id
        # How log lines name the mailbox: partner/connection/tag once its config is read.
        self.label = config.label if config is not None else store.mailbox_label(user_id)
        # The config of the next connection: handed over by the supervisor (loaded in bulk)
        # for the first one; every reconnect reads it again, so changed credentials and
        # checkpoints are picked up. _connect() takes it: no frame of a waiting session
        # holds a config (~1.6 KB with its strings, design.md 4.13).
        self._config = config
        self.cfg: SessionSettings = engine.session_settings
        self.stop_event = StopFlag()
        self.failures = 0
        # Back-off counts failures of one kind in a row: a dropped connection before a
        # refused login must not make the first auth back-off the second one (543 s).
        self._failure_kind = ""
        self._kind_failures = 0
        self._last_error = ""  # kept while reconnecting, so user_error can say what failed
        # The last (status, error, failures) this session reported: the watch loop reports
        # its watching status again only when it differs, not at every IDLE re-issue.
        self._reported: tuple[str, str, int] | None = None
        self.conn: ImapConnection | None = None
        # The primary folder's cursor, and the folder selected now (the primary, or a
        # secondary one being visited): UIDVALIDITY changes are checked against it.
        self.primary: FolderCursor | None = None
        self.selected: FolderCursor | None = None
        self._sleeper: asyncio.Future | None = None
        self._exists_at_search = 0
        self._idle_period = self.cfg.idle_reissue
        # The IDLE may go out behind the catch-up's FETCH (False once a server refused it).
        self._ahead_ok = True
        # Folders besides the primary one (design.md 4.10) and how their news is learnt.
        self.others = OtherFolders(engine, user_id, self.label)
        # Change events (design.md 4.14): None unless the partner asked for them.
        self.changes: ChangeWatch | None = None

    def ended(self, _task: asyncio.Task) -> None:
        """The done callback of the session's task (supervisor._start_session)."""
        self.engine.session_ended(self.user_id)

    def stop(self) -> None:
        self.stop_event.set()
        if self.conn is not None:
            self.conn.interrupt()
        if self._sleeper is not None and not self._sleeper.done():
            self._sleeper.set_result(None)

    # --- the outer loop: connect, watch, back off -----------------------------------------

    async def run(self) -> None:
        needs_human = False
        while not self.stop_event.is_set():
            if self._config is None:
                self._config = await self.engine.pool.run(store.mailbox_config, self.user_id)
                if self._config is None:
                    return
            self.label = self._config.label
            # One connection, to its end: the status to report and why it ended. Here, not
            # in a coroutine of its own: one frame fewer while the session waits (4.13).
            status = Status.BACKING_OFF
            try:
                await self._watch()
                error = "session ended"
            except AuthFailed as exc:
                status, error = Status.AUTH_FAILED, str(exc)
            except TlsCertificateFailed as exc:
                # Needs a human like a refused login: the long back-off, and the message
                # names the fix (imap_tls_ca or imap_tls_verify).
                status, error = Status.TLS_FAILED, str(exc)
            except (ImapError, ServerBye, CommandFailed, OSError, TimeoutError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            except store.LeaseLost:
                log.info("mailbox %s: lease lost or user gone, stopping", self.label)
                return  # once disconnected (finally)
            except Exception as exc:  # noqa: BLE001 - crash-only: log, back off, reconnect
                if not dboutage.lost(exc):  # an outage is logged once per process
                    log.exception("mailbox %s: unexpected error", self.label)
                error = f"{type(exc).__name__}: {exc}"
            finally:
                await self._disconnect()
            if self.stop_event.is_set():
                break
            needs_human = status != Status.BACKING_OFF
            delay = self._count_failure(status)
            self._last_error = error[:500]
            self._report(status, error[:500], self.failures)
            log.log(
                logging.DEBUG if dboutage.is_down() else logging.INFO,
                "mailbox %s: %s; retry %d in %.1fs",
                self.label,
                error[:200],
                self.failures,
                delay,
            )
            await self._sleep(delay)
        if not needs_human:
            # An auth or certificate failure stays visible after shutdown: it needs a human.
            self._report(Status.STOPPED, "", self.failures)

    def _report(self, status: str, error: str, failures: int) -> None:
        self._reported = store.status_value(status, error, failures)
        self.engine.report(self.user_id, status, error, failures)

    def _count_failure(self, status: str) -> float:
        """Count this failure once and return the back-off before the next try."""
        self.failures += 1
        if status != self._failure_kind:
            self._failure_kind, self._kind_failures = status, 0
        self._kind_failures += 1
        return backoff_delay(self._kind_failures, status != Status.BACKING_OFF, self.cfg)

    async def _sleep(self, seconds: float) -> None:
        """Back-off that stop() can cut short, without a task of its own."""
        loop = asyncio.get_running_loop()
        self._sleeper = loop.create_future()
        handle = loop.call_later(seconds, resolve, self._sleeper)
        try:
            await self._sleeper
        finally:
            handle.cancel()
            self._sleeper = None

    async def _disconnect(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self.stop_event.is_set():
            await conn.logout()
        conn.abort()

    # --- one session --------------------------------------------------------------------

    async def _watch(self) -> None:
        idle, backfill = await self._connect()
        while not self.stop_event.is_set():
            if backfill is not None and backfill.due_in() == 0:
                # One paced step of the backfill (design.md 4.12), then live mail again.
                if not await backfill.step():
                    backfill = None
            else:
                status = Status.IDLE if idle else Status.POLLING
                if self._reported != (status, self.others.warning, 0):
                    # Not again after an IDLE that ended by its period (a re-issue, every
                    # 28 min per mailbox): nothing changed, and each report touched the
                    # engine's tables of every session (design.md 8, "Idle cost").
                    self._report(status, self.others.warning, 0)
                wait = backfill.due_in() if backfill is not None else None
                if idle:
                    tag = await self._start_idle()
                    seconds = self._idle_wait(wait)
                else:
                    seconds = self._until_wake(self._poll_period(wait))
                # Until news, the deadline or stop(), awaited from this frame: no coroutine
                # of the IDLE's, the poll's or the wait's own while the session waits, each
                # ~260 bytes a mailbox (design.md 4.13).
                deadline = self.conn.loop.time() + seconds
                while (remaining := self._left_to_wait(deadline)) > 0:
                    try:
                        event = await self.conn.next_event(remaining, interruptible=True)
                    except TimeoutError:
                        break
                    if self._is_news(event):
                        break
                if idle:
                    await self._end_idle(tag)
                elif not self.stop_event.is_set():
                    await self._poll()
                if self.stop_event.is_set():
                    return
            # Nothing else to send after this catch-up: its FETCH may carry the next IDLE.
            ahead = (
                idle
                and self._ahead_ok
                and backfill is None
                and self.changes is None
                and not self.others.cursors
            )
            await self._catch_up(self.primary, steady=True, then_idle=ahead)
            if self.changes is not None and self.changes.wanted(self.conn):
                await self.changes.check(self, self.primary)
            if self.others.cursors:
                await self.others.poll_if_due(self.conn)
                await self._visit_folders_with_news()

    async def _connect(self) -> tuple[bool, BackfillRun | None]:
        """Connect, log in, select, catch up, with the config read for this connection (taken
        from self._config: its locals, and so the config, are gone once the session waits):
        whether the server has IDLE, and the backfill to run (False, None if stopped before
        its turn to log in: nothing to watch)."""
        config, self._config = self._config, None
        assert config is not None  # read by run()
        error = self._last_error if self.failures else ""
        self._report(Status.CONNECTING, error, self.failures)
        await self.engine.logins.wait_turn(self.user_id, config.host, self._sleep)
        if self.stop_event.is_set():
            return False, None
        async with self.engine.handshakes:
            self.conn = await open_connection(
                config,
                timeout=self.cfg.command_timeout,
                max_literal_size=self.cfg.max_email_size + 64 * 1024,
            )
            await authenticate(self.conn, config, access_tokens(self.engine))
        if config.connect_pending:
            await self._tell_connected(config.connect_pending)
        self.changes = await ChangeWatch.start(self.conn) if config.track_changes else None
        names, missing = await folders.resolve_folders(self.conn, config.folders, config.folder)
        warning = f"folders not found: {', '.join(missing)}" if missing else ""
        config = replace(config, folder=names[0])
        if await self._select(config):
            await self._catch_up(self.primary)
        if self.changes is not None:
            await self.changes.check(self, self.primary)
        previous = self.others
        self.others = OtherFolders(self.engine, self.user_id, self.label, warning)
        await self.others.start(self.conn, names[1:], previous, self.changes is not None)
        await self._visit_folders_with_news()
        idle = "IDLE" in self.conn.protocol.capabilities
        self._idle_period = idle_period(config, self.cfg, self.conn.greeting_text)
        self._log_watching(config, names, idle)
        backfill = None
        if config.backfill is not None:
            backfill = await BackfillRun.start(self, config.host, config.backfill)
        return idle, backfill

    def _log_watching(self, config: store.MailboxConfig, names: list[str], idle: bool) -> None:
        how = "IDLE" if idle else f"polling every {self.cfg.poll_interval:g}s"
        if self.failures:
            log.info(
                "mailbox %s: recovered after %d failed attempt(s) (last: %s); watching %s by %s",
                self.label,
                self.failures,
                self._last_error[:200],
                ", ".join(names),
                how,
            )
            self.failures = 0
            self._failure_kind, self._kind_failures, self._last_error = "", 0, ""
        else:
            log.info(
                "mailbox %s: connected to %s:%s; watching %s by %s",
                self.label,
                config.host,
                config.port,
                ", ".join(names),
                how,
            )

    async def _tell_connected(self, token: str) -> None:
        """The first login with new credentials succeeded: user_connected, before any
        new_mail of this session is persisted."""
        engine = self.engine
        if await engine.pool.run(store.tell_connected, self.user_id, engine.node_id, token):
            log.info("mailbox %s: first login with new credentials; user_connected", self.label)
            if engine.on_new_deliveries:
                engine.on_new_deliveries()

    # --- selecting a folder -------------------------------------------------------------

    async def _select(self, config: store.MailboxConfig) -> bool:
        """SELECT the primary folder and start its cursor (resume, baseline, revalidate).
        False if the SELECT says nothing is past the checkpoint (no catch-up to run)."""
        untagged, tagged = await self.conn.command(*self.conn.protocol.select(config.folder))
        # EXISTS seen up to the SELECT's answer: one arriving later (while the checkpoint
        # is read or written) still wakes the IDLE that follows (_left_to_wait).
        seen, count = self.conn.exists_seen, self.conn.exists_count
        changes = self.conn.changes_seen
        uid_validity = code_value([*untagged, tagged], "UIDVALIDITY")
        uid_next = code_value([*untagged, tagged], "UIDNEXT")
        if uid_validity is None:
            raise CommandFailed("SELECT", TaggedResponse("", "NO", None, "no UIDVALIDITY"))
        if self.changes is not None:
            self.changes.selected(config.folder, [*untagged, tagged])
        cursor = await self._primary_cursor(config)
        cursor.carry_over(self.primary)
        self.primary = self.selected = cursor
        await self._start(cursor, uid_validity, uid_next)
        if cursor.current_at_select(uid_next, count, changes):
            self._exists_at_search = seen
            return False
        return True

    async def _primary_cursor(self, config: store.MailboxConfig) -> FolderCursor:
        """The checkpoint of the watched folder: the mailbox's own if it belongs to this
        folder; else, for a folder watched before as a secondary one, that folder's, which
        becomes the mailbox's; else none (a baseline)."""
        if config.checkpoint_folder == config.folder:
            return FolderCursor(
                config.folder, config.uid_validity, config.last_uid, config.last_internal_date
            )
        state = (await self.engine.pool.run(store.folder_states, self.user_id)).get(config.folder)
        if state is None:
            return FolderCursor(config.folder)
        await self.engine.pool.run(
            store.set_baseline,
            self.user_id,
            self.engine.node_id,
            state.uid_validity,
            state.last_uid,
            folder=config.folder,
        )
        return FolderCursor(
            config.folder, state.uid_validity, state.last_uid, state.last_internal_date
        )

    async def _start(self, cursor: FolderCursor, uid_validity: int, uid_next: int | None) -> Start:
        """``cursor``'s folder is selected: take a baseline or revalidate if the cursor says
        so (sync.mailbox.FolderCursor.select)."""
        old_validity = cursor.uid_validity
        start = cursor.select(uid_validity)
        if start is Start.RESUME:
            return start
        highest = highest_uid(uid_next)
        if highest is None:
            highest = max(await self._search("UID 1:*"), default=0)
        if start is Start.BASELINE:
            # First connection (or a checkpoint of another folder): mail that predates the
            # user is not sent.
            await self._save_checkpoint(cursor, highest)
            cursor.baseline(highest)
            log.info(
                "mailbox %s: baseline uid %d (uidvalidity %d)",
                self.label,
                highest,
                cursor.uid_validity,
            )
            return start
        log.warning(
            "mailbox %s: UIDVALIDITY of %s changed %s -> %s; catching up by date",
            self.label,
            cursor.folder,
            old_validity,
            uid_validity,
        )
        await self._revalidate(cursor, highest)
        return start

    async def _save_checkpoint(self, cursor: FolderCursor, last_uid: int) -> None:
        engine = self.engine
        if cursor.primary:
            await engine.pool.run(
                store.set_baseline,
                self.user_id,
                engine.node_id,
                cursor.uid_validity,
                last_uid,
                folder=cursor.folder,
            )
        else:
            await engine.pool.run(
                store.set_folder_baseline,
                self.user_id,
                engine.node_id,
                cursor.folder,
                cursor.uid_validity,
                last_uid,
            )

    async def _search(self, criteria: str) -> list[int]:
        untagged, _ = await self.conn.command(*self.conn.protocol.uid_search(criteria))
        self._check_uidvalidity(untagged)
        return [uid for e in untagged if isinstance(e, SearchResult) for uid in e.ids]

    def _check_uidvalidity(self, events) -> None:
        if validity_changed(events, self.selected.uid_validity if self.selected else None):
            raise ServerBye("UIDVALIDITY changed during the session")

    # --- catching up --------------------------------------------------------------------

    async def _catch_up(
        self, cursor: FolderCursor, steady: bool = False, then_idle: bool = False
    ) -> None:
        """Fetch and persist what arrived in ``cursor``'s folder (selected) since its
        checkpoint; ``steady``: from the watch loop (FolderCursor.plan_catch_up);
        ``then_idle``: a one-trip FETCH carries the IDLE that comes next (one write per
        new message; a command the batch still needs ends it first)."""
        conn = self.conn
        self._exists_at_search = conn.exists_seen
        max_size = self.cfg.max_email_size
        # No EXISTS since the last catch-up (an IDLE that ended by its period, every 25
        # min per mailbox: 67/s at 100,000): the range FETCH is the check for mail the
        # server did not announce, and the next IDLE may go out behind it too (one write
        # and one answer per re-issue, not two: design.md 8, "Idle cost").
        nothing_new = cursor.count_at_search == conn.exists_count
        plan = cursor.plan_catch_up(
            conn.exists_count,
            steady,
            BATCH_SIZE,
            changes_seen=conn.changes_seen,
            one_trip=one_trip_count(max_size),
        )
        meta: dict[int, Fetch] | None = None
        known_at = None
        if plan.by_range:
            # A few new messages: their sizes, dates and bodies in one FETCH (plan.bodies).
            items = one_trip_items(max_size, self._change_items()) if plan.bodies else META_ITEMS
            ahead = then_idle and (plan.bodies or nothing_new)
            events = await self._uid_fetch(plan.uid_range, items, ahead)
            meta = range_meta(plan, events)
            known_at = conn.exists_at
            uids = cursor.to_fetch(plan, meta)
        else:
            uids = cursor.to_fetch(plan, await self._search(plan.search))
        if uids:  # none after most IDLE re-issues: no coroutine for nothing
            self._report(Status.SYNCING, "", self.failures)
            await self._fetch_and_persist(cursor, uids, meta=meta, known_at=known_at)

    def _change_items(self) -> str:
        """FLAGS (and MODSEQ) with every body when the partner wants change events."""
        return self.changes.items if self.changes is not None else ""

    async def _revalidate(self, cursor: FolderCursor, highest: int) -> None:
        """The UIDVALIDITY changed: catch up by date (sync.mailbox.revalidation_window);
        ``highest`` was the last UID at SELECT."""
        baseline = await self.engine.pool.run(store.baseline_moment, self.user_id)
        search, start, cutoff = revalidation_window(
            cursor.last_internal_date, baseline, timezone.now()
        )
        uids = sorted(await self._search(search))
        log.info(
            "mailbox %s: %d message(s) since %s to check after the UIDVALIDITY change",
            self.label,
            len(uids),
            start.date(),
        )
        cursor.begin_revalidation()
        await self._fetch_and_persist(cursor, uids, before=cutoff, skip_recorded=True)
        await self._save_checkpoint(cursor, cursor.end_revalidation(highest))

    async def _fetch_and_persist(
        self,
        cursor: FolderCursor,
        uids: list[int],
        *,
        skip_recorded: bool = False,
        before: datetime | None = None,
        meta: dict[int, Fetch] | None = None,
        known_at: float | None = None,
    ) -> None:
        """Fetch and persist ``uids`` batch by batch; each batch's UIDs all end in a state
        (persisted or skipped) before the checkpoint moves past them."""
        folder, uid_validity = cursor.folder, cursor.uid_validity
        for batch in batches(uids, BATCH_SIZE):
            if skip_recorded:
                done = await self.engine.pool.run(
                    store.recorded_uids, self.user_id, uid_validity, batch, folder
                )
                batch = [uid for uid in batch if uid not in done]
            if not batch:
                continue
            messages = await self._fetch_batch(batch, before, meta, known_at)
            result = await self.engine.persister.persist(
                self.user_id, self.engine.node_id, uid_validity, folder, messages
            )
            cursor.persisted(batch)
            result.log_skips(self.label, uid_validity, folder)
            self.engine.record_persisted(result)

    async def _fetch_batch(
        self,
        uids: list[int],
        before: datetime | None = None,
        known: dict[int, Fetch] | None = None,
        known_at: float | None = None,
    ) -> list[FetchedMessage]:
        """One FetchedMessage per UID of ``uids``, whatever the server answers: the batch
        machine (sync/batch.py) decides, this sends its requests."""
        machine = BatchFetch(
            uids,
            max_size=self.cfg.max_email_size,
            before=before,
            known=known,
            extra=self._change_items(),
            known_at=known_at,
        )
        for request in machine.requests():
            # More than the one-trip FETCH: end the IDLE written behind it (if any) first.
            await self.conn.end_idle_ahead()
            if isinstance(request, CheckPresent):
                untagged, _ = await self.conn.command(*self.conn.protocol.noop())
                self._check_uidvalidity(untagged)
                machine.present(request, await self._search(request.criteria))
            elif isinstance(request, FetchMeta):
                machine.meta_answered(request, await self._fetch_items(request.uids, META_ITEMS))
            else:
                events = await self._fetch_items(request.uids, request.items)
                machine.bodies_answered(request, events, self.conn.exists_at)
        messages = []
        for o in machine.outcomes():
            if o.skip == UNFETCHABLE:
                log.warning(
                    "mailbox %s: uid %d present but never returned by FETCH", self.label, o.uid
                )
            messages.append(
                FetchedMessage(
                    o.uid,
                    o.size,
                    o.internal_date,
                    o.raw,
                    o.header,
                    o.skip,
                    o.seen_at,
                    o.flags,
                    o.modseq,
                )
            )
        return messages

    async def _fetch_items(self, uids, items: str) -> list:
        return await self._uid_fetch(",".join(map(str, uids)), items)

    async def _uid_fetch(self, uid_set: str, items: str, then_idle: bool = False) -> list:
        """UID FETCH ``items`` of ``uid_set``: the untagged responses, FETCH answers in
        whatever order they come (the machine picks those it asked for)."""
        untagged, tagged = await self.conn.command(
            *self.conn.protocol.uid_fetch(uid_set, items),
            timeout=self.cfg.fetch_timeout,
            check=False,
            then_idle=then_idle,
        )
        self._check_uidvalidity(untagged)
        answer = fetch_answer(tagged)
        if answer is FetchAnswer.RETRY_LATER:
            raise CommandFailed("UID FETCH", tagged)
        if answer is FetchAnswer.SOME_REFUSED:
            log.info(
                "mailbox %s: UID FETCH answered NO for some messages: %s",
                self.label,
                tagged.text[:200],
            )
        return untagged

    # --- the other folders (design.md 4.10) ----------------------------------------------

    async def _visit_folders_with_news(self) -> None:
        due = self.others.with_news(self.conn)
        while due:
            try:
                for cursor in due:
                    await self._visit(cursor)
            finally:
                self.selected = self.primary
            # Back to the primary folder; mail that arrived there meanwhile is caught up now.
            untagged, tagged = await self.conn.command(
                *self.conn.protocol.select(self.primary.folder)
            )
            if code_value([*untagged, tagged], "UIDVALIDITY") != self.primary.uid_validity:
                raise ServerBye("UIDVALIDITY changed while another folder was read")
            if self.changes is not None:
                self.changes.selected(self.primary.folder, [*untagged, tagged])
            await self._catch_up(self.primary)
            # Mail that reached a visited folder after its SEARCH came as EXISTS while it
            # was selected, not as a NOTIFY report: ask once more.
            for cursor in due:
                await self.others.status(self.conn, cursor.folder)
            due = self.others.with_news(self.conn)

    async def _visit(self, cursor: FolderCursor) -> None:
        """EXAMINE a secondary folder and catch it up exactly as the primary one (4.3)."""
        untagged, tagged = await self.conn.command(
            *self.conn.protocol.select(cursor.folder, readonly=True)
        )
        uid_validity = code_value([*untagged, tagged], "UIDVALIDITY")
        uid_next = code_value([*untagged, tagged], "UIDNEXT")
        if uid_validity is None:
            raise CommandFailed("EXAMINE", TaggedResponse("", "NO", None, "no UIDVALIDITY"))
        self.selected = cursor
        if self.changes is not None:
            self.changes.selected(cursor.folder, [*untagged, tagged])
        if await self._start(cursor, uid_validity, uid_next) is Start.RESUME:
            await self._catch_up(cursor)
            if self.changes is not None:
                await self.changes.check(self, cursor)

    # --- waiting for mail ---------------------------------------------------------------

    async def _start_idle(self) -> str:
        """Start an IDLE (the one written behind the catch-up's FETCH, or one now): its
        tag. The watch loop waits (_idle_wait, _left_to_wait), then _end_idle()."""
        conn = self.conn
        timeout = self.cfg.command_timeout
        # What the server says before the continuation (an EXPUNGE or a flag change made
        # at that moment) is news for the wait (_left_to_wait), not something to drop.
        before: list = []
        tag = conn.take_idle_ahead()  # written behind the catch-up's FETCH
        if tag is not None and await conn.idle_started(tag, timeout, before) is not None:
            log.info("mailbox %s: IDLE behind a FETCH refused; sent alone now", self.label)
            self._ahead_ok = False
            tag = None
        if tag is None:
            tag, data = conn.protocol.idle()
            await conn.send(data)
            refused = await conn.idle_started(tag, timeout, before)
            if refused is not None:
                raise CommandFailed("IDLE", refused)
        conn.put_back(before)
        self.engine.idles += 1
        return tag

    def _idle_wait(self, at_most: float | None) -> float:
        """How long an IDLE waits for news: its period, or ``at_most`` seconds (a
        backfill's next step) if sooner, ending on the grid (idle_wait)."""
        period = self._idle_period if at_most is None else min(self._idle_period, at_most)
        return idle_wait(self.conn.loop.time(), self._until_wake(period))

    async def _end_idle(self, tag: str) -> None:
        """DONE: now if the session stops, else with the catch-up's command (owe_done)."""
        conn = self.conn
        if self.stop_event.is_set():
            await conn.send(conn.protocol.done())
            await conn.collect(tag, self.cfg.command_timeout)
        else:
            conn.owe_done(conn.protocol.done(), tag)  # goes out with the catch-up's command

    def _poll_period(self, at_most: float | None) -> float:
        return self.cfg.poll_interval if at_most is None else min(self.cfg.poll_interval, at_most)

    async def _poll(self) -> None:
        """A poll after its wait: NOOP (its untagged answers bring EXISTS)."""
        untagged, _ = await self.conn.command(*self.conn.protocol.noop())
        self._check_uidvalidity(untagged)

    def _until_wake(self, period: float) -> float:
        seconds = self.others.until_poll(period)
        if self.changes is not None:
            seconds = min(seconds, self.changes.until_resync())
        return seconds

    def _left_to_wait(self, deadline: float) -> float:
        """Seconds left to wait for news until ``deadline`` (loop time); none once stop()
        was called, mail arrived since the last search (maybe with another response) or a
        NOTIFY report came with another response."""
        if (
            self.stop_event.is_set()
            or self.conn.exists_seen > self._exists_at_search
            or self.others.reported(self.conn)
        ):
            return 0.0
        return deadline - self.conn.loop.time()

    def _is_news(self, event: Event | None) -> bool:
        """Whether ``event`` (None: interrupted) ends the wait for news: new mail here or
        (NOTIFY) in another folder, a flag changed or a message left (design.md 4.14). BYE
        and UIDVALIDITY changes raise."""
        if event is None or isinstance(event, Exists | MailboxStatus):
            return True
        if isinstance(event, Bye):
            raise ServerBye("server said BYE while waiting")
        self._check_uidvalidity([event])
        return self.changes is not None and self.changes.signal(event)


class StopFlag:
    """is_set() and set() of an asyncio.Event without its waiters' deque (~700 bytes a
    session, design.md 4.13): nothing awaits it, stop() wakes the session's waits."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set
