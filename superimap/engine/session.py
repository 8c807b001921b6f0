"""One mailbox, watched by one asyncio task (design.md section 4, step by step).

Crash-only: any unexpected condition tears the session down; it starts again after a
back-off. Mail is persisted (MailLog + Delivery + checkpoint in one transaction) before the
checkpoint moves, so a crash anywhere re-fetches at worst and never loses mail.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from django.utils import timezone

from superimap.engine import folders, store
from superimap.engine.morefolders import FolderWatch, SecondaryFolders
from superimap.engine.oauth import access_tokens
from superimap.imap import (
    Bye,
    Continuation,
    Exists,
    Fetch,
    ImapError,
    MailboxStatus,
    SearchResult,
    TaggedResponse,
    UntaggedStatus,
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
from superimap.mailboxes.models import MailboxUser, MailLog
from superimap.platform import dboutage
from superimap.sync.persist import FetchedMessage

log = logging.getLogger("superimap.engine")
Status = MailboxUser.Status
Reason = MailLog.Reason

BATCH_SIZE = 100
META_ITEMS = "(UID RFC822.SIZE INTERNALDATE)"
BODY_BYTES_PER_FETCH = 8 * 1024 * 1024
# After a UIDVALIDITY change, search by date from a day before the last mail persisted
# (SINCE has day granularity and ignores time zones).
SINCE_MARGIN = timedelta(days=1)
# A UID the server does not return is re-checked (NOOP, UID SEARCH) and fetched again up
# to this many times in all; still present but never returned: skipped as unfetchable.
FETCH_ROUNDS = 3
# A NO with one of these codes means "not now" for the whole command: reconnect and retry.
# Any other NO to a UID FETCH (EXPUNGEISSUED, no code...) is about some of its messages.
RETRY_LATER_CODES = frozenset({"UNAVAILABLE", "INUSE", "LIMIT", "OVERQUOTA"})


@dataclass(frozen=True)
class SessionSettings:
    command_timeout: float = 30.0
    fetch_timeout: float = 120.0
    idle_reissue: float = 25 * 60
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


def idle_period(config: store.MailboxConfig, cfg: SessionSettings, greeting: str = "") -> float:
    """How long one IDLE lasts: IDLE_REISSUE_SECONDS, or idle_refresh_seconds when shorter.

    The connection's setting wins, then the provider's; neither set (None) means automatic:
    SLOW_IDLE_REFRESH for servers whose greeting names Cyrus or Courier, which only check
    the mailbox when IDLE is issued again, so a short period bounds their push latency
    (the catch-up SEARCH after each DONE finds what the IDLE did not tell); 0 is off."""
    refresh = config.idle_refresh
    if refresh is None:
        slow = any(name in greeting.lower() for name in SLOW_IDLE_GREETINGS)
        refresh = SLOW_IDLE_REFRESH if slow else 0
    if refresh > 0:
        return min(float(refresh), cfg.idle_reissue)
    return cfg.idle_reissue


def backoff_delay(failures: int, auth: bool, cfg: SessionSettings) -> float:
    """min(300, failures**3 - 1) s with ±20 % jitter; auth failures wait much longer."""
    if auth:
        base = min(cfg.max_auth_backoff, 300.0 * failures)
    else:
        base = min(cfg.max_backoff, float(failures**3 - 1))
    return max(0.0, base * random.uniform(0.8, 1.2))


class MailboxSession(SecondaryFolders):
    def __init__(self, engine, user_id: int, config: store.MailboxConfig | None = None) -> None:
        self.engine = engine
        self.user_id = user_id
        # How log lines name the mailbox: partner/connection/tag once its config is read.
        self.label = config.label if config is not None else store.mailbox_label(user_id)
        # Handed over by the supervisor (loaded in bulk) for the first connection; every
        # reconnect reads it again, so changed credentials and checkpoints are picked up.
        self._first_config = config
        self.cfg: SessionSettings = engine.session_settings
        self.stop_event = asyncio.Event()
        self.failures = 0
        # Back-off counts failures of one kind in a row: a dropped connection before a
        # refused login must not make the first auth back-off the second one (543 s).
        self._failure_kind = ""
        self._kind_failures = 0
        self._last_error = ""  # kept while reconnecting, so user_error can say what failed
        self.conn: ImapConnection | None = None
        self.uid_validity: int | None = None
        self.last_uid: int | None = None
        self._sleeper: asyncio.Future | None = None
        self._exists_at_search = 0
        # The folder's EXISTS count at the last catch-up of this selection (None: unknown).
        self._count_at_search: int | None = None
        # UIDs a SEARCH returned that are not persisted yet (uid_validity, uids): if the
        # connection drops first and a later SEARCH no longer finds one, it was expunged
        # meanwhile and is recorded so, not forgotten.
        self._unpersisted: tuple[int | None, set[int]] = (None, set())
        self._idle_period = self.cfg.idle_reissue
        # Folders besides the primary one (design.md 4.10) and how their news is learnt.
        self._secondary: dict[str, FolderWatch] = {}
        self._notify = False
        self._next_poll = 0.0
        self._folder_warning = ""

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
            config, self._first_config = self._first_config, None
            if config is None:
                config = await self.engine.pool.run(store.mailbox_config, self.user_id)
            if config is None:
                return
            self.label = config.label
            status = Status.BACKING_OFF
            try:
                await self._watch(config)
                if self.stop_event.is_set():
                    break
                error = "session ended"
            except store.LeaseLost:
                log.info("mailbox %s: lease lost or user gone, stopping", self.label)
                return
            except AuthFailed as exc:
                status, error = Status.AUTH_FAILED, str(exc)
            except TlsCertificateFailed as exc:
                # Needs a human like a refused login: the long back-off, and the message
                # names the fix (imap_tls_ca or imap_tls_verify).
                status, error = Status.TLS_FAILED, str(exc)
            except (ImapError, ServerBye, CommandFailed, OSError, TimeoutError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
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
            self.engine.report(self.user_id, status, error[:500], self.failures)
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
            self.engine.report(self.user_id, Status.STOPPED, "", self.failures)

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
        handle = loop.call_later(seconds, _resolve, self._sleeper)
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

    async def _watch(self, config: store.MailboxConfig) -> None:
        error = self._last_error if self.failures else ""
        self.engine.report(self.user_id, Status.CONNECTING, error, self.failures)
        await self.engine.logins.wait_turn(self.user_id, config.host, self._sleep)
        if self.stop_event.is_set():
            return
        async with self.engine.handshakes:
            self.conn = await open_connection(
                config,
                timeout=self.cfg.command_timeout,
                max_literal_size=self.cfg.max_email_size + 64 * 1024,
            )
            await authenticate(self.conn, config, access_tokens(self.engine))
        if config.connect_pending:
            await self._tell_connected(config.connect_pending)
        names, missing = await folders.resolve_folders(self.conn, config.folders, config.folder)
        self._folder_warning = f"folders not found: {', '.join(missing)}" if missing else ""
        config = replace(config, folder=names[0])
        await self._select(config)
        if config.sweep_requested_at is not None:
            await self._sweep(config)
        await self._catch_up(config)
        await self._start_secondaries(config, names[1:])
        idle = "IDLE" in self.conn.protocol.capabilities
        self._idle_period = idle_period(config, self.cfg, self.conn.greeting_text)
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
        while not self.stop_event.is_set():
            status = Status.IDLE if idle else Status.POLLING
            self.engine.report(self.user_id, status, self._folder_warning, 0)
            if idle:
                await self._idle()
            else:
                await self._poll()
            if self.stop_event.is_set():
                return
            await self._catch_up(config, steady=True)
            await self._check_secondaries(config)

    async def _tell_connected(self, token: str) -> None:
        """The first login with new credentials succeeded: user_connected, before any
        new_mail of this session is persisted."""
        engine = self.engine
        if await engine.pool.run(store.tell_connected, self.user_id, engine.node_id, token):
            log.info("mailbox %s: first login with new credentials; user_connected", self.label)
            if engine.on_new_deliveries:
                engine.on_new_deliveries()

    async def _select(self, config: store.MailboxConfig) -> None:
        self._count_at_search = None  # counts of another connection or folder mean nothing
        untagged, tagged = await self.conn.command(*self.conn.protocol.select(config.folder))
        uid_validity = uid_next = None
        for event in [*untagged, tagged]:
            code = getattr(event, "code", None)
            if code and code[0] == "UIDVALIDITY":
                uid_validity = int(code[1])
            elif code and code[0] == "UIDNEXT":
                uid_next = int(code[1])
        if uid_validity is None:
            raise CommandFailed("SELECT", TaggedResponse("", "NO", None, "no UIDVALIDITY"))
        self.uid_validity = uid_validity
        if config.checkpoint_folder != config.folder:
            # A folder watched before as a secondary one keeps its checkpoint.
            known = await self.engine.pool.run(store.folder_states, self.user_id)
            state = known.get(config.folder)
            if state is not None:
                config = replace(
                    config,
                    uid_validity=state.uid_validity,
                    last_uid=state.last_uid,
                    last_internal_date=state.last_internal_date,
                )
                await self.engine.pool.run(
                    store.set_baseline,
                    self.user_id,
                    self.engine.node_id,
                    state.uid_validity,
                    state.last_uid,
                    folder=config.folder,
                )
                config = replace(config, checkpoint_folder=config.folder)
        if (
            config.uid_validity is None
            or config.last_uid is None
            or config.checkpoint_folder != config.folder
        ):
            # First connection (or a checkpoint of another folder): mail that predates the
            # user is not sent.
            baseline = uid_next - 1 if uid_next else await self._highest_uid()
            await self.engine.pool.run(
                store.set_baseline,
                self.user_id,
                self.engine.node_id,
                uid_validity,
                baseline,
                folder=config.folder,
            )
            self.last_uid = baseline
            log.info(
                "mailbox %s: baseline uid %d (uidvalidity %d)", self.label, baseline, uid_validity
            )
        elif config.uid_validity != uid_validity:
            log.warning(
                "mailbox %s: UIDVALIDITY changed %s -> %s; catching up by date",
                self.label,
                config.uid_validity,
                uid_validity,
            )
            highest = uid_next - 1 if uid_next else await self._highest_uid()
            await self._catch_up_after_uidvalidity_change(config, highest)
        else:
            self.last_uid = config.last_uid

    async def _highest_uid(self) -> int:
        uids = await self._search("UID 1:*")
        return max(uids, default=0)

    async def _search(self, criteria: str) -> list[int]:
        untagged, _ = await self.conn.command(*self.conn.protocol.uid_search(criteria))
        self._check_uidvalidity(untagged)
        return [uid for e in untagged if isinstance(e, SearchResult) for uid in e.ids]

    def _check_uidvalidity(self, events) -> None:
        for event in events:
            if isinstance(event, UntaggedStatus) and event.code and event.code[0] == "UIDVALIDITY":
                if int(event.code[1]) != self.uid_validity:
                    raise ServerBye("UIDVALIDITY changed during the session")

    # --- catching up --------------------------------------------------------------------

    async def _catch_up(self, config: store.MailboxConfig, steady: bool = False) -> None:
        """Fetch and persist what arrived since ``last_uid``.

        ``steady``: called from the watch loop, after IDLE or a poll. If the folder's
        EXISTS count grew by at most BATCH_SIZE since the last catch-up of this selection,
        one ``UID FETCH last+1:* (UID RFC822.SIZE INTERNALDATE)`` finds the new UIDs AND
        their sizes, instead of a UID SEARCH followed by that FETCH: one round trip fewer
        per new message. After a (re)SELECT, or when many arrived, the UID SEARCH runs."""
        self._exists_at_search = self.conn.exists_seen
        count_before, self._count_at_search = self._count_at_search, self.conn.exists_count
        last = self.last_uid or 0
        meta: dict[int, Fetch] | None = None
        if (
            steady
            and count_before is not None
            and self._count_at_search is not None
            and self._count_at_search - count_before <= BATCH_SIZE
        ):
            meta = {}
            for event in await self._fetch_items([], META_ITEMS, uid_set=f"{last + 1}:*"):
                if event.uid > last and (event.uid not in meta or meta[event.uid].size is None):
                    meta[event.uid] = event
            found = set(meta)
        else:
            found = {uid for uid in await self._search(f"UID {last + 1}:*") if uid > last}
        validity, seen = self._unpersisted
        if validity != self.uid_validity:
            seen = set()
        # Seen by an earlier session but gone now: _fetch_batch records them as expunged.
        uids = sorted(found | {uid for uid in seen if uid > last})
        self._unpersisted = (self.uid_validity, set(uids))
        if uids:
            self.engine.report(self.user_id, Status.SYNCING, "", self.failures)
        await self._fetch_and_persist(config, uids, meta=meta)

    async def _sweep(self, config: store.MailboxConfig) -> None:
        """Everything from UID 1: UIDs already delivered or skipped are not fetched again,
        so only mail never sent (e.g. older than the user) produces new_mail deliveries."""
        uids = sorted(await self._search("UID 1:*"))
        log.info("mailbox %s: sweeping %d message(s)", self.label, len(uids))
        if uids:
            self.engine.report(self.user_id, Status.SYNCING, "", self.failures)
        started = time.monotonic()
        await self._fetch_and_persist(config, uids, sweep=True)
        await self.engine.pool.run(
            store.finish_sweep, self.user_id, self.engine.node_id, config.sweep_requested_at
        )
        log.info(
            "mailbox %s: sweep done: %d message(s) looked at in %.1fs (mail not sent before "
            "goes out as new_mail)",
            self.label,
            len(uids),
            time.monotonic() - started,
        )

    async def _catch_up_after_uidvalidity_change(
        self, config: store.MailboxConfig, highest: int
    ) -> None:
        """The old UIDs mean nothing now: look at the mail since a day before the last one
        persisted. What predates the user's baseline is skipped (before_baseline), what was
        delivered already is a duplicate, the rest is new. ``highest`` was the last UID at
        SELECT: mail arriving during this has a higher UID and the next catch-up gets it."""
        baseline = await self.engine.pool.run(store.baseline_moment, self.user_id)
        now = timezone.now()
        start = min(config.last_internal_date or baseline or now, now) - SINCE_MARGIN
        uids = sorted(await self._search(f"SINCE {start.strftime('%d-%b-%Y')}"))
        log.info(
            "mailbox %s: %d message(s) since %s to check after the UIDVALIDITY change",
            self.label,
            len(uids),
            start.date(),
        )
        self.last_uid = 0
        # INTERNALDATE has whole seconds: a message of the baseline's second is new.
        cutoff = baseline.replace(microsecond=0) if baseline else None
        await self._fetch_and_persist(config, uids, before=cutoff, skip_recorded=True)
        checkpoint = max(highest, self.last_uid)
        await self._save_baseline(config, checkpoint)
        self.last_uid = checkpoint

    async def _fetch_and_persist(
        self,
        config: store.MailboxConfig,
        uids: list[int],
        *,
        sweep: bool = False,
        skip_recorded: bool = False,
        before: datetime | None = None,
        meta: dict[int, Fetch] | None = None,
    ) -> None:
        """Fetch and persist ``uids`` batch by batch; each batch's UIDs all end in a state
        (persisted or skipped) before the checkpoint moves past them."""
        for start in range(0, len(uids), BATCH_SIZE):
            batch = uids[start : start + BATCH_SIZE]
            if sweep or skip_recorded:
                done = await self.engine.pool.run(
                    store.recorded_uids, self.user_id, self.uid_validity, batch, config.folder
                )
                batch = [uid for uid in batch if uid not in done]
            if not batch:
                continue
            messages = await self._fetch_batch(batch, before, meta)
            result = await self.engine.persister.persist(
                self.user_id,
                self.engine.node_id,
                self.uid_validity,
                config.folder,
                messages,
                sweep,
            )
            self.last_uid = max(self.last_uid or 0, max(m.uid for m in messages))
            result.log_skips(self.label, self.uid_validity, config.folder)
            self.engine.record_persisted(result)
            self._unpersisted[1].difference_update(batch)

    async def _fetch_batch(
        self,
        uids: list[int],
        before: datetime | None = None,
        known: dict[int, Fetch] | None = None,
    ) -> list[FetchedMessage]:
        """One FetchedMessage per UID of ``uids``, whatever the server answers.

        Servers answer a message expunged meanwhile with a NIL body, by leaving it out
        (often with OK or NO [EXPUNGEISSUED]), and may answer in any order. A UID without
        an answer is checked again (NOOP, then UID SEARCH): gone, it is skipped as
        expunged; present, it is fetched again. Mail older than ``before`` is skipped as
        before_baseline after fetching its header only; mail over MAX_EMAIL_SIZE gets its
        header fetched and is sent truncated. ``known``: sizes and dates fetched already."""
        done: dict[int, FetchedMessage] = {}
        meta: dict[int, Fetch] = {uid: known[uid] for uid in uids if known and uid in known}
        pending = list(uids)
        for attempt in range(FETCH_ROUNDS):
            if attempt:
                pending = await self._still_present(pending, meta, done)
                if not pending:
                    break
            missing = [uid for uid in pending if uid not in meta]
            if missing:
                for event in await self._fetch_items(missing, META_ITEMS):
                    # Not an unsolicited FLAGS update for the same UID, if there is better.
                    if event.uid not in meta or meta[event.uid].size is None:
                        meta[event.uid] = event
            ready = [meta[uid] for uid in pending if uid in meta]
            old = {m.uid for m in ready if before and m.internal_date and m.internal_date < before}
            whole = [m for m in ready if m.uid not in old and self._fits(m)]
            heads = [m for m in ready if m.uid not in old and not self._fits(m)]
            heads += [m for m in ready if m.uid in old]
            parts = await self._fetch_parts(whole, "BODY.PEEK[]", "BODY[]")
            parts.update(await self._fetch_parts(heads, "BODY.PEEK[HEADER]", "BODY[HEADER]"))
            for m in ready:
                part = parts.get(m.uid)
                if part is None:
                    continue
                fits = m.uid not in old and self._fits(m)
                done[m.uid] = FetchedMessage(
                    uid=m.uid,
                    size=m.size or 0,
                    internal_date=m.internal_date,
                    raw=part if fits else None,
                    header=None if fits else part,
                    skip=Reason.BEFORE_BASELINE if m.uid in old else "",
                    seen_at=self.conn.exists_at,
                )
            pending = [uid for uid in pending if uid not in done]
            if not pending:
                break
        for uid in pending:
            log.warning("mailbox %s: uid %d present but never returned by FETCH", self.label, uid)
            done[uid] = self._skipped(uid, meta, Reason.UNFETCHABLE)
        return [done[uid] for uid in uids]

    def _fits(self, message: Fetch) -> bool:
        return (message.size or 0) <= self.cfg.max_email_size

    async def _still_present(self, pending, meta, done) -> list[int]:
        """Of ``pending`` (UIDs the server did not return), those still in the folder; the
        others are recorded as expunged in ``done``."""
        untagged, _ = await self.conn.command(*self.conn.protocol.noop())
        self._check_uidvalidity(untagged)
        present = set(await self._search("UID " + ",".join(map(str, pending))))
        for uid in pending:
            if uid not in present:
                done[uid] = self._skipped(uid, meta, Reason.EXPUNGED)
        return [uid for uid in pending if uid in present]

    @staticmethod
    def _skipped(uid: int, meta: dict[int, Fetch], reason: str) -> FetchedMessage:
        m = meta.get(uid)
        return FetchedMessage(
            uid=uid,
            size=(m.size or 0) if m else 0,
            internal_date=m.internal_date if m else None,
            raw=None,
            skip=reason,
        )

    async def _fetch_items(
        self, uids: list[int], items: str, uid_set: str | None = None
    ) -> list[Fetch]:
        """UID FETCH ``items`` of ``uids``: the FETCH responses for those UIDs, in whatever
        order they come (a UID may also get an unsolicited FLAGS update of its own); UIDs
        not asked for are ignored. With ``uid_set`` (a range) every answer is returned."""
        untagged, tagged = await self.conn.command(
            *self.conn.protocol.uid_fetch(uid_set or ",".join(map(str, uids)), items),
            timeout=self.cfg.fetch_timeout,
            check=False,
        )
        self._check_uidvalidity(untagged)
        if tagged.status != "OK":
            code = str(tagged.code[0]).upper() if tagged.code else ""
            if tagged.status != "NO" or code in RETRY_LATER_CODES:
                raise CommandFailed("UID FETCH", tagged)
            log.info(
                "mailbox %s: UID FETCH answered NO for some messages: %s",
                self.label,
                tagged.text[:200],
            )
        if uid_set is not None:
            return [e for e in untagged if isinstance(e, Fetch) and e.uid is not None]
        wanted = set(uids)
        return [e for e in untagged if isinstance(e, Fetch) and e.uid in wanted]

    async def _fetch_parts(self, messages: list[Fetch], item: str, key: str) -> dict[int, bytes]:
        """``item`` (a body section) of ``messages`` in chunks of at most
        BODY_BYTES_PER_FETCH; a NIL or missing section is left out."""
        parts: dict[int, bytes] = {}
        for chunk in _chunks_by_size(messages, BODY_BYTES_PER_FETCH):
            for event in await self._fetch_items([m.uid for m in chunk], f"(UID {item})"):
                value = event.body if key == "BODY[]" else event.attributes.get(key)
                if isinstance(value, str):
                    value = value.encode("utf-8")
                if isinstance(value, bytes):
                    parts[event.uid] = value
        return parts

    # --- waiting for mail ---------------------------------------------------------------

    async def _idle(self) -> None:
        conn = self.conn
        tag, data = conn.protocol.idle()
        await conn.send(data)
        # Wait for the continuation (or a refusal).
        while True:
            event = await conn.next_event(self.cfg.command_timeout)
            if isinstance(event, TaggedResponse) and event.tag == tag:
                raise CommandFailed("IDLE", event)
            if isinstance(event, Continuation):
                break
            if isinstance(event, Bye):
                raise ServerBye("server said BYE")
        await self._wait_for_news(self._until_poll(self._idle_period))
        if self.stop_event.is_set():
            await conn.send(conn.protocol.done())
            await conn.collect(tag, self.cfg.command_timeout)
        else:
            conn.owe_done(conn.protocol.done(), tag)  # goes out with the catch-up's command

    async def _poll(self) -> None:
        await self._wait_for_news(self._until_poll(self.cfg.poll_interval))
        if self.stop_event.is_set():
            return
        untagged, _ = await self.conn.command(*self.conn.protocol.noop())
        self._check_uidvalidity(untagged)

    async def _wait_for_news(self, seconds: float) -> None:
        """Until EXISTS, the deadline or stop(); BYE and UIDVALIDITY changes raise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.stop_event.is_set():
            if self.conn.exists_seen > self._exists_at_search:
                return  # mail arrived since the last search (maybe with another response)
            if self._secondary and not self.conn.statuses.keys().isdisjoint(self._secondary):
                return  # a NOTIFY report came with another response
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                event = await self.conn.next_event(remaining, interruptible=True)
            except TimeoutError:
                return
            if event is None or isinstance(event, Exists | MailboxStatus):
                return  # new mail here, or (NOTIFY) in another folder
            if isinstance(event, Bye):
                raise ServerBye("server said BYE while waiting")
            self._check_uidvalidity([event])


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _chunks_by_size(messages: list[Fetch], limit: int):
    chunk: list[Fetch] = []
    total = 0
    for message in messages:
        size = message.size or 0
        if chunk and total + size > limit:
            yield chunk
            chunk, total = [], 0
        chunk.append(message)
        total += size
    if chunk:
        yield chunk
