"""One mailbox, watched by one asyncio task (design.md section 4, step by step).

Crash-only: any unexpected condition tears the session down; it starts again after a
back-off. Mail is persisted (MailLog + Delivery + checkpoint in one transaction) before the
checkpoint moves, so a crash anywhere re-fetches at worst and never loses mail.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from superimap.engine import store
from superimap.engine.connection import CommandFailed, ImapConnection, ServerBye
from superimap.imap import (
    Bye,
    Continuation,
    Exists,
    Fetch,
    ImapError,
    SearchResult,
    TaggedResponse,
    UntaggedStatus,
)
from superimap.mailboxes.models import MailboxUser

log = logging.getLogger("superimap.engine")
Status = MailboxUser.Status

BATCH_SIZE = 100
BODY_BYTES_PER_FETCH = 8 * 1024 * 1024
SINCE_DAYS_AFTER_UIDVALIDITY_CHANGE = 2


class AuthFailed(Exception):
    pass


# RFC 5530 codes that say "not now" rather than "not these credentials".
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "SERVERBUG", "LIMIT", "INUSE", "OVERQUOTA"})


def refused_for_credentials(response: TaggedResponse) -> bool:
    """A NO to LOGIN/AUTHENTICATE that a human must fix; BAD and 'try later' codes are
    transient and only back off like any other failure."""
    if response.status != "NO":
        return False
    code = str(response.code[0]).upper() if response.code else ""
    return code not in TRANSIENT_CODES


@dataclass(frozen=True)
class SessionSettings:
    command_timeout: float = 30.0
    fetch_timeout: float = 120.0
    idle_reissue: float = 25 * 60
    poll_interval: float = 60.0
    max_email_size: int = 1024 * 1024
    max_backoff: float = 300.0
    max_auth_backoff: float = 3600.0


def backoff_delay(failures: int, auth: bool, cfg: SessionSettings) -> float:
    """min(300, failures**3 - 1) s with ±20 % jitter; auth failures wait much longer."""
    if auth:
        base = min(cfg.max_auth_backoff, 300.0 * failures)
    else:
        base = min(cfg.max_backoff, float(failures**3 - 1))
    return max(0.0, base * random.uniform(0.8, 1.2))


class MailboxSession:
    def __init__(self, engine, user_id: int, config: store.MailboxConfig | None = None) -> None:
        self.engine = engine
        self.user_id = user_id
        # Handed over by the supervisor (loaded in bulk) for the first connection; every
        # reconnect reads it again, so changed credentials and checkpoints are picked up.
        self._first_config = config
        self.cfg: SessionSettings = engine.session_settings
        self.stop_event = asyncio.Event()
        self.failures = 0
        self.conn: ImapConnection | None = None
        self.uid_validity: int | None = None
        self.last_uid: int | None = None
        self._sleeper: asyncio.Future | None = None
        self._exists_at_search = 0

    def stop(self) -> None:
        self.stop_event.set()
        if self.conn is not None:
            self.conn.interrupt()
        if self._sleeper is not None and not self._sleeper.done():
            self._sleeper.set_result(None)

    # --- the outer loop: connect, watch, back off -----------------------------------------

    async def run(self) -> None:
        auth_failed = False
        while not self.stop_event.is_set():
            config, self._first_config = self._first_config, None
            if config is None:
                config = await self.engine.pool.run(store.mailbox_config, self.user_id)
            if config is None:
                return
            auth_failed = False
            try:
                await self._watch(config)
                if self.stop_event.is_set():
                    break
                error = "session ended"
            except store.LeaseLost:
                log.info("mailbox %s: lease lost, stopping", self.user_id)
                return
            except AuthFailed as exc:
                auth_failed, error = True, str(exc)
            except (ImapError, ServerBye, CommandFailed, OSError, TimeoutError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - crash-only: log, back off, reconnect
                log.exception("mailbox %s: unexpected error", self.user_id)
                error = f"{type(exc).__name__}: {exc}"
            finally:
                await self._disconnect()
            if self.stop_event.is_set():
                break
            self.failures += 1
            delay = backoff_delay(self.failures, auth_failed, self.cfg)
            status = Status.AUTH_FAILED if auth_failed else Status.BACKING_OFF
            self.engine.report(self.user_id, status, error[:500], self.failures)
            log.info(
                "mailbox %s: %s; retry %d in %.1fs", self.user_id, error[:200], self.failures, delay
            )
            await self._sleep(delay)
        if not auth_failed:
            # An auth failure stays visible after shutdown: it needs a human.
            self.engine.report(self.user_id, Status.STOPPED, "", self.failures)

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
        self.engine.report(self.user_id, Status.CONNECTING, "", self.failures)
        await self.engine.logins.wait_turn(self.user_id, config.host, self._sleep)
        if self.stop_event.is_set():
            return
        async with self.engine.handshakes:
            self.conn = await ImapConnection.open(
                config.host,
                config.port,
                implicit_tls=config.tls == "implicit",
                insecure=config.insecure_tls,
                timeout=self.cfg.command_timeout,
                max_literal_size=self.cfg.max_email_size + 64 * 1024,
            )
            if config.tls == "starttls":
                await self.conn.start_tls(config.host, config.insecure_tls)
            await self._authenticate(config)
        await self._select(config)
        if config.sweep_requested_at is not None:
            await self._sweep(config)
        await self._catch_up(config)
        if self.failures:
            self.failures = 0
        idle = "IDLE" in self.conn.protocol.capabilities
        while not self.stop_event.is_set():
            self.engine.report(self.user_id, Status.IDLE if idle else Status.POLLING, "", 0)
            if idle:
                await self._idle()
            else:
                await self._poll()
            if self.stop_event.is_set():
                return
            await self._catch_up(config)

    async def _authenticate(self, config: store.MailboxConfig) -> None:
        conn = self.conn
        if not conn.protocol.capabilities:
            await conn.command(*conn.protocol.capability())
        if config.auth_kind == "oauth2":
            from superimap.engine.oauth import authenticate_xoauth2  # imports this module

            await authenticate_xoauth2(self.engine, conn, config)
        else:
            try:
                await conn.command(*conn.protocol.login(config.username, config.password))
            except CommandFailed as exc:
                if refused_for_credentials(exc.response):
                    raise AuthFailed(f"login refused: {exc.response.text[:200]}") from None
                raise
        if not conn.protocol.capabilities or "IDLE" not in conn.protocol.capabilities:
            await conn.command(*conn.protocol.capability())

    async def _select(self, config: store.MailboxConfig) -> None:
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
        if config.uid_validity is None or config.last_uid is None:
            # First connection: mail that predates the user is not sent.
            baseline = uid_next - 1 if uid_next else await self._highest_uid()
            await self.engine.pool.run(
                store.set_baseline, self.user_id, self.engine.node_id, uid_validity, baseline
            )
            self.last_uid = baseline
            log.info(
                "mailbox %s: baseline uid %d (uidvalidity %d)", self.user_id, baseline, uid_validity
            )
        elif config.uid_validity != uid_validity:
            log.warning(
                "mailbox %s: UIDVALIDITY changed %s -> %s; catching up by date",
                self.user_id,
                config.uid_validity,
                uid_validity,
            )
            await self._catch_up_since_days(config, SINCE_DAYS_AFTER_UIDVALIDITY_CHANGE)
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

    async def _catch_up(self, config: store.MailboxConfig) -> None:
        self._exists_at_search = self.conn.exists_seen
        last = self.last_uid or 0
        uids = sorted(uid for uid in await self._search(f"UID {last + 1}:*") if uid > last)
        if uids:
            self.engine.report(self.user_id, Status.SYNCING, "", self.failures)
        await self._fetch_and_persist(config, uids)

    async def _sweep(self, config: store.MailboxConfig) -> None:
        """Everything from UID 1: dedup (persist_batch) skips mail that was sent already, so
        only mail never sent (e.g. older than the user) produces new_mail deliveries."""
        uids = sorted(await self._search("UID 1:*"))
        log.info("mailbox %s: sweeping %d message(s)", self.user_id, len(uids))
        if uids:
            self.engine.report(self.user_id, Status.SYNCING, "", self.failures)
        await self._fetch_and_persist(config, uids)
        await self.engine.pool.run(
            store.finish_sweep, self.user_id, self.engine.node_id, config.sweep_requested_at
        )

    async def _catch_up_since_days(self, config: store.MailboxConfig, days: int) -> None:
        since = (timezone.now() - timedelta(days=days)).strftime("%d-%b-%Y")
        uids = sorted(await self._search(f"SINCE {since}"))
        self.last_uid = 0
        await self._fetch_and_persist(config, uids)
        if not uids:
            highest = await self._highest_uid()
            await self.engine.pool.run(
                store.set_baseline, self.user_id, self.engine.node_id, self.uid_validity, highest
            )
            self.last_uid = highest

    async def _fetch_and_persist(self, config: store.MailboxConfig, uids: list[int]) -> None:
        for start in range(0, len(uids), BATCH_SIZE):
            batch = uids[start : start + BATCH_SIZE]
            messages = await self._fetch_batch(batch)
            if not messages:
                continue
            result = await self.engine.pool.run(
                store.persist_batch,
                self.user_id,
                self.engine.node_id,
                self.uid_validity,
                config.folder,
                messages,
            )
            self.last_uid = max(self.last_uid or 0, max(m.uid for m in messages))
            self.engine.record_persisted(result)

    async def _fetch_batch(self, uids: list[int]) -> list[store.FetchedMessage]:
        uid_set = ",".join(str(u) for u in uids)
        untagged, _ = await self.conn.command(
            *self.conn.protocol.uid_fetch(uid_set, "(UID RFC822.SIZE INTERNALDATE)")
        )
        self._check_uidvalidity(untagged)
        meta = {e.uid: e for e in untagged if isinstance(e, Fetch) and e.uid in set(uids)}
        wanted = [meta[u] for u in uids if u in meta]
        small = [m for m in wanted if (m.size or 0) <= self.cfg.max_email_size]
        bodies: dict[int, bytes] = {}
        for chunk in _chunks_by_size(small, BODY_BYTES_PER_FETCH):
            chunk_set = ",".join(str(m.uid) for m in chunk)
            untagged, _ = await self.conn.command(
                *self.conn.protocol.uid_fetch(chunk_set, "(UID BODY.PEEK[])"),
                timeout=self.cfg.fetch_timeout,
            )
            for event in untagged:
                if isinstance(event, Fetch) and event.uid is not None and event.body is not None:
                    bodies[event.uid] = event.body
        messages = []
        for m in wanted:
            oversize = (m.size or 0) > self.cfg.max_email_size
            if not oversize and m.uid not in bodies:
                # Expunged between the two fetches, or the server misbehaved: stop here so
                # the checkpoint never passes a message we did not persist.
                break
            messages.append(
                store.FetchedMessage(
                    uid=m.uid,
                    size=m.size or 0,
                    internal_date=m.internal_date,
                    raw=None if oversize else bodies[m.uid],
                )
            )
        return messages

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
        await self._wait_for_news(self.cfg.idle_reissue)
        await conn.send(conn.protocol.done())
        await conn.collect(tag, self.cfg.command_timeout)

    async def _poll(self) -> None:
        await self._wait_for_news(self.cfg.poll_interval)
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
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                event = await self.conn.next_event(remaining, interruptible=True)
            except TimeoutError:
                return
            if event is None or isinstance(event, Exists):
                return
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
